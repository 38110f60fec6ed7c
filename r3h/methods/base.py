"""`MergeAlgorithm`: the fusion_bench algorithm every r3h merging method derives from.

It turns a model pool into open checkpoints, validates hyperparameters and
inputs before any tensor is read, streams the merge tensor by tensor and returns
a Hugging Face model (or, with `out_dir`, writes the merged folder shard by shard
and returns nothing to keep memory flat). A `distributed` method on a Fabric of several
ranks merges each rank's share of the tensors there (`r3h.core.distributed`); the output
takes the same path. Subclasses implement `merge_tensor`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from omegaconf import OmegaConf

import r3h
from fusion_bench.method.base_algorithm import BaseAlgorithm
from fusion_bench.mixins.serialization import auto_register_config
from r3h.core.engine import MergePlan, plan_merge, stream_merge
from r3h.core.distributed import (
    assign_tensors,
    gather_results,
    load_shards,
    rank_stats,
    remove,
    remove_rank_results,
    shared_tmp_dir,
)
from r3h.core.paths import write_run_report
from r3h.ops import svc
from r3h.core.plain import to_container
from r3h.io.model import (
    build_model,
    copy_model_files,
    output_config,
    parse_dtype,
    write_model_folder_extras,
)
from r3h.io.writer import ShardWriter, StateDictSink, atomic_output_dir, finalize_shards, move_into_place
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


@dataclass
class _Output:
    """What a run makes: the output dtype, the tokenizer folder, and the names of several
    models (None: one)."""

    dtype: Optional[torch.dtype]
    tok_dir: str
    names: Optional[List[str]]

    @property
    def count(self) -> int:
        return 1 if self.names is None else len(self.names)

    def dirs(self, root: str) -> List[str]:
        """Each output's folder under `root`: `root` itself for one model."""
        return [root] if self.names is None else [os.path.join(root, o) for o in self.names]


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
        calibration: `svc` calibrates every merged matrix (SVC, arXiv 2602.05536:
            `r3h.ops.svc`; needs the pool's base); default `null`, none.
        calibration_alpha: SVC's α > 0, the floor of each expert's projection
            coefficient; default 1.0 (γ ≤ 1: SVC only shrinks over-counted directions).
    """

    CALIBRATIONS = ("svc",)

    needs_base: bool = True
    min_experts: int = 1
    # capabilities a sweep or a search reads (r3h.methods.configs.declares)
    uses_svd_cache: bool = False  # takes `svd_cache`: one SVD pass serves every member
    multi_preference: bool = False  # a list of preference vectors gives one model per vector, one pass
    distributed: bool = False  # runs over the Fabric ranks (`run_fabric`)
    log_report: bool = False  # also writes its report into the run's log folder

    def __init__(
        self,
        exclude_keys: Optional[List[str]] = None,
        out_dtype: Optional[str] = None,
        out_dir: Optional[str] = None,
        max_shard_size: str = "5GB",
        device: str = "cpu",
        progress: bool = True,
        calibration: Optional[str] = None,
        calibration_alpha: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if calibration is not None and calibration not in self.CALIBRATIONS:
            raise ValueError(f"calibration must be null or one of {', '.join(self.CALIBRATIONS)}; got {calibration!r}")
        try:
            calibration_alpha = float(calibration_alpha)
        except (TypeError, ValueError):
            raise ValueError(f"calibration_alpha={calibration_alpha!r} is not a number") from None
        if not (calibration_alpha > 0 and calibration_alpha < float("inf")):
            raise ValueError(f"calibration_alpha={calibration_alpha} must be a finite number > 0")
        self.exclude_keys = list(to_container(exclude_keys) or [])
        for p in self.exclude_keys:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"exclude_keys: {p!r} is not a regular expression ({exc})") from exc
        parse_dtype(out_dtype)
        self.last_report: Dict[str, Any] = {}
        self.tensor_reports: Dict[str, Dict[str, Any]] = {}

    # -- for subclasses ---------------------------------------------------------------
    def hyperparameters(self) -> Dict[str, Any]:
        """The method's configuration, as recorded in the model card."""
        cfg = OmegaConf.to_container(self.config, resolve=True)
        skip = {"progress", "out_dir", "device", "max_shard_size", "tmp_dir"}
        if cfg.get("calibration") is None:
            skip |= {"calibration", "calibration_alpha"}
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
        if self.calibration is not None and base is None:
            raise ValueError(f"calibration={self.calibration} needs the pool's base model ('{BASE}'): "
                             f"it calibrates θmerged − θ0 against each τi = θi − θ0")
        self.tensor_reports = {}
        return plan_merge(base, experts)

    def record(self, name: str, **report) -> None:
        """Add to tensor `name`'s entry of the report (`tensors` in `r3h_merge.json`)."""
        self.tensor_reports.setdefault(name, {}).update(report)

    def calibrated_merge(self, name: str, base: Optional[torch.Tensor], experts):
        """`merge_tensor`, then (with `calibration: svc`) each merged matrix calibrated against
        the τi (read again, one at a time): θ0 + SVC(θmerged − θ0)."""
        merged = self.merge_tensor(name, base, experts)
        if base is None or base.dim() != 2 or any(re.fullmatch(p, name) for p in self.exclude_keys):
            return merged
        outs = [merged] if isinstance(merged, torch.Tensor) else list(merged)
        calibrated, gammas = [], []
        for out in outs:
            delta, gamma = svc(out - base, (e.sub_(base) for e in experts), self.calibration_alpha)
            calibrated.append(delta.add_(base))
            gammas.append(gamma)
            del delta
        g = torch.cat(gammas)
        self.record(name, calibration="svc", gamma_min=round(float(g.min()), 6),
                    gamma_mean=round(float(g.mean()), 6), gamma_max=round(float(g.max()), 6))
        return calibrated[0] if isinstance(merged, torch.Tensor) else calibrated

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
            **({"tensors": {n: self.tensor_reports[n] for n in plan.names if n in self.tensor_reports}}
               if self.tensor_reports else {}),
        }

    @property
    def method_name(self) -> str:
        return getattr(self, "_method_name", type(self).__name__)

    # -- ranks (a `distributed` method on a Fabric of several processes) ----------------
    def run_fabric(self):
        """The Fabric whose ranks share this run, or None to merge in this process alone:
        a `distributed` method's Fabric (fusion_bench's `LightningFabricMixin`) when it has
        more than one rank."""
        if not self.distributed:
            return None
        fabric = getattr(self, "fabric", None)
        return fabric if fabric is not None and fabric.world_size > 1 else None

    def rank_state(self) -> Dict[str, Any]:
        """What this rank's merge adds to the report besides its tensors (JSON-able): its
        per-tensor records. Every rank hands every rank's to `absorb_rank_state`."""
        return {"tensor_reports": self.tensor_reports}

    def absorb_rank_state(self, state: Dict[str, Any]) -> None:
        """Take in one rank's `rank_state` (on every rank, for every rank, in rank order)."""
        self.tensor_reports.update(state.get("tensor_reports", {}))

    # -- the run --------------------------------------------------------------------
    def run(self, modelpool):
        """Merge the pool: return the model, or with `out_dir` write the folder and return None.

        In this process, or, for a `distributed` method on several Fabric ranks, each rank
        its share of the tensors (`r3h.core.distributed`) and rank 0 the output (the other
        ranks return None). Either way the output takes one path (`_finish_folders`,
        `_finish_models`), and `log_report` methods also leave the report in the run's log
        folder."""
        fabric = self.run_fabric()
        plan = self.prepare(modelpool)
        out = _Output(parse_dtype(self.out_dtype), tokenizer_dir(modelpool, plan.reference.path), self.output_names())
        if fabric is None:
            result = self._merge_here(modelpool, plan, out)
        else:
            result = self._merge_on_ranks(modelpool, plan, out, fabric)
        if fabric is None or fabric.global_rank == 0:
            self.write_program_report()
        return result

    def _stream(self, plan: MergePlan, out: _Output, sinks, names=None, rank: Optional[int] = None) -> dict:
        """`stream_merge` of the plan's tensors (or `names`, this rank's share) into `sinks`."""
        merge_fn = self.merge_tensor if self.calibration is None else self.calibrated_merge
        return stream_merge(plan, merge_fn, sinks, exclude_keys=self.engine_exclude_keys(),
                            out_dtype=out.dtype, device=self.torch_device, names=names,
                            progress=self.progress and rank in (None, 0),
                            desc=self.method_name if rank is None else f"{self.method_name} (rank {rank})")

    def _merge_here(self, modelpool, plan: MergePlan, out: _Output):
        if self.out_dir is None:
            sinks = [StateDictSink() for _ in range(out.count)]
            stats = self._stream(plan, out, sinks)
            self.last_report = info = self.merge_info(modelpool, plan, stats)
            return self._finish_models(sinks, plan, out, info)
        with atomic_output_dir(self.out_dir) as tmp:
            dirs = out.dirs(tmp)
            for d in dirs:
                os.makedirs(d, exist_ok=True)
            writers = [ShardWriter(d, self.max_shard_size) for d in dirs]
            stats = self._stream(plan, out, writers)
            info = self.merge_info(modelpool, plan, stats)
            self._finish_folders(tmp, [w.close(finalize=False) for w in writers], plan, out, info)
        self.last_report = info
        log.info("merged model written to %s", ", ".join(out.dirs(self.out_dir)))
        return None

    def _merge_on_ranks(self, modelpool, plan: MergePlan, out: _Output, fabric):
        """This rank's share into shards of a folder every rank sees (beside `out_dir`, else
        under the method's `tmp_dir` option if it has one, else the system temp); rank 0
        then finishes the output from every rank's shards."""
        rank, world = fabric.global_rank, fabric.world_size
        share = assign_tensors(plan, world)[rank]
        parent = (os.path.dirname(os.path.abspath(os.path.expanduser(self.out_dir))) if self.out_dir
                  else getattr(self, "tmp_dir", None))
        folder = shared_tmp_dir(fabric, parent)
        dirs = out.dirs(folder)
        log.info("rank %d/%d merges %d of %d tensors", rank, world, len(share), len(plan.names))

        def merge_share():
            for d in dirs:
                os.makedirs(d, exist_ok=True)
            writers = [ShardWriter(d, self.max_shard_size, prefix=f"rank{rank:05d}-") for d in dirs]
            stats = self._stream(plan, out, writers, names=share, rank=rank)
            return {"shards": [w.close(finalize=False) for w in writers], "state": self.rank_state(),
                    "stats": stats}

        results = gather_results(fabric, folder, merge_share)
        for res in results:
            self.absorb_rank_state(res["state"])
        self.last_report = info = self.merge_info(modelpool, plan, rank_stats(results, len(plan.names)))
        if rank != 0:
            return None
        remove_rank_results(folder, world)
        shards = [[s for res in results for s in res["shards"][k]] for k in range(len(dirs))]
        if self.out_dir is None:
            try:
                states = [load_shards(d, s) for d, s in zip(dirs, shards)]
            finally:
                remove(folder)
            return self._finish_models(states, plan, out, info)
        try:
            self._finish_folders(folder, shards, plan, out, info)
            move_into_place(folder, self.out_dir)
        except BaseException:
            remove(folder)
            raise
        log.info("merged model written to %s", ", ".join(out.dirs(self.out_dir)))
        return None

    # -- the one output path ----------------------------------------------------------
    def _finish_folders(self, root: str, shards: List[list], plan: MergePlan, out: _Output, info: dict) -> None:
        """Name each output's shards (`out.dirs(root)`, one shard list each) and write its
        config, tokenizer files, model card and `r3h_merge.json` (plus `sweep.json` for several)."""
        for d, s in zip(out.dirs(root), shards):
            finalize_shards(d, s)
            self._write_folder(d, plan, out.dtype, out.tok_dir, info)
        if out.names is not None:
            write_sweep_manifest(root, self.sweep_manifest())

    def _finish_models(self, states: List[Dict[str, torch.Tensor]], plan: MergePlan, out: _Output, info: dict):
        """The model (or the `ModelSweep` of several) built from the merged state dicts."""
        models = []
        for state in states:
            model = build_model(plan.config, state, out.dtype)
            model.r3h_merge_info = info
            model.r3h_tokenizer_dir = out.tok_dir
            models.append(model)
        if out.names is None:
            return models[0]
        from r3h.modelpool.sweep import ModelSweep

        return ModelSweep(dict(zip(out.names, models)), manifest=self.sweep_manifest())

    def write_program_report(self) -> None:
        """With `log_report`: the last report as `r3h_merge_report.json` in the fusion_bench
        run's log folder (none outside a program)."""
        if self.log_report and self.last_report:
            write_run_report(self, "r3h_merge_report.json", self.last_report)

    def _write_folder(self, folder: str, plan: MergePlan, out_dtype, tok_dir: str, info: dict) -> None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(output_config(plan.config, out_dtype), f, indent=2)
        copy_model_files(plan.reference.path, folder, tok_dir)
        write_model_folder_extras(folder, info)
