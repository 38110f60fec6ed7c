"""A TSVM / R-TSVM merge report summed up over its matrices: the diagnostics to read beside the scores.

R-TSVM (Yang et al., arXiv 2502.06876, Eq. 6–10) changes TSVM in two places, and either can be
inert on a given pool: the outlier weights αi fall back to equal weights when the guard fires
(some expert's 3σ outlier share below ``outlier_min_share``) and the sparsity Ω = #{|τ| < ε} / N
is 1 on every matrix when ε is large against the task vectors' entries (the paper's absolute
ε = 0.1 against DPO updates of ~1e-4), so k = ⌊r (1 − γ)⌋ everywhere. This module counts how
often each happened, from the per-tensor report the methods write (``TSVM.tensor_reports``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Mapping

__all__ = ["svd_merge_summary"]


def svd_merge_summary(reports: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Over the matrices merged by the SVD rule: their count, how the αi were chosen
    (``alpha_rule`` counts; TSVM: "off"), Ω (mean, min, max, and the share with Ω ≥ 0.999),
    k / r (the rank kept against the matrix rank r = min(shape)) and the largest αmax / αmin."""
    svd = {n: r for n, r in reports.items() if r.get("rule") == "svd"}
    out: Dict[str, Any] = {"tensors": len(reports), "svd_matrices": len(svd),
                           "rules": dict(Counter(r.get("rule", "?") for r in reports.values()))}
    if not svd:
        return out
    out["alpha_rule"] = dict(Counter(str(r.get("alpha_rule", "off")) for r in svd.values()))
    omegas = [float(r["omega"]) for r in svd.values() if r.get("omega") is not None]
    if omegas:
        out["omega"] = {"mean": sum(omegas) / len(omegas), "min": min(omegas), "max": max(omegas),
                        "share_at_1": sum(o >= 0.999 for o in omegas) / len(omegas)}
    ratios = [r["k"] / min(r["shape"]) for r in svd.values() if r.get("k") is not None and r.get("shape")]
    if ratios:
        out["k_over_r"] = {"mean": sum(ratios) / len(ratios), "min": min(ratios), "max": max(ratios)}
    spreads = [max(r["alpha"]) / min(r["alpha"]) for r in svd.values() if r.get("alpha") and min(r["alpha"]) > 0]
    if spreads:
        out["alpha_max_over_min"] = max(spreads)
    return out
