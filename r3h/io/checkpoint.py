"""Lazy, per-tensor access to a Hugging Face checkpoint folder.

A `Checkpoint` knows every tensor's name, shape and dtype from the safetensors
headers alone (sharded with `model.safetensors.index.json`, or a single
`model.safetensors`) and reads one tensor at a time with positioned reads. It
never memory-maps a whole file, so pages of tensors already merged do not stay in
the process's resident memory (MergeKit's lazy loader, without the mmap). Legacy
`pytorch_model*.bin` checkpoints are read with `torch.load(weights_only=True,
mmap=True)`, one shard at a time.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

SAFE_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

# Files a merge needs from a hub snapshot: config, weights, tokenizer, chat template.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
# A repository that has no safetensors (PyTorch weights only) is fetched with these instead.
HUB_BIN_PATTERNS = ["*.json", "*.bin", "*.model", "*.txt", "*.jinja", "*.tiktoken"]

#: Hub accounts that were renamed: a repository named under one is also tried under the
#: other. The paper's checkpoints were published as `Jinluan/3H_Merging_*` and now appear
#: under `yangjinluan` (docs/data.md, "The authors' checkpoints").
HUB_ACCOUNT_ALIASES: Dict[str, Tuple[str, ...]] = {"Jinluan": ("yangjinluan",), "yangjinluan": ("Jinluan",)}


def hub_candidates(repo_id: str) -> List[str]:
    """`repo_id`, then the same repository under each alias of its account."""
    owner, sep, rest = str(repo_id).partition("/")
    return [str(repo_id)] + ([f"{a}/{rest}" for a in HUB_ACCOUNT_ALIASES.get(owner, ())] if sep else [])


def _has_weights(folder: str) -> bool:
    return any(fn.endswith(".safetensors") or fn.endswith(".bin") for fn in os.listdir(folder))


def download_snapshot(repo_id: str, revision: Optional[str] = None) -> str:
    """A local snapshot of `repo_id` with the files a merge needs (`HUB_PATTERNS`; the
    PyTorch `.bin` weights when the repository has no safetensors)."""
    from huggingface_hub import snapshot_download

    path = snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=HUB_PATTERNS)
    if not _has_weights(path):
        path = snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=HUB_BIN_PATTERNS)
    return path


def resolve_checkpoint_dir(name_or_path: str, model_name: str = "?", revision: Optional[str] = None) -> str:
    """Return a local folder for `name_or_path`: the folder itself, or a hub snapshot.

    Hub ids are resolved with `download_snapshot` (honours `HF_HUB_OFFLINE` and the HF
    cache), at `revision` when given; a repository of a renamed account
    (`HUB_ACCOUNT_ALIASES`) is tried under each of its names, and the error names them all.
    """
    path = os.path.expanduser(str(name_or_path))
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"model '{model_name}': {path} is a file; give the checkpoint folder")
    candidates = hub_candidates(str(name_or_path))
    errors = []
    for repo in candidates:
        try:
            return download_snapshot(repo, revision)
        except Exception as exc:  # network, auth, or not a repo id
            errors.append((repo, exc))
    at = f" at revision {revision}" if revision else ""
    if len(candidates) == 1:
        exc = errors[0][1]
        raise FileNotFoundError(
            f"model '{model_name}': '{name_or_path}' is neither a local folder nor a "
            f"downloadable hub repository{at} ({type(exc).__name__}: {exc})"
        ) from exc
    tried = "; ".join(f"{repo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" for repo, e in errors)
    raise FileNotFoundError(
        f"model '{model_name}': '{name_or_path}' is not a local folder, and neither "
        f"{' nor '.join(repr(r) for r in candidates)} could be downloaded{at} (the account was renamed; "
        f"r3h tries both names). Tried: {tried}"
    ) from errors[-1][1]


@dataclass(frozen=True)
class TensorInfo:
    file: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    start: int = 0  # absolute byte offset in `file` (safetensors only)
    end: int = 0

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def _read_safetensors_header(file: str) -> Dict[str, TensorInfo]:
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{file}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in SAFE_DTYPES:
            raise ValueError(f"{file}: tensor '{name}' has unsupported dtype {meta['dtype']}")
        s, e = meta["data_offsets"]
        out[name] = TensorInfo(file, SAFE_DTYPES[meta["dtype"]], tuple(meta["shape"]), base + s, base + e)
    return out


class Checkpoint:
    """A checkpoint folder whose tensors are read on demand, one at a time.

    Args:
        path: local folder or hub id (resolved with `resolve_checkpoint_dir`).
        name: the model's name in the pool, used in every error message.
        revision: the hub revision (commit, branch or tag) to read; default the main branch.
    """

    def __init__(self, path: str, name: str = "?", revision: Optional[str] = None):
        self.name = name
        self.path = resolve_checkpoint_dir(path, name, revision)
        self.format = "safetensors"
        self.tensors: Dict[str, TensorInfo] = {}
        self._bin_cache: Tuple[str, dict] | None = None
        idx = os.path.join(self.path, "model.safetensors.index.json")
        single = os.path.join(self.path, "model.safetensors")
        bin_idx = os.path.join(self.path, "pytorch_model.bin.index.json")
        bin_single = os.path.join(self.path, "pytorch_model.bin")
        if os.path.exists(idx):
            with open(idx) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            for fn in files:
                self.tensors.update(_read_safetensors_header(os.path.join(self.path, fn)))
        elif os.path.exists(single):
            self.tensors = _read_safetensors_header(single)
        elif os.path.exists(bin_idx) or os.path.exists(bin_single):
            self.format = "bin"
            if os.path.exists(bin_idx):
                with open(bin_idx) as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
            else:
                files = ["pytorch_model.bin"]
            for fn in files:
                file = os.path.join(self.path, fn)
                sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                for k, v in sd.items():
                    self.tensors[k] = TensorInfo(file, v.dtype, tuple(v.shape))
                del sd
        else:
            raise FileNotFoundError(
                f"model '{name}': no model.safetensors(.index.json) or pytorch_model.bin in {self.path}"
            )

    def __repr__(self) -> str:
        return f"Checkpoint({self.name!r}, {self.path!r}, {len(self.tensors)} tensors)"

    def keys(self) -> List[str]:
        return list(self.tensors)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def config(self) -> dict:
        file = os.path.join(self.path, "config.json")
        if not os.path.exists(file):
            return {}
        with open(file) as f:
            return json.load(f)

    def get(self, key: str) -> torch.Tensor:
        """Read tensor `key` into a fresh CPU tensor of its stored dtype."""
        if key not in self.tensors:
            raise KeyError(f"model '{self.name}' has no tensor '{key}'")
        info = self.tensors[key]
        if self.format == "bin":
            if self._bin_cache is None or self._bin_cache[0] != info.file:
                self._bin_cache = (info.file, torch.load(info.file, map_location="cpu", weights_only=True, mmap=True))
            return self._bin_cache[1][key].clone()
        out = torch.empty(info.shape, dtype=info.dtype)
        size = info.end - info.start
        if size != out.numel() * out.element_size():
            raise ValueError(f"model '{self.name}': tensor '{key}' in {info.file} has a corrupt header")
        if size:
            buf = out.view(-1).view(torch.uint8) if out.dim() else out.reshape(1).view(torch.uint8)
            with open(info.file, "rb", buffering=0) as f:
                f.seek(info.start)
                view = memoryview(buf.numpy())
                got = 0
                while got < size:
                    n = f.readinto(view[got:])
                    if not n:
                        raise ValueError(f"model '{self.name}': {info.file} is truncated at tensor '{key}'")
                    got += n
        return out
