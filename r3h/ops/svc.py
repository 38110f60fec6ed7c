"""Singular value calibration of a merged matrix (SVC; "When Shared Knowledge Hurts: Spectral
Over-Accumulation in Model Merging", arXiv 2602.05536, Algorithm 1).

With Δ = θmerged − θ0 = U diag(σ) Vᵀ, the response of expert i in the subspace r is
a_r^i = u_rᵀ τi and the merge's a_r = u_rᵀ Δ = σr vrᵀ. The projection coefficient
s_r^i = ⟨a_r, a_r^i⟩ / ‖a_r^i‖² (> 1: the merge over-counts task i along u_r) gives each
subspace the factor γr = n / Σi max(α, s_r^i), and the calibrated matrix is
θ0 + U diag(γ σ) Vᵀ. A zero response (‖a_r^i‖ = 0) counts as α, as in fusion_bench
0.2.33's `subspace_consistency_spectral_calibration_accelerated`, which clamps
‖a_r^i‖² ≥ 1e-12 and maps NaN and −∞ to α; here the τi are taken one at a time.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import torch

from r3h.ops.svd import thin_svd


def svc_factors(delta: torch.Tensor, taus: Iterable[torch.Tensor], alpha: float):
    """(U, σ, Vᵀ, γ) of the merged task matrix Δ, the τi taken one at a time."""
    U, S, Vh = thin_svd(delta)
    Ut = U.T
    total = torch.zeros_like(S)
    n = 0
    for tau in taus:
        a = Ut @ tau  # r × k: every subspace's response of this expert
        norm2 = (a * a).sum(dim=1).clamp_min(1e-12)
        s = S * (a * Vh).sum(dim=1) / norm2  # ⟨σr vr, a_r^i⟩ / ‖a_r^i‖²
        s = torch.nan_to_num(s, nan=alpha, neginf=alpha)
        total += torch.clamp(s, min=alpha)
        n += 1
        del a, norm2, s, tau
    return U, S, Vh, n / total


def svc(delta: torch.Tensor, taus: Iterable[torch.Tensor], alpha: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The calibrated merged task matrix U diag(γ σ) Vᵀ, and γ."""
    U, S, Vh, gamma = svc_factors(delta, taus, float(alpha))
    return (U * (gamma * S)) @ Vh, gamma
