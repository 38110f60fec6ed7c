"""The paper's claims, decided on the study's test items (docs/study.md).

Each finding is a difference between two rows of one measure (a dimension average or AVG),
with a 95% paired bootstrap interval over test items (:func:`r3h.evaluation.intervals.paired_bootstrap`:
both rows resampled on the same items). Its verdict, for a claim that the difference is positive
(``sign=+1``) or negative (``sign=-1``): **holds** when the interval lies on the claimed side of
0, **fails** when it lies on the other side, **undecided** when it spans 0. Where a claim
names "the best" of a group, the best row is picked by its point estimate first, then the
difference is bootstrapped with that pair fixed (the pick itself is not resampled: the
interval is conditional on it, which docs/study.md says beside the table).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

from r3h.core.dimensions import AVERAGES, THREE_H
from r3h.evaluation.intervals import paired_bootstrap
from r3h.methods import BEYOND_PAPER, NEWER_SUBSPACE

__all__ = ["claims", "verdict", "SVD_METHODS"]

#: the SVD merges (TSVM and R-TSVM with its ablations): claim 1's group
SVD_METHODS = ("tsvm", "r_tsvm", "r_tsvm_no_outlier", "r_tsvm_no_rank")
TUNED = " (tuned)"


def verdict(low: float, high: float, sign: int = 1) -> str:
    """holds / fails / undecided for a claim that the difference has the sign ``sign``."""
    if sign < 0:
        low, high = -high, -low
    return "holds" if low > 0 else "fails" if high < 0 else "undecided"


def _best(rows: Mapping[str, dict], names: Sequence[str]) -> Optional[str]:
    """The row of ``names`` with the highest AVG; a row with the same weights as another of
    ``names`` (``same_weights_as``, r3h.study.pipeline) is that row, so only the one scored stands."""
    names = [n for n in names if n in rows]
    names = [n for n in names if rows[n].get("same_weights_as") not in names]
    return max(names, key=lambda n: (rows[n]["averages"]["AVG"], n)) if names else None


def claims(rows: Mapping[str, dict], dims: Mapping[str, str], reps: int = 2000, seed: int = 0) -> List[Dict]:
    """The findings on one seed's rows: name -> {"averages": {...}, "outcomes": {column: [0/1]}}.
    Each: claim, measure, a, b, diff, ci_low, ci_high, verdict; a finding whose rows are absent
    is left out."""
    out: List[Dict] = []

    def add(claim: str, a: Optional[str], b: Optional[str], measure: str = "AVG", sign: int = 1):
        if a is None or b is None or a not in rows or b not in rows:
            return
        d, lo, hi = paired_bootstrap(rows[a]["outcomes"], rows[b]["outcomes"], dims, lambda s: s[measure],
                                     reps=reps, seed=seed)
        out.append({"claim": claim, "measure": measure, "a": a, "b": b, "diff": d, "ci_low": lo, "ci_high": hi,
                    "verdict": verdict(lo, hi, sign), "direction": "a > b" if sign > 0 else "a < b"})

    merges = [n for n, r in rows.items() if r.get("group") == "default"]
    tuned = [n for n, r in rows.items() if r.get("group") == "tuned"]
    for tag, group, suffix in (("defaults", merges, ""), ("tuned", tuned, TUNED)):
        method = {n: n[: len(n) - len(suffix)] for n in group}
        paper = [n for n in group if method[n] not in BEYOND_PAPER]  # the paper's claims: its methods
        svd = [n for n in paper if method[n] in SVD_METHODS]
        other = [n for n in paper if n not in svd]
        add(f"1. SVD merges beat the other merges on AVG ({tag}: best vs best)", _best(rows, svd), _best(rows, other))
        add(f"2. R-TSVM ≥ TSVM ({tag})", "r_tsvm" + suffix, "tsvm" + suffix)
        add(f"3. merging ≥ the data mixture at equal data ({tag}: best merge)", _best(rows, paper), "mixture")
        newer = [n for n in group if method[n] in NEWER_SUBSPACE]
        older = [n for n in group if method[n] in ("tsvm", "r_tsvm", "r3h_task_arithmetic")]
        add(f"7. the newer subspace merges (Iso-C, Iso-CTS, WUDI) beat TSVM/R-TSVM and task arithmetic on AVG "
            f"({tag}: best vs best)", _best(rows, newer), _best(rows, older))
    add("3. merging ≥ the data mixture at equal data (R-TSVM at defaults)", "r_tsvm", "mixture")
    for m in AVERAGES:
        add(f"4. helpfulness training lifts {m.split('_')[0]}", "helpfulness", "base", m)
    add("4. honesty and harmlessness trade off: honesty training lowers Harmless", "honesty", "base", "Harmless_Avg", -1)
    add("4. honesty and harmlessness trade off: harmlessness training lowers Honest", "harmlessness", "base",
        "Honest_Avg", -1)
    for expert, m in ((d.label, d.average) for d in THREE_H):
        add(f"5. the {expert} expert beats the base on {m}", expert, "base", m)
    add("6. the continual model ≥ the mixture on AVG", "continual", "mixture")
    return out
