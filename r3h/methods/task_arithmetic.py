"""Task Arithmetic (Ilharco et al., 2023) and the machinery its sparsified variants share.

θ = θ0 + s · Σi wi τ̃i, where τ̃i is τi = θi − θ0 after the variant's sparsification.
With sign consensus (the `*_ties` variants, Yadav et al., 2023) only the entries of
wi τ̃i whose sign agrees with the elected sign are summed, and with `normalize` the
sum is divided by the sum of the agreeing weights (MergeKit's generalized task
arithmetic, which the paper used).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch

from fusion_bench.mixins.serialization import auto_register_config
from r3h.methods.base import MergeAlgorithm, check_range, per_expert
from r3h.methods.weight_average import check_weights
from r3h.ops import disjoint_merge, sign_consensus_mask

RESCALE_MODES = ("inverse", "l1", "none")


@auto_register_config
class TaskArithmetic(MergeAlgorithm):
    """Task Arithmetic: θ = θ0 + s · Σ wi τi.

    Args:
        scaling_factor: s, default 0.2 (= 1/n for the paper's five experts: s = 1 adds all five
            task vectors and breaks the merge; the toy sweep in docs/methods.md chose it).
        weights: wi ≥ 0 per expert (list in pool order or mapping by name); default 1.
    """

    _method_name = "r3h_task_arithmetic"

    def __init__(self, scaling_factor: float = 0.2, weights=None, **kwargs):
        super().__init__(**kwargs)

    # Variants override these two.
    consensus_method: Optional[str] = None  # "sum" / "count" for the *_ties variants

    def sparsify(self, name: str, index: int, tau: torch.Tensor) -> torch.Tensor:
        return tau

    def setup(self, names):
        if not math.isfinite(float(self.scaling_factor)):
            raise ValueError(f"scaling_factor={self.scaling_factor} is not a finite number")
        self._w = per_expert(self.weights, names, "weights")
        check_weights(self._w, names)

    def merge_tensor(self, name, base, experts):
        # τi = θi − θ0 is formed in place in the expert's fresh buffer, one expert at a time
        # (and released before the next is read: base, the sum and one τ at most).
        if self.consensus_method is None:
            mixed = None
            for i, w in enumerate(self._w):
                tau = self.sparsify(name, i, experts[i].sub_(base))
                if w != 1.0:
                    tau.mul_(w)
                mixed = tau if mixed is None else mixed.add_(tau)
                del tau
        else:
            taus = (self.sparsify(name, i, t.sub_(base)) for i, t in enumerate(experts))
            weights = torch.tensor(self._w, dtype=torch.float32, device=base.device)
            weighted = torch.stack(list(taus)).mul_(weights.reshape(-1, *([1] * base.dim())))
            mask = sign_consensus_mask(weighted, self.consensus_method)
            mixed = disjoint_merge(weighted, weights, mask, self.normalize)
        return mixed.mul_(float(self.scaling_factor)).add_(base)


class ConsensusMixin:
    """Sign election options of the `*_ties` methods."""

    @property
    def consensus_method(self) -> str:
        return self.consensus

    def check_consensus(self):
        if self.consensus not in ("sum", "count"):
            raise ValueError(f"consensus must be 'sum' or 'count'; got {self.consensus!r}")
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be true or false; got {self.normalize!r}")


def check_density(density) -> None:
    check_range("density", float(density), 0.0, 1.0, lo_open=True)


def check_rescale(rescale) -> None:
    if rescale not in RESCALE_MODES:
        raise ValueError(f"rescale must be one of {', '.join(RESCALE_MODES)}; got {rescale!r}")
