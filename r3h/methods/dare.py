"""DARE (Yu et al., 2024): random drop and rescale, then task arithmetic or TIES."""

from __future__ import annotations

from fusion_bench.mixins.serialization import auto_register_config
from r3h.methods.task_arithmetic import (
    ConsensusMixin,
    TaskArithmetic,
    check_density,
    check_rescale,
)
from r3h.ops import dare_mask, rescale_kept, tensor_generator


@auto_register_config
class DareMerging(TaskArithmetic):
    """DARE: drop each entry of τi with probability 1 − `density`, rescale the kept ones,
    then θ = θ0 + s · Σ wi τ̃i.

    The mask of tensor `name` for expert i comes from a generator seeded by
    (seed, name, i): bit-identical output whatever the tensor order or process count.

    Args:
        density: keep probability, in (0, 1]; default 0.5.
        rescale: `inverse` (÷ density, the paper's rule; default), `l1` (MergeKit since
            2025: match ‖τ‖₁) or `none`.
        seed: default 42.
        scaling_factor, weights: as in task arithmetic (defaults 0.2 and 1).
    """

    _method_name = "dare"

    def __init__(self, density: float = 0.5, rescale: str = "inverse", seed: int = 42, **kwargs):
        super().__init__(**kwargs)

    def setup(self, names):
        super().setup(names)
        check_density(self.density)
        check_rescale(self.rescale)

    def sparsify(self, name, index, tau):
        mask, p = dare_mask(tau, float(self.density), tensor_generator(self.seed, name, index))
        return rescale_kept(tau, mask, p, self.rescale)


@auto_register_config
class DareTies(ConsensusMixin, DareMerging):
    """DARE-TIES: DARE's random drop and rescale, then TIES's sign election.
    `normalize: false` by default (the sum of the agreeing entries), as MergeKit's `dare_ties`.

    Args: as `dare`, plus `consensus` (`sum`) and `normalize` (false).
    """

    _method_name = "dare_ties"

    def __init__(self, consensus: str = "sum", normalize: bool = False, **kwargs):
        super().__init__(**kwargs)

    def setup(self, names):
        super().setup(names)
        self.check_consensus()
