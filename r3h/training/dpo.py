"""DPO training of a full model from a base, through TRL's `DPOTrainer`.

DPO (Rafailov et al., 2023) minimises

    L = -E log σ( β [log πθ(y_w|x) - log πref(y_w|x)] - β [log πθ(y_l|x) - log πref(y_l|x)] )

over preference pairs (x, y_w ≻ y_l), with πref the frozen starting model. r3h does
not re-derive it: `train_dpo` hands the pairs (TRL's conversational format, see
`r3h.data`) and the recipe to `trl.DPOTrainer` and saves the result as a Hugging
Face folder that r3h's model pools load directly.

The paper's recipe (Yang et al., arXiv 2502.06876, training details) is `PAPER_RECIPE`: global batch
128 (per-device batch × accumulation × processes), 1 epoch, cosine schedule with 10%
warm-up, β ∈ {0.1, 0.5, 1.0, 2.0}, lr ∈ {3e-7, 5e-7}, max length 4096. On a machine
without a GPU the GPU defaults are overridden (`bf16=False`, no gradient
checkpointing, `use_cpu=True`): with them a CPU step is ~25× slower.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

import r3h
from r3h.training.common import (
    checkpointing_option, deterministic_algorithms, log_history, quiet_printer, read_record, save_trained, staged_output,
    torch_threads_set, train_dtype_of, world_size,
)

log = logging.getLogger(__name__)

#: The paper's DPO recipe (arXiv 2502.06876, training details), as r3h options.
PAPER_RECIPE: Dict[str, Any] = {
    "beta": 0.1,  # searched in {0.1, 0.5, 1.0, 2.0}
    "learning_rate": 5e-7,  # searched in {3e-7, 5e-7}
    "global_batch_size": 128,
    "per_device_batch_size": 2,
    "num_train_epochs": 1,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "max_length": 4096,
    "loss_type": ["sigmoid"],
    "bf16": "auto",
    "gradient_checkpointing": "auto",
    "seed": 42,
}
BETA_GRID = (0.1, 0.5, 1.0, 2.0)
LR_GRID = (3e-7, 5e-7)

_R3H_OPTIONS = {"global_batch_size", "per_device_batch_size", "warmup_ratio", "bf16", "gradient_checkpointing"}


def accumulation_steps(global_batch_size: int, per_device_batch_size: int, processes: int) -> int:
    """Gradient-accumulation steps so that per-device batch × steps × processes equals
    the global batch; an error when it does not divide."""
    if global_batch_size < 1 or per_device_batch_size < 1:
        raise ValueError(f"global_batch_size and per_device_batch_size must be >= 1, got "
                         f"{global_batch_size} and {per_device_batch_size}")
    step = per_device_batch_size * processes
    if global_batch_size % step:
        raise ValueError(f"global_batch_size={global_batch_size} is not a multiple of per_device_batch_size="
                         f"{per_device_batch_size} x {processes} process(es)")
    return global_batch_size // step


def recipe(**overrides) -> Dict[str, Any]:
    """`PAPER_RECIPE` with `overrides`; unknown r3h options pass through to DPOConfig."""
    out = dict(PAPER_RECIPE)
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def check_recipe(r: Mapping[str, Any]) -> None:
    """Clear errors for out-of-range options, before any model is loaded."""
    if not (isinstance(r["beta"], (int, float)) and r["beta"] > 0):
        raise ValueError(f"beta must be > 0, got {r['beta']!r} (the paper searches {list(BETA_GRID)})")
    if not (isinstance(r["learning_rate"], (int, float)) and r["learning_rate"] > 0):
        raise ValueError(f"learning_rate must be > 0, got {r['learning_rate']!r}")
    if not 0 <= float(r["warmup_ratio"]) < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {r['warmup_ratio']!r}")
    if float(r["num_train_epochs"]) <= 0:
        raise ValueError(f"num_train_epochs must be > 0, got {r['num_train_epochs']!r}")
    if int(r["max_length"]) < 8:
        raise ValueError(f"max_length must be >= 8, got {r['max_length']!r}")
    accumulation_steps(int(r["global_batch_size"]), int(r["per_device_batch_size"]), world_size())


def dpo_config(output_dir: str, r: Mapping[str, Any], *, cpu: Optional[bool] = None):
    """A `trl.DPOConfig` for recipe `r`: accumulation from the global batch, and on CPU
    (no CUDA, or `cpu=True`) bf16 and gradient checkpointing off, `use_cpu=True`."""
    from trl import DPOConfig

    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    bf16 = (not cpu and torch.cuda.is_bf16_supported()) if r["bf16"] == "auto" else bool(r["bf16"])
    gc = (not cpu) if r["gradient_checkpointing"] == "auto" else bool(r["gradient_checkpointing"])
    kwargs = dict(
        output_dir=output_dir,
        beta=float(r["beta"]),
        learning_rate=float(r["learning_rate"]),
        per_device_train_batch_size=int(r["per_device_batch_size"]),
        gradient_accumulation_steps=accumulation_steps(int(r["global_batch_size"]),
                                                       int(r["per_device_batch_size"]), world_size()),
        num_train_epochs=float(r["num_train_epochs"]),
        lr_scheduler_type=r["lr_scheduler_type"],
        warmup_steps=float(r["warmup_ratio"]),  # a float in [0, 1) is a ratio of the total steps
        max_length=int(r["max_length"]),
        loss_type=list(r["loss_type"]),
        bf16=bf16,
        gradient_checkpointing=gc,
        use_cpu=cpu,
        seed=int(r["seed"]),
        data_seed=int(r["seed"]),
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        dataloader_num_workers=0,
    )
    recipe_fields = {"output_dir", "beta", "learning_rate", "per_device_train_batch_size",
                     "gradient_accumulation_steps", "num_train_epochs", "warmup_steps", "max_length", "loss_type",
                     "bf16", "gradient_checkpointing", "use_cpu", "seed"}
    extra = {k: v for k, v in r.items() if k not in PAPER_RECIPE}
    clash = sorted(set(extra) & recipe_fields)
    if clash:
        raise ValueError(f"trainer option(s) {clash} are set by r3h's recipe; use its options instead "
                         "(beta, learning_rate, global_batch_size, per_device_batch_size, num_train_epochs, "
                         "warmup_ratio, max_length, loss_type, bf16, gradient_checkpointing, seed, cpu)")
    kwargs.update(extra)  # e.g. logging_steps, optim, precompute_ref_log_probs
    return DPOConfig(**checkpointing_option(DPOConfig, kwargs))


def to_trl_dataset(pairs: Sequence[Mapping[str, Any]]):
    """A `datasets.Dataset` of prompt/chosen/rejected (the other keys dropped)."""
    from datasets import Dataset

    if not pairs:
        raise ValueError("no preference pair to train on")
    for i, p in enumerate(pairs):
        missing = [k for k in ("prompt", "chosen", "rejected") if not p.get(k)]
        if missing:
            raise ValueError(f"preference pair {i} ({p.get('id', '?')}) lacks {missing}; normalise the data with "
                             "r3h.data.load_preference_data")
    return Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])


def train_dpo(model: str, pairs: Sequence[Mapping[str, Any]], output_dir: str, *,
              ref_model: Optional[str] = None, tokenizer: Optional[str] = None,
              data_manifest: Optional[Mapping[str, Any]] = None, cpu: Optional[bool] = None,
              torch_threads: Optional[int] = None, train_dtype: Optional[str] = None, deterministic: bool = False,
              **options) -> Dict[str, Any]:
    """Train `model` (a folder or hub id) with DPO on `pairs` and save it to `output_dir`.

    `ref_model` defaults to `model` (the usual DPO reference); a reference of another
    base is an error. `options` override `PAPER_RECIPE` (beta, learning_rate,
    global_batch_size, per_device_batch_size, num_train_epochs, lr_scheduler_type,
    warmup_ratio, max_length, loss_type, bf16, gradient_checkpointing, seed) or are
    passed to `trl.DPOConfig`. The folder holds the model, its tokenizer and
    `r3h_train.json` (recipe, data manifest, loss history, time); it appears only when
    complete. Returns that record.

    `torch_threads`, `train_dtype` ("float64": policy and reference in float64, saved in
    float32; not with bf16) and `deterministic` (`torch.use_deterministic_algorithms`)
    make a CPU run reproducible (the toy world's build, docs/toy.md "Reproducibility").
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from r3h.training.checks import check_same_base

    r = recipe(**options)
    check_recipe(r)
    forced = train_dtype_of(train_dtype)
    ref_model = ref_model or model
    if ref_model != model:
        check_same_base(model, ref_model)
    dataset = to_trl_dataset(list(pairs))
    tok = AutoTokenizer.from_pretrained(tokenizer or model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    start = time.time()
    with staged_output(output_dir) as stage, torch_threads_set(torch_threads), deterministic_algorithms(deterministic):
        args = dpo_config(os.path.join(stage, ".trainer"), r, cpu=cpu)
        if forced is not None and args.bf16:
            raise ValueError(f"train_dtype={train_dtype!r} with bf16: set bf16=False (or leave train_dtype unset)")
        dtype = forced or (torch.bfloat16 if args.bf16 else torch.float32)
        policy = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        ref = AutoModelForCausalLM.from_pretrained(ref_model, dtype=dtype)
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=tok)
        quiet_printer(trainer)
        trainer.train()
        record = {
            "r3h_version": r3h.__version__, "trainer": "trl.DPOTrainer", "base": str(model),
            "ref_model": str(ref_model), "recipe": dict(r),
            "reproducibility": {"torch_threads": torch_threads, "train_dtype": train_dtype,
                                "deterministic": deterministic},
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "processes": world_size(),
            "pairs": len(dataset), "data": dict(data_manifest or {}),
            "log_history": log_history(trainer), "seconds": round(time.time() - start, 2),
        }
        save_trained(trainer, tok, stage, record)
    return read_record(output_dir)
