"""TSVM and R-TSVM on the shared `layerwise_svd` core, spread over Fabric ranks
(`MergeAlgorithm.run`).

TSVM (Gargiulo et al., arXiv 2412.00081): θ = θ0 + α Δ with Δ = U⊥ diag(ŝ) V⊥ᵀ
built from each expert's top ⌊r/n⌋ singular triplets, orthogonalised by polar
factors. R-TSVM (Yang et al., arXiv 2502.06876, Sec. 5, Algorithm 1, App. A.3)
adds outlier-aware expert weights αi and a sparsity-adaptive rank ki per tensor.
The exact rules are in `r3h.core.layerwise_svd` and docs/r_tsvm.md.

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
from r3h.core import layerwise_svd as svd
from r3h.core import svd_cache as cache_mod
from r3h.methods.base import MergeAlgorithm, check_range
from r3h.ops import tensor_generator


@auto_register_config
class TSVM(LightningFabricMixin, MergeAlgorithm):
    """TSVM: θ = θ0 + α · U⊥ diag(ŝ) V⊥ᵀ per matrix (see module docstring).

    Args:
        alpha: α, default 0.5 (the toy validation sweep in docs/methods.md).
        svd_solver: how the top-q triplets and the polar factors are computed.
            `auto` (default): exact routes through float64 Gram matrices (the
            smaller of τᵀτ / ττᵀ and the stacks' nq × nq Grams, `eigh`), with an automatic
            fallback to the exact SVD where the condition estimate κ exceeds
            `layerwise_svd.GRAM_MAX_COND` (reported per tensor under `routes`); equal to
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
    reweight = False

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
    def reweighting(self, taus, r: int, q: int) -> Dict[str, Any]:
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
        """θ0 + α Δ for a matrix, with the SVD work taken from the cache where it is there.

        Task vectors are read only when something needs them: all at once for R-TSVM's
        statistics; for TSVM one at a time, each released once its triplets are taken (and
        not at all where the cache holds the factors)."""
        n = len(experts)
        r = min(base.shape)
        q = svd.top_q(r, n)
        cache = self._cache if self._plan is not None else None
        entries: List[Optional[cache_mod.Entry]] = [None] * n
        if cache is not None:
            plan = self._plan
            entries = [cache.factor_entry(name, plan.base, plan.experts[i], i, q, self.svd_solver, base.shape,
                                          self.seed, self.svd_oversample, self.svd_n_iter) for i in range(n)]
        taus: List[Optional[torch.Tensor]] = [None] * n
        zero: List[Optional[bool]] = [e.zero if e is not None and e.usable else None for e in entries]
        if self.reweight:
            taus = [e.sub_(base) for e in experts]  # in place, in the experts' fresh buffers
            for i, t in enumerate(taus):
                self._note_zero(entries[i], zero, i, not bool(t.any()))
        rw = self.reweighting(taus, r, q) if self.reweight else {"weights": None, "ranks": None}
        ctx = {"svds": 0, "unwritten": 0, "routes": []}
        out = self._svd_delta(name, base, experts, taus, zero, q, entries, ctx, rw, alpha, report)
        if cache is not None:
            report["svd_cache"] = {"factors": [e.status for e in entries], "polar": report.pop("_polar", None),
                                   "svds": ctx["svds"]}
            if ctx["unwritten"]:
                report["svd_cache"]["unwritten"] = ctx["unwritten"]
        return out

    def _note_zero(self, entry, zero, i, z: bool) -> None:
        """Record that τi is (not) all zero; a cached flag that τ contradicts is stale."""
        if entry is not None and entry.usable and entry.zero != z:
            entry.status = "stale"
        zero[i] = z

    def _svd_delta(self, name, base, experts, taus, zero, q, entries, ctx, rw, alpha, report) -> torch.Tensor:
        n = len(taus)
        m, d = base.shape
        cache = self._cache if entries[0] is not None else None
        got = polar_entry = None
        if all(z is not None for z in zero):  # every expert's zero flag known: try the polar entry first
            for i in range(n):
                if zero[i]:
                    taus[i] = None
            active = [i for i in range(n) if not zero[i]]
            if active and cache is not None:
                polar_entry = cache.polar_entry(name, [entries[i] for i in active], q)
                if polar_entry.usable:
                    got = cache.load_polar(polar_entry, m, d, len(active) * q, base.device)
        if got is not None:
            U_orth, V_orth, S_hat, sti = got
            taus.clear()
        else:
            f, active = self._stacked_factors(name, base, experts, taus, zero, q, entries, ctx)
            if f is None:
                report["rule"] = "zero"
                return base.clone()
            if cache is not None and (polar_entry is None or polar_entry.stable["experts"] != [
                    entries[i].stable_digest for i in active]):
                polar_entry = cache.polar_entry(name, [entries[i] for i in active], q)
            try:
                U_orth, GU, ru = svd.polar_factor(f.U, self.svd_solver, inplace=True)
                V_orth, GV, rv = svd.polar_factor(f.V, self.svd_solver, inplace=True)
            except RuntimeError as exc:  # torch.linalg.LinAlgError
                raise ValueError(f"tensor '{name}': the polar factor of the stacked factors failed ({exc})") from exc
            ctx["svds"] += 2
            ctx["routes"] += [("polar U", ru), ("polar V", rv)]
            sti, S_hat = svd.interference_from_grams(GU, GV, f.S), f.S
            del f, GU, GV
            if cache is not None:
                ctx["unwritten"] += not cache.store_polar(polar_entry, U_orth, V_orth, S_hat, sti)
        if polar_entry is not None:
            report["_polar"] = polar_entry.status
        weights, ranks = rw.pop("weights"), rw.pop("ranks")
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
                      **{k: (float(v) if k == "omega" else v) for k, v in rw.items()})
        if ctx["routes"]:
            report["routes"] = {k: r.describe() for k, r in ctx["routes"]}
        if len(active) < n:
            report["zero_experts"] = [i for i in range(n) if i not in active]
        return out

    def _stacked_factors(self, name, base, experts, taus, zero, q, entries, ctx):
        """The non-zero experts' top-q triplets, from the cache or computed (stored when a
        cache is on), and the list of those experts; (None, []) when every τi is zero. Each
        τi is read only if needed and released once its triplets are taken. Experts whose τ
        is all zero add nothing and would only feed arbitrary singular vectors into the
        polar factors: they are left out of the stacks."""
        m, d = base.shape
        n = len(taus)
        cache = self._cache if entries[0] is not None else None
        # the stacks are filled in place, expert by expert (no second copy for a concatenation)
        U_all = torch.empty(m, n * q, dtype=torch.float32, device=base.device)
        V_all = torch.empty(d, n * q, dtype=torch.float32, device=base.device)
        Ss, active = [], []
        for i in range(n):
            e = entries[i]
            if zero[i]:
                taus[i] = None
                continue
            got = cache.load_factors(e, q, m, d, base.device) if e is not None and e.usable and not e.zero else None
            if got is None:
                tau = taus[i] if taus[i] is not None else experts[i].sub_(base)
                taus[i] = None
                if zero[i] is None:
                    self._note_zero(e, zero, i, not bool(tau.any()))
                if zero[i]:
                    if e is not None and not e.usable:
                        ctx["unwritten"] += not cache.store_zero(e)
                    continue
                gen = tensor_generator(self.seed, name, i) if self.svd_solver == "randomized" else None
                try:
                    got, route = svd.top_triplets(tau, q, self.svd_solver, gen, int(self.svd_oversample),
                                                  int(self.svd_n_iter))
                except RuntimeError as exc:  # torch.linalg.LinAlgError
                    raise ValueError(f"tensor '{name}': the SVD of a task vector failed ({exc})") from exc
                del tau
                ctx["svds"] += 1
                ctx["routes"].append((f"expert {i}", route))
                if not all(bool(torch.isfinite(t).all()) for t in got):
                    raise ValueError(f"tensor '{name}': the SVD of a task vector is not finite")
                if e is not None:
                    ctx["unwritten"] += not cache.store_factors(e, *got)
            taus[i] = None
            k = len(active)
            U_all[:, k * q : (k + 1) * q] = got[0]
            V_all[:, k * q : (k + 1) * q] = got[2]
            Ss.append(got[1])
            active.append(i)
            del got
        taus.clear()
        if not active:
            return None, []
        k = len(active) * q
        if k < n * q:
            U_all, V_all = U_all[:, :k].contiguous(), V_all[:, :k].contiguous()
        return svd.StackedFactors(U_all, torch.cat(Ss), V_all, q, len(active)), active

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


@auto_register_config
class RTSVM(TSVM):
    """R-TSVM: TSVM with outlier-aware expert weights and sparsity-adaptive rank.

    Args:
        outlier_weighting: αi from each expert's 3σ outlier mass Ti (Eq. 6–8); default true.
        outlier_reading: how Ti becomes αi ∝ ci: `eq8` (ci = Ti, Eq. 8 as written; default),
            `inverse` (ci = 1/Ti, Appendix A.1's reading; equal weights if some Ti = 0) or
            `share` (ci = Ti / Σ|τi|, scale-free). See `layerwise_svd.weights_from_outliers`.
        outlier_norm: `mean` (n·αi, so equal scores give 1; default) or `sum` (αi, Σ αi = 1).
        outlier_min_share: the guard: if some expert's outlier share Ti / Σ|τi| is below it,
            the tensor's weights are equal (report: `alpha_rule: equal (guard)`); in [0, 1],
            default 0.01 (a Gaussian row has ≈ 0.033, Adam-like task vectors ≈ 0); 0 = off.
        rank_selection: keep ki = min(q, max(1, ⌊k/n⌋)) triplets per expert with
            k = ⌊r (1 − γ Ω)⌋ (Eq. 9–10); default true.
        gamma: γ in [0, 1]; default 0.5.
        epsilon: ε > 0 for Ω = fraction of |τ| < ε; default 0.1 (the paper's).
        epsilon_mode: `absolute` (the paper's, default) or `relative` (ε · RMS of the stacked τ).
        alpha, svd_solver, exclude_keys, ...: as TSVM.
    With both switches off R-TSVM equals TSVM. Per tensor the report gives αi, how they were
    chosen (`alpha_rule`), each expert's outlier share, Ω, k, ki and STI. `RESM` is this class
    under the paper's v3 name.
    """

    _method_name = "r_tsvm"
    reweight = True

    def __init__(
        self,
        outlier_weighting: bool = True,
        rank_selection: bool = True,
        outlier_norm: str = "mean",
        outlier_reading: str = "eq8",
        outlier_min_share: float = 0.01,
        gamma: float = 0.5,
        epsilon: float = 0.1,
        epsilon_mode: str = "absolute",
        **kwargs,
    ):
        super().__init__(**kwargs)

    def setup(self, names):
        super().setup(names)
        check_range("gamma", float(self.gamma), 0.0, 1.0)
        if not float(self.epsilon) > 0:
            raise ValueError(f"epsilon={self.epsilon} must be > 0")
        if self.epsilon_mode not in ("absolute", "relative"):
            raise ValueError(f"epsilon_mode must be 'absolute' or 'relative'; got {self.epsilon_mode!r}")
        if self.outlier_norm not in ("mean", "sum"):
            raise ValueError(f"outlier_norm must be 'mean' or 'sum'; got {self.outlier_norm!r}")
        if self.outlier_reading not in svd.OUTLIER_READINGS:
            raise ValueError(f"outlier_reading must be one of {', '.join(svd.OUTLIER_READINGS)}; "
                             f"got {self.outlier_reading!r}")
        share = self.outlier_min_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or share != share:
            raise ValueError(f"outlier_min_share must be a number in [0, 1]; got {share!r}")
        check_range("outlier_min_share", float(share), 0.0, 1.0)

    def reweighting(self, taus, r, q):
        n = len(taus)
        omega = svd.sparsity(taus, float(self.epsilon), self.epsilon_mode)
        k, ki = svd.rank_budget(r, n, q, omega, float(self.gamma))
        out = {"weights": None, "ranks": ki if self.rank_selection else None, "omega": omega, "k": k,
               "alpha_rule": "off"}
        if self.outlier_weighting:
            ow = svd.outlier_weights(taus, self.outlier_norm, self.outlier_reading, float(self.outlier_min_share))
            out.update(weights=ow.weights, alpha_rule=ow.rule, outlier_share=ow.shares)
        return out
