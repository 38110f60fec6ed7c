"""Figures of 3H results (matplotlib, Agg; PNG and PDF): what `r3h.plots` shows of scores.

- `tradeoff_bars`: the paper's Fig. 1 (Yang et al., arXiv 2502.06876): per method, grouped
  bars of Helpful_Avg, Honest_Avg and Harmless_Avg.
- `radar`: one polygon per model over the three dimension averages (or given columns).
- `pareto_front`: a sweep's points (e.g. Rewarded Soup's λ grid) on two scores, the
  non-dominated ones (`pareto_mask`) connected; `pareto_table` marks a sweep's members
  Pareto-optimal or dominated (a `ParetoTable`); `write_pareto_plots` draws every pair of
  dimension averages of a sweep's report (the 3H task pool and the search call it). r3h's
  Pareto code lives here only.

Figures are built on `matplotlib.figure.Figure` directly, never through pyplot, so no global
backend is changed and nothing needs a display. Every plotting function writes `<out_path>.png`
and `<out_path>.pdf` (a `.png`/`.pdf` suffix on `out_path` is dropped) and returns both paths.
Scores come as `{method: {column: value}}`, a list of rows with a `method` key (the paper CSV's
`r3h.evaluation.aggregate.load_paper_results`, or a results table's `rows`, whose scores sit
under `scores`), a results-table JSON document (`r3h.evaluation.tables.to_json`), or the path
of such a JSON or CSV file. Import them from `r3h.plots` (with the heatmaps of the analysis).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.figure import Figure

from r3h.core.dimensions import AVERAGES, HARMLESS, HELPFUL, HONEST, OVERALL, THREE_H

#: The three dimension averages of the paper, with their legend labels.
DIMENSION_COLUMNS: Tuple[str, ...] = AVERAGES
LABELS = {**{d.average: d.name for d in THREE_H}, OVERALL: "Average"}
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")

PathLike = Union[str, os.PathLike]


# -- input --------------------------------------------------------------------------------

def save_figure(fig: Figure, out_path: PathLike) -> List[str]:
    """Write `fig` as `<out_path>.png` (150 dpi) and `<out_path>.pdf`; return both paths."""
    p = Path(out_path)
    if p.suffix.lower() in (".png", ".pdf"):
        p = p.with_suffix("")
    p.parent.mkdir(parents=True, exist_ok=True)
    paths = [str(p) + ".png", str(p) + ".pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def score_rows(rows) -> List[Tuple[str, Dict[str, object]]]:
    """[(name, {column: value})] from any of the accepted forms (module docstring)."""
    if isinstance(rows, (str, os.PathLike)):
        path = os.fspath(rows)
        if path.endswith(".csv"):
            from r3h.evaluation.aggregate import load_paper_results

            rows = load_paper_results(path)
        else:
            with open(path) as f:
                rows = json.load(f)
    if isinstance(rows, Mapping) and isinstance(rows.get("rows"), list):
        rows = rows["rows"]
    if isinstance(rows, Mapping):
        items = [(str(k), v) for k, v in rows.items()]
    else:
        items = []
        for i, r in enumerate(rows or []):
            if not isinstance(r, Mapping):
                raise TypeError(f"row {i} is a {type(r).__name__}, not a mapping of scores")
            name = r.get("method", r.get("label", r.get("name")))
            if name is None:
                raise ValueError(f"row {i} has no 'method' (or 'label') key: {sorted(r)[:8]}")
            items.append((str(name), r))
    out = []
    for name, r in items:
        if not isinstance(r, Mapping):
            raise TypeError(f"scores of {name!r} are a {type(r).__name__}, not a mapping")
        out.append((name, dict(r["scores"]) if isinstance(r.get("scores"), Mapping) else dict(r)))
    if not out:
        raise ValueError("no rows to plot")
    return out


def _values(items: Sequence[Tuple[str, Mapping]], columns: Sequence[str], allow_missing: bool) -> np.ndarray:
    """[n_rows, n_columns] floats (NaN where missing); unknown columns are an error."""
    if not columns:
        raise ValueError("no columns to plot")
    for c in columns:
        if not any(c in r for _, r in items):
            known = sorted({k for _, r in items for k in r})
            raise ValueError(f"unknown column {c!r}: no row has it (columns: {', '.join(map(str, known))})")
    out = np.full((len(items), len(columns)), np.nan)
    for i, (name, r) in enumerate(items):
        for j, c in enumerate(columns):
            v = r.get(c)
            if v is None or (isinstance(v, str) and not v.strip()):
                if not allow_missing:
                    raise ValueError(f"row {name!r} has no value for {c!r}")
                continue
            try:
                out[i, j] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"row {name!r}: {c!r} is not a number: {v!r}") from None
    return out


# -- 3H scores ---------------------------------------------------------------------------

def tradeoff_bars(rows, out_path: PathLike, columns: Sequence[str] = DIMENSION_COLUMNS,
                  title: Optional[str] = None, ylabel: str = "score", values: bool = True) -> List[str]:
    """The paper's Fig. 1: per method, one bar per column (default the three dimension
    averages). A missing value leaves its bar out; `values` prints each bar's value."""
    items = score_rows(rows)
    data = _values(items, list(columns), allow_missing=True)
    n, k = data.shape
    fig = Figure(figsize=(min(24.0, max(6.0, 0.5 * n * k + 1.5)), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / k
    x = np.arange(n)
    for j, c in enumerate(columns):
        bars = ax.bar(x + (j - (k - 1) / 2) * width, data[:, j], width, label=LABELS.get(c, c),
                      color=COLORS[j % len(COLORS)])
        if values:
            ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in data[:, j]], fontsize=6, padding=1)
    ax.set_xticks(x, [name for name, _ in items], rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_ylabel(ylabel)
    ax.legend(ncols=min(k, 4), fontsize=8, loc="upper left", bbox_to_anchor=(0, 1.12), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, pad=22)
    return save_figure(fig, out_path)


def radar(rows, out_path: PathLike, columns: Optional[Sequence[str]] = None,
          title: Optional[str] = None, normalize: bool = False) -> List[str]:
    """One polygon per model over `columns` (≥ 3; default the three dimension averages).
    `normalize` divides each axis by its largest value across models (scales that differ,
    such as MT-Bench's 1–10, become comparable)."""
    items = score_rows(rows)
    columns = list(DIMENSION_COLUMNS if columns is None else columns)
    if len(columns) < 3:
        raise ValueError(f"a radar chart needs at least 3 columns; got {columns}")
    data = _values(items, columns, allow_missing=False)
    if normalize:
        top = np.abs(data).max(axis=0)
        data = data / np.where(top > 0, top, 1.0)
    angles = np.linspace(0, 2 * np.pi, len(columns), endpoint=False)
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot(projection="polar")
    for i, (name, _) in enumerate(items):
        a, v = np.append(angles, angles[0]), np.append(data[i], data[i, 0])
        color = COLORS[i % len(COLORS)]
        ax.plot(a, v, color=color, linewidth=1.5, label=name)
        ax.fill(a, v, color=color, alpha=0.08)
    ax.set_xticks(angles, [LABELS.get(c, c) for c in columns])
    ax.set_rlabel_position(180 / len(columns))  # radial ticks between the first two axes
    lo = min(0.0, float(data.min()))
    ax.set_ylim(lo, float(data.max()) * 1.05 if data.max() > 0 else 1.0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.05, 1.0), frameon=False)
    if title:
        ax.set_title(title, pad=18)
    return save_figure(fig, out_path)


# -- sweeps ------------------------------------------------------------------------------

def pareto_mask(values, maximize: Union[bool, Sequence[bool]] = True) -> np.ndarray:
    """bool[n]: True where point i is non-dominated, i.e. no other point j is ≥ on every
    column and > on at least one (per column: maximised, or minimised where `maximize` is
    False). Equal points do not dominate each other. values: [n, k] numbers."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be a [n, k] array; got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError("values contain NaN")
    sign = np.where(np.broadcast_to(np.asarray(maximize, dtype=bool), (v.shape[1],)), 1.0, -1.0)
    v = v * sign
    ge = (v[None, :, :] >= v[:, None, :]).all(axis=2)  # ge[i, j]: j ≥ i everywhere
    gt = (v[None, :, :] > v[:, None, :]).any(axis=2)  # gt[i, j]: j > i somewhere
    return ~(ge & gt).any(axis=1)


def pareto_front(points, out_path: PathLike, x: str, y: str, maximize: Union[bool, Sequence[bool]] = True,
                 title: Optional[str] = None, annotate: Union[bool, str] = "front") -> List[str]:
    """A sweep's points on scores `x` and `y`: non-dominated points (`pareto_mask` on (x, y))
    filled and joined in order of x, dominated ones as grey crosses. `annotate`: label the
    front's points ("front", default), every point (True) or none (False).
    points: [{"label": ..., "scores": {...}}] (or the score forms `score_rows` accepts)."""
    items = score_rows(points)
    xy = _values(items, [x, y], allow_missing=False)
    front = pareto_mask(xy, maximize)
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    ax.scatter(xy[~front, 0], xy[~front, 1], marker="x", color="#8C8C8C", label="dominated")
    order = np.argsort(xy[front, 0], kind="stable")
    ax.plot(xy[front, 0][order], xy[front, 1][order], "-o", color=COLORS[0], label="Pareto front")
    if annotate:
        for (name, _), (px, py), on_front in zip(items, xy, front):
            if on_front or annotate is True:
                ax.annotate(name, (px, py), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return save_figure(fig, out_path)


@dataclass
class ParetoTable:
    """Members on two scores, each marked Pareto-optimal or dominated (see `pareto_table`)."""

    x: str
    y: str
    maximize: Tuple[bool, bool]
    rows: List[Dict[str, Any]]

    @property
    def front(self) -> List[str]:
        """The non-dominated members, in order of x."""
        sign = 1.0 if self.maximize[0] else -1.0
        return [r["name"] for r in sorted((r for r in self.rows if r["pareto"]), key=lambda r: sign * r[self.x])]

    @property
    def dominated(self) -> List[str]:
        return [r["name"] for r in self.rows if not r["pareto"]]

    def to_markdown(self) -> str:
        lines = [f"| member | {self.x} | {self.y} | Pareto | dominated by |", "|---|---:|---:|:---:|---|"]
        for r in self.rows:
            lines.append(f"| {r['name']} | {r[self.x]:.4g} | {r[self.y]:.4g} | {'yes' if r['pareto'] else 'no'} | "
                         f"{', '.join(r['dominated_by'])} |")
        return "\n".join(lines)

    def plot(self, out_path, title: Optional[str] = None, annotate: Union[bool, str] = "front") -> List[str]:
        """`pareto_front` of the members: writes `<out_path>.png` and `.pdf`."""
        points = [{"label": r["name"], "scores": {self.x: r[self.x], self.y: r[self.y]}} for r in self.rows]
        return pareto_front(points, out_path, self.x, self.y, list(self.maximize), title=title, annotate=annotate)


def _sweep_rows(report: Mapping[str, Any]) -> List[Tuple[str, Dict[str, Any], Dict[str, Any]]]:
    """(member, scores and averages, options) from a 3H task pool report of a sweep."""
    sweep = report.get("sweep") or {}
    out = []
    for name in report["members"]:
        values = dict((report.get("scores") or {}).get(name) or {})
        values.update({k: v for k, v in ((report.get("averages") or {}).get(name) or {}).items() if v is not None})
        opts = sweep.get(name) if isinstance(sweep, Mapping) else None
        out.append((str(name), values, dict(opts) if isinstance(opts, Mapping) else {}))
    return out


def pareto_table(report_or_rows, x: str = "Helpful_Avg", y: str = "Harmless_Avg",
                 maximize: Union[bool, Sequence[bool]] = True) -> ParetoTable:
    """Mark the members of a sweep that no other member dominates on (`x`, `y`).

    `report_or_rows`: the 3H task pool's report of a `ModelSweep` (the dict `evaluate`
    returns, or the path of its `3h_report.json` / fusion_bench's `program_report.json`),
    or any score form `score_rows` accepts (`{name: {column: value}}`, rows with a
    `method`/`label` key, a results table). Member j dominates i when it is at least as
    good on both scores and better on one (`maximize` per score, default both); equal
    points do not dominate each other. Each row: `name`, x, y, `pareto`, `dominated_by`
    and, from a sweep report, the member's `options`.
    """
    data = report_or_rows
    if isinstance(data, (str, os.PathLike)) and not str(data).endswith(".csv"):
        with open(data) as f:
            data = json.load(f)
    if isinstance(data, Mapping) and isinstance(data.get("members"), list) and "averages" in data:
        items = _sweep_rows(data)
    else:
        items = [(name, values, {}) for name, values in score_rows(data)]
    if not items:
        raise ValueError("pareto_table: no members")
    signs = np.where(np.broadcast_to(np.asarray(maximize, dtype=bool), (2,)), 1.0, -1.0)
    xy = np.empty((len(items), 2))
    for i, (name, values, _) in enumerate(items):
        for j, col in enumerate((x, y)):
            v = values.get(col)
            if v is None:
                raise ValueError(f"pareto_table: member {name!r} has no {col!r} (it has: "
                                 f"{', '.join(sorted(map(str, values))) or 'nothing'})")
            try:
                xy[i, j] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"pareto_table: member {name!r}: {col!r} is not a number: {v!r}") from None
            if not math.isfinite(xy[i, j]):
                raise ValueError(f"pareto_table: member {name!r}: {col!r} is {v!r}")
    mask = pareto_mask(xy, [bool(s > 0) for s in signs])
    v = xy * signs
    rows = []
    for i, (name, values, opts) in enumerate(items):
        by = [items[j][0] for j in range(len(items))
              if j != i and (v[j] >= v[i]).all() and (v[j] > v[i]).any()]
        row = {"name": name, x: float(xy[i, 0]), y: float(xy[i, 1]), "pareto": bool(mask[i]), "dominated_by": by}
        if opts:
            row["options"] = opts
        rows.append(row)
        assert row["pareto"] == (not by)
    return ParetoTable(x, y, (bool(signs[0] > 0), bool(signs[1] > 0)), rows)


#: The trade-offs a sweep's Pareto plots show (x, y).
PARETO_PAIRS = ((HELPFUL.average, HARMLESS.average), (HELPFUL.average, HONEST.average),
                (HONEST.average, HARMLESS.average))


def write_pareto_plots(report: Mapping[str, Any], out_dir: str) -> Dict[str, Any]:
    """For a sweep's report: the Pareto front of each pair of dimension averages that all
    members have, as `pareto_<x>_<y>.{png,pdf}` plus the table `pareto_<x>_<y>.md`."""
    out: Dict[str, Any] = {}
    averages = report.get("averages") or {}
    for x, y in PARETO_PAIRS:
        if not all(isinstance(a, Mapping) and a.get(x) is not None and a.get(y) is not None
                   for a in averages.values()):
            continue
        stem = os.path.join(out_dir, f"pareto_{x}_{y}")
        table = pareto_table(report, x=x, y=y)
        with open(stem + ".md", "w", encoding="utf-8") as f:
            f.write(table.to_markdown() + "\n")
        out[f"{x}/{y}"] = {"plot": table.plot(stem), "table": stem + ".md", "front": list(table.front)}
    return out
