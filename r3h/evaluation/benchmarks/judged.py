"""The judged benchmarks' shared machinery (:class:`JudgedBenchmark`): data from the hub
or a local file, field checks, judge lookup, answers and verdicts saved and resumable,
scores with failures counted.

Data: ``path`` = a hub dataset id with ``name``/``split``/``revision``, a ``datasets``
builder such as ``json`` with ``data_files``, or a local JSON / JSONL / CSV file
(``pkg://<package>/<file>`` for data shipped inside a package). :meth:`check` loads the
data, validates the fields (an error names the dataset, the record and the missing field)
and finds the judge, all before any generation. :meth:`run` answers every prompt into
``<output_dir>/<slug>/generations*.jsonl`` (the base's resume rule:
:mod:`r3h.evaluation.benchmarks.base`), has the judge rate every answer into
``<output_dir>/<slug>/verdicts.jsonl`` (:func:`r3h.evaluation.judges.judge_jsonl`) and
scores. Verdicts that do not parse are counted in ``details["verdicts"]`` and never scored.

Judges come from ``ctx.judges``: ``judge=<name>`` picks one by name; without it the
benchmark takes the judge registered under its rubric name (OR-Bench falls back to the
rule-based :class:`~r3h.evaluation.judges.RefusalDetector`, reported in
``details["judge_fallback"]``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from r3h.io.datasets import is_local_file, load_records
from r3h.io.plain import to_container
from r3h.evaluation.benchmarks.base import Benchmark, BenchmarkResult, EvalContext
from r3h.evaluation.judges import (
    Judge,
    JudgeError,
    JudgeRequest,
    RefusalDetector,
    TemplateJudge,
    Verdict,
    judge_jsonl,
    summarize,
)

__all__ = ["DatasetFieldError", "JudgedBenchmark", "first_field", "is_text"]

log = logging.getLogger(__name__)


class DatasetFieldError(ValueError):
    """A dataset lacks a field a benchmark needs (or holds a wrong type)."""


def first_field(record: Mapping, fields: Sequence[str]) -> Optional[str]:
    """The first of ``fields`` that ``record`` holds (not None), else None."""
    for f in fields:
        if f in record and record[f] is not None:
            return f
    return None


def is_text(x) -> bool:
    """A non-empty, not blank string."""
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

    def items(self, ctx: Optional[EvalContext] = None) -> List[dict]:
        """The validated, normalised items (``id``, ``prompt``/``turns``, ``reference``,
        ``category``), loaded once."""
        limit = self.item_limit(ctx)
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
        f = first_field(row, candidates)
        if f is None:
            raise self._missing(i, row, candidates)
        return f

    def _text(self, i: int, row: Mapping, override: Optional[str], fields: Sequence[str]) -> str:
        f = self._field(i, row, override, fields)
        if not is_text(row[f]):
            raise DatasetFieldError(f"{self.dataset} ({self.source}): record {i} field {f!r} must be a "
                                    f"non-empty string, got {row[f]!r:.80}")
        return row[f]

    def _id(self, i: int, row: Mapping) -> str:
        f = self.id_field if self.id_field else first_field(row, self.id_fields)
        if self.id_field and f not in row:
            raise self._missing(i, row, (self.id_field,))
        return str(row[f]) if f is not None else str(i)

    def _category(self, row: Mapping) -> Optional[str]:
        f = first_field(row, self.category_fields)
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
    @property
    def folder_name(self) -> str:
        return self.slug

    def generate(self, ctx: EvalContext, items: List[dict]) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """Answers keyed by item id, and the generation files."""
        records = [{"id": it["id"], "prompt": it["prompt"], "category": it["category"]} for it in items]
        rows = self.answers(ctx, records, "generations.jsonl")
        return {r["id"]: r["response"] for r in rows}, {"generations": os.path.join(self.folder(ctx), "generations.jsonl")}

    def requests(self, items: List[dict], answers: Mapping[str, Any]) -> List[Tuple[str, JudgeRequest]]:
        return [(it["id"], JudgeRequest(prompt=it["prompt"], answer=answers[it["id"]], rubric=self.rubric,
                                        reference=it.get("reference"), id=it["id"])) for it in items]

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        items = self.items(ctx)
        judge, fallback = self.resolve_judge(ctx)
        self._judge_used = judge
        out = self.folder(ctx)
        answers, files = self.generate(ctx, items)
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
