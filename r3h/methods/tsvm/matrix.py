"""TSVM and R-TSVM's per-matrix algorithm: where one matrix's SVD factors come from.

For one m × d tensor and n experts (the steps of `r3h.ops.svd`): read τi = θi − θ0 when
needed (`TaskVectors`), take each non-zero expert's top-q triplets and stack them, then the
polar factors of the stacks and STI (`FactorSource.factors`, `FactorSource.polar`). An expert
whose τ is all zero is left out of the stacks (its singular vectors would be an arbitrary
basis). With an SVD cache (`r3h.core.svd_cache.SVDCache`, persistence only) the factors
and polar factors are looked up first, and what is computed is stored.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from r3h.core.svd_cache import Entry, SVDCache
from r3h.ops import svd
from r3h.ops.rng import tensor_generator


class TaskVectors:
    """τi = θi − θ0 of one tensor, for the engine's lazy `ExpertTensors`: each read when
    first asked for (in place, in the expert's fresh buffer) and held only until it is
    taken. `all()` reads and holds every one; `take(i)` hands τi over and forgets it;
    `drop(i)` and `clear()` forget. `observer(i, τi)`, given when the object is built,
    sees each τi as it is read (R-TSVM's per-expert statistics, taken on the way;
    `r3h.methods.tsvm.r_tsvm.TauStatisticsObserver`). `base=None`: `experts` are the τi
    themselves (the analysis's STI)."""

    def __init__(self, base: Optional[torch.Tensor], experts: Sequence[torch.Tensor],
                 observer: Optional[Callable[[int, torch.Tensor], None]] = None):
        self.base, self.experts, self.observer = base, experts, observer
        self._held: List[Optional[torch.Tensor]] = [None] * len(experts)
        self._seen = [False] * len(experts)

    def __len__(self) -> int:
        return len(self._held)

    def _read(self, i: int) -> torch.Tensor:
        t = self.experts[i] if self.base is None else self.experts[i].sub_(self.base)
        self._seen[i] = True
        if self.observer is not None:
            self.observer(i, t)
        return t

    def read_rest(self) -> None:
        """Read, one at a time and without holding them, the τi never read so far (those the
        factors did not need: cached or zero), so that the observer has seen every one."""
        for i, seen in enumerate(self._seen):
            if not seen:
                self._read(i)

    def all(self) -> List[torch.Tensor]:
        for i, t in enumerate(self._held):
            if t is None:
                self._held[i] = self._read(i)
        return list(self._held)

    def take(self, i: int) -> torch.Tensor:
        t, self._held[i] = self._held[i], None
        return t if t is not None else self._read(i)

    def drop(self, i: int) -> None:
        self._held[i] = None

    def clear(self) -> None:
        self._held = [None] * len(self._held)


Polar = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]  # U⊥ (m × nq), V⊥ (d × nq), ŝ (nq), STI


class FactorSource:
    """One matrix's SVD factors for TSVM / R-TSVM: each expert's top-q triplets
    (`r3h.ops.svd.top_triplets`) and the polar factors of their stacks
    (`r3h.ops.svd.polar_factor`), served from `cache` where it holds them, else computed
    (and stored when a cache is on; `cache=None`: always computed).

    Experts whose τ is all zero add nothing and would only feed arbitrary singular vectors
    into the polar factors: they are left out of the stacks (`active`: the others, in
    order). Their zero flags come from the cache, from `note_zero`, or from τ when it is
    read. `report()` gives the tensor's `routes` and, with a cache, its `svd_cache` record
    (statuses, SVDs run, failed writes).

    Args:
        name: the tensor; shape: its (m, d); q: triplets per expert; n: the experts.
        solver, seed, oversample, n_iter: as `top_triplets` (the randomized solver is
            seeded per tensor and expert, `r3h.ops.tensor_generator(seed, name, i)`).
        device: where the factors are put.
        cache: an `SVDCache`, or None; base, experts: the base's and experts' `Checkpoint`s
            (the cache's keys), with a cache.
    """

    def __init__(self, name: str, shape: Sequence[int], q: int, n: int, solver: str = "auto", seed: int = 42,
                 oversample: int = 10, n_iter: int = 4, device="cpu", cache: Optional[SVDCache] = None,
                 base=None, experts: Sequence = ()):
        self.name, self.q, self.n = name, q, n
        self.m, self.d = (int(s) for s in shape)
        self.solver, self.seed, self.oversample, self.n_iter = solver, int(seed), int(oversample), int(n_iter)
        self.device, self.cache = device, cache
        self.entries: List[Optional[Entry]] = [None] * n
        if cache is not None:
            self.entries = [cache.factor_entry(name, base, experts[i], i, q, solver, shape, self.seed,
                                               self.oversample, self.n_iter) for i in range(n)]
        self.zero: List[Optional[bool]] = [e.zero if e is not None and e.usable else None for e in self.entries]
        self.active: List[int] = []
        self.svds = self.unwritten = 0
        self.routes: List[Tuple[str, svd.Route]] = []
        self._polar: Optional[Entry] = None

    def note_zero(self, i: int, zero: bool) -> None:
        """Record whether τi is all zero; a cached flag that τi contradicts is stale."""
        e = self.entries[i]
        if e is not None and e.usable and e.zero != zero:
            e.status = "stale"
        self.zero[i] = zero

    # -- the polar factors ---------------------------------------------------------------
    def cached_polar(self, taus: TaskVectors) -> Optional[Polar]:
        """The polar factors from the cache, if every expert's zero flag is known and the
        cache holds them (then every τ is released; zero experts' τ are released anyway)."""
        if any(z is None for z in self.zero):
            return None
        for i in range(self.n):
            if self.zero[i]:
                taus.drop(i)
        self.active = [i for i in range(self.n) if not self.zero[i]]
        if not self.active or self.cache is None:
            return None
        entry = self._polar_entry()
        got = self.cache.load_polar(entry, self.m, self.d, len(self.active) * self.q, self.device) \
            if entry.usable else None
        if got is not None:
            taus.clear()
        return got

    def polar(self, f: svd.StackedFactors) -> Polar:
        """Steps 3–4: the polar factors U⊥, V⊥ of the stacks (written over `f.U`, `f.V`
        where the Gram route allows), ŝ and the STI; stored when a cache is on."""
        try:
            U_orth, GU, ru = svd.polar_factor(f.U, self.solver, inplace=True)
            V_orth, GV, rv = svd.polar_factor(f.V, self.solver, inplace=True)
        except RuntimeError as exc:  # torch.linalg.LinAlgError
            raise ValueError(f"tensor '{self.name}': the polar factor of the stacked factors failed ({exc})") from exc
        self.svds += 2
        self.routes += [("polar U", ru), ("polar V", rv)]
        sti, S_hat = svd.interference_from_grams(GU, GV, f.S), f.S
        del f, GU, GV
        if self.cache is not None:
            self.unwritten += not self.cache.store_polar(self._polar_entry(), U_orth, V_orth, S_hat, sti)
        return U_orth, V_orth, S_hat, sti

    def _polar_entry(self) -> Entry:
        """The polar entry of the stacks of `active` (looked up once per set of experts)."""
        digests = [self.entries[i].stable_digest for i in self.active]
        if self._polar is None or self._polar.stable["experts"] != digests:
            self._polar = self.cache.polar_entry(self.name, [self.entries[i] for i in self.active], self.q)
        return self._polar

    # -- the experts' factors ------------------------------------------------------------
    def factors(self, taus: TaskVectors) -> Optional[svd.StackedFactors]:
        """Steps 1–2: the non-zero experts' top-q triplets side by side (and `active`),
        loaded, or computed from τi = `taus.take(i)`, released once its triplets are taken;
        None when every τi is zero. The stacks are filled in place, expert by expert (no
        second copy for a concatenation)."""
        m, d, q = self.m, self.d, self.q
        U_all = torch.empty(m, self.n * q, dtype=torch.float32, device=self.device)
        V_all = torch.empty(d, self.n * q, dtype=torch.float32, device=self.device)
        Ss, self.active = [], []
        for i in range(self.n):
            got = None if self.zero[i] else self._load(i)
            if got is None and not self.zero[i]:
                got = self._compute(i, taus.take(i))
            taus.drop(i)
            if got is None:  # τi is all zero
                continue
            k = len(self.active)
            U_all[:, k * q : (k + 1) * q] = got[0]
            V_all[:, k * q : (k + 1) * q] = got[2]
            Ss.append(got[1])
            self.active.append(i)
            del got
        if not self.active:
            return None
        k = len(self.active) * q
        if k < self.n * q:
            U_all, V_all = U_all[:, :k].contiguous(), V_all[:, :k].contiguous()
        return svd.StackedFactors(U_all, torch.cat(Ss), V_all, q, len(self.active))

    def _load(self, i: int) -> Optional[Tuple[torch.Tensor, ...]]:
        e = self.entries[i]
        if e is None or not e.usable or e.zero:
            return None
        return self.cache.load_factors(e, self.q, self.m, self.d, self.device)

    def _compute(self, i: int, tau: torch.Tensor) -> Optional[Tuple[torch.Tensor, ...]]:
        """Expert i's top-q triplets of `tau` (None, and the flag stored, if τ is all zero)."""
        e = self.entries[i]
        if self.zero[i] is None:
            self.note_zero(i, not bool(tau.any()))
            if self.zero[i]:
                if e is not None and not e.usable:
                    self.unwritten += not self.cache.store_zero(e)
                return None
        gen = tensor_generator(self.seed, self.name, i) if self.solver == "randomized" else None
        try:
            got, route = svd.top_triplets(tau, self.q, self.solver, gen, self.oversample, self.n_iter)
        except RuntimeError as exc:  # torch.linalg.LinAlgError
            raise ValueError(f"tensor '{self.name}': the SVD of a task vector failed ({exc})") from exc
        del tau
        self.svds += 1
        self.routes.append((f"expert {i}", route))
        if not all(bool(torch.isfinite(t).all()) for t in got):
            raise ValueError(f"tensor '{self.name}': the SVD of a task vector is not finite")
        if e is not None:
            self.unwritten += not self.cache.store_factors(e, *got)
        return got

    # -- the report ----------------------------------------------------------------------
    def report(self) -> Dict[str, Any]:
        """`routes` (how each decomposition ran, if any did) and, with a cache, `svd_cache`:
        each expert's factor status, the polar status, the SVDs run and any failed writes."""
        out: Dict[str, Any] = {}
        if self.routes:
            out["routes"] = {k: r.describe() for k, r in self.routes}
        if self.cache is not None:
            rec = {"factors": [e.status for e in self.entries],
                   "polar": self._polar.status if self._polar is not None else None, "svds": self.svds}
            if self.unwritten:
                rec["unwritten"] = self.unwritten
            out["svd_cache"] = rec
        return out
