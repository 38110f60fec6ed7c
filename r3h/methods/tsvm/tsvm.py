"""TSVM, spread over Fabric ranks; R-TSVM (`r_tsvm.py`) is this class with expert weights and ranks.

Per matrix: τi = θi − θ0 → each expert's top-q triplets → the polar factors of their
stacks → θ0 + α Δ (`r3h.ops.svd.combine`). The factors come from a
`matrix.FactorSource` (the SVD cache, or the solver); the ranks and the output are
`MergeAlgorithm.run`'s.

TSVM (Gargiulo et al., arXiv 2412.00081): θ = θ0 + α Δ with Δ = U⊥ diag(ŝ) V⊥ᵀ
built from each expert's top ⌊r/n⌋ singular triplets, orthogonalised by polar
factors. R-TSVM (Yang et al., arXiv 2502.06876, Sec. 5, Algorithm 1, App. A.3)
adds outlier-aware expert weights αi and a sparsity-adaptive rank ki per tensor.
The exact rules are in `r3h.ops.svd`, `r3h.ops.rtsvm` and docs/r_tsvm.md.

Rules for the other tensors: non-matrices, tensors matched by `exclude_keys`, and
matrices too small for one triplet per expert (⌊r/n⌋ = 0) take θ0 + α · mean τi (as
fusion_bench's TSVM, which also scales them by α); a matrix whose task vectors are
all zero stays θ0 exactly, and an expert whose τ alone is zero there is left out of
the stacks (its singular vectors would be an arbitrary basis); a non-finite SVD is an
error naming the tensor.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, List, Optional

import torch

from fusion_bench.mixins.lightning_fabric import LightningFabricMixin
from fusion_bench.mixins.serialization import auto_register_config
from r3h.core import svd_cache as cache_mod
from r3h.methods.base import MergeAlgorithm
from r3h.methods.tsvm.matrix import FactorSource, TaskVectors
from r3h.ops import svd


@auto_register_config
class TSVM(LightningFabricMixin, MergeAlgorithm):
    """TSVM: θ = θ0 + α · U⊥ diag(ŝ) V⊥ᵀ per matrix (see module docstring).

    Args:
        alpha: α, default 0.5 (the toy validation sweep in docs/methods.md).
        svd_solver: how the top-q triplets and the polar factors are computed.
            `auto` (default): exact routes through float64 Gram matrices (the
            smaller of τᵀτ / ττᵀ and the stacks' nq × nq Grams, `eigh`), with an automatic
            fallback to the exact SVD where the condition estimate κ exceeds
            `r3h.ops.svd.GRAM_MAX_COND` (reported per tensor under `routes`); equal to
            `full` within float32 round-off (1e-6 relative). `full`: LAPACK's SVD for
            everything. `randomized`: top-q triplets by a seeded randomized range finder
            with `svd_oversample` extra columns and `svd_n_iter` power iterations (`seed`
            seeds it per tensor and expert); polar factors as `full`.
        exclude_keys: regexes (full match) of tensors that skip the SVD; default none:
            every matrix, embeddings and `lm_head` included, goes through it.
        cpu_threads: threads for CPU linear algebra per process (default null: torch's
            default, all the cores). A fixed count (e.g. 1) makes a CPU merge bit-identical
            whatever the number of processes (LAPACK's bits depend on its thread count); it
            costs the speed of the cores it leaves idle unless as many Fabric processes run.
        device: `auto` (default: the Fabric device of this rank), `cpu`, `cuda`, ...
        tmp_dir: shared folder for the ranks' shards when several ranks run in memory mode
            (default: the system temp, or beside `out_dir`).
        svd_cache: folder for the SVD factors (`r3h.core.svd_cache`; default null: none).
            The experts' top-q triplets and the stacks' polar factors are saved there per
            tensor and reused by later runs on the same checkpoints, whatever α, γ, ε, the
            outlier options or rank selection: such a re-merge runs no SVD and gives the
            cold run's model bit for bit. Each tensor's report records hits and misses.
            With several ranks it must be a folder every rank sees.
    Needs a base and at least two experts. Equals fusion_bench's
    `TSVM` to float32 round-off on the same pool.
    """

    _method_name = "tsvm"
    uses_svd_cache = distributed = True  # capabilities (r3h.methods.configs)
    log_report = True  # r3h_merge_report.json in the run's log folder
    min_experts = 2

    def __init__(
        self,
        alpha: float = 0.5,
        svd_solver: str = "auto",
        svd_oversample: int = 10,
        svd_n_iter: int = 4,
        seed: int = 42,
        cpu_threads: Optional[int] = None,
        tmp_dir: Optional[str] = None,
        device: str = "auto",
        svd_cache: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(device=device, **kwargs)
        self.tensor_reports: Dict[str, Dict[str, Any]] = {}
        self._plan = None
        self._cache: Optional[cache_mod.SVDCache] = None

    # -- checks -----------------------------------------------------------------------
    def setup(self, names):
        svd.check_solver(self.svd_solver)
        if not float(self.alpha) == float(self.alpha):
            raise ValueError(f"alpha={self.alpha} is not a number")
        if int(self.svd_oversample) < 0 or int(self.svd_n_iter) < 0:
            raise ValueError("svd_oversample and svd_n_iter must be ≥ 0")
        if self.cpu_threads is not None and int(self.cpu_threads) < 1:
            raise ValueError(f"cpu_threads={self.cpu_threads} must be ≥ 1 or null")
        if self.svd_cache is not None:
            cache_mod.check_folder(self.svd_cache)

    def prepare(self, modelpool):
        plan = super().prepare(modelpool)
        self._plan = plan
        self.tensor_reports = {}
        self._cache = None
        if self.svd_cache is not None:
            self._cache = cache_mod.SVDCache(self.svd_cache, cache_mod.environment(self.torch_device, self.cpu_threads))
        return plan

    def hyperparameters(self):
        hp = super().hyperparameters()
        hp.pop("svd_cache", None)  # where the factors are kept does not change the model
        return hp

    def engine_exclude_keys(self) -> List[str]:
        return []  # handled in merge_tensor: θ0 + α · mean τi

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return self.fabric.device
        return torch.device(self.device)

    # -- one tensor ------------------------------------------------------------------
    def tau_observer(self, n: int):
        """R-TSVM: what sees each τi as `TaskVectors` reads it (its statistics; it has
        `start(taus)` and `stats`); TSVM needs none (None)."""
        return None

    def reweighting(self, stats, r: int, q: int) -> Dict[str, Any]:
        """Expert weights and kept ranks to apply (None: αi = 1, ki = q, as TSVM), plus
        any per-tensor figures for the report."""
        return {"weights": None, "ranks": None}

    def merge_tensor(self, name, base, experts):
        with svd.cpu_threads(self.cpu_threads, base.device):
            return self._merge_tensor(name, base, experts)

    def _merge_tensor(self, name, base, experts):
        t0 = time.perf_counter()
        alpha = float(self.alpha)
        n = len(experts)
        report: Dict[str, Any] = {"shape": list(base.shape)}
        if base.dim() != 2 or self.is_excluded(name) or min(base.shape) // n == 0:
            report["rule"] = "mean"
            mean = None
            for e in experts:  # one expert at a time, τ in place in its fresh buffer
                t = e.sub_(base)
                mean = t if mean is None else mean.add_(t)
                del t
            out = base + alpha * mean.div_(n)
        else:
            out = self._svd_rule(name, base, experts, alpha, report)
        report["seconds"] = round(time.perf_counter() - t0, 4)
        self.tensor_reports[name] = report
        return out

    def _svd_rule(self, name, base, experts, alpha, report) -> torch.Tensor:
        """θ0 + α Δ for a matrix: τ → factors → polar → combine.

        τ is read one at a time, each released once its triplets are taken, and (TSVM) not
        at all where the cache holds the factors (`matrix.FactorSource`); R-TSVM takes
        each τi's statistics on the way (`tau_observer`)."""
        n, r = len(experts), min(base.shape)
        q = svd.top_q(r, n)
        observer = self.tau_observer(n)  # R-TSVM: each τi's statistics, taken as it is read
        taus = TaskVectors(base, experts, observer)
        src = self.factor_source(name, base, q, n)
        if observer is not None:
            observer.start(taus)  # relative ε: every τ read (and held) first
        polar = src.cached_polar(taus)
        if polar is None:
            stacks = src.factors(taus)  # each non-zero expert's top-q triplets, side by side
            if stacks is None:  # every τi is zero: θ0
                report.update(rule="zero", **src.report())
                return base.clone()
            polar = src.polar(stacks)
            del stacks
        U_orth, V_orth, S_hat, sti = polar
        del polar
        rw = {"weights": None, "ranks": None}
        if observer is not None:
            taus.read_rest()  # the τi the factors did not need: statistics only
            rw = self.reweighting(observer.stats, r, q)
        active, weights, ranks = src.active, rw.pop("weights"), rw.pop("ranks")
        out = svd.combine(U_orth, V_orth, S_hat, q, len(active),
                          None if weights is None else [weights[i] for i in active],
                          None if ranks is None else [ranks[i] for i in active],
                          base=base, alpha=alpha, inplace=True)  # U⊥ is fresh here
        del U_orth, V_orth
        if not torch.isfinite(out).all():
            raise ValueError(f"tensor '{name}': the merged task vector is not finite")
        report.update(rule="svd", q=q, sti=sti,
                      alpha=list(weights) if weights is not None else [1.0] * n,
                      k_i=[(ranks[i] if ranks is not None else q) if i in active else 0 for i in range(n)],
                      **{k: (float(v) if k == "omega" else v) for k, v in rw.items()}, **src.report())
        if len(active) < n:
            report["zero_experts"] = [i for i in range(n) if i not in active]
        return out

    def factor_source(self, name: str, base: torch.Tensor, q: int, n: int) -> FactorSource:
        """Where this matrix's factors come from: the run's SVD cache (if any) or the solver."""
        cache = self._cache if self._plan is not None else None
        return FactorSource(name, base.shape, q, n, self.svd_solver, self.seed, self.svd_oversample,
                            self.svd_n_iter, device=base.device, cache=cache,
                            base=self._plan.base if cache is not None else None,
                            experts=self._plan.experts if cache is not None else ())

    def is_excluded(self, name: str) -> bool:
        return any(re.fullmatch(p, name) for p in self.exclude_keys)

    # -- the run -----------------------------------------------------------------------
    def merge_info(self, modelpool, plan, stats):
        info = super().merge_info(modelpool, plan, stats)
        info["tensors"] = {n: self.tensor_reports[n] for n in plan.names if n in self.tensor_reports}
        if self.svd_cache is not None:
            info["svd_cache"] = {"folder": os.path.abspath(os.path.expanduser(str(self.svd_cache))),
                                 **cache_mod.summarize(info["tensors"])}
        return info

    def rank_state(self):
        return {"tensor_reports": self.tensor_reports}

    def absorb_rank_state(self, state):
        self.tensor_reports.update(state["tensor_reports"])
