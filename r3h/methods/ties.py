"""TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint merge."""

from __future__ import annotations

from fusion_bench.mixins.serialization import auto_register_config
from r3h.methods.task_arithmetic import ConsensusMixin, TaskArithmetic, check_density
from r3h.ops import magnitude_mask


@auto_register_config
class TiesMerging(ConsensusMixin, TaskArithmetic):
    """TIES: keep the top-`density` fraction of each τi by |τ| (per tensor), elect a sign
    per entry from Σ wi τ̃i, keep the agreeing entries; `normalize` divides by the sum of
    the agreeing weights (disjoint mean); θ = θ0 + s · result. Matches MergeKit's `ties`.

    Args:
        density: fraction kept, in (0, 1]; default 0.2 (the TIES paper's top-20%).
        consensus: `sum` (default, TIES) or `count` (majority of signs).
        normalize: default true.
        scaling_factor, weights: as in task arithmetic (defaults 0.7 — `normalize` makes the
            sum an average, so s is not 1/n; the toy sweep in docs/methods.md — and 1).
    """

    _method_name = "ties"

    def __init__(self, density: float = 0.2, consensus: str = "sum", normalize: bool = True,
                 scaling_factor: float = 0.7, **kwargs):
        super().__init__(scaling_factor=scaling_factor, **kwargs)

    def setup(self, names):
        super().setup(names)
        check_density(self.density)
        self.check_consensus()

    def sparsify(self, name, index, tau):
        return tau * magnitude_mask(tau, float(self.density))
