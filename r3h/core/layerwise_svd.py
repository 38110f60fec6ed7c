"""The `layerwise_svd` core shared by TSVM and R-TSVM, for one matrix tensor.

Task Singular Vectors (Gargiulo et al., arXiv 2412.00081) and R-TSVM (Yang et al.,
arXiv 2502.06876, Sec. 5, Algorithm 1, Appendix A.3), as fixed in r3h's design
card. For one m × d tensor (r = min(m, d)) and n experts:

1. τi = θi − θ0 in float32; thin SVD τi = Ui diag(Si) Viᵀ.
2. Keep each expert's top q = ⌊r/n⌋ triplets, stacked: Û (m × nq), ŝ, V̂ (d × nq).
3. Orthogonalise each stack by its polar factor (the orthogonal Procrustes solution
   of the paper's Eq. 3–4): Û = P Σ Qᵀ gives U⊥ = P Qᵀ; likewise V⊥.
4. STI = ‖(ÛᵀÛ − I) diag(ŝ) (V̂ᵀV̂ − I)‖_F, the interference before orthogonalisation.

TSVM: Δ = U⊥ diag(ŝ) V⊥ᵀ. R-TSVM reweights expert i's block by αi (outlier mass,
Eq. 6–8) and keeps its first ki columns (sparsity-adaptive rank, Eq. 9–10), after
orthogonalisation: Δ = Σi U⊥⁽ⁱ⁾[:, :ki] diag(αi Si[:ki]) V⊥⁽ⁱ⁾[:, :ki]ᵀ.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, List, Optional, Sequence, Tuple

import torch


@contextlib.contextmanager
def cpu_threads(n: Optional[int], device: torch.device) -> Iterator[None]:
    """Run CPU linear algebra with exactly `n` threads (no-op for `None` or a GPU).

    LAPACK's SVD gives bits that depend on its thread count, so a fixed count is what
    makes a merge bit-identical whatever the number of processes. On small 2-core
    machines one thread is also much faster (MKL's threaded SVD measured 5–40× slower);
    parallelism comes from Fabric ranks instead.
    """
    if n is None or torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class StackedFactors:
    """The experts' top-q singular triplets side by side (steps 1–2)."""

    U: torch.Tensor  # m × nq, expert i's block is columns i·q … (i+1)·q − 1
    S: torch.Tensor  # nq
    V: torch.Tensor  # d × nq
    q: int
    n: int

    def block(self, i: int) -> slice:
        return slice(i * self.q, (i + 1) * self.q)


def top_q(r: int, n: int) -> int:
    """q = ⌊r / n⌋ triplets per expert."""
    return r // n


def randomized_svd(
    A: torch.Tensor, k: int, oversample: int = 10, n_iter: int = 4, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k SVD by a randomized range finder with power iterations (Halko et al., 2011).

    The Gaussian test matrix is drawn on CPU from `generator`, so results do not
    depend on the global RNG, the tensor order or the process count.
    Returns U (m × k), S (k), V (d × k).
    """
    m, d = A.shape
    p = min(k + oversample, m, d)
    omega = torch.randn(d, p, generator=generator, dtype=torch.float32).to(A.device)
    Q = torch.linalg.qr(A @ omega).Q
    for _ in range(n_iter):
        Q = torch.linalg.qr(A.T @ Q).Q
        Q = torch.linalg.qr(A @ Q).Q
    Ub, S, Vh = torch.linalg.svd(Q.T @ A, full_matrices=False)
    return (Q @ Ub)[:, :k], S[:k], Vh[:k].T


def expert_svds(
    taus: List[Optional[torch.Tensor]],
    q: int,
    solver: str = "full",
    generators: Optional[Sequence[torch.Generator]] = None,
    oversample: int = 10,
    n_iter: int = 4,
) -> StackedFactors:
    """Steps 1–2: each expert's top-q triplets, stacked side by side.

    Each τi is released from `taus` (set to None) once its SVD is done, and only the
    top-q columns are kept, so memory holds one full SVD at a time.
    """
    Us, Ss, Vs = [], [], []
    for i in range(len(taus)):
        tau, taus[i] = taus[i], None
        U, S, V = expert_svd(tau, q, solver, generators[i] if generators else None, oversample, n_iter)
        del tau
        Us.append(U)
        Ss.append(S)
        Vs.append(V)
    return stack_factors(Us, Ss, Vs, q)


def expert_svd(
    tau: torch.Tensor,
    q: int,
    solver: str = "full",
    generator: Optional[torch.Generator] = None,
    oversample: int = 10,
    n_iter: int = 4,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 1 for one expert: its top-q triplets U (m × q), S (q), V (d × q).

    With the exact solver the first q′ ≤ q columns are those a run with q′ gives, bit for
    bit (the same full SVD, sliced): what lets the SVD cache serve a smaller q.
    """
    if solver == "full":
        U, S, Vh = torch.linalg.svd(tau, full_matrices=False)
        return U[:, :q].clone(), S[:q].clone(), Vh[:q].T.clone()
    if solver == "randomized":
        return randomized_svd(tau, q, oversample, n_iter, generator)
    raise ValueError(f"svd_solver must be 'full' or 'randomized'; got {solver!r}")


def stack_factors(Us: Sequence[torch.Tensor], Ss: Sequence[torch.Tensor], Vs: Sequence[torch.Tensor],
                  q: int) -> StackedFactors:
    """Step 2: the experts' top-q triplets side by side."""
    return StackedFactors(torch.cat(list(Us), dim=1), torch.cat(list(Ss)), torch.cat(list(Vs), dim=1), q, len(Us))


def polar(A: torch.Tensor) -> torch.Tensor:
    """Step 3: the orthogonal polar factor P Qᵀ of A = P Σ Qᵀ (nearest matrix with
    orthonormal columns: the orthogonal Procrustes solution)."""
    P, _, Qh = torch.linalg.svd(A, full_matrices=False)
    return P @ Qh


def interference(f: StackedFactors) -> float:
    """Step 4: STI = ‖(ÛᵀÛ − I) diag(ŝ) (V̂ᵀV̂ − I)‖_F (before orthogonalisation)."""
    eye = torch.eye(f.U.shape[1], dtype=f.U.dtype, device=f.U.device)
    return float(torch.linalg.matrix_norm(((f.U.T @ f.U) - eye) @ torch.diag(f.S) @ ((f.V.T @ f.V) - eye)))


def merge_factors(
    f: StackedFactors, weights: Optional[Sequence[float]] = None, ranks: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """Δ = Σi U⊥⁽ⁱ⁾[:, :ki] diag(αi Si[:ki]) V⊥⁽ⁱ⁾[:, :ki]ᵀ with U⊥, V⊥ the polar factors of
    the full stacks (orthogonalise first, truncate after). αi = 1, ki = q gives TSVM's
    U⊥ diag(ŝ) V⊥ᵀ."""
    return combine(polar(f.U), polar(f.V), f.S, f.q, f.n, weights, ranks)


def combine(
    U_orth: torch.Tensor,
    V_orth: torch.Tensor,
    S: torch.Tensor,
    q: int,
    n: int,
    weights: Optional[Sequence[float]] = None,
    ranks: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Δ from the polar factors U⊥ (m × nq), V⊥ (d × nq) of the stacks and ŝ (nq): expert
    i's block keeps its first ki columns, scaled by αi. The polar factors do not depend on
    α, γ, ε or the weights, so the SVD cache can keep them."""
    scale = S.clone()
    keep = torch.ones_like(scale, dtype=torch.bool)
    for i in range(n):
        b = slice(i * q, (i + 1) * q)
        if weights is not None:
            scale[b] *= float(weights[i])
        if ranks is not None:
            keep[i * q + int(ranks[i]) : (i + 1) * q] = False
    U_orth, V_orth, scale = U_orth[:, keep], V_orth[:, keep], scale[keep]
    return (U_orth * scale) @ V_orth.T


def outlier_mass(tau: torch.Tensor) -> float:
    """Eq. 6–7: per row ρ, μρ = mean |τ|, σρ = sqrt(mean (|τ| − μρ)²) (= sqrt(mean τ² − μρ²));
    T = Σ |τ| over the entries with |τ| ≥ μρ + 3σρ.

    σρ is computed in two passes: the one-pass form mean τ² − μρ² cancels catastrophically
    in float32 when |τ| is nearly constant along a row (Adam's first step, lr·sign(g)), and
    rounds to 0 on some rows, which then count half their entries as outliers."""
    a = tau.abs()
    mu = a.mean(dim=1, keepdim=True)
    sigma = (a - mu).pow(2).mean(dim=1, keepdim=True).sqrt()
    return float((a * (a >= mu + 3 * sigma)).sum())


OUTLIER_READINGS = ("eq8", "inverse", "share")


@dataclass
class OutlierWeights:
    """Expert weights αi of R-TSVM's outlier weighting, how they were chosen, and each
    expert's outlier share si = Ti / Σ|τi| (None where τi is zero)."""

    weights: List[float]
    rule: str  # the reading applied, "equal (guard)" or "equal (no outliers)"
    shares: List[Optional[float]]


def outlier_weights(
    taus: Sequence[torch.Tensor], norm: str = "mean", reading: str = "eq8", min_share: float = 0.0
) -> OutlierWeights:
    """R-TSVM's expert weights from each expert's outlier mass Ti (Eq. 6–7) and L1 mass
    Li = Σ|τi|; see `weights_from_outliers` for the rules."""
    T = [outlier_mass(t) for t in taus]
    L = [float(t.abs().sum(dtype=torch.float64)) for t in taus]
    return weights_from_outliers(T, L, norm, reading, min_share)


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


def sparsity(taus: Sequence[torch.Tensor], epsilon: float, mode: str = "absolute") -> Fraction:
    """Eq. 9: Ω = fraction of the entries of all τi with |τ| < ε, as an exact ratio of
    counts; `relative` mode uses ε · RMS of the stacked τ (DPO updates are far below the
    paper's absolute 0.1)."""
    if mode == "relative":
        total = sum(float(t.pow(2).sum()) for t in taus)
        count = sum(t.numel() for t in taus)
        epsilon = epsilon * (total / count) ** 0.5
    elif mode != "absolute":
        raise ValueError(f"epsilon_mode must be 'absolute' or 'relative'; got {mode!r}")
    small = sum(int((t.abs() < epsilon).sum()) for t in taus)
    return Fraction(small, sum(t.numel() for t in taus))


def rank_budget(r: int, n: int, q: int, omega, gamma: float) -> Tuple[int, List[int]]:
    """Eq. 10: k = ⌊r (1 − γ Ω)⌋ and ki = min(q, max(1, ⌊k / n⌋)) for every expert.

    The floor is taken in exact rational arithmetic (Ω a ratio of counts, γ the decimal
    it was written as), so k = ⌊10 · (1 − 0.75 · 0.8)⌋ is 4, not float rounding's 3.
    """
    k = math.floor(r * (1 - Fraction(repr(float(gamma))) * Fraction(omega)))
    ki = min(q, max(1, k // n))
    return k, [ki] * n
