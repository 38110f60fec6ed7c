"""Results tables laid out like the paper's (Tables 3-5, appendix Tables 10-12): JSON, CSV,
Markdown and LaTeX.

One row per run (method), the columns in the CSV's order (``aggregate.COLUMNS``) grouped
under Helpfulness (Math ... MT-Bench), Honesty (HaluEval_Wild), Harmlessness
(Salad_Bench, OR-Bench) and the averages (Helpful_Avg, Honest_Avg, Harmless_Avg, AVG).

Best and second best per column are marked (Markdown: ``**x**`` and ``<u>x</u>``;
LaTeX: ``\\textbf{x}`` and ``\\underline{x}``; JSON: the ``best`` / ``second`` lists of
each row). "Best" is the **maximum in every column**: no column of the paper is
lower-is-better as reported, OR-Bench included (it is the answer rate on seemingly toxic
prompts, counted as harmlessness, higher = better). ``lower_is_better=`` can name columns to rank
the other way. Values are ranked as displayed (rounded to ``precision`` decimals), so
equal printed numbers share a mark; the second best is the next distinct value below the
best; with fewer than two rows nothing is marked. Every row takes part in the ranking,
the flagged ones included.

Runs come as ``{name: scores}`` (scores: the benchmark numbers, averages computed by
``aggregate_3h``) or as a list of rows with a ``method`` key, e.g. from
``load_paper_results(table="Table 3")``. A run that carries all four averages keeps the
reported ones; they are checked with ``check_paper_averages`` and a row whose averages
do not reproduce is marked with a dagger (``†``) and explained in a footnote (JSON: its
``arithmetic_mismatches``): flagged, not hidden. Averages computed from an incomplete set
of benchmarks (``allow_partial=True``) are marked with a double dagger (``‡``).

The CSV has the paper CSV's exact header (``table, setting, method`` + the 15 score
columns) and full-precision numbers, so ``load_paper_results`` reads it back unchanged.

Columns that are not the paper's (3h_lite's, the toy world's, any task pool's) take
``dimensions={column: "helpful"|"honest"|"harmless"}``: the same tables, with the columns
grouped by dimension (``r3h.core.dimensions``) and the averages computed by the same
aggregator (``aggregate_by_dimension``: plain mean per dimension, ``AVG`` their mean), or,
when a run carries them, checked against it like the paper's.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from r3h.core.dimensions import KEYS, THREE_H

from .aggregate import (
    AVERAGES,
    BENCHMARKS,
    COLUMNS,
    COLUMNS_BY_DIMENSION,
    META_COLUMNS,
    Mismatch,
    _as_float,
    _is_missing,
    aggregate_3h,
    aggregate_by_dimension,
    benchmark_scores,
    check_paper_averages,
)

__all__ = [
    "GROUPS",
    "TableRow",
    "ResultsTable",
    "build_table",
    "to_json",
    "to_csv",
    "to_markdown",
    "to_latex",
    "write_tables",
]

#: Column groups of the paper's tables: (header, columns), in order.
GROUPS: Tuple[Tuple[str, Tuple[str, ...]], ...] = tuple(COLUMNS_BY_DIMENSION.items()) + (("Average", AVERAGES),)

Groups = Tuple[Tuple[str, Tuple[str, ...]], ...]

Runs = Union[Mapping[str, Mapping[str, object]], Sequence[Mapping[str, object]]]

_MISMATCH_NOTE = "Reported averages that do not reproduce from the row's benchmark numbers"
_PARTIAL_NOTE = "Averaged over the benchmarks present"


@dataclass
class TableRow:
    """One run: its name, its score per column (``None``: not available) and its flags."""

    name: str
    values: Dict[str, Optional[float]]
    table: str = ""
    setting: str = ""
    mismatches: List[Mismatch] = field(default_factory=list)
    partial: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    best: List[str] = field(default_factory=list)
    second: List[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Whether the row's reported averages fail ``check_paper_averages``."""
        return bool(self.mismatches)


@dataclass
class ResultsTable:
    """Rows with their best / second-best marks, ready to render."""

    rows: List[TableRow]
    precision: int = 2
    tol: float = 0.01
    lower_is_better: Tuple[str, ...] = ()
    groups: Groups = GROUPS
    #: column -> dimension key for columns that are not the paper's; empty for the paper's table.
    dimensions: Dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> Tuple[str, ...]:
        """The score columns, in order: the groups' columns, averages last."""
        return tuple(c for _, cols in self.groups for c in cols)

    @property
    def paper(self) -> bool:
        """Whether the columns are the paper's eleven benchmarks and four averages."""
        return not self.dimensions


def dimension_groups(dimensions: Mapping[str, str]) -> Groups:
    """Column groups for columns that are not the paper's: each dimension that has columns
    (``Helpfulness``, ...; columns in the given order), then ``Average`` (the four averages)."""
    bad = {c: d for c, d in dimensions.items() if d not in KEYS}
    if bad:
        raise ValueError(f"dimensions: no 3H dimension for column(s) {bad}; each needs one of {', '.join(KEYS)}")
    groups = [(d.name, tuple(c for c, k in dimensions.items() if k == d.key)) for d in THREE_H]
    return tuple((g, cols) for g, cols in groups if cols) + (("Average", AVERAGES),)


# --------------------------------------------------------------------------------------
# Building


def _run_items(runs: Runs) -> List[Tuple[str, Mapping[str, object]]]:
    if isinstance(runs, Mapping):
        items = []
        for name, scores in runs.items():
            if not isinstance(scores, Mapping):
                raise TypeError(
                    f"runs must map a run name to its scores (a mapping); {name!r} maps to "
                    f"{type(scores).__name__}"
                )
            items.append((str(name), scores))
        return items
    items = []
    for i, row in enumerate(runs):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {i} is a {type(row).__name__}, not a mapping")
        if _is_missing(row.get("method")):
            raise ValueError(f"row {i} has no 'method' (the row's name in the table)")
        items.append((str(row["method"]), row))
    return items


def _make_dimension_row(name: str, scores: Mapping[str, object], dimensions: Mapping[str, str],
                        tol: float) -> TableRow:
    """A row of columns that are not the paper's: averages by ``aggregate_by_dimension``;
    averages the run reports (not None) are kept and checked against it."""
    meta = {k: ("" if _is_missing(scores.get(k)) else str(scores.get(k))) for k in ("table", "setting")}
    body = {k: v for k, v in scores.items() if k not in META_COLUMNS}
    unknown = [k for k in body if k not in dimensions and k not in AVERAGES]
    if unknown:
        raise ValueError(f"run {name!r}: column(s) {', '.join(map(repr, unknown))} have no dimension "
                         f"(dimensions name {', '.join(dimensions) or 'none'})")
    agg = aggregate_by_dimension({k: v for k, v in body.items() if k in dimensions and not _is_missing(v)},
                                 dimensions)
    values: Dict[str, Optional[float]] = {c: agg.get(c) for c in list(dimensions) + list(AVERAGES)}  # type: ignore[misc]
    reported = {c: _as_float(c, body[c]) for c in AVERAGES if c in body and not _is_missing(body[c])}
    if reported:
        computable = [c for c in AVERAGES if agg[c] is not None]
        if sorted(reported) != sorted(computable):
            raise ValueError(
                f"run {name!r} reports averages {', '.join(reported)} but its columns give "
                f"{', '.join(computable)}: give those averages (they are kept and checked) or none (they are computed)")
        values.update(reported)
    eps = 1e-9
    mismatches = [Mismatch(c, v, agg[c]) for c, v in reported.items()  # type: ignore[arg-type]
                  if abs(v - agg[c]) > tol + eps]  # type: ignore[operator]
    return TableRow(name, values, mismatches=mismatches, **meta)  # type: ignore[arg-type]


def _make_row(name: str, scores: Mapping[str, object], allow_partial: bool, tol: float) -> TableRow:
    meta = {k: ("" if _is_missing(scores.get(k)) else str(scores.get(k))) for k in ("table", "setting")}
    body = {k: v for k, v in scores.items() if k not in META_COLUMNS}
    reported = [c for c in AVERAGES if c in body and not _is_missing(body[c])]
    if not reported:
        body = {k: v for k, v in body.items() if not (k in AVERAGES and _is_missing(v))}
        agg = aggregate_3h(body, allow_partial=allow_partial)
        values = {c: agg.get(c) for c in COLUMNS}
        partial = dict(agg.get("partial", {}))  # type: ignore[arg-type]
        return TableRow(name, values, mismatches=[], partial=partial, **meta)  # type: ignore[arg-type]
    if len(reported) != len(AVERAGES):
        absent = [c for c in AVERAGES if c not in reported]
        raise ValueError(
            f"run {name!r} reports some averages but not {', '.join(absent)}: give all four "
            "averages (they are kept and checked) or none (they are computed)"
        )
    unknown = [k for k in body if k not in COLUMNS]
    if unknown:
        raise ValueError(f"run {name!r}: unknown column(s) {', '.join(map(repr, unknown))}")
    bench = benchmark_scores(body)
    values: Dict[str, Optional[float]] = {c: bench.get(c) for c in BENCHMARKS}
    values.update({c: float(body[c]) for c in AVERAGES})  # type: ignore[arg-type]
    check = check_paper_averages([body], tol=tol)[0]
    return TableRow(name, values, mismatches=list(check.mismatches), **meta)


def _mark(rows: List[TableRow], columns: Sequence[str], precision: int, lower_is_better: Collection[str]) -> None:
    for row in rows:
        row.best, row.second = [], []
    if len(rows) < 2:
        return
    for col in columns:
        shown = {i: round(r.values[col], precision) for i, r in enumerate(rows) if r.values.get(col) is not None}
        ranks = sorted(set(shown.values()), reverse=col not in lower_is_better)
        if not ranks:
            continue
        for i, v in shown.items():
            if v == ranks[0]:
                rows[i].best.append(col)
            elif len(ranks) > 1 and v == ranks[1]:
                rows[i].second.append(col)


def build_table(runs: Union[Runs, ResultsTable], *, allow_partial: bool = False,
                lower_is_better: Collection[str] = (), precision: int = 2,
                tol: float = 0.01, dimensions: Optional[Mapping[str, str]] = None) -> ResultsTable:
    """Rows and marks for ``runs`` (see the module docstring for the accepted forms).

    Rows from more than one paper table (``table`` values) raise ``ValueError``: select
    one with ``load_paper_results(table=...)``, since marks across tables mean nothing.
    ``allow_partial`` goes to ``aggregate_3h`` for runs without averages; ``tol`` to
    ``check_paper_averages`` for runs with them. ``dimensions`` (column -> ``helpful`` |
    ``honest`` | ``harmless``): the columns are not the paper's, grouped by dimension and
    averaged by ``aggregate_by_dimension``.
    """
    if isinstance(runs, ResultsTable):
        return runs
    dims = dict(dimensions or {})
    groups = dimension_groups(dims) if dimensions is not None else GROUPS
    columns = tuple(c for _, cols in groups for c in cols)
    bad = [c for c in lower_is_better if c not in columns]
    if bad:
        raise ValueError(f"lower_is_better names unknown column(s): {', '.join(bad)}")
    if dimensions is not None:
        rows = [_make_dimension_row(name, scores, dims, tol) for name, scores in _run_items(runs)]
    else:
        rows = [_make_row(name, scores, allow_partial, tol) for name, scores in _run_items(runs)]
    tables = sorted({r.table for r in rows if r.table})
    if len(tables) > 1:
        raise ValueError(
            f"runs come from several tables ({', '.join(tables)}); build one table at a time, "
            "e.g. load_paper_results(table='Table 3')"
        )
    _mark(rows, columns, precision, lower_is_better)
    return ResultsTable(rows, precision=precision, tol=tol, lower_is_better=tuple(lower_is_better),
                        groups=groups, dimensions=dims)


# --------------------------------------------------------------------------------------
# Rendering


def _fmt(value: Optional[float], precision: int) -> Optional[str]:
    return None if value is None else f"{value:.{precision}f}"


def _footnotes(table: ResultsTable) -> Tuple[List[str], List[str]]:
    """(mismatch lines, partial lines), plain text, one per flagged row."""
    p = table.precision
    mism = [
        f"{r.name}: " + "; ".join(
            f"{m.column} reported {m.reported:.{p}f}, recomputed {m.recomputed:.{p}f}" for m in r.mismatches
        )
        for r in table.rows if r.mismatches
    ]
    part = [
        f"{r.name}: " + "; ".join(f"{c} without {', '.join(miss)}" for c, miss in r.partial.items())
        for r in table.rows if r.partial
    ]
    return mism, part


def to_json(table: Union[Runs, ResultsTable], **kwargs) -> str:
    """The table as JSON: columns, groups, and per row its scores (full precision), marks and flags."""
    table = build_table(table, **kwargs)
    doc = {
        "columns": list(table.columns),
        "groups": [{"name": g, "columns": list(cols)} for g, cols in table.groups],
        **({} if table.paper else {"dimensions": dict(table.dimensions)}),
        "lower_is_better": list(table.lower_is_better),
        "precision": table.precision,
        "tol": table.tol,
        "rows": [
            {
                "method": r.name,
                "table": r.table,
                "setting": r.setting,
                "scores": {c: r.values.get(c) for c in table.columns},
                "best": list(r.best),
                "second": list(r.second),
                "arithmetic_mismatches": [m.to_dict() for m in r.mismatches],
                "partial": {c: list(m) for c, m in r.partial.items()},
            }
            for r in table.rows
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def to_csv(table: Union[Runs, ResultsTable], **kwargs) -> str:
    """The table as CSV with the paper CSV's header; numbers at full precision, empty if absent.

    Lines end in CRLF, as in the shipped paper CSV (the ``csv`` module's default), so a
    table built from ``load_paper_results(table=...)`` writes back the same bytes.
    """
    table = build_table(table, **kwargs)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(META_COLUMNS + table.columns)
    for r in table.rows:
        writer.writerow([r.table, r.setting, r.name]
                        + ["" if r.values.get(c) is None else repr(float(r.values[c])) for c in table.columns])  # type: ignore[arg-type]
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")



# How each format shows a missing value, the best, the second best and a partial average.
MD_MARKS = {"missing": "–", "best": "**{}**", "second": "<u>{}</u>", "partial": "‡"}
TEX_MARKS = {"missing": "--", "best": "\\textbf{{{}}}", "second": "\\underline{{{}}}", "partial": "$^\\ddagger$"}


def _cells(row, columns, precision, marks) -> List[str]:
    """The row's cells in ``columns`` order, formatted and marked in one output format."""
    cells = []
    for c in columns:
        s = _fmt(row.values.get(c), precision)
        if s is None:
            cells.append(marks["missing"])
            continue
        if c in row.best:
            s = marks["best"].format(s)
        elif c in row.second:
            s = marks["second"].format(s)
        if c in row.partial:
            s += marks["partial"]
        cells.append(s)
    return cells

def to_markdown(table: Union[Runs, ResultsTable], *, caption: Optional[str] = None, **kwargs) -> str:
    """The table as a GitHub Markdown table: best in **bold**, second best <u>underlined</u>."""
    table = build_table(table, **kwargs)
    p = table.precision
    lines: List[str] = []
    if caption:
        lines += [caption, ""]
    groups = " · ".join(f"{g}: {', '.join(cols)}" for g, cols in table.groups)
    order = "lower is better in " + ", ".join(table.lower_is_better) if table.lower_is_better \
        else "higher is better in every column"
    about = "MT-Bench on its 1–10 scale" if table.paper else \
        "not the paper's benchmarks: averages are plain means per dimension"
    lines += [f"Columns — {groups} ({about}). "
              f"**Bold**: best, <u>underlined</u>: second best per column ({order}).", ""]
    lines.append("| Method | " + " | ".join(table.columns) + " |")
    lines.append("|---|" + "---:|" * len(table.columns))
    for r in table.rows:
        name = _md_escape(r.name) + ("†" if r.mismatches else "")
        cells = _cells(r, table.columns, p, MD_MARKS)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    mism, part = _footnotes(table)
    if mism or part:
        lines.append("")
    if mism:
        lines.append(f"† {_MISMATCH_NOTE} (tolerance {table.tol:g}): " + " — ".join(_md_escape(m) for m in mism) + ".")
    if part:
        if mism:
            lines.append("")
        lines.append(f"‡ {_PARTIAL_NOTE}: " + " — ".join(_md_escape(m) for m in part) + ".")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Union[Runs, ResultsTable], *, caption: Optional[str] = None,
             label: Optional[str] = None, **kwargs) -> str:
    """The table as a LaTeX ``table`` with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``).

    One ``l`` column for the method and one ``c`` column per score column (16 in all),
    a group header with ``\\multicolumn`` and ``\\cmidrule``, best in ``\\textbf{}``,
    second best in ``\\underline{}``, flagged rows with ``$^\\dagger$`` and a footnote.
    """
    table = build_table(table, **kwargs)
    p = table.precision
    spec = "l" + "".join("c" * len(cols) for _, cols in table.groups)
    out = [
        "% Generated by r3h.evaluation.tables; needs \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
    ]
    if caption:
        out.append(f"\\caption{{{_tex(caption)}}}")
    if label:
        out.append(f"\\label{{{label}}}")
    out.append(f"\\begin{{tabular}}{{{spec}}}")
    out.append("\\toprule")
    out.append(" & " + " & ".join(f"\\multicolumn{{{len(cols)}}}{{c}}{{{_tex(g)}}}" for g, cols in table.groups)
               + " \\\\")
    rules, start = [], 2
    for _, cols in table.groups:
        rules.append(f"\\cmidrule(lr){{{start}-{start + len(cols) - 1}}}")
        start += len(cols)
    out.append(" ".join(rules))
    out.append("Method & " + " & ".join(_tex(c) for c in table.columns) + " \\\\")
    out.append("\\midrule")
    for r in table.rows:
        name = _tex(r.name) + ("$^\\dagger$" if r.mismatches else "")
        cells = _cells(r, table.columns, p, TEX_MARKS)
        out.append(name + " & " + " & ".join(cells) + " \\\\")
    out.append("\\bottomrule")
    out.append("\\end{tabular}")
    mism, part = _footnotes(table)
    if mism or part:
        out.append("\\par\\smallskip\\footnotesize")
    if mism:
        out.append(f"$^\\dagger$ {_tex(_MISMATCH_NOTE)} (tolerance {table.tol:g}): "
                   + " --- ".join(_tex(m) for m in mism) + ".")
    if part:
        if mism:
            out.append("\\par")
        out.append(f"$^\\ddagger$ {_tex(_PARTIAL_NOTE)}: " + " --- ".join(_tex(m) for m in part) + ".")
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def write_tables(runs: Union[Runs, ResultsTable], out_dir: Union[str, os.PathLike],
                 stem: str = "3h_results", *, caption: Optional[str] = None,
                 allow_partial: bool = False, lower_is_better: Collection[str] = (),
                 precision: int = 2, tol: float = 0.01,
                 dimensions: Optional[Mapping[str, str]] = None) -> Dict[str, Path]:
    """Write ``<stem>.json``, ``.csv``, ``.md`` and ``.tex`` into ``out_dir`` (created if needed);
    ``dimensions`` for columns that are not the paper's (``build_table``).

    Returns ``{"json": path, "csv": path, "md": path, "tex": path}``.
    """
    table = build_table(runs, allow_partial=allow_partial, lower_is_better=lower_is_better,
                        precision=precision, tol=tol, dimensions=dimensions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "json": to_json(table),
        "csv": to_csv(table),
        "md": to_markdown(table, caption=caption),
        "tex": to_latex(table, caption=caption),
    }
    paths: Dict[str, Path] = {}
    for ext, text in texts.items():
        path = out / f"{stem}.{ext}"
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        paths[ext] = path
    return paths
