"""Float64 references of TSVM and R-TSVM written from the design card (docs/r_tsvm.md), and
the data the tests feed them (low-rank task vectors with spikes).

They never call `r3h`: SVDs, polar factors, outlier mass, sparsity, rank budgets and the merged
Δ are recomputed here in float64 from θ's read back in float64. Used by tests/methods/test_tsvm.py,
tests/analysis/test_analysis.py and tests/reference/analysis.py.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import List, Sequence

import torch

F64 = torch.float64


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------

def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def orthonormal(m: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(m, k, generator=g, dtype=F64)).Q


def lowrank_tau(shape, g, scale=1.0, rank=None, noise=1e-3, lo=0.4) -> torch.Tensor:
    """Σ_j s_j a_j b_jᵀ with s linearly spaced from `scale` down to `lo·scale` (distinct,
    ~1.5 % gaps at most r = 40) plus a little Gaussian noise (spectral norm ≈ 2·noise·scale)."""
    m, d = shape
    rank = min(m, d) if rank is None else rank
    s = scale * torch.linspace(1.0, lo, rank, dtype=F64)
    tau = orthonormal(m, rank, g) @ torch.diag(s) @ orthonormal(d, rank, g).T
    return tau + noise * scale * torch.randn(m, d, generator=g, dtype=F64) / math.sqrt(max(m, d))


def add_spikes(tau: torch.Tensor, count: int, g: torch.Generator, size: float) -> torch.Tensor:
    """`count` entries of magnitude ≈ `size` at random places (outliers for Eq. 6–7)."""
    tau = tau.clone()
    idx = torch.randperm(tau.numel(), generator=g)[:count]
    signs = torch.where(torch.rand(count, generator=g) < 0.5, -1.0, 1.0).to(F64)
    tau.view(-1)[idx] = signs * size * (1 + torch.rand(count, generator=g, dtype=F64))
    return tau


def make_case(shape, n, seed, scales=None, spikes=None, base_scale=0.3):
    """float32 θ0 and θ1…θn = θ0 + τi with low-rank + noise τi (optionally with outliers)."""
    g = gen(seed)
    base = (base_scale * torch.randn(shape, generator=g, dtype=F64)).float()
    scales = scales or [1.0 + 0.25 * i for i in range(n)]
    experts = []
    for i in range(n):
        tau = lowrank_tau(shape, g, scale=scales[i])
        if spikes and spikes[i]:
            rms = float(tau.pow(2).mean().sqrt())
            tau = add_spikes(tau, spikes[i], g, size=6 * rms)
        experts.append((base.double() + tau).float())
    return base, experts


def taus64(base, experts) -> List[torch.Tensor]:
    return [e.double() - base.double() for e in experts]


# ---------------------------------------------------------------------------------------
# float64 references (from r_tsvm.md; no r3h code)
# ---------------------------------------------------------------------------------------

def ref_polar(A: torch.Tensor) -> torch.Tensor:
    """A = P Σ Qᵀ → P Qᵀ."""
    P, _, Qh = torch.linalg.svd(A, full_matrices=False)
    return P @ Qh


def ref_factors(taus: Sequence[torch.Tensor], q: int):
    """Each expert's top-q triplets by a float64 SVD: lists of (U_i, S_i, V_i)."""
    out = []
    for t in taus:
        U, S, Vh = torch.linalg.svd(t, full_matrices=False)
        out.append((U[:, :q], S[:q], Vh[:q].T))
    return out


def ref_stack(factors):
    Uh = torch.cat([f[0] for f in factors], dim=1)
    s = torch.cat([f[1] for f in factors])
    Vh = torch.cat([f[2] for f in factors], dim=1)
    return Uh, s, Vh


def ref_sti(factors) -> float:
    Uh, s, Vh = ref_stack(factors)
    eye = torch.eye(Uh.shape[1], dtype=F64)
    return float(torch.linalg.matrix_norm((Uh.T @ Uh - eye) @ torch.diag(s) @ (Vh.T @ Vh - eye)))


def ref_tsvm_delta_from_factors(factors) -> torch.Tensor:
    """TSVM: Δ = U⊥ diag(ŝ) V⊥ᵀ with U⊥, V⊥ the polar factors of the stacks."""
    Uh, s, Vh = ref_stack(factors)
    return ref_polar(Uh) @ torch.diag(s) @ ref_polar(Vh).T


def ref_rtsvm_delta_from_factors(factors, weights, ranks) -> torch.Tensor:
    """R-TSVM: orthogonalise the full stacks first, then Σi U⊥⁽ⁱ⁾[:, :ki] diag(αi Si[:ki]) V⊥⁽ⁱ⁾[:, :ki]ᵀ."""
    Uh, s, Vh = ref_stack(factors)
    Uo, Vo = ref_polar(Uh), ref_polar(Vh)
    q = factors[0][1].numel()
    delta = torch.zeros(Uh.shape[0], Vh.shape[0], dtype=F64)
    for i, (w, k) in enumerate(zip(weights, ranks)):
        cols = slice(i * q, i * q + k)
        delta += Uo[:, cols] @ torch.diag(w * s[cols]) @ Vo[:, cols].T
    return delta


def ref_tsvm(base, experts):
    taus = taus64(base, experts)
    n, r = len(taus), min(base.shape)
    q = r // n
    factors = ref_factors(taus, q)
    return ref_tsvm_delta_from_factors(factors), {"q": q, "sti": ref_sti(factors)}


def ref_outlier_mass(tau: torch.Tensor) -> float:
    """Eq. 6–7 row by row: T = Σ |τ| over entries with |τ| ≥ μρ + 3σρ, σρ the population
    standard deviation of the row's |τ| (= sqrt(mean τ² − μρ²)); a vector is one row."""
    total = 0.0
    for row in tau.abs().reshape(1, -1) if tau.dim() == 1 else tau.abs():
        mu = row.mean()
        sigma = (row - mu).pow(2).mean().sqrt()
        total += float(row[row >= mu + 3 * sigma].sum())
    return total


def ref_weights(taus, norm: str, reading: str = "eq8", min_share: float = 0.01):
    """(αi, rule): Eq. 8 as written (αi ∝ Ti), the appendix's inverse reading (αi ∝ 1/Ti;
    equal if some nonzero expert has Ti = 0) or the scale-free share (αi ∝ Ti / Σ|τi|),
    replaced by equal weights when some nonzero expert's share is below `min_share`."""
    n = len(taus)
    T = [ref_outlier_mass(t) for t in taus]
    L = [float(t.abs().sum()) for t in taus]
    nonzero = [i for i in range(n) if L[i] > 0]
    equal = [1.0] * n if norm == "mean" else [1.0 / n] * n
    if any(T[i] / L[i] < min_share for i in nonzero):
        return equal, "equal (guard)"
    if reading == "eq8":
        score = T
    elif reading == "share":
        score = [T[i] / L[i] if i in nonzero else 0.0 for i in range(n)]
    elif any(T[i] == 0 for i in nonzero):
        return equal, "equal (no outliers)"
    else:
        score = [1.0 / T[i] if i in nonzero else 0.0 for i in range(n)]
    if sum(score) == 0:
        return equal, "equal (no outliers)"
    alpha = [x / sum(score) for x in score]
    return ([n * a for a in alpha] if norm == "mean" else alpha), reading


def ref_omega_counts(taus, epsilon: float, mode: str):
    """Eq. 9: (number of entries with |τ| < ε, number of entries), ε·RMS in relative mode."""
    stacked = torch.stack(taus)
    if mode == "relative":
        epsilon = epsilon * float(stacked.pow(2).mean().sqrt())
    return int((stacked.abs() < epsilon).sum()), stacked.numel()


def ref_rank_budget(r: int, n: int, q: int, small: int, total: int, gamma: float):
    """Eq. 10 in exact rational arithmetic: k = ⌊r (1 − γ Ω)⌋, ki = min(q, max(1, ⌊k/n⌋))."""
    k = math.floor(Fraction(r) * (1 - Fraction(gamma) * Fraction(small, total)))
    return k, min(q, max(1, k // n))


def ref_rtsvm(base, experts, outlier_weighting=True, rank_selection=True, outlier_norm="mean",
              gamma=0.5, epsilon=0.1, epsilon_mode="absolute", outlier_reading="eq8", outlier_min_share=0.01):
    taus = taus64(base, experts)
    n, r = len(taus), min(base.shape)
    q = r // n
    factors = ref_factors(taus, q)
    small, total = ref_omega_counts(taus, epsilon, epsilon_mode)
    k, ki = ref_rank_budget(r, n, q, small, total, gamma)
    weights, rule = ref_weights(taus, outlier_norm, outlier_reading, outlier_min_share)
    if not outlier_weighting:
        weights, rule = [1.0] * n, "off"
    ranks = [ki] * n if rank_selection else [q] * n
    delta = ref_rtsvm_delta_from_factors(factors, weights, ranks)
    return delta, {"q": q, "sti": ref_sti(factors), "alpha": weights, "k_i": ranks,
                   "omega": small / total, "k": k, "alpha_rule": rule}
