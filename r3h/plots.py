"""Figures for 3H results and merge diagnostics (matplotlib, Agg; PNG and PDF): one import
for every figure r3h draws.

- `tradeoff_bars`, `radar`, `pareto_front`, `pareto_mask`, `pareto_table` (`ParetoTable`),
  `write_pareto_plots`: figures of 3H scores and sweeps, from `r3h.evaluation.figures` (the
  task pool draws a sweep's Pareto fronts with them);
- `layer_heatmap`, `analysis_heatmaps` (`merge_report_heatmaps`, `diagnostics_heatmaps`):
  per-layer heatmaps of a TSVM / R-TSVM report or of `method=analysis/alignment_vectors`,
  from `r3h.analysis.heatmaps` (the analysis draws its own with them).

Figures are built on `matplotlib.figure.Figure` directly, never through pyplot, so no global
backend is changed and nothing needs a display. Every plotting function writes `<out_path>.png`
and `<out_path>.pdf` (a `.png`/`.pdf` suffix on `out_path` is dropped) and returns both paths.
"""

from r3h.analysis.heatmaps import (DIAGNOSTIC_METRICS, analysis_heatmaps, diagnostics_heatmaps, layer_heatmap,
                                   merge_report_heatmaps)
from r3h.evaluation.figures import (COLORS, DIMENSION_COLUMNS, LABELS, PARETO_PAIRS, ParetoTable, PathLike,
                                    pareto_front, pareto_mask, pareto_table, radar, save_figure, score_rows,
                                    tradeoff_bars, write_pareto_plots)

__all__ = ["COLORS", "DIMENSION_COLUMNS", "LABELS", "PARETO_PAIRS", "ParetoTable", "PathLike", "save_figure",
           "score_rows", "tradeoff_bars", "radar", "pareto_mask", "pareto_front", "pareto_table",
           "write_pareto_plots", "layer_heatmap", "merge_report_heatmaps", "DIAGNOSTIC_METRICS",
           "diagnostics_heatmaps", "analysis_heatmaps"]
