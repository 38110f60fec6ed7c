"""Whole-matrix forms of TSVM and R-TSVM's steps, every τi held at once.

The merge streams one τ at a time (`r3h.methods.tsvm.matrix`); the analysis, the tests and
the benchmarks want the same steps on a list of task vectors: each expert's top-q triplets
stacked (`expert_svds`), STI from the stacks (`interference`), Δ from the stacks
(`merge_factors`), R-TSVM's weights and Ω from the τi (`outlier_weights`, `sparsity`).
They call the functions of `r3h.ops.svd` and `r3h.ops.rtsvm`.
"""

from __future__ import annotations

from fractions import Fraction
from typing import List, Optional, Sequence

import torch

from r3h.ops.rtsvm import OutlierWeights, outlier_weights_of, relative_epsilon, tau_statistics
from r3h.ops.svd import StackedFactors, combine, interference_from_grams, polar, top_triplets


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
        U, S, V = top_triplets(tau, q, solver, generators[i] if generators else None, oversample, n_iter)[0]
        del tau
        Us.append(U)
        Ss.append(S)
        Vs.append(V)
    return stack_factors(Us, Ss, Vs, q)

def stack_factors(Us: Sequence[torch.Tensor], Ss: Sequence[torch.Tensor], Vs: Sequence[torch.Tensor],
                  q: int) -> StackedFactors:
    """Step 2: the experts' top-q triplets side by side."""
    return StackedFactors(torch.cat(list(Us), dim=1), torch.cat(list(Ss)), torch.cat(list(Vs), dim=1), q, len(Us))

def interference(f: StackedFactors) -> float:
    """Step 4: STI = ‖(ÛᵀÛ − I) diag(ŝ) (V̂ᵀV̂ − I)‖_F (before orthogonalisation)."""
    return interference_from_grams(f.U.T @ f.U, f.V.T @ f.V, f.S)

def merge_factors(
    f: StackedFactors, weights: Optional[Sequence[float]] = None, ranks: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """Δ = Σi U⊥⁽ⁱ⁾[:, :ki] diag(αi Si[:ki]) V⊥⁽ⁱ⁾[:, :ki]ᵀ with U⊥, V⊥ the polar factors of
    the full stacks (orthogonalise first, truncate after). αi = 1, ki = q gives TSVM's
    U⊥ diag(ŝ) V⊥ᵀ."""
    return combine(polar(f.U), polar(f.V), f.S, f.q, f.n, weights, ranks)

def outlier_weights(
    taus: Sequence[torch.Tensor], norm: str = "mean", reading: str = "eq8", min_share: float = 0.0
) -> OutlierWeights:
    """R-TSVM's expert weights from each expert's outlier mass Ti (Eq. 6–7) and L1 mass
    Li = Σ|τi|; see `weights_from_outliers` for the rules."""
    return outlier_weights_of([tau_statistics(t) for t in taus], norm, reading, min_share)

def sparsity(taus: Sequence[torch.Tensor], epsilon: float, mode: str = "absolute") -> Fraction:
    """Eq. 9: Ω = fraction of the entries of all τi with |τ| < ε, as an exact ratio of
    counts; `relative` mode uses ε · RMS of the stacked τ (DPO updates are far below the
    paper's absolute 0.1)."""
    if mode == "relative":
        epsilon = relative_epsilon(taus, epsilon)
    elif mode != "absolute":
        raise ValueError(f"epsilon_mode must be 'absolute' or 'relative'; got {mode!r}")
    small = sum(int(torch.count_nonzero(t.abs() < epsilon)) for t in taus)
    return Fraction(small, sum(t.numel() for t in taus))
