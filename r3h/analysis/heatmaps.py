"""Per-layer heatmaps of merge diagnostics (matplotlib, Agg; PNG and PDF).

`layer_heatmap` draws one; `analysis_heatmaps` draws every heatmap of a TSVM / R-TSVM report
(`r3h_merge.json`: Ω, αi, kept rank, STI) or of `method=analysis/alignment_vectors`
(`alignment_vectors.json`: Ω, kurtosis, outlier share, pairwise cosine and sign conflicts).
Figures as in `r3h.evaluation.figures` (no pyplot; `<out_path>.png` and `.pdf`). Import them
from `r3h.plots`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from r3h.evaluation.figures import PathLike, save_figure


# -- per-layer heatmaps -------------------------------------------------------------------

def layer_heatmap(matrix, row_labels: Sequence, col_labels: Sequence, out_path: PathLike, title: str,
                  cbar_label: Optional[str] = None, cmap: str = "viridis", annotate: Optional[bool] = None,
                  vmin: Optional[float] = None, vmax: Optional[float] = None,
                  ylabel: Optional[str] = "layer") -> List[str]:
    """A heatmap of `matrix` [rows, cols] (None/NaN cells left blank). `annotate` prints
    each value (default: when there are at most 300 cells)."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"{title}: matrix must be a non-empty [rows, cols] array; got shape {m.shape}")
    if m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"{title}: matrix is {m.shape} but there are {len(row_labels)} row and "
                         f"{len(col_labels)} column labels")
    rows, cols = m.shape
    fig = Figure(figsize=(min(16.0, 2.5 + 0.9 * cols), min(20.0, 1.5 + 0.28 * max(rows, 6))))
    ax = fig.add_subplot()
    img = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                    interpolation="nearest")
    fig.colorbar(img, ax=ax, label=cbar_label or "")
    ax.set_xticks(range(cols), [str(c) for c in col_labels], rotation=35 if cols > 3 else 0,
                  ha="right" if cols > 3 else "center", fontsize=7)
    step = max(1, rows // 40)
    ax.set_yticks(range(0, rows, step), [str(r) for r in row_labels][::step], fontsize=7)
    if annotate if annotate is not None else m.size <= 300:
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(m[i, j]):
                    r, g, b, _ = img.cmap(img.norm(m[i, j]))
                    ax.text(j, i, f"{m[i, j]:.3g}", ha="center", va="center", fontsize=6,
                            color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, out_path)


def _load_report(report) -> dict:
    if isinstance(report, (str, os.PathLike)):
        path = os.fspath(report)
        if os.path.isdir(path):
            for fn in ("alignment_vectors.json", "r3h_merge.json", "r3h_merge_report.json"):
                if os.path.exists(os.path.join(path, fn)):
                    path = os.path.join(path, fn)
                    break
            else:
                raise FileNotFoundError(f"{path} has no alignment_vectors.json or r3h_merge.json")
        with open(path) as f:
            return json.load(f)
    if not isinstance(report, Mapping):
        raise TypeError(f"report must be a dict or a path; got {type(report).__name__}")
    return dict(report)


def _grid(cells: Dict[Tuple[int, str], List[float]], cols: Sequence[str]):
    """{(layer, column): values} → (rows sorted by layer, mean per cell, NaN where empty)."""
    layers = sorted({L for L, _ in cells})
    m = np.full((len(layers), len(cols)), np.nan)
    for (L, c), vs in cells.items():
        if vs:
            m[layers.index(L), list(cols).index(c)] = float(np.mean(vs))
    return layers, m


def merge_report_heatmaps(report: Mapping, out_dir: PathLike) -> Dict[str, List[str]]:
    """Heatmaps of a TSVM / R-TSVM `r3h_merge.json`, over the layers' SVD matrices:
    Ω (R-TSVM) and STI per layer × module, αi per layer × expert (mean over the layer's
    matrices), kept rank per layer × module (mean over the experts left in of k_i / q)."""
    tensors = report.get("tensors")
    if not isinstance(tensors, Mapping) or not tensors:
        raise ValueError("the merge report has no per-tensor records ('tensors'): was it written by tsvm or r_tsvm?")
    from r3h.analysis.alignment_vectors import layer_index, module_name

    experts = list(report.get("models") or {})
    recs = [(layer_index(n), module_name(n), r) for n, r in tensors.items() if r.get("rule") == "svd"]
    recs = [(L, mod, r) for L, mod, r in recs if L is not None]
    if not recs:
        raise ValueError("the merge report has no SVD-merged matrix inside the layers to plot")
    modules = sorted({mod for _, mod, _ in recs})
    n = len(recs[0][2].get("alpha", [])) or len(experts)
    experts = experts if len(experts) == n else [f"expert {i}" for i in range(n)]
    cells = {k: {} for k in ("omega", "sti", "kept", "alpha")}
    for L, mod, r in recs:
        for key in ("omega", "sti"):
            if r.get(key) is not None:
                cells[key].setdefault((L, mod), []).append(float(r[key]))
        zero = set(r.get("zero_experts", []))
        if r.get("k_i") and r.get("q"):
            kept = [k / r["q"] for i, k in enumerate(r["k_i"]) if i not in zero]
            cells["kept"].setdefault((L, mod), []).append(float(np.mean(kept)) if kept else 0.0)
        for i, a in enumerate(r.get("alpha") or []):
            if i not in zero:
                cells["alpha"].setdefault((L, experts[i]), []).append(float(a))
    method = report.get("method", "merge")
    unit = {"vmin": 0.0, "vmax": 1.0}  # fractions
    specs = {
        "omega": (modules, f"{method}: sparsity Ω per layer", "Ω", "merge_omega", unit),
        "sti": (modules, f"{method}: interference STI per layer", "STI", "merge_sti", {}),
        "kept": (modules, f"{method}: kept rank k_i / q per layer", "k_i / q", "merge_kept_rank", unit),
        "alpha": (experts, f"{method}: expert weight α_i per layer", "α_i", "merge_alpha", {}),
    }
    out = {}
    for key, (cols, title, label, fn, kw) in specs.items():
        if cells[key]:
            layers, m = _grid(cells[key], cols)
            out[fn] = layer_heatmap(m, layers, cols, Path(out_dir) / fn, title, cbar_label=label, **kw)
    return out


DIAGNOSTIC_METRICS = {
    "omega_abs": "sparsity Ω (|τ| < ε)",
    "omega_rel": "sparsity Ω (|τ| < ε·RMS)",
    "kurtosis": "excess kurtosis of τ",
    "outlier_share": "3σ outlier share of Σ|τ|",
    "rel_norm": "‖τ‖ / ‖θ0‖",
}


def diagnostics_heatmaps(report: Mapping, out_dir: PathLike) -> Dict[str, List[str]]:
    """Heatmaps of `alignment_vectors.json`: each per-layer metric (`DIAGNOSTIC_METRICS`)
    per layer × expert, and the whole-model pairwise cosine and sign-conflict rate."""
    experts = list(report.get("experts") or [])
    if not experts:
        raise ValueError("the diagnostics report names no experts")
    out = {}
    layers = report.get("layers") or []
    for metric, title in DIAGNOSTIC_METRICS.items():
        if layers:
            m = [[lay["experts"][e][metric] for e in experts] for lay in layers]
            out[f"alignment_{metric}"] = layer_heatmap(
                m, [lay["layer"] for lay in layers], experts, Path(out_dir) / f"alignment_{metric}",
                f"{title} per layer", cbar_label=metric)
    pairs = (report.get("summary") or {}).get("pairs") or []
    if pairs:
        idx = {e: i for i, e in enumerate(experts)}
        for metric, title, diag, cmap in (("cosine", "cosine of τa, τb", 1.0, "coolwarm"),
                                          ("sign_conflict", "sign-conflict rate", np.nan, "magma")):
            m = np.full((len(experts), len(experts)), np.nan)
            np.fill_diagonal(m, diag)
            for p in pairs:
                v = np.nan if p[metric] is None else p[metric]
                m[idx[p["a"]], idx[p["b"]]] = m[idx[p["b"]], idx[p["a"]]] = v
            kw = {"vmin": -1.0, "vmax": 1.0} if metric == "cosine" else {}
            out[f"alignment_{metric}"] = layer_heatmap(m, experts, experts, Path(out_dir) / f"alignment_{metric}",
                                                       f"{title} (whole model)", cbar_label=metric, cmap=cmap,
                                                       ylabel=None, **kw)
    return out


def analysis_heatmaps(report, out_dir: PathLike) -> Dict[str, List[str]]:
    """All heatmaps of a report (dict, JSON path or the folder holding it): a diagnostics
    report (`alignment_vectors.json`) or a TSVM / R-TSVM merge report (`r3h_merge.json`).
    Returns {figure name: [png, pdf]}."""
    report = _load_report(report)
    if report.get("kind") == "alignment_vectors":
        return diagnostics_heatmaps(report, out_dir)
    if "tensors" in report:
        return merge_report_heatmaps(report, out_dir)
    raise ValueError("not a report r3h can plot: expected alignment_vectors.json "
                     "(kind: alignment_vectors) or a tsvm / r_tsvm r3h_merge.json (with 'tensors')")
