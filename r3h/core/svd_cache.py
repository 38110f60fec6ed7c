"""An on-disk cache of TSVM / R-TSVM's SVD work, so re-merging does no new SVD.

What TSVM and R-TSVM compute per matrix splits into an expensive part that depends only
on the checkpoints (and the solver) and a cheap part that depends on the hyperparameters
(`r3h.ops.svd`, `r3h.ops.rtsvm`):

- each expert's top-q triplets Ui, Si, Vi of τi = θi − θ0 (n SVDs of m × d);
- the polar factors U⊥, V⊥ of the stacks Û, V̂ (two more SVDs, of m × nq and d × nq) and
  the interference STI: orthogonalisation comes *before* R-TSVM's truncation and
  reweighting, so they too are independent of α, γ, ε, the outlier options and
  rank selection;
- cheap: Δ = Σi U⊥⁽ⁱ⁾[:, :ki] diag(αi Si[:ki]) V⊥⁽ⁱ⁾[:, :ki]ᵀ and θ0 + α Δ; R-TSVM's Ω and
  outlier masses are O(m·d) passes over τ (not cached: R-TSVM reads the task vectors again).

`SVDCache` keeps the expensive part, one safetensors file per entry:

- `factors`, one per (tensor, expert): U (m × q), S (q), V (d × q) exactly as
  `r3h.ops.svd.top_triplets` returned them, or a `zero` flag for an all-zero τi (left out of
  the stacks; lets TSVM skip reading that expert).
- `polar`, one per (tensor, active experts, q): U⊥ (m × nq), V⊥ (d × nq), ŝ (nq) and the STI.

**q.** An expert subset changes q = ⌊r/n⌋. Factor entries hold the q they were computed
with; with the exact solver an entry with q_stored ≥ q serves q by slicing (the first q
columns of the same full SVD are bit-identical), and a larger q recomputes and replaces it
(status `short`). The randomized solver's factors depend on q (and on the expert's position,
which seeds its test matrix), so for it both are part of the key; so is q for `auto` (the Gram
route's U = τ V diag(1/σ) is one GEMM over the q columns, and whether it falls back to the SVD
depends on σ1/σq).

**Keys and fingerprints.** An entry's file is `<folder>/<tensor folder>/<kind>-<h>.safetensors`
(`tensor_folder`: the name's `r3h.core.paths.slug` and a short hash; entries under the folder
name of earlier versions, `legacy_tensor_folder`, are still read) where h hashes its *stable
key*: tensor name, kind, the real paths of the files holding the base's and the expert's
tensor, the solver `svd_solver` (and, for `auto`: q; for `randomized`: seed, oversample,
n_iter, expert position, q). Its metadata holds the *fingerprint*: the stable key plus both
files' size and mtime (ns), both tensors' safetensors header entries (dtype, shape, byte
offsets), τ's shape, and the environment (torch version, compute dtype float32, device type,
LAPACK threads and CPU model on CPU, CUDA version and GPU name on GPU). A lookup compares
the whole fingerprint: any difference (a retrained checkpoint, another thread count) is
`stale`, recomputed and overwritten, never reused. A polar entry's fingerprint holds the
digests of its experts' factor fingerprints.

**Safety.** Writes go to a temporary file in the same folder, then `os.replace`: a reader
sees the old entry or the new one, never half of one. A file that does not parse, lacks a
tensor, has a wrong shape or dtype, or holds a non-finite value is `corrupt`: ignored,
recomputed and rewritten. A failed write (disk full) is logged and counted, and the merge
goes on. Statuses: `hit`, `miss` (no file), `stale`, `corrupt`, `short`.

This module is persistence only: which file, which key, valid or not. What to compute,
what to look up and when (zero experts, stacking, the polar step) is the per-matrix
algorithm's, `r3h.methods.tsvm.matrix.FactorSource`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from r3h.core.paths import slug

log = logging.getLogger(__name__)

FORMAT = "1"
STATUSES = ("hit", "miss", "stale", "corrupt", "short")


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device, cpu_threads: Optional[int]) -> dict:
    """What besides the inputs decides the bits of an SVD: torch, device, threads."""
    dev = torch.device(device)
    env = {"torch": torch.__version__, "compute_dtype": "float32", "device": dev.type, "machine": platform.machine()}
    if dev.type == "cpu":
        env["cpu_threads"] = int(cpu_threads) if cpu_threads is not None else torch.get_num_threads()
        env["cpu"] = _cpu_model()
    elif dev.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(dev)
    return env


def check_folder(folder) -> str:
    """Create the cache folder if needed and check that files can be written there."""
    if not isinstance(folder, (str, os.PathLike)) or not str(folder).strip():
        raise ValueError(f"svd_cache must be a folder path or null; got {folder!r}")
    path = os.path.abspath(os.path.expanduser(str(folder)))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"svd_cache={folder!r} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"svd_cache={folder!r}: cannot write there ({exc})") from exc
    return path


def tensor_folder(name: str) -> str:
    """The folder of a tensor's entries: `r3h.core.paths.slug` of its name (at most 80
    characters) plus a short hash of the name (two names never share one)."""
    return slug(name)[:80] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def legacy_tensor_folder(name: str) -> str:
    """The folder earlier r3h versions gave a tensor's entries (a slug of their own). It
    equals `tensor_folder` but for names with `=`, or that begin or end with `_` or a
    character outside `[A-Za-z0-9._=-]`; entries found only there are still read."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


@dataclass
class Entry:
    """One cache entry: where it lives, what it must match, and what the lookup found."""

    path: str  # where it is written
    stable: dict
    fingerprint: dict
    status: str = "miss"
    legacy: str = ""  # where an earlier r3h wrote it, if another folder
    found: str = ""  # the file the lookup read (`path` or `legacy`)
    zero: bool = False
    q_stored: int = 0
    meta: Dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest(self.fingerprint)

    @property
    def stable_digest(self) -> str:
        return digest(self.stable)

    @property
    def usable(self) -> bool:
        return self.status == "hit"


class SVDCache:
    """Factor and polar entries under `folder` (see the module docstring).

    Args:
        folder: the cache folder (created if needed).
        env: `environment(device, cpu_threads)` of this run.
    """

    def __init__(self, folder: str, env: dict):
        self.folder = check_folder(folder)
        self.env = dict(env)
        self.write_errors = 0
        self._stats: Dict[str, Tuple[int, int]] = {}

    # -- identities --------------------------------------------------------------------
    def file_stat(self, file: str) -> Tuple[str, int, int]:
        real = os.path.realpath(file)
        if real not in self._stats:
            st = os.stat(real)
            self._stats[real] = (st.st_size, st.st_mtime_ns)
        size, mtime = self._stats[real]
        return real, size, mtime

    def tensor_identity(self, checkpoint, name: str) -> dict:
        """The file (real path, size, mtime) and header entry of one checkpoint tensor."""
        info = checkpoint.tensors[name]
        real, size, mtime = self.file_stat(info.file)
        return {"file": real, "size": size, "mtime_ns": mtime, "dtype": str(info.dtype).replace("torch.", ""),
                "shape": list(info.shape), "offsets": [int(info.start), int(info.end)]}

    # -- entries -----------------------------------------------------------------------
    def _entry(self, tensor: str, kind: str, stable: dict, fingerprint: dict) -> Entry:
        """The entry and its status, from its file (or the file under the legacy folder name)."""
        file = f"{kind}-{digest(stable)[:32]}.safetensors"
        path, legacy = (os.path.join(self.folder, f(tensor), file) for f in (tensor_folder, legacy_tensor_folder))
        entry = Entry(path, stable, fingerprint, legacy="" if legacy == path else legacy)
        self._peek(entry, kind)
        return entry

    def factor_entry(self, tensor: str, base, expert, index: int, q: int, solver: str, shape: Sequence[int],
                     seed: int, oversample: int, n_iter: int) -> Entry:
        """Look up expert `index`'s factors of `tensor` (base and expert: `Checkpoint`s)."""
        base_id, expert_id = self.tensor_identity(base, tensor), self.tensor_identity(expert, tensor)
        stable = {"kind": "factors", "tensor": tensor, "base": base_id["file"], "expert": expert_id["file"],
                  "solver": solver}
        if solver == "randomized":
            stable.update(seed=int(seed), oversample=int(oversample), n_iter=int(n_iter), expert_index=int(index),
                          q=int(q))
        elif solver != "full":  # the Gram route's U = τ V diag(1/σ) and its fallback depend on q
            stable.update(q=int(q))
        fingerprint = {**stable, "format": FORMAT, "base_tensor": base_id, "expert_tensor": expert_id,
                       "shape": [int(s) for s in shape], "env": self.env}
        entry = self._entry(tensor, "factors", stable, fingerprint)
        if entry.status == "hit" and not entry.zero and entry.q_stored < q:
            entry.status = "short"
        return entry

    def polar_entry(self, tensor: str, experts: Sequence[Entry], q: int) -> Entry:
        """Look up the polar factors of the stacks of `experts` (the active ones, in order)."""
        stable = {"kind": "polar", "tensor": tensor, "q": int(q), "experts": [e.stable_digest for e in experts]}
        fingerprint = {**stable, "format": FORMAT, "expert_fingerprints": [e.digest for e in experts],
                       "env": self.env}
        return self._entry(tensor, "polar", stable, fingerprint)

    def _peek(self, entry: Entry, kind: str) -> None:
        """Status from the metadata alone (no tensor is read)."""
        entry.found = next((p for p in (entry.path, entry.legacy) if p and os.path.exists(p)), "")
        if not entry.found:
            entry.status = "miss"
            return
        try:
            with safe_open(entry.found, framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
            if meta.get("r3h_svd_cache") != FORMAT or meta.get("kind") != kind:
                raise ValueError("not an r3h SVD cache entry of this kind")
            stored = json.loads(meta["fingerprint"])
            q_stored = int(meta.get("q", "0"))
            zero = meta.get("zero") == "1"
        except Exception as exc:  # unreadable, truncated, not ours
            log.warning("SVD cache: %s is unreadable (%s); it will be rewritten", entry.found, exc)
            entry.status = "corrupt"
            return
        if canonical(stored) != canonical(entry.fingerprint):
            entry.status = "stale"
            return
        entry.status, entry.zero, entry.q_stored, entry.meta = "hit", zero, q_stored, meta

    def _read(self, entry: Entry, names: Sequence[str]) -> Optional[Dict[str, torch.Tensor]]:
        try:
            with safe_open(entry.found, framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in names}
        except Exception as exc:
            log.warning("SVD cache: cannot read %s (%s); it will be rewritten", entry.found, exc)
            return None

    def load_factors(self, entry: Entry, q: int, m: int, d: int, device) -> Optional[Tuple[torch.Tensor, ...]]:
        """U[:, :q], S[:q], V[:, :q] of a `hit` entry on `device`; None (status `corrupt`) if the
        file does not hold what its metadata promised."""
        t = self._read(entry, ("U", "S", "V"))
        k = entry.q_stored
        if t is None or not _valid(t["U"], (m, k)) or not _valid(t["S"], (k,)) or not _valid(t["V"], (d, k)):
            entry.status = "corrupt"
            return None
        return (t["U"][:, :q].clone().to(device), t["S"][:q].clone().to(device), t["V"][:, :q].clone().to(device))

    def load_polar(self, entry: Entry, m: int, d: int, nq: int, device):
        """(U⊥, V⊥, ŝ, STI) of a `hit` polar entry, or None (status `corrupt`)."""
        t = self._read(entry, ("U_orth", "V_orth", "S"))
        try:
            sti = float(entry.meta["sti"])
        except (KeyError, ValueError):
            t = None
        if (t is None or not _valid(t["U_orth"], (m, nq)) or not _valid(t["V_orth"], (d, nq))
                or not _valid(t["S"], (nq,))):
            entry.status = "corrupt"
            return None
        return t["U_orth"].to(device), t["V_orth"].to(device), t["S"].to(device), sti

    # -- writing -----------------------------------------------------------------------
    def store_factors(self, entry: Entry, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> bool:
        return self._write(entry, "factors", {"U": U, "S": S, "V": V}, q=int(S.numel()), zero=False)

    def store_zero(self, entry: Entry) -> bool:
        return self._write(entry, "factors", {}, q=0, zero=True)

    def store_polar(self, entry: Entry, U_orth: torch.Tensor, V_orth: torch.Tensor, S: torch.Tensor,
                    sti: float) -> bool:
        return self._write(entry, "polar", {"U_orth": U_orth, "V_orth": V_orth, "S": S}, q=0, zero=False,
                           sti=repr(float(sti)))

    def _write(self, entry: Entry, kind: str, tensors: Dict[str, torch.Tensor], q: int, zero: bool, **extra) -> bool:
        meta = {"r3h_svd_cache": FORMAT, "kind": kind, "fingerprint": canonical(entry.fingerprint), "q": str(q),
                "zero": "1" if zero else "0", **extra}
        folder = os.path.dirname(entry.path)
        tmp = None
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
            os.close(fd)
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
            os.replace(tmp, entry.path)
            tmp = None
            return True
        except Exception as exc:  # a cache that cannot be written must not stop the merge
            self.write_errors += 1
            log.warning("SVD cache: could not write %s (%s); the merge goes on without it", entry.path, exc)
            return False
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)


def _valid(t: torch.Tensor, shape: Tuple[int, ...]) -> bool:
    return t.dtype == torch.float32 and tuple(t.shape) == tuple(shape) and bool(torch.isfinite(t).all())


def summarize(reports: Dict[str, dict]) -> dict:
    """Totals of the per-tensor `svd_cache` records of a run's report."""
    factors = {s: 0 for s in STATUSES}
    polar = {s: 0 for s in STATUSES}
    svds = unwritten = tensors = 0
    for rep in reports.values():
        c = rep.get("svd_cache")
        if not c:
            continue
        tensors += 1
        for s in c.get("factors", []):
            if s in factors:
                factors[s] += 1
        if c.get("polar") in polar:
            polar[c["polar"]] += 1
        svds += int(c.get("svds", 0))
        unwritten += int(c.get("unwritten", 0))
    return {"tensors": tensors, "factors": factors, "polar": polar, "svds": svds, "unwritten": unwritten}
