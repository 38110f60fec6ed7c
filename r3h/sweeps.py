"""The merge sweep, kept importable here: it lives in `r3h.tuning.sweep`. `NamedModelSweep`
is `r3h.modelpool.ModelSweep` (the two were merged). See docs/sweeps.md."""

from r3h.modelpool.sweep import ModelSweep
from r3h.tuning.sweep import SWEEP_OWNED, MergeSweep, format_value, grid_points, member_name

NamedModelSweep = ModelSweep

__all__ = ["MergeSweep", "NamedModelSweep", "grid_points", "member_name", "format_value", "SWEEP_OWNED"]
