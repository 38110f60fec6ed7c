"""`MergeAlgorithm`: the fusion_bench algorithm every r3h merging method derives from.

It turns a model pool into open checkpoints, validates hyperparameters and
inputs before any tensor is read, streams the merge tensor by tensor and returns
a Hugging Face model (or, with `out_dir`, writes the merged folder shard by shard
and returns nothing to keep memory flat). Subclasses implement `merge_tensor`.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from omegaconf import OmegaConf

import r3h
from fusion_bench.method.base_algorithm import BaseAlgorithm
from fusion_bench.mixins.serialization import auto_register_config
from r3h.core.engine import MergePlan, plan_merge, stream_merge
from r3h.core.plain import to_container
from r3h.io.model import (
    build_model,
    copy_model_files,
    output_config,
    parse_dtype,
    write_model_folder_extras,
)
from r3h.io.writer import ShardWriter, StateDictSink, atomic_output_dir
from r3h.modelpool.sweep import write_sweep_manifest
from r3h.modelpool.sources import BASE, pool_checkpoints, pool_sources, tokenizer_dir

log = logging.getLogger(__name__)


def per_expert(values, names: Sequence[str], option: str, default: float = 1.0) -> List[float]:
    """A value per expert from `None`, a scalar, a list in pool order or a mapping by name."""
    values = to_container(values)
    if values is None:
        return [float(default)] * len(names)
    if isinstance(values, (int, float)):
        return [float(values)] * len(names)
    if isinstance(values, Mapping):
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ValueError(f"{option}: '{unknown[0]}' is not an expert of the pool (experts: {list(names)})")
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"{option}: no value for expert '{missing[0]}' (experts: {list(names)})")
        return [float(values[n]) for n in names]
    values = list(values)
    if len(values) != len(names):
        raise ValueError(f"{option}: {len(values)} values for {len(names)} experts {list(names)}")
    return [float(v) for v in values]


def check_range(option: str, value: float, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
    bad = (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi)
    if bad:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{option}={value} is outside {left}{lo}, {hi}{right}")


@auto_register_config
class MergeAlgorithm(BaseAlgorithm):
    """Base of r3h's merging methods.

    Args:
        exclude_keys: regular expressions (full match) of tensor names that skip the
            method and take θ0 + mean τi (the experts' mean without a base). Default: none.
        out_dtype: dtype of the merged tensors; default `null` keeps each base tensor's dtype.
        out_dir: if set, write the merged model there shard by shard and return None
            instead of a model: memory is then bounded by one shard (`max_shard_size`)
            plus a few tensors, whatever the model size.
        max_shard_size: shard size when writing (`out_dir`), e.g. "5GB".
        device: where the arithmetic runs: "cpu", "cuda", "cuda:1" or "auto" (GPU if any).
        progress: show a tqdm bar per tensor.
    """

    needs_base: bool = True
    min_experts: int = 1
    # capabilities a sweep or a search reads (r3h.methods.configs.declares)
    uses_svd_cache: bool = False  # takes `svd_cache`: one SVD pass serves every member
    multi_preference: bool = False  # a list of preference vectors gives one model per vector, one pass
    distributed: bool = False  # runs over the Fabric ranks

    def __init__(
        self,
        exclude_keys: Optional[List[str]] = None,
        out_dtype: Optional[str] = None,
        out_dir: Optional[str] = None,
        max_shard_size: str = "5GB",
        device: str = "cpu",
        progress: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.exclude_keys = list(to_container(exclude_keys) or [])
        for p in self.exclude_keys:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"exclude_keys: {p!r} is not a regular expression ({exc})") from exc
        parse_dtype(out_dtype)
        self.last_report: Dict[str, Any] = {}

    # -- for subclasses ---------------------------------------------------------------
    def hyperparameters(self) -> Dict[str, Any]:
        """The method's configuration, as recorded in the model card."""
        cfg = OmegaConf.to_container(self.config, resolve=True)
        skip = {"progress", "out_dir", "device", "max_shard_size", "tmp_dir"}
        return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in skip}

    def setup(self, expert_names: List[str]) -> None:
        """Validate hyperparameters against the experts; runs before any tensor is read."""

    def engine_exclude_keys(self) -> List[str]:
        """Patterns the engine itself resolves to θ0 + mean τi (methods with another rule override)."""
        return self.exclude_keys

    def output_names(self) -> Optional[List[str]]:
        """None for one merged model; else the names of the several models the run makes."""
        return None

    def sweep_manifest(self) -> Dict[str, Any]:
        """For several outputs: name → the setting that produced it (saved as sweep.json)."""
        return {}

    @abstractmethod
    def merge_tensor(self, name: str, base: Optional[torch.Tensor], experts: Sequence[torch.Tensor]):
        """Merge one tensor: float32 θ0 (None without base) and θ1…θn → merged tensor(s).

        `experts` is the engine's lazy `ExpertTensors` (each read when reached; iterate
        once or `list()` it) of fresh copies: the method may modify them in place, never
        `base`. Callers passing their own tensors should pass copies.
        """
        raise TypeError(f"{type(self).__name__} must define merge_tensor")

    # -- the run --------------------------------------------------------------------
    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def prepare(self, modelpool) -> MergePlan:
        """Open the pool's checkpoints and check options and inputs (no tensor is read)."""
        base, experts = pool_checkpoints(modelpool, self.needs_base)
        names = [e.name for e in experts]
        if len(experts) < self.min_experts:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_experts} experts; the pool has {names}")
        self.setup(names)
        return plan_merge(base, experts)

    def merge_info(self, modelpool, plan: MergePlan, stats: dict) -> dict:
        sources = pool_sources(modelpool)
        return {
            "method": self.method_name,
            "algorithm": f"{type(self).__module__}.{type(self).__qualname__}",
            "hyperparameters": self.hyperparameters(),
            "base_model": sources.get(BASE),
            "models": {k: v for k, v in sources.items() if k != BASE},
            "r3h_version": r3h.__version__,
            "stats": stats,
        }

    @property
    def method_name(self) -> str:
        return getattr(self, "_method_name", type(self).__name__)

    def run(self, modelpool):
        plan = self.prepare(modelpool)
        out_dtype = parse_dtype(self.out_dtype)
        tok_dir = tokenizer_dir(modelpool, plan.reference.path)
        kw = dict(exclude_keys=self.engine_exclude_keys(), out_dtype=out_dtype, device=self.torch_device,
                  progress=self.progress, desc=self.method_name)
        outs = self.output_names()
        if self.out_dir is not None:
            paths = [self.out_dir] if outs is None else [os.path.join(self.out_dir, o) for o in outs]
            with atomic_output_dir(self.out_dir) as tmp:
                dirs = [tmp] if outs is None else [os.path.join(tmp, o) for o in outs]
                for d in dirs:
                    os.makedirs(d, exist_ok=True)
                writers = [ShardWriter(d, self.max_shard_size) for d in dirs]
                stats = stream_merge(plan, self.merge_tensor, writers, **kw)
                info = self.merge_info(modelpool, plan, stats)
                for d, w in zip(dirs, writers):
                    w.close()
                    self._write_folder(d, plan, out_dtype, tok_dir, info)
                if outs is not None:
                    write_sweep_manifest(tmp, self.sweep_manifest())
            self.last_report = info
            log.info("merged model written to %s", ", ".join(paths))
            return None
        sinks = [StateDictSink() for _ in range(1 if outs is None else len(outs))]
        stats = stream_merge(plan, self.merge_tensor, sinks, **kw)
        info = self.merge_info(modelpool, plan, stats)
        self.last_report = info
        models = []
        for sink in sinks:
            model = build_model(plan.config, sink, out_dtype)
            model.r3h_merge_info = info
            model.r3h_tokenizer_dir = tok_dir
            models.append(model)
        if outs is None:
            return models[0]
        from r3h.modelpool.sweep import ModelSweep

        return ModelSweep(dict(zip(outs, models)), manifest=self.sweep_manifest())

    def _write_folder(self, folder: str, plan: MergePlan, out_dtype, tok_dir: str, info: dict) -> None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(output_config(plan.config, out_dtype), f, indent=2)
        copy_model_files(plan.reference.path, folder, tok_dir)
        write_model_folder_extras(folder, info)
