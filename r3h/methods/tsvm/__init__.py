"""TSVM and R-TSVM: the classes (`tsvm.py`, `r_tsvm.py`) and the per-matrix algorithm they
share (`matrix.py`: τ, factors, zero experts, the SVD cache's lookups). The linear algebra is
`r3h.ops.svd` and `r3h.ops.rtsvm`; the cache's files `r3h.core.svd_cache`."""

from r3h.methods.tsvm.r_tsvm import RTSVM, TauStatisticsObserver
from r3h.methods.tsvm.tsvm import TSVM

__all__ = ["TSVM", "RTSVM", "TauStatisticsObserver"]
