"""WUDI merging (Cheng et al., "Whoever Started the Interference Should End It: Guiding
Data-Free Model Merging via Task Vectors", ICML 2025, arXiv 2503.08099), per matrix."""

from __future__ import annotations

import math
import time
from typing import List, Optional

from fusion_bench.mixins.serialization import auto_register_config
from r3h.methods.base import MergeAlgorithm
from r3h.methods.isotropic import check_scaling
from r3h.ops import wudi
from r3h.ops.wudi import NORMS

#: the vocabulary matrices WUDI leaves out by default: their (V × V) products are what
#: fusion_bench forms, and on a 7-8B vocabulary they take minutes per matrix even as r3h forms them
VOCAB_KEYS = [r"(.*\.)?embed_tokens\.weight", r"(.*\.)?lm_head\.weight"]


@auto_register_config
class WUDI(MergeAlgorithm):
    """WUDI: per matrix τm starts at Σ τi and Adam (`learning_rate`, `iterations`) minimises
    Σi ‖(τm − τi) τiᵀ‖²_F / wi, wi = ‖τi‖²_F (`norm: squared`, the paper's) or ‖τi‖_F
    (`plain`); θ = θ0 + s · τm. A tensor that is not a matrix takes θ0 + mean τi, as
    fusion_bench's `wudi_merging`. The τi enter through A = Σ τiᵀτi/wi and B = Σ τiτiᵀτi/wi
    (`r3h.ops.wudi`), one at a time.

    Args:
        iterations: Adam steps per matrix, ≥ 0; default 300 (fusion_bench's function; its
            config 400).
        learning_rate: Adam's step size, > 0; default 1e-5 (the paper's and fusion_bench's).
        norm: `squared` (default) or `plain`.
        scaling_factor: s on τm; default 0.2 (chosen by the toy sweep in docs/methods.md:
            with lr 1e-5 τm stays near Σ τi, which five experts break at s = 1; the paper: none, 1.0).
        exclude_keys: default the embeddings and `lm_head` (`VOCAB_KEYS`), which take
            θ0 + mean τi; `[]` puts them through WUDI too.
        device: default `auto` (a GPU if there is one).
    """

    _method_name = "wudi"

    def __init__(self, iterations: int = 300, learning_rate: float = 1e-5, norm: str = "squared",
                 scaling_factor: float = 0.2, exclude_keys: Optional[List[str]] = VOCAB_KEYS,
                 device: str = "auto", **kwargs):
        super().__init__(exclude_keys=exclude_keys, device=device, **kwargs)

    def setup(self, names):
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, int) or it < 0:
            raise ValueError(f"iterations={it!r} must be an integer ≥ 0")
        lr = float(self.learning_rate)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning_rate={self.learning_rate} must be a finite number > 0")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        check_scaling(self.scaling_factor)

    def merge_tensor(self, name, base, experts):
        t0 = time.perf_counter()
        taus = (e.sub_(base) for e in experts)
        if base.dim() == 2:
            merged, info = wudi(taus, int(self.iterations), float(self.learning_rate), self.norm)
            merged = merged.mul_(float(self.scaling_factor))
            self.record(name, rule="wudi", **info, seconds=round(time.perf_counter() - t0, 4))
        else:
            merged = None
            for tau in taus:
                merged = tau if merged is None else merged.add_(tau)
            merged = merged.div_(len(experts))
            self.record(name, rule="mean")
        return merged.add_(base)
