"""Model Stock (Jang et al., 2024)."""

from __future__ import annotations

from fusion_bench.mixins.serialization import auto_register_config
from r3h.methods.base import MergeAlgorithm
from r3h.ops import model_stock_ratio


@auto_register_config
class ModelStockMerging(MergeAlgorithm):
    """Model Stock: per tensor c = mean over pairs i<j of cos(τi, τj),
    t = n·c / (1 + (n−1)·c), θ = t · mean(θi) + (1 − t) · θ0 (as MergeKit; t not clamped
    for c > 0). Degenerate tensors: a zero τ has cosine 0 with every other τ, and
    c ≤ 0 gives t = 0 (θ = θ0). Needs a base and at least two experts.
    """

    _method_name = "model_stock"
    min_experts = 2

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def merge_tensor(self, name, base, experts):
        experts = list(experts)
        t = model_stock_ratio([e - base for e in experts])
        mean = sum(experts) / len(experts)
        return t * mean + (1 - t) * base
