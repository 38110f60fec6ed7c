"""Writing a merged model: safetensors shards as tensors arrive, into a folder that
appears under its final name only when complete.

`ShardWriter` buffers tensors up to `max_shard_size` bytes (MergeKit's scheme),
writes each full shard at once and frees it, and writes
`model.safetensors.index.json` last. `atomic_output_dir` builds the output in a
hidden temporary sibling and renames it into place on success; on any error the
temporary folder is removed, so nothing half-written ever looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
from safetensors.torch import save_file

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size) -> int:
    """Bytes in `size`: an int, or a string such as "5GB", "500MiB"."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"max_shard_size: cannot read {size!r} as a size such as '5GB'")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@contextlib.contextmanager
def atomic_output_dir(path: str) -> Iterator[str]:
    """Yield a temporary folder beside `path`; move it to `path` only if the block succeeds.

    An existing `path` is replaced only after the new output is complete.
    """
    path = os.path.abspath(os.path.expanduser(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, path)


def move_into_place(tmp: str, path: str) -> None:
    """Rename the finished folder `tmp` to `path` (same filesystem), replacing any old `path`."""
    path = os.path.abspath(os.path.expanduser(path))
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class ShardWriter:
    """Accumulate tensors and write them as safetensors shards of at most `max_shard_size`.

    Shards get temporary names (`.<prefix>shard-i.safetensors`); `close()` writes the
    last one and gives them their final names `model-0000i-of-0000N.safetensors` plus
    `model.safetensors.index.json`. Several writers (one per process) sharing a folder
    use distinct `prefix`es, `close(finalize=False)`, and one `finalize_shards` call.
    """

    def __init__(self, out_dir: str, max_shard_size="5GB", prefix: str = ""):
        self.out_dir = out_dir
        self.prefix = prefix
        self.max_bytes = parse_size(max_shard_size)
        self._buffer: Dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self.shards: List[Tuple[str, List[str], int]] = []  # (temporary file, tensor names, bytes)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_bytes:
            self._flush()
        self._buffer[name] = tensor.detach().to("cpu").contiguous()
        self._buffer_bytes += nbytes
        if self._buffer_bytes >= self.max_bytes:  # full: written now, not held while the next tensor merges
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        fn = f".{self.prefix}shard-{len(self.shards):05d}.safetensors"
        save_file(self._buffer, os.path.join(self.out_dir, fn), metadata={"format": "pt"})
        self.shards.append((fn, list(self._buffer), self._buffer_bytes))
        self._buffer = {}
        self._buffer_bytes = 0

    def close(self, finalize: bool = True) -> List[Tuple[str, List[str], int]]:
        """Write the last shard; with `finalize`, name the shards and write the index."""
        self._flush()
        if finalize:
            finalize_shards(self.out_dir, self.shards)
        return self.shards


def finalize_shards(out_dir: str, shards: Sequence[Tuple[str, List[str], int]]) -> None:
    """Rename temporary shards to `model.safetensors` (one shard) or
    `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json`."""
    n = len(shards)
    if n == 1:
        os.replace(os.path.join(out_dir, shards[0][0]), os.path.join(out_dir, "model.safetensors"))
        return
    weight_map = {}
    for i, (fn, names, _) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(os.path.join(out_dir, fn), os.path.join(out_dir, final))
        weight_map.update({k: final for k in names})
    index = {"metadata": {"total_size": sum(b for _, _, b in shards)}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)


class StateDictSink(dict):
    """Collects merged tensors in memory (the in-memory counterpart of `ShardWriter`)."""

    def put(self, name: str, tensor: torch.Tensor) -> None:
        self[name] = tensor
