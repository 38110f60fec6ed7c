"""References of the data-mixture baselines of Table 2 (r3h/data/mixture.py, docs/data.md),
written out from their definitions: the heuristic mixture's counts (water-filling by hand) and
Hummer's alignment-dimension conflict. No r3h code inside. Used by tests/data/test_mixture.py.
"""

from __future__ import annotations


def expected_heuristic(datasets, num, den):
    """The heuristic mixture's counts from its definition, written out independently."""
    n_help = sum(1 for ps in datasets.values() for p in ps if "helpfulness" in p["dimensions"])
    budget = n_help * num // den
    want = {"honesty": budget - budget // 2, "harmlessness": budget // 2}
    per_source = {}
    for dim, k in want.items():
        pools = {n: sum(1 for p in ps if "helpfulness" not in p["dimensions"] and dim in p["dimensions"])
                 for n, ps in datasets.items()}
        pools = {n: c for n, c in pools.items() if c}
        # water-filling, by hand: the highest level t with sum(min(pool, t)) <= k, the rest one
        # each to the first datasets (sorted) above the level
        t = max((t for t in range(k + 1) if sum(min(c, t) for c in pools.values()) <= k), default=0)
        alloc = {n: min(c, t) for n, c in pools.items()}
        for n in sorted(n for n in pools if pools[n] > t)[:k - sum(alloc.values())]:
            alloc[n] += 1
        per_source.update(alloc)
    return n_help, want, per_source


def expected_adc(pairs, scores, dims):
    """Hummer's alignment-dimension conflict of one dataset: for each dimension in `dims` that
    none of its pairs serves, the share of pairs whose chosen reply `scores` ((prompt, reply) ->
    one score per dimension) rates below the rejected one there; returns (conflicts, their max)."""
    served = {d for p in pairs for d in p["dimensions"]}
    conflict = {}
    for j, d in enumerate(dims):
        if d not in served:
            against = sum(1 for p in pairs if scores(p["prompt"], p["chosen"])[j] <
                          scores(p["prompt"], p["rejected"])[j])
            conflict[d] = against / len(pairs)
    return conflict, max(conflict.values()) if conflict else 0.0
