"""Float64 references of the alignment-vector analysis (r3h/analysis/alignment_vectors.py,
docs/analysis.md), from the definitions: kurtosis, near-zero shares, outlier mass (R-TSVM's
Eq. 6–7, shared with tests/reference/tsvm.py), cosine and sign conflicts, and the summaries.

No r3h code inside. Used by tests/analysis/test_analysis.py.
"""

from __future__ import annotations

import torch

from tests.reference.tsvm import ref_outlier_mass


def ref_kurtosis(t):
    """Excess kurtosis m4 / m2² − 3 of all entries (population moments)."""
    d = t.flatten() - t.mean()
    m2 = d.pow(2).mean()
    return float(d.pow(4).mean() / m2**2 - 3)


def ref_omega(ts, eps, relative):
    """The share of entries with |τ| < ε over the tensors `ts` (ε times their RMS when `relative`)."""
    flat = torch.cat([t.flatten() for t in ts])
    if relative:
        eps = eps * float(flat.pow(2).mean().sqrt())
    return float((flat.abs() < eps).double().mean())


def ref_pair(a, b):
    """(cosine or None, opposite-sign entries, entries nonzero in both) of two task vectors."""
    a, b = a.flatten(), b.flatten()
    both = (a != 0) & (b != 0)
    conflicts = int(((a > 0) & (b < 0) | (a < 0) & (b > 0)).sum())
    cos = float(a @ b / (a.norm() * b.norm())) if a.norm() > 0 and b.norm() > 0 else None
    return cos, conflicts, int(both.sum())


def ref_summary(base, experts, names, expert_names, eps, eps_rel):
    """The whole-model (or one layer's) summary of the tensors `names`: per expert its norms,
    the near-zero shares at `eps` (absolute) and `eps_rel` (relative), the size-weighted
    kurtosis and the outlier share; per pair the cosine and the sign conflicts."""
    out = {"experts": {}, "pairs": {}}
    cat = {e: torch.cat([(experts[e][n] - base[n]).flatten() for n in names]) for e in expert_names}
    base_norm = torch.cat([base[n].flatten() for n in names]).norm()
    numel = sum(base[n].numel() for n in names)
    for e in expert_names:
        taus = [(experts[e][n] - base[n]) for n in names]
        kurt = [(ref_kurtosis(t), t.numel()) for t in taus if t.any()]
        out["experts"][e] = {
            "norm": float(cat[e].norm()),
            "rel_norm": float(cat[e].norm() / base_norm),
            "omega_abs": sum(ref_omega([t], eps, False) * t.numel() for t in taus) / numel,
            "omega_rel": sum(ref_omega([t], eps_rel, True) * t.numel() for t in taus) / numel,
            "kurtosis": sum(k * w for k, w in kurt) / sum(w for _, w in kurt),
            "outlier_share": sum(ref_outlier_mass(t) for t in taus) / float(cat[e].abs().sum()),
        }
    for i, a in enumerate(expert_names):
        for b in expert_names[i + 1:]:
            cos, conflicts, both = ref_pair(cat[a], cat[b])
            out["pairs"][a, b] = {"cosine": cos, "sign_conflict": conflicts / both, "conflicts": conflicts}
    return out
