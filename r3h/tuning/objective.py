"""What a search maximises: the user's 3H preference S, or the three dimension averages.

S = Σ w_d · d_avg / Σ w_d over d ∈ {Helpful_Avg, Honest_Avg, Harmless_Avg} (`objective:
weighted`, default), or the three averages themselves (`objective: multi`, Optuna's
multi-objective TPE). SE(S) comes from each benchmark's standard error
(`r3h.evaluation.aggregate.weighted_stderr`).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

from r3h.core.dimensions import AVERAGES, dimension
from r3h.io.plain import to_container
from r3h.evaluation.aggregate import weighted_stderr
from r3h.tuning.space import number

__all__ = ["DIMENSIONS", "OBJECTIVES", "weighted_score", "parse_weights", "score_stderr"]

#: Former name of r3h.core.dimensions.AVERAGES, the three objectives of the multi-objective
#: search and the keys of the 3H weights (kept for old imports).
DIMENSIONS: Tuple[str, ...] = AVERAGES
OBJECTIVES = ("weighted", "multi")


def weighted_score(averages: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """S = Σ w_d · averages[d] / Σ w_d over the three dimensions."""
    total = sum(weights.values())
    return sum(w * float(averages[d]) for d, w in weights.items()) / total


def _average_of(name: str) -> str:
    for candidate in (name, name.lower()):
        try:
            return dimension(candidate).average
        except ValueError:
            pass
    return name


def parse_weights(weights) -> Dict[str, float]:
    """The 3H weights {Helpful_Avg, Honest_Avg, Harmless_Avg} from a mapping (any name of a
    dimension, `r3h.core.dimensions`) or three numbers; equal for None."""
    w = to_container(weights)
    if w is None:
        return {d: 1.0 for d in AVERAGES}
    if isinstance(w, (list, tuple)):
        if len(w) != 3:
            raise ValueError(f"weights: three 3H weights (helpful, honest, harmless), got {w!r}")
        w = dict(zip(AVERAGES, w))
    if not isinstance(w, Mapping):
        raise ValueError(f"weights: a mapping {{{', '.join(AVERAGES)}}} or three numbers, got {w!r}")
    out = {}
    for k, v in w.items():
        key = _average_of(str(k))
        if key not in AVERAGES:
            raise ValueError(f"weights: {k!r} is not a 3H dimension ({', '.join(AVERAGES)})")
        v = number(f"weights.{k}", v)
        if v < 0:
            raise ValueError(f"weights.{k}: must be >= 0, got {v}")
        out[key] = v
    out = {d: out.get(d, 0.0) for d in AVERAGES}
    if sum(out.values()) <= 0:
        raise ValueError("weights: at least one 3H weight must be positive")
    return out


def score_stderr(report: Mapping[str, Any], weights: Mapping[str, float]) -> Tuple[float, Tuple[str, ...]]:
    """(SE of the weighted score S of a taskpool report, columns of unknown SE)."""
    stderrs, dims = report.get("stderr"), report.get("dimensions")
    if not isinstance(stderrs, Mapping) or not isinstance(dims, Mapping):
        return 0.0, tuple(report.get("scores", {}) or ())
    return weighted_stderr(stderrs, dims, weights)
