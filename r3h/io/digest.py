"""Content digests: the first 16 hex digits of a sha256 over tensors (name, shape, float32
little-endian bytes, in name order), a saved model folder's weights, or canonical JSON.

Two computations with equal digests produced the same numbers bit for bit (r3h.toy's stage
fingerprints; the study scores a merge once when another row has the same weights)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Mapping


def _hex(h) -> str:
    return h.hexdigest()[:16]


def tensors_digest(tensors: Mapping[str, "object"]) -> str:
    """sha256 over the tensors in name order: name, shape, float32 little-endian bytes."""
    import numpy as np
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().astype("<f4", copy=False).tobytes() if t.numel() else np.zeros(0).tobytes())
    return _hex(h)


def weights_digest(folder: str) -> str:
    """`tensors_digest` of the safetensors weights of a saved model folder."""
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights to fingerprint")
    tensors = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors_digest(tensors)


def json_digest(obj) -> str:
    """sha256 of `obj` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return _hex(hashlib.sha256(text.encode()))
