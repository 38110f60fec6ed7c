"""Which trial a search returns: the Pareto front of the three 3H averages, and the
one-standard-error rule against the noise of a small validation split.

The candidate is the front's member of highest S. It replaces the best trial at the
defaults only when its gain exceeds `min_gain_se` standard errors of the difference,
S_best − S_def > z · √(SE_best² + SE_def²) (z = 1: the one-standard-error rule, Breiman et
al. 1984; Hastie et al., ESL §7.10); else the defaults are kept.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from r3h.core.dimensions import AVERAGES
from r3h.tuning.objective import weighted_score

log = logging.getLogger(__name__)

__all__ = ["trial_rows", "select"]


def trial_rows(trials, weights: Mapping[str, float]) -> List[Dict[str, Any]]:
    """One row per completed Optuna trial (method, options, the three averages, S, SE, SVD
    calls, seconds, `defaults`), each marked `pareto` when no other row dominates it on the
    three averages (`r3h.plots.pareto_mask`)."""
    import numpy as np

    from r3h.plots import pareto_mask

    rows = []
    for t in trials:
        avgs = t.user_attrs["averages"]
        rows.append({"trial": t.number, "name": f"trial_{t.number:04d}", "method": t.user_attrs["method"],
                     "options": t.user_attrs["options"], **{d: float(avgs[d]) for d in AVERAGES},
                     "AVG": float(t.user_attrs.get("AVG", sum(avgs.values()) / 3)),
                     "score": weighted_score(avgs, weights), "svds": t.user_attrs.get("svds"),
                     "stderr": t.user_attrs.get("stderr"),
                     "seconds": t.user_attrs.get("seconds"),
                     "defaults": bool(t.user_attrs.get("defaults", False))})
    mask = pareto_mask(np.array([[r[d] for d in AVERAGES] for r in rows]), True)
    for r, m in zip(rows, mask):
        r["pareto"] = bool(m)
    return rows


def select(rows: Sequence[Mapping[str, Any]], min_gain_se: float,
           split: str = "validation") -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(chosen row, how it was chosen): the Pareto member of highest S, unless its gain over
    the best trial at the defaults is within `min_gain_se` standard errors of the difference;
    then that defaults trial."""
    best = max((r for r in rows if r["pareto"]), key=lambda r: (r["score"], -r["trial"]))
    selection: Dict[str, Any] = {"rule": "best", "min_gain_se": float(min_gain_se),
                                 "best_trial": best["trial"], "defaults_trial": None}
    refs = [r for r in rows if r["defaults"]]
    if not refs:
        return dict(best), selection
    ref = max(refs, key=lambda r: (r["score"], -r["trial"]))
    gain = best["score"] - ref["score"]
    se = math.sqrt(float(best.get("stderr") or 0.0) ** 2 + float(ref.get("stderr") or 0.0) ** 2)
    selection.update(defaults_trial=ref["trial"], gain=gain, stderr=se, threshold=float(min_gain_se) * se)
    if best["trial"] != ref["trial"] and min_gain_se > 0 and gain <= float(min_gain_se) * se:
        selection["rule"] = "defaults kept: gain within noise"
        log.info("search: trial %d beats the defaults (trial %d) by %.2f on %s, within %.1f SE (%.2f): "
                 "the defaults are kept", best["trial"], ref["trial"], gain, split, min_gain_se, se)
        return dict(ref), selection
    selection["rule"] = "best" if best["trial"] != ref["trial"] else "best (the defaults)"
    return dict(best), selection
