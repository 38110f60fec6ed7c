"""Float64 references of the eleven element-wise merging methods, written from their
definitions (docs/methods.md): top-k, ranks, keep probabilities, sign election,
normalisation and Model Stock's cosines are all recomputed here in float64 with Python
sorts and loops.

No r3h code inside: the random sparsifiers (DARE, DELLA) take the generator of their
uniforms from the caller, which passes r3h's seeding rule (`r3h.ops.tensor_generator`) so
that both draw the same masks. Used by tests/methods/test_methods.py.
"""

from __future__ import annotations

import math
from typing import Callable, List

import torch

#: (seed, tensor name, expert index) -> the generator of that expert's uniforms
GeneratorFor = Callable[[int, str, int], torch.Generator]


DEFAULTS = {
    "weight_average": {},
    "rewarded_soup": {},
    "r3h_task_arithmetic": dict(scaling_factor=0.2),
    "ties": dict(density=0.2, consensus="sum", normalize=True, scaling_factor=0.7),
    "dare": dict(density=0.5, rescale="inverse", seed=42, scaling_factor=0.2),
    "dare_ties": dict(density=0.5, rescale="inverse", seed=42, consensus="sum", normalize=False, scaling_factor=0.2),
    "della": dict(density=0.5, epsilon=0.1, rescale="inverse", seed=42, scaling_factor=0.2),
    "della_ties": dict(density=0.5, epsilon=0.1, rescale="inverse", seed=42, consensus="sum", normalize=True,
                      scaling_factor=0.5),
    "breadcrumbs": dict(density=0.9, gamma=0.01, scaling_factor=0.2),
    "breadcrumbs_ties": dict(density=0.9, gamma=0.01, consensus="sum", normalize=False, scaling_factor=0.2),
    "model_stock": {},
}

def _desc_order(t: torch.Tensor) -> List[int]:
    """Flat indices of `t` from the largest |t| to the smallest (Python sort, no torch.topk)."""
    mags = t.reshape(-1).abs().tolist()
    return sorted(range(len(mags)), key=lambda i: -mags[i])


def _mask_from(indices, like: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(like.numel(), dtype=torch.bool)
    for i in indices:
        m[i] = True
    return m.view(like.shape)


def ref_topk_mask(tau, density):
    """TIES trim: the ⌊density·numel⌋ entries of largest magnitude."""
    if density >= 1:
        return torch.ones(tau.shape, dtype=torch.bool)
    k = math.floor(density * tau.numel())
    return _mask_from(_desc_order(tau)[:k], tau)


def ref_breadcrumbs_mask(tau, density, gamma):
    """Skip the top ⌊γ·n⌋ by magnitude, keep the next ⌊density·n⌋ (the top shrinks when
    both do not fit), drop the rest."""
    if density >= 1:
        return torch.ones(tau.shape, dtype=torch.bool)
    n = tau.numel()
    n_keep = math.floor(density * n)
    n_top = math.floor(gamma * n)
    if n_top + n_keep > n:
        n_top = n - n_keep
    return _mask_from(_desc_order(tau)[n_top : n_top + n_keep], tau)


def ref_dare(tau, density, generator):
    """Keep each entry with probability `density` (uniforms from `generator`); returns (mask,
    keep probability)."""
    if density >= 1:
        return torch.ones(tau.shape, dtype=torch.bool), torch.ones(tau.shape, dtype=torch.float64)
    u = torch.rand(tau.shape, generator=generator)
    return u.double() < density, torch.full(tau.shape, float(density), dtype=torch.float64)


def ref_magprune(tau, density, epsilon, generator):
    """DELLA: per row, p rises linearly with the magnitude rank from density−ε to density+ε
    (uniforms from `generator`); returns (mask, keep probability)."""
    if density >= 1:
        return torch.ones(tau.shape, dtype=torch.bool), torch.ones(tau.shape, dtype=torch.float64)
    rows = tau.reshape(1, -1) if tau.dim() < 2 else tau.reshape(tau.shape[0], -1)
    n_rows, d = rows.shape
    p = torch.empty((n_rows, d), dtype=torch.float64)
    for r in range(n_rows):
        mags = rows[r].abs().tolist()
        for rank, j in enumerate(sorted(range(d), key=lambda j: mags[j])):
            p[r, j] = density if d == 1 else (density - epsilon) + 2 * epsilon * rank / (d - 1)
    u = torch.rand((n_rows, d), generator=generator)
    return (u.double() < p).view(tau.shape), p.view(tau.shape)


def ref_rescale(tau, mask, p, mode):
    kept = torch.where(mask, tau, torch.zeros_like(tau))
    if mode == "inverse":
        return kept / p
    if mode == "l1":
        before, after = tau.abs().sum(), kept.abs().sum()
        if before < 1e-7 or after < 1e-7:
            return kept
        return kept * (before / after)
    assert mode == "none"
    return kept


def ref_combine(taus, weights, consensus, normalize):
    """Σ wi τ̃i, or with sign election the disjoint (weighted) merge."""
    weighted = torch.stack([w * t for w, t in zip(weights, taus)])
    if consensus is None:
        return weighted.sum(dim=0)
    if consensus == "sum":
        score = weighted.sum(dim=0)
    else:
        score = (weighted > 0).double().sum(dim=0) - (weighted < 0).double().sum(dim=0)
    positive = score >= 0  # ties elect +
    agree = torch.where(positive, weighted > 0, weighted < 0)  # zero entries never agree
    mixed = torch.where(agree, weighted, torch.zeros_like(weighted)).sum(dim=0)
    if normalize:
        w = torch.tensor(weights, dtype=torch.float64).reshape(-1, *([1] * taus[0].dim()))
        divisor = (w * agree.double()).sum(dim=0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        mixed = mixed / divisor
    return mixed


def ref_model_stock_t(taus):
    n = len(taus)
    flat = [t.reshape(-1) for t in taus]
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            ni, nj = math.sqrt(float((flat[i] * flat[i]).sum())), math.sqrt(float((flat[j] * flat[j]).sum()))
            cos.append(0.0 if ni == 0 or nj == 0 else float((flat[i] * flat[j]).sum()) / (ni * nj))
    c = sum(cos) / len(cos)
    if c <= 0:
        return 0.0
    return n * c / (1 + (n - 1) * c)


def reference(method: str, kwargs: dict, name: str, base, experts, generator_for: GeneratorFor):
    """The merged tensor (a list for rewarded_soup) in float64, from the definitions.

    `generator_for(seed, name, i)` gives the generator of expert i's uniforms (DARE, DELLA): the
    tests pass r3h's seeding rule, so that both draw the same masks; nothing else is shared."""
    hp = {**DEFAULTS[method], **kwargs}
    base = None if base is None else base.double()
    experts = [e.double() for e in experts]
    n = len(experts)
    weights = hp.get("weights")
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if method == "weight_average":
        return sum(w * e for w, e in zip(weights, experts)) / sum(weights)
    if method == "rewarded_soup":
        pref = hp.get("preference")
        if pref is None:
            vectors = [[1.0 / n] * n]
        elif isinstance(pref[0], (int, float)):
            vectors = [pref]
        else:
            vectors = pref
        return [sum(l * e for l, e in zip(v, experts)) for v in vectors]
    if method == "model_stock":
        if n < 2:
            raise ValueError("model stock needs two experts")
        t = ref_model_stock_t([e - base for e in experts])
        return t * (sum(experts) / n) + (1 - t) * base

    taus = [e - base for e in experts]
    sparse = []
    for i, tau in enumerate(taus):
        if method == "r3h_task_arithmetic":
            s = tau
        elif method == "ties":
            s = torch.where(ref_topk_mask(tau, hp["density"]), tau, torch.zeros_like(tau))
        elif method.startswith("breadcrumbs"):
            s = torch.where(ref_breadcrumbs_mask(tau, hp["density"], hp["gamma"]), tau, torch.zeros_like(tau))
        elif method.startswith("dare"):
            mask, p = ref_dare(tau, hp["density"], generator_for(hp["seed"], name, i))
            s = ref_rescale(tau, mask, p, hp["rescale"])
        elif method.startswith("della"):
            mask, p = ref_magprune(tau, hp["density"], hp["epsilon"], generator_for(hp["seed"], name, i))
            s = ref_rescale(tau, mask, p, hp["rescale"])
        else:
            raise AssertionError(method)
        sparse.append(s)
    mixed = ref_combine(sparse, weights, hp.get("consensus"), hp.get("normalize", False))
    return base + float(hp["scaling_factor"]) * mixed
