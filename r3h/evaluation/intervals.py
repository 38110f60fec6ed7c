"""95% confidence intervals for shares of items, for per-dimension averages of them, and for
paired differences between two models scored on the same items.

* :func:`wilson`: the Wilson score interval of k successes in n (Wilson 1927), in %.
* :func:`bootstrap_averages`: percentile bootstrap (Efron & Tibshirani 1993) of the 3H
  averages: each column's items are resampled with replacement (independently per column), the
  column shares, the dimension averages (plain mean of a dimension's columns) and ``AVG`` (mean
  of the dimension averages, ``r3h.evaluation.aggregate.aggregate_by_dimension``) recomputed.
* :func:`paired_bootstrap`: the same resampling applied to two models at once (the same item
  indices for both, since they answer the same test items), for the difference of any
  measure of the two, e.g. ``AVG(A) − AVG(B)``.

Per-item outcomes are 0/1 arrays in one fixed item order per column.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Sequence, Tuple

import numpy as np

from r3h.core.dimensions import OVERALL, THREE_H, dimension

__all__ = ["wilson", "averages", "bootstrap_averages", "paired_bootstrap", "Z95"]

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """The Wilson score interval of k successes in n trials, in % (0, 100 for n = 0)."""
    if n <= 0:
        return 0.0, 100.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k <= 0 else max(0.0, centre - half)  # exact ends where rounding would miss them
    high = 1.0 if k >= n else min(1.0, centre + half)
    return 100.0 * low, 100.0 * high


def averages(shares: Mapping[str, float], dims: Mapping[str, str]) -> Dict[str, float]:
    """{dimension average column: mean of its columns' shares (%)} and AVG over the dimensions
    present. A share may be an array (one value per bootstrap replicate): means run over columns."""
    out: Dict[str, float] = {}
    for d in THREE_H:
        have = [shares[c] for c in shares if dimension(dims[c]) is d]
        if have:
            out[d.average] = np.mean(np.asarray(have, dtype=float), axis=0)
    out[OVERALL] = np.mean(np.asarray(list(out.values()), dtype=float), axis=0)
    return out


def _resample(outcomes: Mapping[str, np.ndarray], rng: np.random.Generator, reps: int) -> Dict[str, np.ndarray]:
    """column -> (reps, n) item indices drawn with replacement, per column."""
    return {c: rng.integers(0, len(v), size=(reps, len(v))) for c, v in outcomes.items()}


def bootstrap_averages(outcomes: Mapping[str, Sequence[int]], dims: Mapping[str, str], reps: int = 2000,
                       seed: int = 0, level: float = 0.95) -> Dict[str, Tuple[float, float]]:
    """{average column: (low, high)} percentile intervals of the dimension averages and AVG."""
    arrays = {c: np.asarray(v, dtype=float) for c, v in outcomes.items()}
    idx = _resample(arrays, np.random.default_rng(seed), reps)
    shares = {c: 100.0 * arrays[c][idx[c]].mean(axis=1) for c in arrays}
    boot = averages(shares, dims)  # numpy broadcasting: each value is a (reps,) array
    a = (1 - level) / 2
    return {k: (float(np.quantile(v, a)), float(np.quantile(v, 1 - a))) for k, v in boot.items()}


def paired_bootstrap(a: Mapping[str, Sequence[int]], b: Mapping[str, Sequence[int]], dims: Mapping[str, str],
                     measure: Callable[[Dict[str, float]], float], reps: int = 2000, seed: int = 0,
                     level: float = 0.95) -> Tuple[float, float, float]:
    """(diff, low, high): ``measure(scores of a) − measure(scores of b)`` and its percentile
    interval, resampling the same items of every column for both models. ``measure`` takes a
    dict of the columns' shares and the averages (:func:`averages`) and returns one number."""
    cols = [c for c in a if c in b]
    missing = sorted(set(a) ^ set(b))
    if missing:
        raise ValueError(f"paired bootstrap: columns {missing} are not scored for both models")
    A = {c: np.asarray(a[c], dtype=float) for c in cols}
    B = {c: np.asarray(b[c], dtype=float) for c in cols}
    for c in cols:
        if len(A[c]) != len(B[c]):
            raise ValueError(f"paired bootstrap: column {c} has {len(A[c])} vs {len(B[c])} items")

    def scores(arrays, idx=None):
        shares = {c: 100.0 * (v[idx[c]].mean(axis=1) if idx is not None else v.mean()) for c, v in arrays.items()}
        return {**shares, **averages(shares, dims)}

    diff = float(measure(scores(A)) - measure(scores(B)))
    idx = _resample(A, np.random.default_rng(seed), reps)
    boot = np.asarray(measure(scores(A, idx)) - measure(scores(B, idx)), dtype=float)
    q = (1 - level) / 2
    return diff, float(np.quantile(boot, q)), float(np.quantile(boot, 1 - q))
