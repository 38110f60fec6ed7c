"""The preference datasets of the paper's Table 1 (Yang et al., arXiv 2502.06876) and those
registered with :func:`register_source` (the toy 3H datasets register at ``import r3h.toy``),
loaded and normalised into pairs (see :mod:`r3h.data.preference`).

Each :class:`PreferenceSource` names a dataset on the Hugging Face hub (id, config,
split), the 3H dimension(s) it serves, and how its records become pairs: a field mapping
for datasets that already hold prompt/chosen/rejected, or a converter for those that hold
ratings or rankings (HelpSteer, UltraSafety, PKU-SafeRLHF, Nectar).

Table 1 cites LIONS (Yu et al. 2024b) for seven of its ten datasets; their defaults are
the copies LIONS published as ``Columbia-NLP/DPO-*`` (:data:`LIONS_SOURCES`, read by
:func:`convert_lions`). r3h's own conversions of the raw upstream datasets stay available
as ``<name>_upstream`` (docs/data.md says how the two differ). Local copies are read
in the dataset's own layout (a json/jsonl/parquet/csv file, or a downloaded folder), so
``load_preference_data({"name": "truthy_dpo", "path": "truthy-dpo.parquet"})`` normalises
a downloaded file exactly as the hub copy.

What could not be confirmed offline is said in each entry's ``note`` (and in
docs/data.md): the paper's Table 1 sizes and its exact dimension assignment were not
available, so no size is recorded and the dimensions follow the dataset cards.
"""

from __future__ import annotations

import difflib
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

from r3h.data.preference import (
    DEFAULT_FIELDS,
    as_messages,
    check_dimensions,
    normalize_record,
    require_fields,
    validate_pairs,
)
from r3h.io.datasets import load_records

__all__ = [
    "PreferenceSource",
    "ConvertContext",
    "REGISTRY",
    "get_source",
    "register_source",
    "list_sources",
    "read_raw_records",
    "convert_records",
    "load_preference_data",
]


@dataclass
class ConvertContext:
    """What a converter needs besides the raw records."""

    source: str
    dimensions: List[str]
    fields: Dict[str, Optional[str]]
    options: Dict
    seed: int = 0


#: converter(records, ctx) -> (pairs, {drop reason: count})
Converter = Callable[[List[dict], ConvertContext], Tuple[List[dict], Dict[str, int]]]


@dataclass(frozen=True)
class PreferenceSource:
    """A preference dataset: where it lives, what it serves and how it is normalised.

    ``hub_id``/``config``/``split`` locate it on the hub; ``builder(seed)`` (instead of a
    hub id) builds it in memory. ``fields`` override DEFAULT_FIELDS for the default
    converter; ``converter`` replaces it for rating/ranking layouts; ``options`` are the
    converter's defaults. ``required`` are the raw fields checked on the first record
    before anything else is done, as pair keys mapped through the fields (``"prompt"``
    means the raw field ``fields["prompt"]``) or raw names.
    """

    name: str
    dimensions: Tuple[str, ...]
    hub_id: Optional[str] = None
    config: Optional[str] = None
    split: str = "train"
    fields: Mapping[str, Optional[str]] = field(default_factory=dict)
    converter: Optional[Converter] = None
    builder: Optional[Callable[[int], List[dict]]] = None
    required: Tuple[str, ...] = ()
    options: Mapping = field(default_factory=dict)
    title: str = ""
    note: str = ""


# --------------------------------------------------------------------------- converters


def convert_fields(records: List[dict], ctx: ConvertContext) -> Tuple[List[dict], Dict[str, int]]:
    """The default converter: each record through normalize_record with ctx.fields."""
    return [normalize_record(r, ctx.fields, ctx.source, ctx.dimensions, i) for i, r in enumerate(records)], {}


def _number(value) -> Optional[float]:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if x != x else x  # NaN -> None


def _pair(prompt, chosen: str, rejected: str, ctx: ConvertContext, index, dims=None) -> dict:
    raw = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "id": index}
    return normalize_record(raw, {**DEFAULT_FIELDS, "system": None}, ctx.source, dims or ctx.dimensions, index)


def convert_helpsteer(records: List[dict], ctx: ConvertContext) -> Tuple[List[dict], Dict[str, int]]:
    """HelpSteer's rated responses -> one pair per prompt.

    HelpSteer (Wang et al. 2023) rates each response 0-4 on helpfulness, correctness,
    coherence, complexity and verbosity, with up to four responses per prompt; it holds no
    pairs. Following the common binarisation (as in Argilla's and Zephyr's recipes for
    rated data), the responses of one prompt become one pair: chosen = highest
    ``options["attribute"]`` (default helpfulness), rejected = lowest (first one on ties),
    kept only when the gap is at least ``options["min_gap"]`` (default 1). Prompts with a
    single response count as ``single_response``, those without gap as ``tie``.
    """
    attr, min_gap = ctx.options.get("attribute", "helpfulness"), float(ctx.options.get("min_gap", 1))
    f_prompt, f_resp = ctx.fields.get("prompt") or "prompt", ctx.fields.get("response") or "response"
    groups: Dict[str, List[Tuple[float, int, str]]] = defaultdict(list)
    first: Dict[str, int] = {}
    drops = Counter()
    for i, r in enumerate(records):
        require_fields(r, [f_prompt, f_resp, attr], ctx.source, i, "HelpSteer layout")
        score = _number(r[attr])
        if score is None:
            drops["unrated"] += 1
            continue
        first.setdefault(r[f_prompt], i)
        groups[r[f_prompt]].append((score, i, r[f_resp]))
    pairs = []
    for prompt, items in groups.items():
        if len(items) < 2:
            drops["single_response"] += 1
            continue
        best = max(items, key=lambda t: (t[0], -t[1]))
        worst = min(items, key=lambda t: (t[0], t[1]))
        if best[0] - worst[0] < min_gap:
            drops["tie"] += 1
            continue
        pairs.append(_pair(prompt, best[2], worst[2], ctx, first[prompt]))
    return pairs, dict(drops)


def _rating(completion: Mapping, aspect: str) -> Optional[float]:
    ann = (completion.get("annotations") or {}).get(aspect)
    if isinstance(ann, (list, tuple)):
        ann = ann[0] if ann else None
    if isinstance(ann, Mapping):
        ann = ann.get("Rating", ann.get("rating"))
    return _number(ann)


def convert_ultrasafety(records: List[dict], ctx: ConvertContext) -> Tuple[List[dict], Dict[str, int]]:
    """UltraSafety's rated completions -> one pair per prompt.

    Each record holds a prompt and several model completions, each annotated (by GPT-4)
    with a harmlessness and a helpfulness rating (``annotations.<aspect>[0].Rating``).
    chosen = the completion with the highest harmlessness rating (ties broken by the
    higher helpfulness rating, then the first), rejected = the lowest (ties: lower
    helpfulness); kept when the harmlessness ratings differ (else ``tie``).
    Completions without a numeric rating are ignored (``< 2`` rated: ``single_response``).
    """
    f_prompt = ctx.fields.get("prompt") or "prompt"
    f_comp = ctx.fields.get("completions") or "completions"
    primary = ctx.options.get("attribute", "harmlessness")
    secondary = ctx.options.get("tie_break", "helpfulness")
    pairs, drops = [], Counter()
    for i, r in enumerate(records):
        require_fields(r, [f_prompt, f_comp], ctx.source, i, "UltraSafety layout")
        rated = []
        for j, c in enumerate(r[f_comp] or ()):
            p = _rating(c, primary)
            if p is not None and isinstance(c.get("response"), str):
                s = _rating(c, secondary)
                rated.append((p, -1e9 if s is None else s, j, c["response"]))
        if len(rated) < 2:
            drops["single_response"] += 1
            continue
        best = max(rated, key=lambda t: (t[0], t[1], -t[2]))
        worst = min(rated, key=lambda t: (t[0], t[1], t[2]))
        if best[0] == worst[0]:
            drops["tie"] += 1
            continue
        pairs.append(_pair(r[f_prompt], best[3], worst[3], ctx, i))
    return pairs, dict(drops)


#: PKU-SafeRLHF preference -> (id field, dimensions of the pairs)
_PKU_PREFERENCES = {"agree": (None, ["helpfulness", "harmlessness"]), "better": ("better_response_id", ["helpfulness"]),
                    "safer": ("safer_response_id", ["harmlessness"])}


def convert_pku_saferlhf(records: List[dict], ctx: ConvertContext) -> Tuple[List[dict], Dict[str, int]]:
    """PKU-SafeRLHF's two responses with two labels -> pairs.

    Each record holds ``response_0``/``response_1`` and two decoupled labels:
    ``better_response_id`` (helpfulness) and ``safer_response_id`` (harmlessness).
    ``options["preference"]``: ``"agree"`` (default) keeps the records whose two labels
    agree, as a pair serving helpfulness and harmlessness (the others count as
    ``conflict``); ``"better"`` uses the helpfulness label (pairs tagged helpfulness),
    ``"safer"`` the harmlessness label (pairs tagged harmlessness).
    """
    pref = ctx.options.get("preference", "agree")
    if pref not in _PKU_PREFERENCES:
        raise ValueError(f"{ctx.source}: options.preference must be one of {list(_PKU_PREFERENCES)}, got {pref!r}")
    key, dims = _PKU_PREFERENCES[pref]
    f_prompt = ctx.fields.get("prompt") or "prompt"
    labels = ["better_response_id", "safer_response_id"] if key is None else [key]
    need = [f_prompt, "response_0", "response_1"] + labels
    pairs, drops = [], Counter()
    for i, r in enumerate(records):
        require_fields(r, need, ctx.source, i, "PKU-SafeRLHF layout")
        if key is None:
            better, safer = _number(r["better_response_id"]), _number(r["safer_response_id"])
            if better != safer:
                drops["conflict"] += 1
                continue
            win = better
        else:
            win = _number(r[key])
        if win not in (0.0, 1.0):
            drops["no_preference"] += 1
            continue
        w = int(win)
        pairs.append(_pair(r[f_prompt], r[f"response_{w}"], r[f"response_{1 - w}"], ctx, i, dims))
    return pairs, dict(drops)


def convert_nectar(records: List[dict], ctx: ConvertContext) -> Tuple[List[dict], Dict[str, int]]:
    """Nectar's 7-wise GPT-4 ranking -> one pair per prompt.

    The prompt is an Anthropic-HH transcript (``"\\n\\nHuman: ...\\n\\nAssistant:"``),
    ``answers`` a list of {answer, model, rank} (rank 1 = best, ranked for helpfulness
    and harmlessness). chosen = the best-ranked answer; rejected =
    ``options["rejected"]``: ``"worst"`` (default, the worst-ranked), ``"random"`` (a
    random lower-ranked one, seeded per record) or an int rank. Ties count as ``tie``.
    """
    mode = ctx.options.get("rejected", "worst")
    f_prompt = ctx.fields.get("prompt") or "prompt"
    f_ans = ctx.fields.get("answers") or "answers"
    pairs, drops = [], Counter()
    for i, r in enumerate(records):
        require_fields(r, [f_prompt, f_ans], ctx.source, i, "Nectar layout")
        ranked = sorted(((_number(a.get("rank")), j, a.get("answer")) for j, a in enumerate(r[f_ans] or ())
                         if _number(a.get("rank")) is not None), key=lambda t: (t[0], t[1]))
        if len(ranked) < 2:
            drops["single_response"] += 1
            continue
        best = ranked[0]
        lower = [t for t in ranked if t[0] > best[0]]
        if not lower:
            drops["tie"] += 1
            continue
        if mode == "worst":
            rej = lower[-1]
        elif mode == "random":
            rej = random.Random(f"{ctx.seed}/{i}").choice(lower)
        else:
            match = [t for t in lower if t[0] == float(mode)]
            if not match:
                drops["no_such_rank"] += 1
                continue
            rej = match[0]
        prompt = as_messages(r[f_prompt], "user", ctx.source, i, f_prompt)
        pairs.append(_pair(prompt, best[2], rej[2], ctx, i))
    return pairs, dict(drops)


def _orca_recommended(records: List[dict]) -> Tuple[List[dict], int]:
    """The filter the Distilabel-Orca card recommends: no ties, chosen_score >= 8, not in
    GSM8K's train split."""
    keep = [r for r in records if r.get("status") != "tie" and (_number(r.get("chosen_score")) or 0) >= 8
            and not r.get("in_gsm8k_train")]
    return keep, len(records) - len(keep)


def convert_orca(records: List[dict], ctx: ConvertContext) -> Tuple[List[dict], Dict[str, int]]:
    """Distilabel-Orca: system/input/chosen/rejected strings; with
    ``options["recommended_filter"]`` the card's filter is applied first."""
    drops = {}
    if ctx.options.get("recommended_filter"):
        for i, r in enumerate(records):
            require_fields(r, ["status", "chosen_score", "in_gsm8k_train"], ctx.source, i, "recommended_filter")
        records, n = _orca_recommended(records)
        drops["card_filter"] = n
    pairs, _ = convert_fields(records, ctx)
    return pairs, drops


def convert_lions(records: List[dict], ctx: ConvertContext) -> Tuple[List[dict], Dict[str, int]]:
    """The LIONS layout (Yu et al. 2024b, ``Columbia-NLP/DPO-*``): ``chosen`` and
    ``rejected`` are lists of {content, role} messages holding the whole conversation
    (``messages`` repeats ``chosen``), ``prompt`` the first user turn, ``prompt_id`` its
    SHA-256, ``score_chosen``/``score_rejected`` on a 1-10 scale. The pair's prompt is the
    two conversations' common prefix (:func:`~r3h.data.preference.normalize_record`); a
    record whose chosen or rejected is not a list of messages is an error (the layout
    changed), never a silent plain-text pair."""
    f_chosen, f_rejected = ctx.fields.get("chosen") or "chosen", ctx.fields.get("rejected") or "rejected"
    for i, r in enumerate(records):
        for f in (f_chosen, f_rejected):
            if not isinstance(r.get(f), (list, tuple)):
                raise ValueError(f"{ctx.source}: record {i}, field {f!r} is a {type(r.get(f)).__name__}, not a list of "
                                 "{content, role} messages as in the LIONS layout (Columbia-NLP/DPO-*); for another "
                                 f"layout use the '{ctx.source}_upstream' source or fields={{...}}")
    return convert_fields(records, ctx)


# --------------------------------------------------------------------------- registry

_UNCONFIRMED = ("The paper's Table 1 size and dimension assignment could not be checked offline; "
                "dimensions follow the dataset card.")


_LIONS_CARD = ("LIONS' reformatting (Yu et al. 2024b, arXiv 2407.06542), which the paper's Table 1 cites for this "
               "dataset; layout and split from the dataset card at https://huggingface.co/datasets/{hub}. ")


def _lions(name: str, title: str, dataset: str, dimensions: Tuple[str, ...], how: str, split: str = "train",
           unconfirmed: str = "") -> PreferenceSource:
    hub = f"Columbia-NLP/{dataset}"
    return PreferenceSource(
        name=name, title=title, hub_id=hub, split=split, dimensions=dimensions, fields={"id": "prompt_id"},
        converter=convert_lions, required=("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
        note=_LIONS_CARD.format(hub=hub) + how + (" Unconfirmed: " + unconfirmed if unconfirmed else "")
        + f" The raw upstream dataset, converted by r3h, is '{name}_upstream'.")


#: The seven datasets of Table 1 that cite LIONS (Yu et al. 2024b), as LIONS published them.
LIONS_SOURCES: List[PreferenceSource] = [
    _lions("helpsteer", "HelpSteer", "DPO-HelpSteer", ("helpfulness",),
           "nvidia/HelpSteer's four responses per prompt scored on [1, 10] as mean(helpfulness+1, correctness+1, "
           "coherence+1, complexity+1, 4-verbosity)*2; chosen = the best, rejected = a random lower-scored one; "
           "prompts whose responses all tie skipped. Splits train (8,722) and validation (443)."),
    _lions("py_dpo", "Py-DPO", "DPO-py-dpo-v0.1", ("helpfulness",),
           "jondurbin/py-dpo-v0.1 in the common layout.",
           unconfirmed="the split name ('train') and the size were not on a card read offline (its predecessor "
                       "when2rl/py-dpo-v0.1_reformatted has one 'train' split of 9,466)."),
    _lions("distilabel_orca", "Distilabel-Orca", "DPO-distilabel-intel-orca-dpo-pairs_cleaned", ("helpfulness",),
           "argilla/distilabel-intel-orca-dpo-pairs without the 42 unrated rows and the rows whose chosen equals "
           "rejected, with the system/assistant roles of the original fixed; the system prompt is the first message. "
           "One 'train' split."),
    _lions("distilabel_capybara", "Distilabel-Capybara", "DPO-distilabel-capybara-dpo-7k-binarized", ("helpfulness",),
           "argilla/distilabel-capybara-dpo-7k-binarized with ratings rescaled from [1, 5] to [1, 10] and the rows "
           "whose chosen equals rejected removed; multi-turn. One 'train' split (7,562)."),
    _lions("ultrafeedback", "UltraFeedback", "DPO-UltraFeedback_binarized", ("helpfulness", "honesty"),
           "UltraFeedback binarised in the ultrafeedback_binarized layout; the preference split is 'train_prefs' "
           "(LIONS' own scripts read it, Columbia-NLP-Lab/LionAlignment), 'test_prefs' the held-out one.",
           split="train_prefs", unconfirmed="the card's other_info fields and sizes were not read offline."),
    _lions("pku_saferlhf", "PKU-SafeRLHF", "DPO-PKU-SafeRLHF", ("helpfulness", "harmlessness"),
           "PKU-Alignment/PKU-SafeRLHF as pairs, with other_info.is_chosen_safe / is_rejected_safe. Splits train "
           "(122,274) and test (14,047). LIONS' own DPO mix takes 10% of it."),
    _lions("nectar", "Nectar", "DPO-Nectar", ("helpfulness", "harmlessness"),
           "berkeley-nest/Nectar's 7-wise rankings as pairs: the top-ranked answer chosen, one of the bottom three "
           "at random rejected; scores are placeholders (10 and 1). One 'train' split (182,954)."),
]

_OTHER_SOURCES: List[PreferenceSource] = [
    PreferenceSource(
        name="helpsteer_upstream", title="HelpSteer (upstream)", hub_id="nvidia/HelpSteer", dimensions=("helpfulness",),
        converter=convert_helpsteer, required=("prompt", "response"),
        options={"attribute": "helpfulness", "min_gap": 1},
        note="Ratings, not pairs: one pair per prompt, highest vs lowest helpfulness (gap >= 1). The paper names "
             "HelpSteer (not HelpSteer2, whose layout is the same and loads with hub_id='nvidia/HelpSteer2'); how "
             "the paper binarised it is not stated in what could be read offline. " + _UNCONFIRMED),
    PreferenceSource(
        name="py_dpo_upstream", title="Py-DPO (upstream)", hub_id="jondurbin/py-dpo-v0.1", dimensions=("helpfulness",),
        required=("prompt", "chosen", "rejected"),
        note="prompt/chosen/rejected strings (and id). Field names taken from the author's sibling dataset "
             "truthy-dpo-v0.1; not confirmed from this card offline. " + _UNCONFIRMED),
    PreferenceSource(
        name="distilabel_orca_upstream", title="Distilabel-Orca (upstream)", hub_id="argilla/distilabel-intel-orca-dpo-pairs",
        dimensions=("helpfulness",), fields={"prompt": "input", "system": "system"}, converter=convert_orca,
        required=("prompt", "chosen", "rejected"), options={"recommended_filter": False},
        note="system/input/chosen/rejected strings (card: 12,859 rows). options.recommended_filter=True applies "
             "the card's filter (status != 'tie', chosen_score >= 8, not in_gsm8k_train); off by default because "
             "the paper's use of it is unknown. " + _UNCONFIRMED),
    PreferenceSource(
        name="distilabel_capybara_upstream", title="Distilabel-Capybara (upstream)", hub_id="argilla/distilabel-capybara-dpo-7k-binarized",
        dimensions=("helpfulness",), required=("chosen", "rejected"),
        note="chosen/rejected are whole (multi-turn) conversations; their common prefix is the prompt. "
             + _UNCONFIRMED),
    PreferenceSource(
        name="ultrasafety", title="UltraSafety", hub_id="openbmb/UltraSafety", dimensions=("harmlessness",),
        converter=convert_ultrasafety, required=("prompt", "completions"),
        options={"attribute": "harmlessness", "tie_break": "helpfulness"},
        note="Rated completions, not pairs: one pair per prompt, highest vs lowest harmlessness rating. The user "
             "turn is the 'prompt' field (the card also has 'instruction'; which one the completions answer was "
             "not confirmed offline: fields={'prompt': 'instruction'} switches). " + _UNCONFIRMED),
    PreferenceSource(
        name="truthy_dpo", title="Truthy-DPO-v0.1", hub_id="jondurbin/truthy-dpo-v0.1", dimensions=("honesty",),
        required=("prompt", "chosen", "rejected"),
        note="id/source/system/prompt/chosen/rejected strings. " + _UNCONFIRMED),
    PreferenceSource(
        name="grath", title="GRATH", hub_id="weixinchen/GRATH", config="llama2_7b", split="pretrained_gen",
        dimensions=("honesty",), fields={"prompt": "question", "chosen": "correct", "rejected": "incorrect"},
        required=("prompt", "chosen", "rejected"),
        note="question/correct/incorrect (GRATH, Chen et al. 2024). The hub dataset has configs llama2_7b, "
             "llama2_13b, zephyr_7b and splits pretrained_gen / selftruth_gen; which one the paper used is "
             "unknown (default: llama2_7b / pretrained_gen). " + _UNCONFIRMED),
    PreferenceSource(
        name="ultrafeedback_upstream", title="UltraFeedback (upstream)", hub_id="argilla/ultrafeedback-binarized-preferences-cleaned",
        dimensions=("helpfulness", "honesty"), required=("chosen", "rejected"),
        note="Argilla's binarisation by the mean of UltraFeedback's aspect ratings (helpfulness, honesty, "
             "truthfulness, instruction following), TruthfulQA prompts removed; chosen/rejected are conversations. "
             "Chosen over openbmb/UltraFeedback (raw ratings, no pairs) and HuggingFaceH4/ultrafeedback_binarized "
             "(binarised by the critique's overall score); the paper's choice is unknown. " + _UNCONFIRMED),
    PreferenceSource(
        name="pku_saferlhf_upstream", title="PKU-SafeRLHF (upstream)", hub_id="PKU-Alignment/PKU-SafeRLHF",
        dimensions=("helpfulness", "harmlessness"), converter=convert_pku_saferlhf,
        required=("prompt", "response_0", "response_1"), options={"preference": "agree"},
        note="Two responses with a helpfulness label (better_response_id) and a harmlessness label "
             "(safer_response_id). options.preference: 'agree' (default, records whose labels agree), 'better' or "
             "'safer'. " + _UNCONFIRMED),
    PreferenceSource(
        name="nectar_upstream", title="Nectar (upstream)", hub_id="berkeley-nest/Nectar", dimensions=("helpfulness", "harmlessness"),
        converter=convert_nectar, required=("prompt", "answers"), options={"rejected": "worst"},
        note="7-wise GPT-4 ranking for helpfulness and harmlessness -> best vs worst ranked answer "
             "(options.rejected: 'worst' | 'random' | a rank). " + _UNCONFIRMED),
]

#: The ten datasets of the paper's Table 1, in its order: the seven LIONS copies and
#: UltraSafety, Truthy-DPO and GRATH (which Table 1 does not attribute to LIONS).
PAPER_SOURCES = ("helpsteer", "py_dpo", "distilabel_orca", "distilabel_capybara", "ultrasafety", "truthy_dpo", "grath",
                 "ultrafeedback", "pku_saferlhf", "nectar")
_ALL = {s.name: s for s in LIONS_SOURCES + _OTHER_SOURCES}
REGISTRY: Dict[str, PreferenceSource] = {n: _ALL[n] for n in PAPER_SOURCES}
REGISTRY.update({n: s for n, s in _ALL.items() if n not in REGISTRY})  # the raw upstream alternatives


_BUILT_IN = frozenset(REGISTRY)


def register_source(source: PreferenceSource) -> PreferenceSource:
    """Add a dataset to the registry under ``source.name`` (a package registers its own:
    ``import r3h.toy`` registers the toy datasets). Registering a name again replaces that
    registration; the built-in sources cannot be replaced (ValueError)."""
    if not isinstance(source, PreferenceSource):
        raise TypeError(f"register_source: expected a PreferenceSource, got {type(source).__name__}")
    if source.name in _BUILT_IN:
        raise ValueError(f"register_source: {source.name!r} is a built-in source and cannot be replaced")
    REGISTRY[source.name] = source
    return source


def list_sources() -> List[str]:
    """Every registered name: the ten datasets of Table 1 (PAPER_SOURCES), the raw upstream
    alternatives (``*_upstream``), then the registered ones (the toy datasets after
    ``import r3h.toy``)."""
    return list(REGISTRY)


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def get_source(name: str) -> PreferenceSource:
    """The registered source `name` (case and '-'/'_' insensitive: "Truthy-DPO" works);
    an unknown name raises a ValueError listing the known ones, with a close match."""
    key = _key(name)
    if key in REGISTRY:
        return REGISTRY[key]
    known = list_sources()
    aliases = {_key(s.title): s.name for s in REGISTRY.values() if s.title}
    if key in aliases:
        return REGISTRY[aliases[key]]
    close = difflib.get_close_matches(key, known + list(aliases), n=1, cutoff=0.6)
    hint = f"; did you mean {aliases.get(close[0], close[0])!r}?" if close else ""
    toy = "" if "toy_helpsteer" in REGISTRY else " (the toy datasets toy_* register with `import r3h.toy`)"
    raise ValueError(f"unknown preference dataset {name!r}{hint} Known: {', '.join(known)}{toy}")


# --------------------------------------------------------------------------- loading

_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _builder_for(path: str, source: str) -> str:
    lower = path.lower()
    for ext, builder in _LOCAL_BUILDERS.items():
        if lower.endswith(ext) or lower.endswith(ext + ".gz"):
            return builder
    raise ValueError(f"{source}: cannot read {path}: expected a .json, .jsonl, .parquet or .csv file (or a folder)")


def read_raw_records(source: str, *, path: Optional[str] = None, hub_id: Optional[str] = None,
                     config: Optional[str] = None, split: str = "train", revision: Optional[str] = None) -> List[dict]:
    """The raw records of a dataset, through the `datasets` library: a local file
    (json/jsonl/parquet/csv; its one split), a local folder in the hub layout (its
    README configs and split names, as ``datasets.load_dataset(folder, config, split=)``)
    or the hub."""
    if path is not None:
        path = os.path.expanduser(str(path))
        if os.path.isfile(path):
            return load_records(source, _builder_for(path, source), split="train", data_files=[path])
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{source}: data path {path} does not exist")
        import datasets

        try:
            ds = datasets.load_dataset(path, config, split=split)
        except Exception as e:
            raise RuntimeError(f"{source}: cannot load the folder {path} (config={config!r}, split={split!r}): "
                               f"{type(e).__name__}: {e}") from e
        return [dict(r) for r in ds]
    if not hub_id:
        raise ValueError(f"{source}: no path and no hub id to load from")
    return load_records(source, hub_id, name=config, split=split, revision=revision)


_SPEC_KEYS = {"name", "path", "split", "limit", "fields", "dimensions", "config", "revision", "options", "seed",
              "hub_id", "on_invalid"}


def _resolve(spec: Union[str, Mapping]) -> Tuple[PreferenceSource, dict]:
    if isinstance(spec, str):
        return get_source(spec), {}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"a preference data spec is a registry name or a mapping with a 'name', got {spec!r}")
    spec = dict(spec)
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"{spec['name']}: unknown spec key(s) {sorted(unknown)}; known: {sorted(_SPEC_KEYS)}")
    try:
        src = get_source(spec["name"])
    except ValueError:
        if not ((spec.get("path") or spec.get("hub_id")) and spec.get("dimensions")):
            raise
        # a dataset of one's own, in the plain layout: needs a path (or hub id) and dimensions
        src = PreferenceSource(name=str(spec["name"]), dimensions=tuple(spec["dimensions"]),
                               required=(), note="user dataset")
    return src, spec


def _settings(src: PreferenceSource, opts: Mapping, limit, on_invalid):
    limit = limit if limit is not None else opts.get("limit")
    on_invalid = on_invalid or opts.get("on_invalid") or "drop"
    if on_invalid not in ("drop", "error"):
        raise ValueError(f"{src.name}: on_invalid must be 'drop' or 'error', got {on_invalid!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"{src.name}: limit must be a non-negative int, got {limit!r}")
    return limit, on_invalid


def _convert(src: PreferenceSource, opts: Mapping, records: List[dict], limit, on_invalid
             ) -> Tuple[List[dict], Dict[str, int]]:
    dims = check_dimensions(opts.get("dimensions") or src.dimensions, src.name)
    fields = {**DEFAULT_FIELDS, **dict(src.fields), **dict(opts.get("fields") or {})}
    options = {**dict(src.options), **dict(opts.get("options") or {})}
    if records:  # eager check of the first record, before any work on the dataset
        require_fields(records[0], [fields.get(k) or k for k in src.required], src.name, 0,
                       "a field this dataset's layout needs")
    ctx = ConvertContext(source=src.name, dimensions=dims, fields=fields, options=options,
                         seed=int(opts.get("seed", 0)))
    pairs, drops = (src.converter or convert_fields)(records, ctx)
    kept, vcounts = validate_pairs(pairs, src.name, on_invalid)
    over = 0
    if limit is not None and len(kept) > limit:
        over, kept = len(kept) - limit, kept[:limit]
    counts = {"records": len(records), "converted": len(pairs), **drops,
              **{k: v for k, v in vcounts.items() if k != "kept"}, "over_limit": over, "kept": len(kept)}
    return kept, counts


def convert_records(spec: Union[str, Mapping], records: List[dict], *, limit: Optional[int] = None,
                    on_invalid: Optional[str] = None) -> Tuple[List[dict], Dict[str, int]]:
    """(pairs, counts) of raw `records` (plain dicts in the dataset's own layout), as
    :func:`load_preference_data` makes them once the records are read."""
    src, opts = _resolve(spec)
    limit, on_invalid = _settings(src, opts, limit, on_invalid)
    return _convert(src, opts, list(records), limit, on_invalid)


def load_preference_data(spec: Union[str, Mapping], *, path: Optional[str] = None, split: Optional[str] = None,
                         limit: Optional[int] = None, on_invalid: Optional[str] = None
                         ) -> Tuple[List[dict], Dict[str, int]]:
    """(pairs, counts) of one dataset.

    `spec` is a registry name or a mapping ``{name, path, split, limit, fields,
    dimensions, config, revision, options, seed, hub_id, on_invalid}`` (keyword
    arguments win over the mapping). A name outside the registry is accepted only with a
    `path` (or `hub_id`) and `dimensions`, as a plain prompt/chosen/rejected dataset.

    The records are read (:func:`read_raw_records`; a source with a builder, such as the toy's, is built), the
    first one is checked for the fields the layout needs before anything else, then
    every record is converted (the source's converter) and validated
    (:func:`~r3h.data.preference.validate_pairs`). `limit` keeps the first `limit` valid
    pairs. counts = {"records": raw records, "converted": pairs made, <converter drop
    reasons>, "empty_prompt", "empty_response", "identical", "over_limit", "kept"}.

    Files are read with the `datasets` library, which gives every record every column
    of the file: a field that only some records lack reads as None there (an empty
    response or prompt, dropped and counted), while a field the file lacks altogether
    raises the missing-field error.
    """
    src, opts = _resolve(spec)
    limit, on_invalid = _settings(src, opts, limit, on_invalid)
    path = path if path is not None else opts.get("path")
    if src.builder is not None and path is None:
        records = src.builder(int(opts.get("seed", 0)))
    else:
        records = read_raw_records(src.name, path=path, hub_id=opts.get("hub_id") or src.hub_id,
                                   config=opts.get("config", src.config), split=split or opts.get("split") or src.split,
                                   revision=opts.get("revision"))
    return _convert(src, opts, records, limit, on_invalid)
