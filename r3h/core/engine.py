"""Streaming merge: one tensor name at a time, across the base and every expert.

`plan_merge` checks everything that can be checked from headers and configs
(architecture, tensor names, shapes, vocabulary growth) before any tensor is
read. `stream_merge` then reads, for each name, the base tensor and hands the
method the experts' tensors as an `ExpertTensors` sequence that reads each one
from disk when it is reached (checked for NaN/Inf, upcast to float32 on
`device`). Methods that combine experts linearly take them one at a time; the
others materialise the list. Names are merged largest first (`largest_first`). The result is cast to the output dtype and handed to
the sinks. Peak memory is therefore the output (or one shard of it, when writing
to disk) plus a few tensors.

Experts with extra vocabulary rows (added tokens) in a vocabulary-sized matrix
(first dimension equal to the reference config's `vocab_size`) have their shared
rows merged by the method; each added row is the mean of the experts that have
it. Any other shape mismatch is an error naming the tensor and both shapes.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from tqdm.auto import tqdm

from r3h.core.memory import peak_accelerator_bytes, peak_rss_bytes, release_freed_memory
from r3h.io.checkpoint import Checkpoint

log = logging.getLogger(__name__)

# Config fields that must agree between the base and every expert.
ARCH_KEYS = (
    "model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
)

MergeFn = Callable[[str, Optional[torch.Tensor], List[torch.Tensor]], Union[torch.Tensor, Sequence[torch.Tensor]]]


@dataclass
class MergePlan:
    """What `plan_merge` established before any tensor was read."""

    base: Optional[Checkpoint]
    experts: List[Checkpoint]
    names: List[str]
    shapes: Dict[str, Tuple[int, ...]]  # output shape of each tensor (rows grown for added tokens)
    config: dict  # output config.json content
    grown: Dict[str, int] = field(default_factory=dict)  # name -> reference rows, for grown tensors

    @property
    def reference(self) -> Checkpoint:
        return self.base if self.base is not None else self.experts[0]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def plan_merge(base: Optional[Checkpoint], experts: List[Checkpoint]) -> MergePlan:
    """Check architecture, names and shapes of every model against the reference
    (the base, or the first expert when there is none) and return the plan."""
    if not experts:
        raise ValueError("the model pool has no experts to merge")
    ref = base if base is not None else experts[0]
    ref_cfg = ref.config()
    for ck in experts if base is not None else experts[1:]:
        cfg = ck.config()
        for key in ARCH_KEYS:
            if key in ref_cfg and key in cfg and ref_cfg[key] != cfg[key]:
                raise ValueError(
                    f"model '{ck.name}' has a different architecture from '{ref.name}': "
                    f"config '{key}' is {cfg[key]!r}, expected {ref_cfg[key]!r}"
                )
    names = ref.keys()
    ref_set = set(names)
    vocab = ref_cfg.get("vocab_size")
    shapes: Dict[str, Tuple[int, ...]] = {}
    grown: Dict[str, int] = {}
    for ck in experts:
        missing = [k for k in names if k not in ck]
        if missing:
            raise ValueError(f"model '{ck.name}' is missing tensor '{missing[0]}' (and {len(missing) - 1} more) that '{ref.name}' has")
        extra = [k for k in ck.keys() if k not in ref_set]
        if extra:
            raise ValueError(f"model '{ck.name}' has tensor '{extra[0]}' that '{ref.name}' lacks ({len(extra)} such tensors)")
    for name in names:
        rshape = ref.tensors[name].shape
        out = rshape
        for ck in experts:
            s = ck.tensors[name].shape
            if s == rshape:
                continue
            vocab_rows = len(s) == 2 and len(rshape) == 2 and rshape[0] == vocab and s[1] == rshape[1] and s[0] > rshape[0]
            if not vocab_rows:
                raise ValueError(
                    f"tensor '{name}': model '{ck.name}' has shape {tuple(s)} but '{ref.name}' has {tuple(rshape)}"
                )
            grown[name] = rshape[0]
            out = (max(out[0], s[0]), rshape[1])
        shapes[name] = tuple(out)
    config = dict(ref_cfg)
    if grown:
        config["vocab_size"] = max(shapes[n][0] for n in grown)
    return MergePlan(base=base, experts=experts, names=names, shapes=shapes, config=config, grown=grown)


def _read(ck: Checkpoint, name: str, device) -> torch.Tensor:
    t = ck.get(name)
    if t.is_floating_point():
        # One reduction pass: NaN and ±Inf propagate into the sum. Only a non-finite sum
        # (which an overflow can also give) pays for the exact count.
        if not torch.isfinite(t.sum(dtype=torch.float32)) and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"model '{ck.name}': tensor '{name}' has {bad} NaN/Inf entries")
        return t.to(device=device, dtype=torch.float32)
    return t


class ExpertTensors(Sequence):
    """The experts' tensors of one name, each read from disk when it is reached.

    Every access reads again: iterate once, or call `list()` to hold them all. The
    tensors are fresh float32 copies owned by the caller, so methods may modify
    them in place. `rows` limits each to its first rows (shared vocabulary).
    """

    def __init__(self, checkpoints: Sequence[Checkpoint], name: str, device, rows: Optional[int] = None):
        self.checkpoints, self.name, self.device, self.rows = checkpoints, name, device, rows

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        t = _read(self.checkpoints[i], self.name, self.device)
        return t[: self.rows] if self.rows is not None else t


def iter_tensors(plan: MergePlan, names: Optional[Sequence[str]] = None,
                 device="cpu") -> Iterator[Tuple[str, Optional[torch.Tensor], ExpertTensors]]:
    """For each name (default: the plan's, in order): the name, the base tensor θ0 (float32
    on `device`, checked for NaN/Inf; None without a base) and the experts' `ExpertTensors`.
    Each tensor is read when it is reached: the public way to walk a plan's tensors."""
    for name in plan.names if names is None else names:
        theta0 = _read(plan.base, name, device) if plan.base is not None else None
        yield name, theta0, ExpertTensors(plan.experts, name, device, plan.grown.get(name))


def stream_merge(
    plan: MergePlan,
    merge_fn: MergeFn,
    sinks: Sequence,
    *,
    exclude_keys: Sequence[str] = (),
    out_dtype: Optional[torch.dtype] = None,
    device: Union[str, torch.device] = "cpu",
    names: Optional[Sequence[str]] = None,
    progress: bool = True,
    desc: str = "merging",
) -> dict:
    """Merge every tensor of `plan` (or the subset `names`) and give the results to `sinks`.

    `merge_fn(name, θ0, experts)` gets θ0 as a float32 tensor on `device` (None
    without a base; it must not modify it) and the experts as `ExpertTensors`; it
    returns one tensor, or one per sink. Tensors matched by a regular expression
    of `exclude_keys` (full match) take θ0 + mean τi (the experts' mean without a
    base). Non-floating tensors are copied from the reference.
    Returns the run's statistics: tensors, seconds, peak RSS and accelerator bytes.
    """
    t_start = time.perf_counter()
    names = plan.names if names is None else list(names)
    ref = plan.reference
    for name in tqdm(largest_first(names, plan.shapes), desc=desc, unit="tensor", disable=not progress):
        theta0 = _read(plan.base, name, device) if plan.base is not None else None
        if not ref.tensors[name].dtype.is_floating_point:
            outs = [ref.get(name)] * len(sinks)
        else:
            rows = plan.grown.get(name)
            experts = ExpertTensors(plan.experts, name, device, rows)
            if _matches(name, exclude_keys):
                merged = sum(experts) / len(experts)
                outs = [merged] * len(sinks)
            else:
                merged = merge_fn(name, theta0, experts)
                outs = [merged] if isinstance(merged, torch.Tensor) else list(merged)
            if len(outs) != len(sinks):
                raise RuntimeError(f"merge of '{name}' gave {len(outs)} tensors for {len(sinks)} outputs")
            if rows is not None:
                full = ExpertTensors(plan.experts, name, device)
                outs = [_grow_rows(o, full, plan.shapes[name][0]) for o in outs]
        dtype = out_dtype or ref.tensors[name].dtype
        for sink, o in zip(sinks, outs):
            sink.put(name, o.to(dtype=dtype if o.is_floating_point() else o.dtype, device="cpu"))
        del theta0, outs
        release_freed_memory()
    seconds = time.perf_counter() - t_start
    stats = {
        "tensors": len(names),
        "seconds": round(seconds, 3),
        "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3),
        "peak_accelerator_gb": round(peak_accelerator_bytes() / 1e9, 3),
    }
    log.info("merged %d tensors in %.1f s; peak RSS %.2f GB", len(names), seconds, stats["peak_rss_gb"])
    return stats


def largest_first(names: Sequence[str], shapes: Dict[str, Tuple[int, ...]]) -> List[str]:
    """`names` by decreasing size (ties in their order). Merging the largest tensors (embedding,
    lm_head) first holds their working memory while the collected output is still small: the
    peak is about output + one small tensor's work, not output + the largest tensor's work."""
    def numel(name):
        n = 1
        for s in shapes[name]:
            n *= int(s)
        return n

    return sorted(names, key=lambda k: -numel(k))


def _grow_rows(merged: torch.Tensor, thetas: Sequence[torch.Tensor], total_rows: int) -> torch.Tensor:
    """Append rows merged.shape[0] … total_rows−1: each the mean of the experts that have it."""
    out = torch.empty((total_rows, merged.shape[1]), dtype=merged.dtype, device=merged.device)
    n0 = merged.shape[0]
    out[:n0] = merged
    acc = torch.zeros((total_rows - n0, merged.shape[1]), dtype=torch.float32, device=merged.device)
    count = torch.zeros((total_rows - n0, 1), dtype=torch.float32, device=merged.device)
    for t in thetas:
        extra = t.shape[0] - n0
        if extra > 0:
            acc[:extra] += t[n0:]
            count[:extra] += 1
    out[n0:] = acc / count
    return out
