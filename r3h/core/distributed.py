"""Spreading a merge over Lightning Fabric ranks (GPUs or CPU processes).

Every rank plans the same merge, takes a fixed, size-balanced share of the tensor
names (`assign_tensors`), reads only those tensors, merges them and writes them as
its own safetensors shards into one shared folder (`shared_tmp_dir`). `gather_results`
hands every rank every rank's result (its shards, statistics and report pieces) or
raises the first rank's error on all of them. Rank 0 then names the shards, writes the
index and the reports (or loads the tensors into a model): `MergeAlgorithm.run`. Each
tensor is computed by the same code whatever the rank, so the merged model is
bit-for-bit the one a single process gives. Several nodes need a folder all nodes see
(`tmp_dir`, or the parent of `out_dir`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from safetensors.torch import load_file

from r3h.core.engine import MergePlan
from r3h.io.plain import write_json_atomic


def tensor_cost(shape: Sequence[int]) -> float:
    """Relative work for one tensor: m·d·min(m, d) for a matrix (its SVDs), numel otherwise."""
    if len(shape) == 2:
        m, d = shape
        return float(m) * d * min(m, d)
    n = 1
    for s in shape:
        n *= s
    return float(n)


def assign_tensors(plan: MergePlan, world_size: int) -> List[List[str]]:
    """Longest-processing-time-first assignment of tensor names to ranks: the costliest
    tensor goes to the least-loaded rank (ties to the lower rank). Deterministic."""
    order = sorted(plan.names, key=lambda n: (-tensor_cost(plan.shapes[n]), n))
    loads = [0.0] * world_size
    shares: List[List[str]] = [[] for _ in range(world_size)]
    for name in order:
        r = min(range(world_size), key=lambda i: (loads[i], i))
        shares[r].append(name)
        loads[r] += tensor_cost(plan.shapes[name])
    position = {n: i for i, n in enumerate(plan.names)}
    return [sorted(s, key=position.__getitem__) for s in shares]


def shared_tmp_dir(fabric, parent: str | None) -> str:
    """A fresh folder created by rank 0 (under `parent`, else the system temp) and known to all ranks."""
    path = None
    if fabric.global_rank == 0:
        if parent:
            os.makedirs(parent, exist_ok=True)
        path = tempfile.mkdtemp(prefix=".r3h-merge-", dir=parent)
    return fabric.broadcast(path, src=0)


def _result_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f".rank{rank:05d}.json")


def write_rank_result(folder: str, rank: int, result: dict) -> None:
    write_json_atomic(_result_path(folder, rank), result)


def read_rank_results(folder: str, world_size: int) -> List[dict]:
    out = []
    for r in range(world_size):
        with open(_result_path(folder, r)) as f:
            out.append(json.load(f))
    return out


def remove_rank_results(folder: str, world_size: int) -> None:
    for r in range(world_size):
        os.remove(_result_path(folder, r))


def run_share(fn, *args, **kwargs) -> Dict:
    """Run this rank's share, turning an exception into a result every rank can read
    (so no rank waits forever at the barrier for one that failed)."""
    try:
        return {"ok": True, **fn(*args, **kwargs)}
    except Exception as exc:  # re-raised on every rank after the barrier
        return {"ok": False, "error": str(exc), "type": type(exc).__name__,
                "traceback": traceback.format_exc()}


def raise_first_error(results: List[dict]) -> None:
    for r, res in enumerate(results):
        if not res["ok"]:
            if res["type"] == "ValueError":
                raise ValueError(f"{res['error']} (on rank {r})")
            raise RuntimeError(f"{res['type']}: {res['error']} (on rank {r})\n{res['traceback']}")


def gather_results(fabric, folder: str, share: Callable[[], dict]) -> List[dict]:
    """Run this rank's `share()` and return every rank's result (JSON round trip, rank
    order) on every rank; if any rank failed, every rank raises the first error and rank 0
    removes `folder`."""
    rank, world = fabric.global_rank, fabric.world_size
    write_rank_result(folder, rank, run_share(share))
    fabric.barrier()
    results = read_rank_results(folder, world)
    fabric.barrier()  # every rank has read the results before rank 0 moves or removes the folder
    try:
        raise_first_error(results)
    except Exception:
        if rank == 0:
            remove(folder)
        raise
    return results


def rank_stats(results: List[dict], tensors: int) -> dict:
    """The run's statistics from the ranks' `stream_merge` statistics (`result["stats"]`)."""
    return {
        "tensors": tensors,
        "seconds": max(r["stats"]["seconds"] for r in results),
        "peak_rss_gb_per_rank": [r["stats"]["peak_rss_gb"] for r in results],
        "peak_accelerator_gb_per_rank": [r["stats"]["peak_accelerator_gb"] for r in results],
        "world_size": len(results),
    }


def load_shards(folder: str, shards: Sequence[Tuple[str, List[str], int]]) -> Dict[str, torch.Tensor]:
    """The tensors of the (not yet finalized) shards `(file, names, bytes)` in `folder`."""
    state: Dict[str, torch.Tensor] = {}
    for fn, _, _ in shards:
        state.update(load_file(os.path.join(folder, fn)))
    return state


def remove(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
