"""RAM and RAM+ (Reinforced Agent Merging, arXiv 2601.13572; MergeKit 0.1.5's `ram`,
`ramplus_tl`) on one tensor.

An entry is updated by expert i when |τi| > ε (mask mi); c = Σ mi counts the experts that
updated it. RAM keeps an entry updated by one expert only whole and averages the others
over the experts that updated them:

    τ = Σi mi τi / max(c, 1).

RAM+ scales each expert's unique part by λi = 1 + r · clip(ρi, 0, α), where ρi =
#{mi ∧ c > 1} / max(#{mi ∧ c = 1}, ε) is its shared-to-unique ratio, counted over this
tensor (MergeKit's tensor-local reading) or over the whole model (the paper's `ram-main.py`):

    τ = Σi mi τi · (λi if c = 1 else 1/c).
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import torch


def update_masks(taus: Iterable[torch.Tensor], epsilon: float) -> torch.Tensor:
    """The n masks |τi| > ε stacked (bool, n × shape), from τ1…τn taken one at a time."""
    return torch.stack([tau.abs() > epsilon for tau in taus])


def overlap_counts(masks: torch.Tensor) -> Tuple[List[int], List[int]]:
    """Per expert: (#entries it shares with another expert, #entries only it updated)."""
    count = masks.sum(dim=0)
    shared = (masks & (count > 1)).flatten(1).sum(dim=1)
    unique = (masks & (count == 1)).flatten(1).sum(dim=1)
    return [int(s) for s in shared], [int(u) for u in unique]


def ram_rho(shared: Sequence[int], unique: Sequence[int], epsilon: float) -> List[float]:
    """ρi = shared_i / max(unique_i, ε) (MergeKit's clamp)."""
    return [float(s) / max(float(u), epsilon) for s, u in zip(shared, unique)]


def ram_lambda(rho: Sequence[float], r: float, alpha: float) -> List[float]:
    """λi = 1 + r · clip(ρi, 0, α)."""
    return [1.0 + r * min(max(p, 0.0), alpha) for p in rho]


def ram_merge(taus: Iterable[torch.Tensor], masks: torch.Tensor,
              unique_scale: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Σi mi τi · (si if c = 1 else 1/c), τ1…τn taken one at a time with the masks of
    `update_masks`; si = 1 (RAM) or λi (RAM+)."""
    count = masks.sum(dim=0)
    unique = count == 1
    divisor = count.clamp(min=1)
    out = None
    for i, tau in enumerate(taus):
        s = 1.0 if unique_scale is None else float(unique_scale[i])
        tau.mul_(masks[i])
        term = torch.where(unique, tau * s if s != 1.0 else tau, tau / divisor)
        del tau
        out = term if out is None else out.add_(term)
        del term
    return out
