"""Where a pool's models live on disk, for any fusion_bench model pool."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig

from r3h.io.checkpoint import Checkpoint, resolve_checkpoint_dir

BASE = "_pretrained_"


def model_path(modelpool, name: str) -> str:
    """The checkpoint path or hub id of `name`: a string entry, or the
    `pretrained_model_name_or_path` (or `path`) of a `_target_` entry."""
    cfg = modelpool._models[name]
    if isinstance(cfg, str):
        return cfg
    if isinstance(cfg, (dict, DictConfig)):
        for key in ("pretrained_model_name_or_path", "path"):
            if cfg.get(key):
                return str(cfg.get(key))
    raise ValueError(
        f"model '{name}': r3h merges checkpoints read from disk or the hub, but this pool entry "
        f"gives no path (a string, or `pretrained_model_name_or_path`): {cfg!r}"
    )


def model_revision(modelpool, name: str) -> Optional[str]:
    """The hub `revision` of a `_target_` entry (None for a string entry)."""
    cfg = modelpool._models[name]
    if isinstance(cfg, (dict, DictConfig)) and cfg.get("revision"):
        return str(cfg.get("revision"))
    return None


def pool_checkpoints(modelpool, need_base: bool) -> Tuple[Optional[Checkpoint], List[Checkpoint]]:
    """Open the base (`_pretrained_`) and the experts of `modelpool`, in the pool's model order."""
    if hasattr(modelpool, "prepare"):
        modelpool.prepare()  # pools that build their checkpoints on first use
    names = list(modelpool.model_names)
    has_base = BASE in modelpool._models
    if need_base and not has_base:
        raise ValueError(f"this method needs a base model: the model pool has no '{BASE}' entry (models: {names})")
    base = Checkpoint(model_path(modelpool, BASE), BASE, model_revision(modelpool, BASE)) if has_base else None
    experts = [Checkpoint(model_path(modelpool, n), n, model_revision(modelpool, n)) for n in names]
    return base, experts


def tokenizer_dir(modelpool, fallback: str) -> str:
    """The folder whose tokenizer files the merged model carries: the pool's `tokenizer`
    when it is a path or hub id, else `fallback` (the base's folder)."""
    tok = getattr(modelpool, "tokenizer", None)
    if isinstance(tok, (dict, DictConfig)):
        tok = tok.get("pretrained_model_name_or_path")
    if isinstance(tok, str) and tok:
        if os.path.isdir(os.path.expanduser(tok)):
            return os.path.expanduser(tok)
        try:
            return resolve_checkpoint_dir(tok, "tokenizer")
        except FileNotFoundError:
            return fallback
    return fallback


def pool_sources(modelpool) -> Dict[str, str]:
    out = {}
    if BASE in modelpool._models:
        out[BASE] = model_path(modelpool, BASE)
    for n in modelpool.model_names:
        out[n] = model_path(modelpool, n)
    return out
