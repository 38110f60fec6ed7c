"""RAM and RAM+ (Reinforced Agent Merging, arXiv 2601.13572), as MergeKit 0.1.5's `ram` and
`ramplus_tl`, with the paper's model-wide ρ (`ram-main.py`) as an option."""

from __future__ import annotations

import math
import re
from typing import List

from fusion_bench.mixins.serialization import auto_register_config
from r3h.core.engine import iter_tensors
from r3h.methods.base import MergeAlgorithm
from r3h.ops import overlap_counts, ram_lambda, ram_merge, ram_rho, update_masks

RHO_SCOPES = ("tensor", "model")


def check_finite(option: str, value, low: float = 0.0) -> None:
    v = float(value)
    if not (math.isfinite(v) and v >= low):
        raise ValueError(f"{option}={value} must be a finite number ≥ {low:g}")


@auto_register_config
class RAM(MergeAlgorithm):
    """RAM: an entry of τi counts as updated when |τi| > ε; per entry, the c experts that
    updated it are averaged (an entry only one expert updated is kept whole, one nobody
    updated stays θ0): θ = θ0 + Σi mi τi / max(c, 1). Matches MergeKit 0.1.5's `ram`.
    Each τi is read twice per tensor (its mask, then its part).

    Args:
        epsilon: ε ≥ 0, the update threshold; default 1e-5 (MergeKit's and the paper's).
    """

    _method_name = "ram"

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)

    def setup(self, names):
        check_finite("epsilon", self.epsilon)

    def unique_scale(self, name, shared, unique):
        """Per expert, the factor on its unique part (RAM: none)."""
        return None

    def merge_tensor(self, name, base, experts):
        eps = float(self.epsilon)
        masks = update_masks((e - base for e in experts), eps)  # read again below: not in place
        shared, unique = overlap_counts(masks)
        scale = self.unique_scale(name, shared, unique)
        out = ram_merge((e.sub_(base) for e in experts), masks, scale)
        numel = base.numel()
        untouched = int((~masks.any(dim=0)).sum())
        self.record(name, rule="ram", numel=numel, untouched=untouched, shared=shared, unique=unique,
                    **({"lambda": [round(v, 6) for v in scale]} if scale is not None else {}))
        del masks
        return out.add_(base)


@auto_register_config
class RAMPlus(RAM):
    """RAM+: RAM with each expert's unique part scaled by λi = 1 + r · clip(ρi, 0, α),
    ρi = #shared_i / max(#unique_i, ε) (entries expert i updated with others / alone).
    `rho: tensor` counts per tensor (MergeKit 0.1.5's `ramplus_tl`); `rho: model` counts over
    every tensor the merge touches, in a pass before the merge (the paper's `ram-main.py`,
    whose `--rescale_factor F` is r = F − 1, α = 1).

    Args:
        epsilon: as RAM (default 1e-5).
        r: the rescaling strength, ≥ 0; default 0.1 (MergeKit's).
        alpha: the clip of ρ, ≥ 0; default 0.2 (MergeKit's).
        rho: `tensor` (default) or `model`.
    """

    _method_name = "ram_plus"

    def __init__(self, r: float = 0.1, alpha: float = 0.2, rho: str = "tensor", **kwargs):
        super().__init__(**kwargs)
        self.model_rho: List[float] = []
        self.model_counts: dict = {}

    def setup(self, names):
        super().setup(names)
        check_finite("r", self.r)
        check_finite("alpha", self.alpha)
        if self.rho not in RHO_SCOPES:
            raise ValueError(f"rho must be one of {', '.join(RHO_SCOPES)}; got {self.rho!r}")

    def prepare(self, modelpool):
        plan = super().prepare(modelpool)
        self.model_rho = []
        if self.rho == "model":
            self.model_rho = self.count_model(plan)
        return plan

    def count_model(self, plan) -> List[float]:
        """ρi over every floating tensor of the plan that the method merges (not `exclude_keys`)."""
        eps = float(self.epsilon)
        n = len(plan.experts)
        shared, unique = [0] * n, [0] * n
        names = [k for k in plan.names if plan.reference.tensors[k].dtype.is_floating_point
                 and not any(re.fullmatch(p, k) for p in self.exclude_keys)]
        for _, base, experts in iter_tensors(plan, names, self.torch_device):
            s, u = overlap_counts(update_masks((e.sub_(base) for e in experts), eps))
            shared = [a + b for a, b in zip(shared, s)]
            unique = [a + b for a, b in zip(unique, u)]
        rho = ram_rho(shared, unique, eps)
        self.model_counts = {"shared": shared, "unique": unique, "rho": rho}
        return rho

    def unique_scale(self, name, shared, unique):
        rho = self.model_rho if self.rho == "model" else ram_rho(shared, unique, float(self.epsilon))
        return ram_lambda(rho, float(self.r), float(self.alpha))

    def merge_info(self, modelpool, plan, stats):
        info = super().merge_info(modelpool, plan, stats)
        if self.rho == "model":
            info["model_rho"] = self.model_counts
        return info
