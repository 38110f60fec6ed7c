"""Isotropic merging of one matrix (Marczak et al., "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces", ICML 2025, arXiv 2502.04959).

Iso-C: M = Σ τi = U diag(σ) Vᵀ → σ̄ U Vᵀ (every singular value replaced by their mean).
Iso-CTS: the top k of M's directions (the common subspace) plus, for each task, the top
(r − k)/n directions of τi with the common subspace projected out, orthogonalised, all
with the mean of their singular values. The merge is θ0 + α · result (the caller's α).
Both follow fusion_bench 0.2.33's `iso_c` / `iso_cts`; τ is given as an iterable that the
functions walk once (Iso-CTS: the sum first, then the iterable again), one τ at a time.
"""

from __future__ import annotations

from typing import Callable, Iterable, Tuple

import torch

from r3h.ops.svd import thin_svd


def iso_c(total: torch.Tensor) -> torch.Tensor:
    """Iso-C of the summed task matrix M = Σ τi: U · mean(σ) · Vᵀ."""
    U, S, Vh = thin_svd(total)
    return (U * S.mean()) @ Vh


def iso_cts_split(shape: Tuple[int, ...], n: int, common_space_fraction: float) -> Tuple[int, int]:
    """(k, d): the common subspace's size and each task's share, d = (r − k)/n with r = min(shape),
    k = ⌊r · fraction⌋ moved so that r − k is a multiple of n (fusion_bench's rounding)."""
    r = min(shape)
    k = int(r * common_space_fraction)
    k = r - round((r - k) / n) * n
    return k, (r - k) // n


def _orthogonal(x: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (rows, if wide): U Vᵀ of x's SVD."""
    U, _, Vh = thin_svd(x)
    return U @ Vh


def iso_cts(total: torch.Tensor, taus: Callable[[], Iterable[torch.Tensor]], n: int,
            common_space_fraction: float) -> Tuple[torch.Tensor, dict]:
    """Iso-CTS of one matrix: M = Σ τi (`total`, released here), `taus()` yields τ1…τn again.

    Returns (merged task matrix, {"common": k, "per_task": d}).
    """
    k, d = iso_cts_split(tuple(total.shape), n, common_space_fraction)
    U, S, Vh = thin_svd(total)
    del total
    Uc, Sc, Vc = U[:, :k], S[:k], Vh[:k]
    del U, S, Vh
    r = min(Uc.shape[0], Vc.shape[1])
    Ub = Uc.new_zeros((Uc.shape[0], r))
    Sb = Sc.new_zeros(r)
    Vb = Vc.new_zeros((r, Vc.shape[1]))
    if d > 0:
        for i, tau in enumerate(taus()):
            tau = tau - Uc @ (Uc.T @ tau)  # remove the common subspace
            u, s, vh = thin_svd(tau)
            Ub[:, i * d:(i + 1) * d] = u[:, :d]
            Sb[i * d:(i + 1) * d] = s[:d]
            Vb[i * d:(i + 1) * d] = vh[:d]
            del tau, u, s, vh
    Ub[:, n * d:n * d + k] = Uc
    Sb[n * d:n * d + k] = Sc
    Vb[n * d:n * d + k] = Vc
    Ub, Vb = _orthogonal(Ub), _orthogonal(Vb)
    return (Ub * Sb.mean()) @ Vb, {"common": k, "per_task": d}
