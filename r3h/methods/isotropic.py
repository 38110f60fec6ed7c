"""Iso-C and Iso-CTS (Marczak et al., "No Task Left Behind: Isotropic Model Merging with
Common and Task-Specific Subspaces", ICML 2025, arXiv 2502.04959), streamed per matrix."""

from __future__ import annotations

import math

from fusion_bench.mixins.serialization import auto_register_config
from r3h.methods.base import MergeAlgorithm, check_range
from r3h.ops import iso_c, iso_cts


def check_scaling(value) -> None:
    if not math.isfinite(float(value)):
        raise ValueError(f"scaling_factor={value} is not a finite number")


def sum_taus(base, experts):
    """Σ τi, each τi = θi − θ0 formed from its fresh read and released before the next."""
    total = None
    for e in experts:
        total = e - base if total is None else total.add_(e).sub_(base)
        del e
    return total


@auto_register_config
class IsoC(MergeAlgorithm):
    """Iso-C: per matrix M = Σ τi = U diag(σ) Vᵀ, θ = θ0 + α · mean(σ) U Vᵀ (the spectrum made
    flat); a tensor that is not a matrix takes θ0 + α · mean τi (fusion_bench's `iso_c`).

    Args:
        scaling_factor: α; default 0.7 (chosen by the toy sweep in docs/methods.md;
            fusion_bench's config 1.0, the paper searches α in (0, 3]).
    """

    _method_name = "iso_c"

    def __init__(self, scaling_factor: float = 0.7, **kwargs):
        super().__init__(**kwargs)

    def setup(self, names):
        check_scaling(self.scaling_factor)

    def merge_tensor(self, name, base, experts):
        total = sum_taus(base, experts)
        if base.dim() == 2:
            merged = iso_c(total)
            self.record(name, rule="iso_c")
        else:
            merged = total.div_(len(experts))
            self.record(name, rule="mean")
        return merged.mul_(float(self.scaling_factor)).add_(base)


@auto_register_config
class IsoCTS(MergeAlgorithm):
    """Iso-CTS: per matrix the top k = ⌊r · `common_space_fraction`⌋ directions of Σ τi (k
    rounded so that each of the n tasks gets d = (r − k)/n) and each task's top d directions
    of τi with the common subspace projected out, orthogonalised, with their mean singular
    value; θ = θ0 + α · that. A tensor that is not a matrix takes θ0 + α · mean τi
    (fusion_bench's `iso_cts`). Each τi is read twice: for the sum, then for its residual.

    Args:
        scaling_factor: α; default 0.7 (as Iso-C: chosen by the toy sweep).
        common_space_fraction: k / r, in [0, 1]; default 0.8 (the paper's and fusion_bench's).
    """

    _method_name = "iso_cts"

    def __init__(self, scaling_factor: float = 0.7, common_space_fraction: float = 0.8, **kwargs):
        super().__init__(**kwargs)

    def setup(self, names):
        check_scaling(self.scaling_factor)
        check_range("common_space_fraction", float(self.common_space_fraction), 0.0, 1.0)

    def merge_tensor(self, name, base, experts):
        total = sum_taus(base, experts)
        if base.dim() == 2:
            merged, split = iso_cts(total, lambda: (e.sub_(base) for e in experts), len(experts),
                                    float(self.common_space_fraction))
            self.record(name, rule="iso_cts", **split)
        else:
            merged = total.div_(len(experts))
            self.record(name, rule="mean")
        return merged.mul_(float(self.scaling_factor)).add_(base)
