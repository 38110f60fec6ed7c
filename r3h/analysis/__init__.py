"""Diagnostics of a pool's alignment vectors τi = θi − θ0 (`method=analysis/alignment_vectors`).

`AlignmentVectorAnalysis` is the fusion_bench algorithm (it returns a report, not a
model); `r3h.analysis.alignment_vectors` holds the pure per-tensor functions.
"""

from r3h.analysis.algorithm import AlignmentVectorAnalysis
from r3h.analysis.alignment_vectors import (
    excess_kurtosis,
    expert_stats,
    layer_index,
    layer_summaries,
    module_name,
    pair_stats,
    sign_conflicts,
    summarize,
    tensor_stats,
    tsvm_interference,
)

__all__ = [
    "AlignmentVectorAnalysis",
    "excess_kurtosis",
    "expert_stats",
    "layer_index",
    "layer_summaries",
    "module_name",
    "pair_stats",
    "sign_conflicts",
    "summarize",
    "tensor_stats",
    "tsvm_interference",
]
