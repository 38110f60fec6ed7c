"""WUDI merging of one matrix (Cheng et al., "Whoever Started the Interference Should End It:
Guiding Data-Free Model Merging via Task Vectors", ICML 2025, arXiv 2503.08099).

τm starts at Σ τi and Adam minimises

    L(τm) = Σi ‖(τm − τi) τiᵀ‖²_F / wi,   wi = ‖τi‖²_F (`squared`, the paper's) or ‖τi‖_F (`plain`).

The gradient is 2 (τm A − B) with A = Σ τiᵀτi / wi and B = Σ τi τiᵀτi / wi, so the τi are
taken one at a time into A (k × k, k the input dimension) and B (the matrix's shape), and
an iteration costs one (m × k)·(k × k) product whatever the number of experts; the loss is
⟨τm A, τm⟩ − 2⟨B, τm⟩ + c. Adam is torch's (default betas and eps, no weight decay), as in
fusion_bench 0.2.33's `wudi_merging`, which forms the n (m × m) products every iteration.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

NORMS = ("squared", "plain")


def wudi_statistics(taus: Iterable[torch.Tensor], norm: str = "squared"):
    """(Σ τi, A, B, c, experts used) from τ1…τn taken one at a time; a zero τi adds nothing
    to A, B, c (its term of L is 0/0, taken as 0)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    total = A = B = None
    c, used = 0.0, 0
    for tau in taus:
        total = tau.clone() if total is None else total.add_(tau)
        sq = float(tau.pow(2).sum())
        if sq == 0.0:
            continue
        w = sq if norm == "squared" else sq ** 0.5
        G = tau.T @ tau
        A = G.div_(w) if A is None else A.add_(G, alpha=1.0 / w)
        TG = tau @ (tau.T @ tau)
        c += float((TG * tau).sum()) / w
        B = TG.div_(w) if B is None else B.add_(TG, alpha=1.0 / w)
        used += 1
        del G, TG
    return total, A, B, c, used


def wudi(taus: Iterable[torch.Tensor], iterations: int = 300, learning_rate: float = 1e-5,
         norm: str = "squared") -> Tuple[torch.Tensor, dict]:
    """WUDI's merged task matrix τm, and {"loss_start", "loss_end", "iterations"}."""
    total, A, B, c, used = wudi_statistics(taus, norm)
    if A is None:  # every τi is zero
        return total, {"iterations": 0, "experts": 0}
    tm = torch.nn.Parameter(total)
    opt = torch.optim.Adam([tm], lr=float(learning_rate), weight_decay=0)
    loss_start: Optional[float] = None
    with torch.no_grad():
        for _ in range(int(iterations)):
            tA = tm @ A
            if loss_start is None:
                loss_start = float((tA * tm).sum() - 2 * (B * tm).sum()) + c
            tm.grad = tA.sub_(B).mul_(2)
            opt.step()
            del tA
        tA = tm @ A
        loss_end = float((tA * tm).sum() - 2 * (B * tm).sum()) + c
    out = tm.detach()
    del tm, opt, A, B, tA
    return out, {"iterations": int(iterations), "experts": used,
                 "loss_start": loss_end if loss_start is None else loss_start, "loss_end": loss_end}
