"""The three data-mixture baselines of the paper's Table 2 (Yang et al., arXiv 2502.06876):
one DPO training set built from the preference datasets of all three dimensions.

* :class:`HeuristicMixture` - all helpfulness data plus a fixed ratio (1/5, 1/10,
  1/20 in the paper) of honesty & harmlessness data;
* :class:`RewardModelSelection` - in the spirit of ArmoRM: keep a pair only if a
  multi-objective reward model prefers chosen to rejected on every objective;
* :class:`HummerSelection` - in the spirit of Hummer (Jiang et al. 2024): leave out the
  datasets whose alignment dimension conflict (ADC) is above a threshold.

Each mixture maps ``{dataset name: [normalised pairs]}`` to ``(pairs, manifest)``, is
deterministic for a seed, and takes plain constructor arguments (Hydra ``_target_``).
:func:`write_mixture` writes ``pairs.jsonl`` and ``manifest.json`` atomically.
``mixture.build(sources, out_dir)`` loads registry datasets, mixes and writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import json
import math
import os
import random
from fractions import Fraction
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from r3h.io.plain import jsonable
from r3h.data.preference import DIMENSIONS
from r3h.io.writer import atomic_output_dir
from r3h.io.records import read_records, write_records

__all__ = [
    "Mixture",
    "HeuristicMixture",
    "RewardModelSelection",
    "HummerSelection",
    "SequenceClassifierScorer",
    "write_mixture",
    "read_mixture",
    "pair_group",
    "even_split",
]

Pairs = List[dict]


# --------------------------------------------------------------------------- helpers


def pair_group(pair: Mapping) -> str:
    """The dimension a pair counts for in the heuristic mixture: ``helpfulness`` when it
    is tagged helpfulness (also with honesty or harmlessness), else ``honesty`` when
    tagged honesty, else ``harmlessness``."""
    dims = pair.get("dimensions") or ()
    for d in DIMENSIONS:
        if d in dims:
            return d
    raise ValueError(f"pair {pair.get('id', '?')} of {pair.get('source', '?')} has no 3H dimension tag "
                     f"(dimensions={list(dims)})")


def even_split(total: int, capacities: Mapping[str, int]) -> Dict[str, int]:
    """Split `total` among the keys as evenly as possible without exceeding any key's
    capacity (water-filling): with the level t the largest integer such that
    ``sum_k min(cap_k, t) <= total``, key k gets ``min(cap_k, t)``, plus one for each of
    the first (in sorted order) keys with ``cap_k > t`` until `total` is reached. The sum
    is less than `total` only when the capacities are."""
    alloc = {k: 0 for k in capacities}
    remaining, open_ = total, sorted(k for k, c in capacities.items() if c > 0)
    while open_:  # keys that cannot take an equal share get all they have
        capped = [k for k in open_ if capacities[k] <= remaining // len(open_)]
        if not capped:
            break
        for k in capped:
            alloc[k] = capacities[k]
            remaining -= capacities[k]
        open_ = [k for k in open_ if k not in capped]
    if open_:
        share, extra = divmod(remaining, len(open_))
        for i, k in enumerate(open_):
            alloc[k] = share + (1 if i < extra else 0)
    return alloc


def _ratio(value) -> Fraction:
    try:
        r = Fraction(str(value).strip()) if isinstance(value, str) else Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"HeuristicMixture: ratio must be a number such as 0.2 or '1/5', got {value!r}") from None
    if r < 0:
        raise ValueError(f"HeuristicMixture: ratio must be >= 0, got {value!r}")
    return r


def _source_entry(available: int, taken: int, reasons: Mapping[str, int], load: Optional[Mapping] = None) -> dict:
    e = {"available": available, "taken": taken, "dropped": available - taken,
         "reasons": {k: v for k, v in reasons.items() if v}}
    if load is not None:
        e["load"] = dict(load)
    return e


def _totals(sources: Mapping[str, Mapping]) -> dict:
    return {k: sum(s[k] for s in sources.values()) for k in ("available", "taken", "dropped")}


def write_mixture(pairs: Sequence[dict], manifest: Mapping, out_dir: str) -> str:
    """Write ``pairs.jsonl`` (one pair a line) and ``manifest.json`` (with the pairs
    file's line count and sha256 added under ``files``) into `out_dir`, atomically: both
    are written into a temporary sibling folder renamed to `out_dir` only when complete,
    so a failure leaves no partial output (and an existing `out_dir` untouched)."""
    manifest = dict(manifest)
    with atomic_output_dir(out_dir) as tmp:
        sha256 = write_records(os.path.join(tmp, "pairs.jsonl"), pairs)
        manifest["files"] = {"pairs.jsonl": {"lines": len(pairs), "sha256": sha256}}
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(jsonable(manifest), f, indent=2, ensure_ascii=False)
    return os.path.abspath(os.path.expanduser(out_dir))


def read_mixture(out_dir: str) -> Tuple[Pairs, dict]:
    """(pairs, manifest) of a folder written by :func:`write_mixture`."""
    with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    pairs = read_records(os.path.join(out_dir, "pairs.jsonl"), strict=True)
    return pairs, manifest


# --------------------------------------------------------------------------- base


class Mixture(ABC):
    """Base class: ``mixture(datasets, load_counts=None) -> (pairs, manifest)``."""

    method = "mixture"
    seed: Optional[int] = None

    @abstractmethod
    def options(self) -> dict:
        """The mixture's options, as recorded in its manifest."""

    @abstractmethod
    def __call__(self, datasets: Mapping[str, Pairs], load_counts: Optional[Mapping[str, Mapping]] = None
                 ) -> Tuple[Pairs, dict]:
        """Mix `datasets` (name -> normalised pairs) into (pairs, manifest)."""

    def _manifest(self, sources: dict, totals: dict) -> dict:
        from r3h import __version__

        return {"method": self.method, "options": jsonable(self.options()), "seed": self.seed,
                "sources": sources, "totals": totals, "r3h_version": __version__}

    def build(self, sources: Union[Sequence, Mapping], out_dir: Optional[str] = None, on_invalid: str = "drop"
              ) -> Tuple[Pairs, dict]:
        """Load `sources` (registry names or specs, see
        :func:`~r3h.data.registry.load_preference_data`; a mapping name -> spec also
        works), mix them, and write to `out_dir` when given."""
        from r3h.data.registry import load_preference_data

        items = list(sources.items()) if isinstance(sources, Mapping) else [
            (s if isinstance(s, str) else s["name"], s) for s in sources]
        datasets, counts = {}, {}
        for name, spec in items:
            if isinstance(spec, Mapping) and "name" not in spec:
                spec = {**spec, "name": name}
            pairs, c = load_preference_data(spec, on_invalid=on_invalid)
            if name in datasets:
                raise ValueError(f"{self.method}: dataset {name!r} is listed twice")
            datasets[name], counts[name] = pairs, c
        pairs, manifest = self(datasets, load_counts=counts)
        if out_dir is not None:
            write_mixture(pairs, manifest, out_dir)
        return pairs, manifest


# --------------------------------------------------------------------------- heuristic


class HeuristicMixture(Mixture):
    """All helpfulness data plus honesty & harmlessness data in a fixed ratio (Table 2's
    "3H Mixture (Heuristic)"; the paper uses 1/5, 1/10 and 1/20).

    Definition. Each pair counts for one dimension (:func:`pair_group`): a pair tagged
    helpfulness - alone or with honesty/harmlessness, as UltraFeedback's and
    PKU-SafeRLHF's - is helpfulness data and is always taken in full. With
    N_help = the number of helpfulness pairs, the honesty & harmlessness budget is
    ``floor(ratio * N_help)``, split evenly between honesty and harmlessness (honesty
    gets the odd one), and within a dimension evenly across its datasets (a dataset
    that is short leaves its rest to the others, :func:`even_split`); each dataset's share
    is sampled without replacement, seeded by ``(seed, dataset)``.

    When a dimension has fewer pairs than its share: ``on_short="error"`` raises a
    ValueError naming the dimension, the number asked and the number available;
    ``"clip"`` takes them all and records the shortfall in the manifest. The result is
    shuffled with `seed` when `shuffle`.
    """

    method = "heuristic"

    def __init__(self, ratio: Union[float, str] = 0.2, seed: int = 0, on_short: str = "error", shuffle: bool = True):
        if on_short not in ("error", "clip"):
            raise ValueError(f"HeuristicMixture: on_short must be 'error' or 'clip', got {on_short!r}")
        self.ratio = _ratio(ratio)
        self.seed = int(seed)
        self.on_short = on_short
        self.shuffle = bool(shuffle)

    def options(self) -> dict:
        return {"ratio": self.ratio, "on_short": self.on_short, "shuffle": self.shuffle}

    def __call__(self, datasets: Mapping[str, Pairs], load_counts: Optional[Mapping[str, Mapping]] = None
                 ) -> Tuple[Pairs, dict]:
        groups: Dict[str, Dict[str, Pairs]] = {d: {} for d in DIMENSIONS}  # dimension -> dataset -> pairs
        for name, pairs in datasets.items():
            for p in pairs:
                groups[pair_group(p)].setdefault(name, []).append(p)
        n_help = sum(len(v) for v in groups["helpfulness"].values())
        budget = math.floor(self.ratio * n_help)
        asked = dict(zip(("honesty", "harmlessness"), (budget - budget // 2, budget // 2)))
        taken: Dict[str, Dict[str, Pairs]] = {"helpfulness": dict(groups["helpfulness"])}
        shortfall = {}
        for dim in ("honesty", "harmlessness"):
            caps = {name: len(p) for name, p in groups[dim].items()}
            available = sum(caps.values())
            if asked[dim] > available:
                if self.on_short == "error":
                    raise ValueError(
                        f"HeuristicMixture: ratio {jsonable(self.ratio)} of {n_help} helpfulness pairs asks for "
                        f"{asked[dim]} {dim} pairs, but only {available} are available "
                        f"(datasets: {caps or 'none'}); lower the ratio or pass on_short='clip'")
                shortfall[dim] = asked[dim] - available
            alloc = even_split(asked[dim], caps)
            taken[dim] = {name: self._sample(name, groups[dim][name], k) for name, k in alloc.items()}

        sources = {}
        out: Pairs = []
        for name, pairs in datasets.items():
            got = [p for dim in DIMENSIONS for p in taken[dim].get(name, [])]
            out += got
            sources[name] = _source_entry(len(pairs), len(got), {"not_sampled": len(pairs) - len(got)},
                                          (load_counts or {}).get(name))
            sources[name]["by_dimension"] = {d: {"available": len(groups[d].get(name, [])),
                                                 "taken": len(taken[d].get(name, []))}
                                             for d in DIMENSIONS if groups[d].get(name)}
        if self.shuffle:
            random.Random(self.seed).shuffle(out)
        totals = _totals(sources)
        totals["by_dimension"] = {d: {"available": sum(len(v) for v in groups[d].values()),
                                      "asked": n_help if d == "helpfulness" else asked[d],
                                      "taken": sum(len(v) for v in taken[d].values()),
                                      "shortfall": shortfall.get(d, 0)} for d in DIMENSIONS}
        totals["helpfulness_pairs"] = n_help
        totals["budget"] = budget
        return out, self._manifest(sources, totals)

    def _sample(self, name: str, pairs: Pairs, k: int) -> Pairs:
        if k >= len(pairs):
            return list(pairs)
        rng = random.Random(f"{self.seed}/{name}")
        idx = sorted(rng.sample(range(len(pairs)), k))
        return [pairs[i] for i in idx]


# --------------------------------------------------------------------------- scorers


class SequenceClassifierScorer:
    """A multi-objective reward model: any ``AutoModelForSequenceClassification`` with
    ``num_labels == len(objectives)``, one logit per objective.

    ``scorer(prompts, responses)`` renders each ``prompt + response`` conversation with
    the tokenizer's chat template, tokenises it (no extra special tokens, truncated from
    the left to `max_length` so the response is kept), runs the model in batches of
    `batch_size` and returns the logits, a float tensor [n, len(objectives)] on the CPU.
    `output` names the model output to read (``logits``; ArmoRM-style remote code models
    expose e.g. ``rewards``). The config is read at construction (a num_labels
    mismatch fails at once); the weights load on first use.
    """

    def __init__(self, model: str, objectives: Sequence[str], batch_size: int = 8, device: str = "cpu",
                 max_length: int = 1024, tokenizer: Optional[str] = None, dtype: Optional[str] = None,
                 output: str = "logits", trust_remote_code: bool = False):
        from transformers import AutoConfig

        self.model_name = os.fspath(model)
        self.objectives = [str(o) for o in objectives]
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"{self.model_name}: objectives must be distinct names, got {list(objectives)}")
        self.batch_size, self.device, self.max_length = int(batch_size), device, int(max_length)
        self.tokenizer_name = os.fspath(tokenizer) if tokenizer is not None else self.model_name
        self.dtype, self.output, self.trust_remote_code = dtype, output, trust_remote_code
        config = AutoConfig.from_pretrained(self.model_name, trust_remote_code=trust_remote_code)
        n = getattr(config, "num_labels", None)
        if n != len(self.objectives):
            raise ValueError(f"{self.model_name}: the reward model has num_labels={n} outputs but "
                             f"{len(self.objectives)} objectives were named ({self.objectives}); "
                             f"name one objective per output")
        self.model = None
        self.tokenizer = None

    def load(self) -> "SequenceClassifierScorer":
        if self.model is not None:
            return self
        import transformers
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.tokenizer_name, trust_remote_code=self.trust_remote_code)
        if not getattr(tok, "chat_template", None):
            raise ValueError(f"{self.tokenizer_name}: the tokenizer has no chat template to render conversations")
        tok.truncation_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        kwargs = {"trust_remote_code": self.trust_remote_code}
        if self.dtype is not None:
            major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
            dtype = getattr(torch, self.dtype) if isinstance(self.dtype, str) else self.dtype
            kwargs["dtype" if major_minor >= (4, 56) else "torch_dtype"] = dtype
        model = AutoModelForSequenceClassification.from_pretrained(self.model_name, **kwargs)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tok.pad_token_id
        self.model, self.tokenizer = model.to(self.device).eval(), tok
        return self

    def render(self, prompt: Sequence[dict], response: Sequence[dict]) -> str:
        return self.tokenizer.apply_chat_template(list(prompt) + list(response), tokenize=False)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Sequence[dict]], responses: Sequence[Sequence[dict]]) -> torch.Tensor:
        if len(prompts) != len(responses):
            raise ValueError(f"{self.model_name}: {len(prompts)} prompts but {len(responses)} responses")
        self.load()
        texts = [self.render(p, r) for p, r in zip(prompts, responses)]
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], add_special_tokens=False, padding=True,
                                 truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
            scores = getattr(self.model(**enc), self.output)
            out.append(scores.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.objectives))


def _make_scorer(scorer):
    if isinstance(scorer, Mapping):  # a plain config: {"model": ..., "objectives": [...], ...}
        return SequenceClassifierScorer(**scorer)
    if not callable(scorer) or not hasattr(scorer, "objectives"):
        raise ValueError("scorer must be callable (prompts, responses) -> tensor [n, n_objectives] with an "
                         f"`objectives` list, or a mapping of SequenceClassifierScorer arguments; got {scorer!r}")
    return scorer


def _score(scorer, pairs: Pairs, which: str, source: str) -> torch.Tensor:
    s = scorer([p["prompt"] for p in pairs], [p[which] for p in pairs])
    s = torch.as_tensor(s, dtype=torch.float32)
    if s.shape != (len(pairs), len(scorer.objectives)):
        raise ValueError(f"{source}: the scorer returned scores of shape {tuple(s.shape)} for {len(pairs)} "
                         f"{which} responses; expected ({len(pairs)}, {len(scorer.objectives)}) "
                         f"(objectives {list(scorer.objectives)})")
    return s


# --------------------------------------------------------------------------- reward-model selection


class RewardModelSelection(Mixture):
    """Keep a pair only when a multi-objective reward model agrees with it on every
    objective (Table 2's "3H Mixture (ArmoRM)", in the spirit of ArmoRM, Wang et al.
    2024): with s(.) the scorer's objective scores, keep (x, y_c, y_r) iff
    ``s_j(x, y_c) >= s_j(x, y_r) + margin`` for every objective j in `objectives`
    (default: all of the scorer's). Pairs keep their dataset order.

    Manifest: per dataset available / kept / dropped and, per objective, how many pairs
    failed it (a pair may fail several).
    """

    method = "reward_model"

    def __init__(self, scorer, objectives: Optional[Sequence[str]] = None, margin: float = 0.0):
        self.scorer = _make_scorer(scorer)
        known = list(self.scorer.objectives)
        self.objectives = list(objectives) if objectives else known
        bad = [o for o in self.objectives if o not in known]
        if bad:
            raise ValueError(f"RewardModelSelection: objective(s) {bad} are not among the scorer's objectives {known}")
        self.margin = float(margin)

    def options(self) -> dict:
        return {"objectives": self.objectives, "margin": self.margin,
                "scorer": getattr(self.scorer, "model_name", type(self.scorer).__name__),
                "scorer_objectives": list(self.scorer.objectives)}

    def __call__(self, datasets: Mapping[str, Pairs], load_counts: Optional[Mapping[str, Mapping]] = None
                 ) -> Tuple[Pairs, dict]:
        cols = [list(self.scorer.objectives).index(o) for o in self.objectives]
        out, sources = [], {}
        failed_total = {o: 0 for o in self.objectives}
        for name, pairs in datasets.items():
            failed = {o: 0 for o in self.objectives}
            keep = []
            if pairs:
                diff = _score(self.scorer, pairs, "chosen", name) - _score(self.scorer, pairs, "rejected", name)
                ok = diff[:, cols] >= self.margin
                keep = [p for p, k in zip(pairs, ok.all(dim=1).tolist()) if k]
                failed = {o: int((~ok[:, j]).sum()) for j, o in enumerate(self.objectives)}
            out += keep
            sources[name] = _source_entry(len(pairs), len(keep), {"below_margin": len(pairs) - len(keep)},
                                          (load_counts or {}).get(name))
            sources[name]["failed_by_objective"] = failed
            for o in failed:
                failed_total[o] += failed[o]
        totals = _totals(sources)
        totals["failed_by_objective"] = failed_total
        return out, self._manifest(sources, totals)


# --------------------------------------------------------------------------- Hummer


class HummerSelection(Mixture):
    """Leave out the datasets whose preferences conflict with another dimension
    (Table 2's "3H Mixture (Hummer)", in the spirit of Hummer, Jiang et al. 2024).

    Definition. For a dataset D serving the dimensions T(D) (the union of its pairs'
    tags) and each dimension d not in T(D), the conflict
    ``c_d(D) = |{(x, y_c, y_r) in D : s_d(x, y_c) < s_d(x, y_r)}| / |D|`` is the share
    of D's pairs whose preference goes against d's reward; the alignment dimension
    conflict is ``ADC(D) = max_{d not in T(D)} c_d(D)`` (0 when D serves all three).
    D is kept iff ``ADC(D) <= threshold``.

    The scorer's objectives must be named helpfulness / honesty / harmlessness, or
    `objective_map` maps each dimension to an objective name. The manifest lists every
    dataset's conflict per dimension, its ADC and the decision.
    """

    method = "hummer"

    def __init__(self, scorer, threshold: float = 0.2, objective_map: Optional[Mapping[str, str]] = None):
        self.scorer = _make_scorer(scorer)
        self.threshold = float(threshold)
        self.objective_map = {d: d for d in DIMENSIONS}
        if objective_map:
            bad = [d for d in objective_map if d not in DIMENSIONS]
            if bad:
                raise ValueError(f"HummerSelection: objective_map keys must be dimensions {list(DIMENSIONS)}, "
                                 f"got {bad}")
            self.objective_map.update(objective_map)

    def options(self) -> dict:
        return {"threshold": self.threshold, "objective_map": self.objective_map,
                "scorer": getattr(self.scorer, "model_name", type(self.scorer).__name__),
                "scorer_objectives": list(self.scorer.objectives)}

    def _column(self, dim: str) -> int:
        known = list(self.scorer.objectives)
        name = self.objective_map[dim]
        if name not in known:
            raise ValueError(f"HummerSelection: the scorer has no objective for the dimension {dim!r} (looked for "
                             f"{name!r} among {known}); name the objectives helpfulness/honesty/harmlessness or "
                             f"pass objective_map={{'{dim}': '<objective>'}}")
        return known.index(name)

    def __call__(self, datasets: Mapping[str, Pairs], load_counts: Optional[Mapping[str, Mapping]] = None
                 ) -> Tuple[Pairs, dict]:
        served = {name: {d for p in pairs for d in (p.get("dimensions") or ())} for name, pairs in datasets.items()}
        needed = sorted({d for name, pairs in datasets.items() if pairs for d in DIMENSIONS if d not in served[name]},
                        key=DIMENSIONS.index)
        cols = {d: self._column(d) for d in needed}  # fails before any scoring
        out, sources = [], {}
        for name, pairs in datasets.items():
            conflict = {}
            others = [d for d in DIMENSIONS if d not in served[name]]
            if pairs and others:
                diff = _score(self.scorer, pairs, "chosen", name) - _score(self.scorer, pairs, "rejected", name)
                conflict = {d: float((diff[:, cols[d]] < 0).float().mean()) for d in others}
            adc = max(conflict.values()) if conflict else 0.0
            kept = adc <= self.threshold
            take = list(pairs) if kept else []
            out += take
            sources[name] = _source_entry(len(pairs), len(take), {"adc_above_threshold": len(pairs) - len(take)},
                                          (load_counts or {}).get(name))
            sources[name].update({"dimensions": [d for d in DIMENSIONS if d in served[name]],
                                  "conflict": conflict, "adc": adc, "decision": "kept" if kept else "left_out"})
        totals = _totals(sources)
        totals["kept_datasets"] = [n for n, s in sources.items() if s["decision"] == "kept"]
        totals["left_out_datasets"] = [n for n, s in sources.items() if s["decision"] == "left_out"]
        return out, self._manifest(sources, totals)
