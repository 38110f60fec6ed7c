"""Float64 references of the 2025–26 merges (Iso-C, Iso-CTS, WUDI, RAM, RAM+) and of SVC
calibration, written from their papers' definitions (docs/methods/*.md).

No r3h code inside: Iso-C's polar factor comes from an eigendecomposition, Iso-CTS is written
with NumPy's SVD, WUDI differentiates its loss with autograd as the paper writes it, RAM counts
entry by entry, SVC loops over the subspaces. Used by tests/methods/test_recent_methods.py.
"""

from __future__ import annotations

import numpy as np
import torch


def ref_iso_c(taus):
    """mean(σ) · U Vᵀ of M = Σ τi, the polar factor from the eigendecomposition of MᵀM (or MMᵀ)."""
    M = sum(taus)
    wide = M.shape[0] < M.shape[1]
    A = M.T if wide else M
    evals, V = torch.linalg.eigh(A.T @ A)
    sigma = evals.clamp(min=0).sqrt()
    polar = A @ V @ torch.diag(1 / sigma) @ V.T
    out = sigma.mean() * polar
    return out.T if wide else out


def ref_iso_cts(taus, fraction):
    """Iso-CTS as the paper writes it, with NumPy."""
    T = [t.numpy() for t in taus]
    n, r = len(T), min(T[0].shape)
    k = int(r * fraction)
    k = r - round((r - k) / n) * n
    d = (r - k) // n
    U, S, Vh = np.linalg.svd(sum(T), full_matrices=False)
    Uc, Sc, Vc = U[:, :k], S[:k], Vh[:k]
    us, ss, vs = [], [], []
    for t in T:
        res = t - Uc @ Uc.T @ t
        u, s, vh = np.linalg.svd(res, full_matrices=False)
        us.append(u[:, :d]), ss.append(s[:d]), vs.append(vh[:d])
    Ub = np.concatenate(us + [Uc], axis=1)
    Sb = np.concatenate(ss + [Sc])
    Vb = np.concatenate(vs + [Vc], axis=0)

    def orth(x):
        u, _, vh = np.linalg.svd(x, full_matrices=False)
        return u @ vh

    return torch.from_numpy(orth(Ub) @ (Sb.mean() * orth(Vb)))


def ref_wudi(taus, iterations, lr, norm="squared"):
    """τm from Σ τi, Adam on Σi ‖(τm − τi) τiᵀ‖² / wi by autograd (the paper's loss as written)."""
    tvs = torch.stack(taus)
    tm = torch.nn.Parameter(tvs.sum(0).clone())
    sq = tvs.reshape(len(taus), -1).pow(2).sum(1)
    w = sq if norm == "squared" else sq.sqrt()
    opt = torch.optim.Adam([tm], lr=lr)
    for _ in range(iterations):
        loss = sum(((tm - t) @ t.T).pow(2).sum() / wi for t, wi in zip(tvs, w))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tm.detach()


def ref_ram(taus, eps, r=None, alpha=None, rho=None):
    """Entry by entry: who updated it (|τi| > ε); kept whole if one expert did (RAM+: times
    λi), averaged over those who did otherwise. `rho` (per expert) overrides the tensor's."""
    n = len(taus)
    flat = [t.reshape(-1).tolist() for t in taus]
    updaters = [[i for i in range(n) if abs(flat[i][j]) > eps] for j in range(len(flat[0]))]
    lam = [1.0] * n
    if r is not None:
        if rho is None:
            shared = [sum(1 for u in updaters if i in u and len(u) > 1) for i in range(n)]
            unique = [sum(1 for u in updaters if u == [i]) for i in range(n)]
            rho = [s / max(u, eps) for s, u in zip(shared, unique)]
        lam = [1 + r * min(max(p, 0.0), alpha) for p in rho]
    out = []
    for j, u in enumerate(updaters):
        if len(u) == 1:
            out.append(flat[u[0]][j] * lam[u[0]])
        else:
            out.append(sum(flat[i][j] for i in u) / max(len(u), 1))
    return torch.tensor(out, dtype=torch.float64).reshape(taus[0].shape)


def ref_svc(delta, taus, alpha):
    """Algorithm 1 of arXiv 2602.05536, one subspace at a time."""
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    gammas = []
    for r in range(S.numel()):
        a_merge = U[:, r] @ delta
        total = 0.0
        for t in taus:
            a = U[:, r] @ t
            total += max(alpha, float(a_merge @ a) / float(a @ a))
        gammas.append(len(taus) / total)
    g = torch.tensor(gammas, dtype=delta.dtype)
    return U @ torch.diag(g * S) @ Vh, g
