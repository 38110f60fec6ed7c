"""DELLA-Merging (Deep et al., 2024): MagPrune, then task arithmetic or TIES."""

from __future__ import annotations

from fusion_bench.mixins.serialization import auto_register_config
from r3h.methods.task_arithmetic import (
    ConsensusMixin,
    TaskArithmetic,
    check_density,
    check_rescale,
)
from r3h.ops import magprune_mask, rescale_kept, tensor_generator


@auto_register_config
class DellaMerging(TaskArithmetic):
    """DELLA: MagPrune each τi (within each row the keep probability rises linearly with
    the rank of |τ| from density − ε to density + ε), rescale the kept entries, then
    θ = θ0 + s · Σ wi τ̃i. r3h's `della` is MergeKit's `della_linear`.

    Args:
        density: mean keep probability, in (0, 1]; default 0.5.
        epsilon: ε ≥ 0 with 0 < density − ε and density + ε ≤ 1; default 0.1.
        rescale: `inverse` (÷ each entry's keep probability; default), `l1` or `none`.
        seed: default 42 (masks seeded by (seed, tensor name, expert index)).
        scaling_factor, weights: as in task arithmetic (defaults 0.2 and 1).
    """

    _method_name = "della"

    def __init__(self, density: float = 0.5, epsilon: float = 0.1, rescale: str = "inverse", seed: int = 42, **kwargs):
        super().__init__(**kwargs)

    def setup(self, names):
        super().setup(names)
        check_density(self.density)
        check_rescale(self.rescale)
        d, e = float(self.density), float(self.epsilon)
        if e < 0:
            raise ValueError(f"epsilon={e} must be ≥ 0")
        if d < 1 and not (d - e > 0 and d + e <= 1):
            raise ValueError(f"epsilon={e}: density ± epsilon must lie in (0, 1] (density={d})")

    def sparsify(self, name, index, tau):
        mask, p = magprune_mask(tau, float(self.density), float(self.epsilon), tensor_generator(self.seed, name, index))
        return rescale_kept(tau, mask, p, self.rescale)


@auto_register_config
class DellaTiesMerging(ConsensusMixin, DellaMerging):
    """DELLA-TIES: MagPrune, then TIES's sign election; `normalize: true` by default
    (MergeKit's `della`).

    Args: as `della`, plus `consensus` (`sum`) and `normalize` (true); `scaling_factor`
    defaults to 0.5 (`normalize` makes the sum an average; the toy sweep in docs/methods.md).
    """

    _method_name = "della_ties"

    def __init__(self, consensus: str = "sum", normalize: bool = True, scaling_factor: float = 0.5, **kwargs):
        super().__init__(scaling_factor=scaling_factor, **kwargs)

    def setup(self, names):
        super().setup(names)
        self.check_consensus()
