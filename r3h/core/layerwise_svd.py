"""Moved: the linear algebra of TSVM / R-TSVM is `r3h.ops.svd` (SVD, polar factors, STI, Δ)
and `r3h.ops.rtsvm` (Eq. 6–10); the per-matrix algorithm `r3h.methods.tsvm.matrix`; the
whole-matrix helpers `r3h.analysis.matrices`. This name re-exports the `ops` functions so
that older imports still work; new code imports them from `r3h.ops`."""

from r3h.ops.rtsvm import *  # noqa: F401,F403
from r3h.ops.rtsvm import _outlier_and_l1  # noqa: F401
from r3h.ops.svd import *  # noqa: F401,F403
from r3h.ops.svd import _apply_right, _gram  # noqa: F401
