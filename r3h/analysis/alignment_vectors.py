"""Diagnostics of alignment vectors τi = θi − θ0, one tensor at a time (pure functions).

Yang et al. (arXiv 2502.06876, Sec. 5) motivate R-TSVM by two properties of the
experts' alignment vectors: heavy-tailed entries (outliers) and sparsity, and by the
interference between experts that TSVM (Gargiulo et al., arXiv 2412.00081) measures.
These functions compute them for one tensor; `r3h.analysis.algorithm` streams them
over a model pool. Every statistic is computed from float32 τ with reductions that
sum elementwise products (torch's cascade sum): torch's float32 `norm()` /
`vector_norm` lose ~1 % on LLM-sized matrices and are not used.

Per expert (τ one tensor of one expert; N its number of entries):
- norm ‖τ‖_F; rel_norm ‖τ‖_F / ‖θ0‖_F (None when θ0 = 0); l1 = Σ|τ|.
- omega_abs = #{|τ| < ε} / N and omega_rel = #{|τ| < ε_rel · RMS(τ)} / N: the sparsity Ω
  of R-TSVM (Eq. 9, `r3h.analysis.matrices.sparsity`), with the absolute and the relative rule.
- kurtosis: excess kurtosis m4 / m2² − 3 of the N entries (population moments about
  their mean; 0 for a Gaussian; None when every entry is equal).
- outlier_mass T: R-TSVM's Eq. 6–7 (`r3h.ops.rtsvm.outlier_mass`): per row ρ (first
  dimension; a vector is one row), μρ = mean |τ|, σρ = population std of |τ|, and T = Σ |τ|
  over the entries with |τ| ≥ μρ + 3σρ. outlier_share = T / Σ|τ| (share of the L1 mass).
Per tensor: the same Ω pooled over all experts (what R-TSVM's report gives as `omega`;
the relative rule then uses the RMS of the stacked τ), outlier_alpha αi = Ti / Σj Tj
(Eq. 8, `outlier_norm: sum`), and TSVM's STI (below).
Per pair of experts (a, b):
- cosine ⟨τa, τb⟩ / (‖τa‖ ‖τb‖) (None when either is zero);
- sign_conflict = #{τa τb < 0} / #{τa ≠ 0 and τb ≠ 0}: among the coordinates where both
  experts move, the share where they move in opposite directions (None if there are none).
STI (TSVM's interference, computed by TSVM's own `FactorSource`) for a matrix m × d: q = ⌊min(m, d)/n⌋
triplets per expert, experts whose τ is zero left out, exactly as r3h's `tsvm` does, so the
numbers equal the `sti` of its `r3h_merge.json`.
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from r3h.analysis.matrices import sparsity
from r3h.methods.tsvm.matrix import FactorSource, TaskVectors
from r3h.ops.rtsvm import outlier_mass
from r3h.ops.svd import cpu_threads, top_q

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


# -- tensor names ------------------------------------------------------------------------

def layer_index(name: str) -> Optional[int]:
    """N in `model.layers.N.…` (also `h.N.`, `blocks.N.`, `layer.N.`); None outside the layers."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def module_name(name: str) -> str:
    """The tensor's name inside its layer: `model.layers.3.self_attn.q_proj.weight` → `self_attn.q_proj`."""
    m = _LAYER.search(name)
    short = name[m.end():] if m else name
    return short[: -len(".weight")] if short.endswith(".weight") else short


# -- one tensor of one expert ---------------------------------------------------------------

def sq_norm(t: torch.Tensor) -> float:
    """‖t‖_F² (cascade sum of t², accurate where float32 `norm()` is not)."""
    return float(t.pow(2).sum())


def excess_kurtosis(t: torch.Tensor) -> Optional[float]:
    """m4 / m2² − 3 with m_k = mean (t − mean t)^k over all entries; None when every
    entry is equal (m2 = 0; tested exactly, as float32 rounding of the mean would not give 0)."""
    if t.numel() == 0 or bool(t.min() == t.max()):
        return None
    d = t - t.mean()
    m2 = float(d.pow(2).mean())
    if not m2 > 0:
        return None
    return float(d.div_(math.sqrt(m2)).pow_(4).mean()) - 3.0


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """The rows R-TSVM's outlier rule works on: a matrix as is, a vector as one row,
    higher-order tensors flattened after their first dimension."""
    if t.dim() == 2:
        return t
    return t.reshape(1, -1) if t.dim() < 2 else t.reshape(t.shape[0], -1)


def omega(taus: Sequence[torch.Tensor], epsilon: float, mode: str) -> float:
    """R-TSVM's Ω (Eq. 9) over `taus`: share of entries with |τ| < ε (`absolute`) or
    < ε · RMS of the stacked τ (`relative`)."""
    return float(sparsity(taus, epsilon, mode))


def expert_stats(tau: torch.Tensor, base_sq_norm: float, epsilon: float, epsilon_relative: float) -> Dict:
    """The per-expert record of one tensor (definitions in the module docstring)."""
    norm2 = sq_norm(tau)
    l1 = float(tau.abs().sum())
    T = outlier_mass(as_rows(tau))
    return {
        "norm": math.sqrt(norm2),
        "rel_norm": math.sqrt(norm2 / base_sq_norm) if base_sq_norm > 0 else None,
        "l1": l1,
        "omega_abs": omega([tau], epsilon, "absolute"),
        "omega_rel": omega([tau], epsilon_relative, "relative"),
        "kurtosis": excess_kurtosis(tau),
        "outlier_mass": T,
        "outlier_share": T / l1 if l1 > 0 else None,
    }


# -- pairs of experts ----------------------------------------------------------------------

def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩ (cascade sum of a·b; float32 `torch.dot` loses ~1e-2 on 1e8 entries)."""
    return float((a * b).sum())


def sign_conflicts(a: torch.Tensor, b: torch.Tensor) -> Tuple[int, int]:
    """(#{a·b < 0}, #{a ≠ 0 and b ≠ 0}): the sign-conflict rate is their ratio."""
    both = (a != 0) & (b != 0)
    return int((torch.signbit(a) != torch.signbit(b)).logical_and_(both).sum()), int(both.sum())


def pair_stats(a: torch.Tensor, b: torch.Tensor, a_sq_norm: float, b_sq_norm: float) -> Dict:
    """cosine, sign_conflict and the sums they come from (dot, conflicts, both_nonzero)."""
    ab = dot(a, b)
    conflicts, both = sign_conflicts(a, b)
    return {
        "cosine": ab / math.sqrt(a_sq_norm * b_sq_norm) if a_sq_norm > 0 and b_sq_norm > 0 else None,
        "sign_conflict": conflicts / both if both else None,
        "dot": ab,
        "conflicts": conflicts,
        "both_nonzero": both,
    }


# -- the matrix: TSVM's interference ------------------------------------------------------------

def tsvm_interference(taus: Sequence[torch.Tensor]) -> Dict:
    """STI of a matrix as r3h's `tsvm` computes it with `svd_solver: full` (the default Gram
    route agrees to round-off): q = ⌊r/n⌋, zero experts left out. It runs TSVM's own steps
    (`r3h.methods.tsvm.matrix.FactorSource`: the experts' top-q triplets, then the polar step that reports
    STI), so the number is the `sti` of `r3h_merge.json` bit for bit, by construction.

    Returns {"sti_rule": "svd", "q", "sti"} (plus "zero_experts" when some τ is zero),
    {"sti_rule": "zero"} when every τ is zero, {"sti_rule": "too_small", "q": 0} when ⌊r/n⌋ = 0.
    """
    n = len(taus)
    q = top_q(min(taus[0].shape), n)
    if q == 0:
        return {"sti_rule": "too_small", "q": 0}
    src = FactorSource("sti", taus[0].shape, q, n, solver="full", device=taus[0].device)
    stacks = src.factors(TaskVectors(None, list(taus)))
    if stacks is None:
        return {"sti_rule": "zero", "q": q}
    sti = src.polar(stacks)[3]
    out = {"sti_rule": "svd", "q": q, "sti": sti}
    if len(src.active) < n:
        out["zero_experts"] = [i for i in range(n) if i not in src.active]
    return out


# -- one tensor of every expert ---------------------------------------------------------------

def tensor_stats(name: str, theta0: torch.Tensor, taus: Sequence[torch.Tensor], experts: Sequence[str],
                 epsilon: float, epsilon_relative: float, svd: bool = True,
                 svd_threads: Optional[int] = None) -> Tuple[Dict, List[Dict]]:
    """The record of tensor `name` and its pair records, from θ0 and every expert's τ.

    `svd`: compute STI (matrices only; the caller decides size limits), with `svd_threads`
    CPU threads (`r3h.ops.svd.cpu_threads`; None = torch's setting).
    """
    base2 = sq_norm(theta0)
    per = [expert_stats(t, base2, epsilon, epsilon_relative) for t in taus]
    T = [p["outlier_mass"] for p in per]
    record = {
        "name": name,
        "layer": layer_index(name),
        "module": module_name(name),
        "shape": list(theta0.shape),
        "numel": theta0.numel(),
        "base_norm": math.sqrt(base2),
        "omega_abs": omega(taus, epsilon, "absolute"),
        "omega_rel": omega(taus, epsilon_relative, "relative"),
        "outlier_alpha": [t / sum(T) for t in T] if sum(T) > 0 else [1.0 / len(T)] * len(T),
        "experts": dict(zip(experts, per)),
    }
    if svd and theta0.dim() == 2:
        with cpu_threads(svd_threads, theta0.device):
            record.update(tsvm_interference(taus))
    else:
        record["sti_rule"] = "off" if theta0.dim() == 2 else "not_matrix"
    pairs = []
    for i in range(len(taus)):
        for j in range(i + 1, len(taus)):
            p = pair_stats(taus[i], taus[j], per[i]["norm"] ** 2, per[j]["norm"] ** 2)
            pairs.append({"tensor": name, "layer": record["layer"], "a": experts[i], "b": experts[j], **p})
    return record, pairs


# -- aggregates ------------------------------------------------------------------------------

def _weighted(pairs: Sequence[Tuple[Optional[float], float]]) -> Optional[float]:
    """Σ w·v / Σ w over the defined values v (None if none)."""
    num = math.fsum(v * w for v, w in pairs if v is not None)
    den = math.fsum(w for v, w in pairs if v is not None)
    return num / den if den > 0 else None


def summarize(records: Sequence[Dict], pairs: Sequence[Dict], experts: Sequence[str]) -> Dict:
    """Aggregate tensor and pair records (the whole model, or one layer).

    Per expert: norm = sqrt(Σ‖τ‖²) and rel_norm = that / sqrt(Σ‖θ0‖²) (the norms of the
    concatenated tensors); omega_abs, omega_rel and kurtosis are size-weighted means
    (weights: numel; for Ω that is the pooled share of small entries); outlier_share =
    Σ T / Σ|τ| (the L1-weighted mean). Per pair: cosine = Σ⟨τa,τb⟩ / sqrt(Σ‖τa‖² Σ‖τb‖²)
    (the cosine of the concatenated vectors) and sign_conflict = Σ conflicts / Σ both_nonzero.
    STI: plain mean and max over the matrices that have one.
    """
    numel = sum(r["numel"] for r in records)
    base2 = math.fsum(r["base_norm"] ** 2 for r in records)
    out_experts = {}
    for e in experts:
        rs = [(r["experts"][e], r["numel"]) for r in records]
        norm2 = math.fsum(s["norm"] ** 2 for s, _ in rs)
        l1 = math.fsum(s["l1"] for s, _ in rs)
        out_experts[e] = {
            "norm": math.sqrt(norm2),
            "rel_norm": math.sqrt(norm2 / base2) if base2 > 0 else None,
            "omega_abs": _weighted([(s["omega_abs"], w) for s, w in rs]),
            "omega_rel": _weighted([(s["omega_rel"], w) for s, w in rs]),
            "kurtosis": _weighted([(s["kurtosis"], w) for s, w in rs]),
            "outlier_share": math.fsum(s["outlier_mass"] for s, _ in rs) / l1 if l1 > 0 else None,
        }
    out_pairs = []
    for i, a in enumerate(experts):
        for b in experts[i + 1:]:
            ps = [p for p in pairs if p["a"] == a and p["b"] == b]
            ab = math.fsum(p["dot"] for p in ps)
            na, nb = out_experts[a]["norm"], out_experts[b]["norm"]
            conflicts, both = sum(p["conflicts"] for p in ps), sum(p["both_nonzero"] for p in ps)
            out_pairs.append({"a": a, "b": b, "cosine": ab / (na * nb) if na > 0 and nb > 0 else None,
                              "sign_conflict": conflicts / both if both else None,
                              "conflicts": conflicts, "both_nonzero": both})
    stis = [r["sti"] for r in records if r.get("sti") is not None]
    return {
        "tensors": len(records),
        "numel": numel,
        "omega_abs": _weighted([(r["omega_abs"], r["numel"]) for r in records]),
        "omega_rel": _weighted([(r["omega_rel"], r["numel"]) for r in records]),
        "experts": out_experts,
        "pairs": out_pairs,
        "sti": {"matrices": len(stis), "mean": math.fsum(stis) / len(stis) if stis else None,
                "max": max(stis) if stis else None},
    }


def layer_summaries(records: Sequence[Dict], pairs: Sequence[Dict], experts: Sequence[str]) -> List[Dict]:
    """`summarize` per layer index (tensors outside the layers are left out), by layer."""
    layers = sorted({r["layer"] for r in records if r["layer"] is not None})
    return [{"layer": L, **summarize([r for r in records if r["layer"] == L],
                                     [p for p in pairs if p["layer"] == L], experts)} for L in layers]
