"""Aggregate the 3H benchmark scores the way the paper does, and check the paper's own sums.

The paper (Yang et al., arXiv 2502.06876, Tables 3-5 and appendix Tables 10-12) reports
eleven benchmark numbers per model and four averages:

* ``Helpful_Avg``  = plain mean of the eight helpfulness numbers: Math, GSM8K, ARC-E,
  ARC-C, MMLU, MBPP_Plus, HumanEval_Plus **and MT-Bench on its own 1-10 scale** (it is not
  rescaled to 0-100, which is why it pulls the helpfulness average down);
* ``Honest_Avg``   = HaluEval_Wild (the only honesty benchmark);
* ``Harmless_Avg`` = mean of Salad_Bench and OR-Bench;
* ``AVG``          = mean of the three dimension averages (not of the eleven numbers).

Every number is "higher is better" as the paper reports it: OR-Bench is the answer rate (%
not refused) on its 1,319-prompt hard set of seemingly toxic prompts, counted as harmlessness
(the paper's base rows fit OR-Bench's own answer rates, not its refusal rates; docs/evaluation.md).

Averages are computed from the unrounded benchmark numbers; the paper prints two decimals,
so a reported average reproduces to within ``0.005`` (``check_paper_averages`` allows
``tol=0.01``). With that definition, 66 of the 76 rows of the shipped
``paper_3h_results.csv`` reproduce; 10 rows carry arithmetic that is off (see
``check_paper_averages`` and ``tests/test_aggregate.py`` for the list).

Column names are the CSV's (``BENCHMARKS``, ``AVERAGES``, ``COLUMNS``); the dimensions'
names come from ``r3h.core.dimensions``. The same rule (plain mean per dimension, ``AVG``
the mean of the dimension averages) serves columns that are not the paper's: one
aggregator, ``aggregate_by_dimension``, computes it for the paper's eleven
(``aggregate_3h``), 3h_lite's (``r3h.evaluation.benchmarks.lite.aggregate_lite``) and any task pool's
benchmark -> dimension map.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from r3h.core.dimensions import HARMLESS as _HARMLESS
from r3h.core.dimensions import HELPFUL as _HELPFUL
from r3h.core.dimensions import HONEST as _HONEST
from r3h.core.dimensions import KEYS, OVERALL, THREE_H, dimension

__all__ = [
    "HELPFUL_COLUMNS",
    "HONEST_COLUMNS",
    "HARMLESS_COLUMNS",
    "COLUMNS_BY_DIMENSION",
    "HELPFUL",
    "HONEST",
    "HARMLESS",
    "DIMENSIONS",
    "DIMENSION_AVERAGES",
    "PAPER_DIMENSIONS",
    "BENCHMARKS",
    "AVERAGES",
    "COLUMNS",
    "META_COLUMNS",
    "PAPER_CSV",
    "aggregate_3h",
    "aggregate_by_dimension",
    "benchmark_scores",
    "score_stderr",
    "weighted_stderr",
    "load_paper_results",
    "check_paper_averages",
    "AverageCheck",
    "Mismatch",
]

#: Helpfulness columns, in the CSV's (and the paper's) column order. MT-Bench is on 1-10.
HELPFUL_COLUMNS: Tuple[str, ...] = (
    "Math", "GSM8K", "ARC-E", "ARC-C", "MMLU", "MBPP_Plus", "HumanEval_Plus", "MT-Bench",
)
#: Honesty columns.
HONEST_COLUMNS: Tuple[str, ...] = ("HaluEval_Wild",)
#: Harmlessness columns (OR-Bench: answer rate on the hard-1k set, as the paper reports it).
HARMLESS_COLUMNS: Tuple[str, ...] = ("Salad_Bench", "OR-Bench")

#: Dimension name (``r3h.core.dimensions``: ``Helpfulness`` ...) -> its paper columns.
COLUMNS_BY_DIMENSION: Dict[str, Tuple[str, ...]] = {
    _HELPFUL.name: HELPFUL_COLUMNS,
    _HONEST.name: HONEST_COLUMNS,
    _HARMLESS.name: HARMLESS_COLUMNS,
}
#: The former names of the four above (``r3h.core.dimensions.HELPFUL`` ... are the dimensions themselves).
HELPFUL, HONEST, HARMLESS, DIMENSIONS = HELPFUL_COLUMNS, HONEST_COLUMNS, HARMLESS_COLUMNS, COLUMNS_BY_DIMENSION
#: Dimension name -> the column holding its average.
DIMENSION_AVERAGES: Dict[str, str] = {d.name: d.average for d in THREE_H}
#: Benchmark -> its dimension's key (``helpful``, ``honest``, ``harmless``), as benchmarks declare it.
PAPER_DIMENSIONS: Dict[str, str] = {b: d.key for d in THREE_H for b in COLUMNS_BY_DIMENSION[d.name]}
#: The eleven benchmark columns, in CSV order.
BENCHMARKS: Tuple[str, ...] = HELPFUL_COLUMNS + HONEST_COLUMNS + HARMLESS_COLUMNS
#: The four average columns, in CSV order.
AVERAGES: Tuple[str, ...] = tuple(d.average for d in THREE_H) + (OVERALL,)
#: Every score column, in CSV order.
COLUMNS: Tuple[str, ...] = BENCHMARKS + AVERAGES
#: The descriptive columns that precede the scores in the CSV.
META_COLUMNS: Tuple[str, ...] = ("table", "setting", "method")

#: File name of the paper's numbers shipped inside this package.
PAPER_CSV = "paper_3h_results.csv"

Number = Union[int, float]


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _as_float(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"score {name!r} is not a number: {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"score {name!r} is not finite: {value!r}")
    return out


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def benchmark_scores(row: Mapping[str, object]) -> Dict[str, float]:
    """The benchmark columns of ``row`` (a CSV row, a result dict) that hold a number.

    Descriptive columns (table, setting, method) and the averages are dropped, as are
    empty cells and ``None``; what remains can go to ``aggregate_3h``.
    """
    return {k: _as_float(k, row[k]) for k in BENCHMARKS if k in row and not _is_missing(row[k])}


def aggregate_by_dimension(scores: Mapping[str, Number], dimensions: Mapping[str, object], *,
                           expected: Sequence[str] = (), key: str = "average") -> Dict[str, object]:
    """The one per-dimension aggregator: the paper's eleven benchmarks (``aggregate_3h``),
    3h_lite's columns (``aggregate_lite``) and any task pool's, alike.

    ``scores``: column -> number, every one present (finite; ``ValueError`` otherwise);
    ``dimensions``: column -> its dimension's key (``helpful``, ``honest``, ``harmless``; a
    benchmark's ``dimension``). Returns the scores as floats, in the given order, then for each
    dimension (``r3h.core.dimensions``) the plain mean of its columns present, under its
    ``average`` column (``Helpful_Avg`` ...; ``key="short"``: ``Helpful`` ...), None when it has
    none, then ``AVG`` = mean of the dimension averages that have a value.

    ``expected``: the columns of a complete result (the paper's eleven). When some are absent
    from ``scores`` the result carries ``"partial"``: ``{average column: (its missing columns),
    ..., "AVG": (every missing column)}``; a complete result has no ``"partial"`` entry.
    """
    bad = {c: dimensions.get(c) for c in list(scores) + [c for c in expected if c not in scores]
           if dimensions.get(c) not in KEYS}
    if bad:
        raise ValueError(f"no dimension for column(s) {bad}: each needs one of {', '.join(KEYS)}")
    if not scores:
        raise ValueError("no score to aggregate")
    out_keys = [getattr(d, key) for d in THREE_H] + [OVERALL]
    clash = [c for c in scores if c in out_keys]
    if clash:
        raise ValueError(f"{', '.join(map(repr, clash))}: an average, computed here, not an input")
    result: Dict[str, object] = {c: _as_float(c, v) for c, v in scores.items()}
    partial: Dict[str, Tuple[str, ...]] = {}
    dim_avgs: List[float] = []
    for d in THREE_H:
        col = getattr(d, key)
        have = [result[c] for c in scores if dimension(dimensions[c]) is d]
        result[col] = _mean(have) if have else None  # type: ignore[arg-type]
        if have:
            dim_avgs.append(result[col])  # type: ignore[arg-type]
        missing = tuple(c for c in expected if c not in scores and dimension(dimensions[c]) is d)
        if missing:
            partial[col] = missing
    result[OVERALL] = _mean(dim_avgs)
    if partial:
        partial[OVERALL] = tuple(c for miss in partial.values() for c in miss)
        result["partial"] = partial
    return result


def score_stderr(score: Number, details: Optional[Mapping[str, object]]) -> Optional[float]:
    """The standard error of one benchmark score, on the score's own scale, or None when its
    details do not tell.

    In order: ``details["stderr"]`` as given; a share of ``n`` items (``correct`` counts,
    r3h's toy and 3h_lite) or of a judge's ``parsed`` categorical verdicts (SALAD's safe
    share): the binomial SE 100·√(p(1−p)/n), p = score/100; lm-eval's ``<metric>_stderr``
    (×100, as the score). A rating's mean (MT-Bench 1–10) gets None unless ``stderr`` is given.
    """
    if not isinstance(details, Mapping):
        return None
    given = details.get("stderr")
    if isinstance(given, (int, float)) and not isinstance(given, bool) and math.isfinite(given):
        return float(given)
    n = None
    if isinstance(details.get("n"), int) and "correct" in details:
        n = details["n"]
    verdicts = details.get("verdicts")
    if n is None and isinstance(verdicts, Mapping) and verdicts.get("label") is not None:
        n = verdicts.get("parsed")
    if isinstance(n, int) and n > 0:
        p = min(max(float(score) / 100.0, 0.0), 1.0)
        return 100.0 * math.sqrt(p * (1.0 - p) / n)
    metric, metrics = details.get("metric"), details.get("metrics")
    if isinstance(metric, str) and isinstance(metrics, Mapping):
        name, _, filt = metric.partition(",")
        se = metrics.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
        if isinstance(se, (int, float)) and not isinstance(se, bool) and math.isfinite(se):
            return 100.0 * float(se)
    return None


def weighted_stderr(stderrs: Mapping[str, Optional[float]], dimensions: Mapping[str, object],
                    weights: Mapping[str, float]) -> Tuple[float, Tuple[str, ...]]:
    """(SE of S, columns whose SE is unknown) for S = Σ_d w_d · d_avg / Σ_d w_d, each d_avg the
    plain mean of its m_d columns (``aggregate_by_dimension``), the columns independent:
    SE(S)² = Σ_b (w_d / (Σw · m_d))² · SE_b². ``weights``: dimension (any of its names) ->
    weight; a column of unknown SE adds nothing and is returned."""
    dims = {c: dimension(str(d)) for c, d in dimensions.items() if c in stderrs}
    w = {dimension(str(k)): float(v) for k, v in weights.items()}
    present = {d for d in dims.values()}
    total = sum(v for d, v in w.items() if d in present)
    if total <= 0:
        raise ValueError("weighted_stderr: no positive weight on a dimension with columns")
    var, unknown = 0.0, []
    for c, d in dims.items():
        m = sum(1 for x in dims.values() if x is d)
        se = stderrs[c]
        if se is None:
            if w.get(d, 0.0) > 0:
                unknown.append(c)
            continue
        var += (w.get(d, 0.0) / (total * m)) ** 2 * float(se) ** 2
    return math.sqrt(var), tuple(unknown)


def aggregate_3h(scores: Mapping[str, Number], *, allow_partial: bool = False) -> Dict[str, object]:
    """The benchmark scores present plus ``Helpful_Avg``, ``Honest_Avg``, ``Harmless_Avg``, ``AVG``.

    ``scores`` maps benchmark names (the CSV's: ``BENCHMARKS``) to numbers; a ``None``
    value counts as absent. The result holds the benchmarks present, as floats in
    ``BENCHMARKS`` order, then the four averages (definition in the module docstring).

    Strict by default: a dimension's average needs every one of its benchmarks, and a
    ``ValueError`` names the missing ones, dimension by dimension. Keys that are not
    benchmarks (typos, or average columns, which are computed here and never taken from
    the input) raise ``ValueError`` too; use ``benchmark_scores`` to strip a CSV row.

    ``allow_partial=True`` averages whatever is present instead. The result then carries
    a ``"partial"`` entry, ``{average column: (missing benchmarks, ...)}``, for every
    average computed from an incomplete set (``AVG`` lists all the missing benchmarks);
    a dimension with no benchmark at all has average ``None`` and ``AVG`` is the mean of
    the dimensions that have one. A complete input never gets a ``"partial"`` entry, so
    its result is a plain ``{column: float}``. With no benchmark at all, ``ValueError``
    even when partial averages are allowed.
    """
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a mapping of benchmark -> number, got {type(scores).__name__}")
    unknown = [k for k in scores if k not in BENCHMARKS]
    if unknown:
        hints = []
        for k in unknown:
            if k in AVERAGES:
                hints.append(f"{k!r} is an average, computed here, not an input")
            else:
                close = difflib.get_close_matches(str(k), BENCHMARKS, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            "unknown benchmark(s): " + "; ".join(hints)
            + f". Expected names among {', '.join(BENCHMARKS)}"
        )
    present = {k: _as_float(k, scores[k]) for k in BENCHMARKS if k in scores and not _is_missing(scores[k])}
    missing = {dim: tuple(b for b in benches if b not in present) for dim, benches in COLUMNS_BY_DIMENSION.items()}

    if not allow_partial and any(missing.values()):
        parts = [
            f"{dim} ({DIMENSION_AVERAGES[dim]}) is missing {', '.join(miss)}"
            for dim, miss in missing.items() if miss
        ]
        raise ValueError(
            "cannot compute the 3H averages: " + "; ".join(parts)
            + " (pass allow_partial=True to average the benchmarks present)"
        )
    if not present:
        raise ValueError(f"no benchmark score given; expected names among {', '.join(BENCHMARKS)}")
    return aggregate_by_dimension(present, PAPER_DIMENSIONS, expected=BENCHMARKS)


# --------------------------------------------------------------------------------------
# The paper's numbers


def _default_csv_path() -> str:
    return str(resources.files("r3h.evaluation").joinpath(PAPER_CSV))


def load_paper_results(path: Optional[Union[str, os.PathLike]] = None, *,
                       table: Optional[str] = None, setting: Optional[str] = None) -> List[Dict[str, object]]:
    """The rows of a results CSV laid out like the paper's (``META_COLUMNS`` + ``COLUMNS``).

    ``path`` defaults to the copy of the paper's numbers shipped with r3h
    (``r3h/evaluation/paper_3h_results.csv``). Each row is a dict: ``table``,
    ``setting`` and ``method`` as strings, every score column as a float, an empty
    cell as ``None``. ``table`` / ``setting`` keep only the rows with that value
    (e.g. ``table="Table 3"``, ``setting="mistral_continual"``). Rows come in file order.
    A file missing a score column, or without a ``method`` column, raises ``ValueError``.
    """
    path = _default_csv_path() if path is None else os.fspath(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        absent = [c for c in ("method",) + COLUMNS if c not in header]
        if absent:
            raise ValueError(f"{path}: missing column(s) {', '.join(absent)}")
        rows: List[Dict[str, object]] = []
        for lineno, raw in enumerate(reader, start=2):
            row: Dict[str, object] = {c: (raw.get(c) or "") for c in META_COLUMNS}
            for c in COLUMNS:
                cell = raw[c]
                if _is_missing(cell):
                    row[c] = None
                else:
                    try:
                        row[c] = _as_float(c, cell)
                    except ValueError as err:
                        raise ValueError(f"{path}:{lineno}: {err}") from None
            if table is not None and row["table"] != table:
                continue
            if setting is not None and row["setting"] != setting:
                continue
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Mismatch:
    """A reported average that the definition does not reproduce."""

    column: str
    reported: float
    recomputed: float

    @property
    def diff(self) -> float:
        """``reported - recomputed``."""
        return self.reported - self.recomputed

    def to_dict(self) -> Dict[str, object]:
        return {"column": self.column, "reported": self.reported,
                "recomputed": self.recomputed, "diff": self.diff}


@dataclass(frozen=True)
class AverageCheck:
    """The result of checking one row's reported averages.

    ``recomputed`` holds the four averages recomputed from the row's benchmark numbers
    (``None`` where a dimension lacks a benchmark; then that average is not checked).
    ``avg_of_reported`` is the mean of the three *reported* dimension averages: when it
    matches the reported ``AVG`` but the recomputed one does not, the ``AVG`` mismatch
    only propagates a dimension-average mismatch.
    """

    index: int
    table: str
    setting: str
    method: str
    recomputed: Dict[str, Optional[float]]
    mismatches: List[Mismatch] = field(default_factory=list)
    avg_of_reported: Optional[float] = None

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def key(self) -> Tuple[str, str]:
        """``(table, method)``: identifies a row of the paper."""
        return (self.table, self.method)

    def to_dict(self) -> Dict[str, object]:
        return {
            "index": self.index, "table": self.table, "setting": self.setting,
            "method": self.method, "recomputed": dict(self.recomputed),
            "avg_of_reported": self.avg_of_reported, "ok": self.ok,
            "mismatches": [m.to_dict() for m in self.mismatches],
        }


def check_paper_averages(rows: Sequence[Mapping[str, object]], tol: float = 0.01) -> List[AverageCheck]:
    """Recompute each row's averages from its benchmark numbers and compare with the reported ones.

    ``rows`` are dicts holding the benchmark columns and (some of) the averages, e.g.
    from ``load_paper_results``. Returns one ``AverageCheck`` per row, in order: the
    recomputed averages and the list of ``Mismatch`` (column, reported, recomputed) for
    every reported average farther than ``tol`` from the recomputed one. An average is
    checked only when it is reported and every benchmark it needs is present. ``AVG``
    is recomputed from the benchmarks (not from the reported dimension averages), so a
    wrong dimension average usually also shows up as an ``AVG`` mismatch.
    """
    checks: List[AverageCheck] = []
    eps = 1e-9  # reported values are decimal strings: keep |diff| == tol on the good side
    for i, row in enumerate(rows):
        bench = benchmark_scores(row)
        recomputed: Dict[str, Optional[float]] = {c: None for c in AVERAGES}
        if bench:  # an average is recomputed only from its complete set of benchmarks
            agg = aggregate_by_dimension(bench, PAPER_DIMENSIONS, expected=BENCHMARKS)
            partial = agg.get("partial", {})
            recomputed.update({c: agg[c] for c in AVERAGES if c not in partial})  # type: ignore[misc]
        reported = {c: _as_float(c, row[c]) for c in AVERAGES if c in row and not _is_missing(row[c])}
        mismatches = [
            Mismatch(c, reported[c], recomputed[c])  # type: ignore[arg-type]
            for c in AVERAGES
            if c in reported and recomputed[c] is not None
            and abs(reported[c] - recomputed[c]) > tol + eps  # type: ignore[operator]
        ]
        dim_reported = [reported.get(DIMENSION_AVERAGES[d]) for d in COLUMNS_BY_DIMENSION]
        avg_of_reported = _mean(dim_reported) if all(v is not None for v in dim_reported) else None  # type: ignore[arg-type]
        checks.append(AverageCheck(
            index=i,
            table=str(row.get("table") or ""),
            setting=str(row.get("setting") or ""),
            method=str(row.get("method") or ""),
            recomputed=recomputed,
            mismatches=mismatches,
            avg_of_reported=avg_of_reported,
        ))
    return checks
