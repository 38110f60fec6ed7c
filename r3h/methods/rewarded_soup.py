"""Rewarded Soup (Ramé et al., 2023): θ = Σ λi θi with λ on the simplex."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

from fusion_bench.mixins.serialization import auto_register_config
from r3h.methods.base import MergeAlgorithm, per_expert, to_container
from r3h.methods.weight_average import weighted_sums

SIMPLEX_TOL = 1e-6


def preference_vectors(preference, names: List[str]) -> List[List[float]]:
    """Parse `preference`: null (uniform), one vector (list in pool order or mapping by
    name) or a list of such vectors. Each must lie on the simplex."""
    pref = to_container(preference)
    if pref is None:
        vectors = [[1.0 / len(names)] * len(names)]
    elif isinstance(pref, Mapping) or (isinstance(pref, list) and pref and isinstance(pref[0], (int, float))):
        vectors = [per_expert(pref, names, "preference")]
    elif isinstance(pref, list) and pref:
        vectors = [per_expert(p, names, f"preference[{i}]") for i, p in enumerate(pref)]
    else:
        raise ValueError(f"preference: expected a vector or a list of vectors, got {pref!r}")
    for i, v in enumerate(vectors):
        label = "preference" if len(vectors) == 1 else f"preference[{i}]"
        neg = [n for n, x in zip(names, v) if not x >= 0]
        if neg:
            raise ValueError(f"{label}: λ for expert '{neg[0]}' is negative; λ must lie on the simplex (λi ≥ 0, Σ λi = 1)")
        if abs(sum(v) - 1.0) > SIMPLEX_TOL:
            raise ValueError(f"{label}: Σ λi = {sum(v):.6g}; λ must lie on the simplex (λi ≥ 0, Σ λi = 1)")
    return vectors


@auto_register_config
class RewardedSoup(MergeAlgorithm):
    """Rewarded Soup: θ = Σ λi θi, λ a preference vector on the simplex.

    Args:
        preference: one λ (list in pool order, or mapping by expert name) or a list of
            λ vectors; default `null` = uniform. A list yields one merged model per λ
            (the deployment-time Pareto sweep), returned as a `ModelSweep` whose
            `save_pretrained(path)` writes one sub-folder per λ, `preference_00`,
            `preference_01`, …, and `sweep.json` mapping each to its λ (with
            `out_dir`, the same layout is written).
    """

    needs_base = False
    multi_preference = True
    _method_name = "rewarded_soup"

    def __init__(self, preference=None, **kwargs):
        super().__init__(**kwargs)
        self._output_names = self._manifest = None

    def name_outputs(self, names: List[str], manifest: Dict[str, Any]) -> None:
        """Name the models of a list of λ (instead of `preference_00`, …) and give the
        manifest written beside them (`sweep.json`): how a merge sweep over λ names its members."""
        self._output_names, self._manifest = list(names), dict(manifest)

    def setup(self, names):
        self._names = names
        self._vectors = preference_vectors(self.preference, names)

    def _is_sweep(self) -> bool:
        pref = to_container(self.preference)
        return isinstance(pref, list) and bool(pref) and not isinstance(pref[0], (int, float))

    def output_names(self):
        if not self._is_sweep():
            return None
        if self._output_names is not None:
            return list(self._output_names)
        return [f"preference_{i:02d}" for i in range(len(self._vectors))]

    def sweep_manifest(self):
        if self._manifest is not None:
            return dict(self._manifest)
        return {n: dict(zip(self._names, v)) for n, v in zip(self.output_names(), self._vectors)}

    def merge_tensor(self, name, base, experts):
        return weighted_sums(experts, self._vectors)
