"""R-TSVM (Yang et al., arXiv 2502.06876, Sec. 5, Algorithm 1, App. A.3): TSVM with
outlier-aware expert weights αi (Eq. 6–8) and a sparsity-adaptive rank ki (Eq. 9–10) per
matrix, applied after orthogonalisation (`r3h.ops.rtsvm`; docs/r_tsvm.md). The statistics
of each τi are taken as TSVM's steps read it (`TauStatisticsObserver`), so R-TSVM holds one
τ at a time, as TSVM.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from fusion_bench.mixins.serialization import auto_register_config
from r3h.methods.base import check_range
from r3h.methods.tsvm.matrix import TaskVectors
from r3h.methods.tsvm.tsvm import TSVM
from r3h.ops import rtsvm


class TauStatisticsObserver:
    """What R-TSVM needs of each τi (`r3h.ops.rtsvm.tau_statistics`: T, Σ|τ|, the count
    below ε), recorded as `TaskVectors` reads it; `stats[i]` once every τ is read. With
    `relative` ε (ε · RMS of every τ) nothing can be counted before all are read: `start`
    then reads and holds them all, and takes the statistics at once."""

    def __init__(self, n: int, epsilon: float, mode: str = "absolute"):
        self.stats: List[Optional[rtsvm.TauStatistics]] = [None] * n
        self.epsilon, self.mode = epsilon, mode
        self._eps: Optional[float] = epsilon if mode == "absolute" else None

    def __call__(self, i: int, tau: torch.Tensor) -> None:
        if self._eps is not None:
            self.stats[i] = rtsvm.tau_statistics(tau, self._eps)

    def start(self, taus: TaskVectors) -> None:
        if self._eps is None:
            held = taus.all()
            self._eps = rtsvm.relative_epsilon(held, self.epsilon)
            for i, t in enumerate(held):
                self.stats[i] = rtsvm.tau_statistics(t, self._eps)
            del held


@auto_register_config
class RTSVM(TSVM):
    """R-TSVM: TSVM with outlier-aware expert weights and sparsity-adaptive rank.

    Args:
        outlier_weighting: αi from each expert's 3σ outlier mass Ti (Eq. 6–8); default true.
        outlier_reading: how Ti becomes αi ∝ ci: `eq8` (ci = Ti, Eq. 8 as written; default),
            `inverse` (ci = 1/Ti, Appendix A.1's reading; equal weights if some Ti = 0) or
            `share` (ci = Ti / Σ|τi|, scale-free). See `r3h.ops.rtsvm.weights_from_outliers`.
        outlier_norm: `mean` (n·αi, so equal scores give 1; default) or `sum` (αi, Σ αi = 1).
        outlier_min_share: the guard: if some expert's outlier share Ti / Σ|τi| is below it,
            the tensor's weights are equal (report: `alpha_rule: equal (guard)`); in [0, 1],
            default 0.01 (a Gaussian row has ≈ 0.033, Adam-like task vectors ≈ 0); 0 = off.
        rank_selection: keep ki = min(q, max(1, ⌊k/n⌋)) triplets per expert with
            k = ⌊r (1 − γ Ω)⌋ (Eq. 9–10); default true.
        gamma: γ in [0, 1]; default 0.5.
        epsilon: ε > 0 for Ω = fraction of |τ| < ε; default 0.1 (the paper's).
        epsilon_mode: `absolute` (the paper's, default) or `relative` (ε · RMS of the stacked τ).
        alpha, svd_solver, exclude_keys, ...: as TSVM.
    With both switches off R-TSVM equals TSVM. Per tensor the report gives αi, how they were
    chosen (`alpha_rule`), each expert's outlier share, Ω, k, ki and STI. `RESM` is this class
    under the paper's v3 name.
    """

    _method_name = "r_tsvm"

    def __init__(
        self,
        outlier_weighting: bool = True,
        rank_selection: bool = True,
        outlier_norm: str = "mean",
        outlier_reading: str = "eq8",
        outlier_min_share: float = 0.01,
        gamma: float = 0.5,
        epsilon: float = 0.1,
        epsilon_mode: str = "absolute",
        **kwargs,
    ):
        super().__init__(**kwargs)

    def setup(self, names):
        super().setup(names)
        check_range("gamma", float(self.gamma), 0.0, 1.0)
        if not float(self.epsilon) > 0:
            raise ValueError(f"epsilon={self.epsilon} must be > 0")
        if self.epsilon_mode not in ("absolute", "relative"):
            raise ValueError(f"epsilon_mode must be 'absolute' or 'relative'; got {self.epsilon_mode!r}")
        if self.outlier_norm not in ("mean", "sum"):
            raise ValueError(f"outlier_norm must be 'mean' or 'sum'; got {self.outlier_norm!r}")
        if self.outlier_reading not in rtsvm.OUTLIER_READINGS:
            raise ValueError(f"outlier_reading must be one of {', '.join(rtsvm.OUTLIER_READINGS)}; "
                             f"got {self.outlier_reading!r}")
        share = self.outlier_min_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or share != share:
            raise ValueError(f"outlier_min_share must be a number in [0, 1]; got {share!r}")
        check_range("outlier_min_share", float(share), 0.0, 1.0)

    def tau_observer(self, n):
        """Each τi's `TauStatistics`, taken as the factors read it (`TauStatisticsObserver`)."""
        return TauStatisticsObserver(n, float(self.epsilon), self.epsilon_mode)

    def reweighting(self, stats, r, q):
        n = len(stats)
        omega = rtsvm.sparsity_of(stats)
        k, ki = rtsvm.rank_budget(r, n, q, omega, float(self.gamma))
        out = {"weights": None, "ranks": ki if self.rank_selection else None, "omega": omega, "k": k,
               "alpha_rule": "off"}
        if self.outlier_weighting:
            ow = rtsvm.outlier_weights_of(stats, self.outlier_norm, self.outlier_reading, float(self.outlier_min_share))
            out.update(weights=ow.weights, alpha_rule=ow.rule, outlier_share=ow.shares)
        return out
