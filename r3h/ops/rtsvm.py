"""R-TSVM's rules for one matrix (Yang et al., arXiv 2502.06876, Sec. 5, Eq. 6–10), on tensors.

- Eq. 6–7, `outlier_mass`: per row ρ, μρ = mean |τ|, σρ = std |τ|; T = Σ |τ| over |τ| ≥ μρ + 3σρ.
- Eq. 8, `weights_from_outliers`: expert weights αi from the Ti (three readings, a guard).
- Eq. 9, `sparsity_of`: Ω = fraction of the entries of all τi with |τ| < ε (exact counts).
- Eq. 10, `rank_budget`: k = ⌊r (1 − γ Ω)⌋ and ki = min(q, max(1, ⌊k/n⌋)).

`tau_statistics` reads what these need of one τi once (T, Σ|τ|, the count below ε), so
R-TSVM can release each τi once its triplets are taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

import torch


def outlier_mass(tau: torch.Tensor) -> float:
    """Eq. 6–7: per row ρ, μρ = mean |τ|, σρ = sqrt(mean (|τ| − μρ)²) (= sqrt(mean τ² − μρ²));
    T = Σ |τ| over the entries with |τ| ≥ μρ + 3σρ.

    σρ is not computed by the one-pass form mean τ² − μρ², which cancels catastrophically
    in float32 when |τ| is nearly constant along a row (Adam's first step, lr·sign(g)), and
    rounds to 0 on some rows, which then count half their entries as outliers."""
    return _outlier_and_l1(tau.abs())[0]

def _outlier_and_l1(a: torch.Tensor) -> Tuple[float, float]:
    """(T, Σ|τ|) of a = |τ|: torch.var_mean (a stable two-pass reduction) gives μρ and σρ²,
    the few outliers are summed in float64, Σ|τ| = Σρ d·μρ."""
    var, mu = torch.var_mean(a, dim=1, keepdim=True, correction=0)
    threshold = var.sqrt_().mul_(3).add_(mu)
    T = float(a[a >= threshold].sum(dtype=torch.float64))
    L = float(mu.to(torch.float64).sum()) * a.shape[1]
    return T, L

OUTLIER_READINGS = ("eq8", "inverse", "share")

@dataclass
class OutlierWeights:
    """Expert weights αi of R-TSVM's outlier weighting, how they were chosen, and each
    expert's outlier share si = Ti / Σ|τi| (None where τi is zero)."""

    weights: List[float]
    rule: str  # the reading applied, "equal (guard)" or "equal (no outliers)"
    shares: List[Optional[float]]

def weights_from_outliers(
    T: Sequence[float], L: Sequence[float], norm: str = "mean", reading: str = "eq8", min_share: float = 0.0
) -> OutlierWeights:
    """αi = ci / Σj cj, with the score ci of the reading (experts whose τ is zero, Li = 0,
    have ci = 0):

    - `eq8`: ci = Ti (Eq. 8 as written: more outlier mass, more weight);
    - `inverse`: ci = 1 / Ti (Appendix A.1's reading: the weight is reduced in proportion
      to the outlier mass); if some expert with Li > 0 has Ti = 0 the weights are equal;
    - `share`: ci = si = Ti / Li (scale-free: the share of its own L1 mass in outliers).

    `norm`: `sum` uses αi (Σ αi = 1), `mean` n·αi (equal scores give 1). Equal weights
    (1, or 1/n with `sum`) replace them when Σj cj = 0 (rule `equal (no outliers)`) and,
    first, when some expert with Li > 0 has si < `min_share` (rule `equal (guard)`): its Ti
    is too small a part of its task vector to be a signal, and any reading would then
    hand the merge to one side (Eq. 8 drops the expert, the inverse keeps only it).
    """
    if reading not in OUTLIER_READINGS:
        raise ValueError(f"outlier_reading must be one of {', '.join(OUTLIER_READINGS)}; got {reading!r}")
    if norm not in ("mean", "sum"):
        raise ValueError(f"outlier_norm must be 'mean' or 'sum'; got {norm!r}")
    n = len(T)
    shares = [t / l if l > 0 else None for t, l in zip(T, L)]
    live = [s is not None for s in shares]
    rule = reading
    if any(s is not None and s < min_share for s in shares):
        rule, c = "equal (guard)", [0.0] * n
    elif reading == "eq8":
        c = list(T)
    elif reading == "share":
        c = [s if z else 0.0 for s, z in zip(shares, live)]
    elif any(t == 0 for t, z in zip(T, live) if z):  # inverse: 1/0
        c = [0.0] * n
    else:
        c = [1.0 / t if z else 0.0 for t, z in zip(T, live)]
    total = sum(c)
    if total == 0:
        alpha = [1.0 / n] * n
        if rule == reading:
            rule = "equal (no outliers)"
    else:
        alpha = [x / total for x in c]
    return OutlierWeights([n * a for a in alpha] if norm == "mean" else alpha, rule, shares)

def relative_epsilon(taus: Sequence[torch.Tensor], epsilon: float) -> float:
    """ε · RMS of the stacked τ (`epsilon_mode: relative`)."""
    total = sum(float(t.pow(2).sum()) for t in taus)
    count = sum(t.numel() for t in taus)
    return epsilon * (total / count) ** 0.5

@dataclass
class TauStatistics:
    """What R-TSVM needs of one τi, read once: its outlier mass T (Eq. 6–7), L1 mass
    L = Σ|τ|, the count of entries with |τ| < ε (None without ε) and its size."""

    T: float
    L: float
    small: Optional[int]
    numel: int

def tau_statistics(tau: torch.Tensor, epsilon: Optional[float] = None) -> TauStatistics:
    """R-TSVM's statistics of one task vector (ε absolute), so that each τi can be released
    once its triplets are taken (`outlier_weights_of`, `sparsity_of` combine them)."""
    a = tau.abs()
    T, L = _outlier_and_l1(a)
    return TauStatistics(T, L, None if epsilon is None else int(torch.count_nonzero(a < epsilon)), a.numel())

def sparsity_of(stats: Sequence[TauStatistics]) -> Fraction:
    """Eq. 9 from per-expert counts: Ω = Σ small / Σ numel, exact."""
    return Fraction(sum(s.small for s in stats), sum(s.numel for s in stats))

def outlier_weights_of(stats: Sequence[TauStatistics], norm: str = "mean", reading: str = "eq8",
                       min_share: float = 0.0) -> OutlierWeights:
    """`outlier_weights` from per-expert statistics."""
    return weights_from_outliers([s.T for s in stats], [s.L for s in stats], norm, reading, min_share)

def rank_budget(r: int, n: int, q: int, omega, gamma: float) -> Tuple[int, List[int]]:
    """Eq. 10: k = ⌊r (1 − γ Ω)⌋ and ki = min(q, max(1, ⌊k / n⌋)) for every expert.

    The floor is taken in exact rational arithmetic (Ω a ratio of counts, γ the decimal
    it was written as), so k = ⌊10 · (1 − 0.75 · 0.8)⌋ is 4, not float rounding's 3.
    """
    k = math.floor(r * (1 - Fraction(repr(float(gamma))) * Fraction(omega)))
    ki = min(q, max(1, k // n))
    return k, [ki] * n
