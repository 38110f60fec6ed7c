"""Supervised fine-tuning through TRL's `SFTTrainer` (used to make the toy world's base).

The loss is the negative log-likelihood of the assistant's answer only:
records are {"prompt": [messages], "completion": [assistant message]} (TRL's
conversational prompt-completion format), so the prompt tokens carry no loss.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

import r3h
from r3h.training.common import (
    checkpointing_option, deterministic_algorithms, log_history, quiet_printer, read_record, save_trained, staged_output,
    torch_threads_set, train_dtype_of,
)


def train_sft(model, tokenizer, records: Sequence[Mapping[str, Any]], output_dir: str, *,
              num_train_epochs: float = 1.0, learning_rate: float = 2e-5, batch_size: int = 8,
              lr_scheduler_type: str = "cosine", warmup_ratio: float = 0.05, max_length: int = 1024,
              seed: int = 0, cpu: Optional[bool] = None, torch_threads: Optional[int] = None,
              train_dtype: Optional[str] = None, deterministic: bool = False,
              note: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Fine-tune `model` (a model object or a folder/hub id) on prompt/completion
    `records` and save it with `tokenizer` and `r3h_train.json` to `output_dir`
    (which appears only when complete). Returns the record.

    `torch_threads`, `train_dtype` ("float64": trained in float64, saved in float32) and
    `deterministic` (`torch.use_deterministic_algorithms`) make a CPU run reproducible
    (the toy world's build, docs/toy.md "Reproducibility")."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not records:
        raise ValueError("no SFT record to train on")
    for i, rec in enumerate(records):
        bad = [k for k in ("prompt", "completion") if not rec.get(k)]
        if bad:
            raise ValueError(f"SFT record {i} lacks {bad}; records are {{'prompt': [...], 'completion': [...]}}")
    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    dtype = train_dtype_of(train_dtype)
    start = time.time()
    with staged_output(output_dir) as stage, torch_threads_set(torch_threads), deterministic_algorithms(deterministic):
        args = SFTConfig(**checkpointing_option(SFTConfig, dict(
            output_dir=os.path.join(stage, ".trainer"), num_train_epochs=num_train_epochs,
            learning_rate=learning_rate, per_device_train_batch_size=batch_size,
            lr_scheduler_type=lr_scheduler_type, warmup_steps=warmup_ratio, max_length=max_length,
            seed=seed, data_seed=seed, use_cpu=cpu, bf16=False, gradient_checkpointing=False,
            save_strategy="no", report_to=[], logging_steps=50, dataloader_num_workers=0, disable_tqdm=True,
        )))
        if dtype is not None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model) if isinstance(model, str) else model
            model = model.to(dtype)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([dict(r) for r in records]),
                             processing_class=tokenizer)
        quiet_printer(trainer)
        trainer.train()
        record = {"r3h_version": r3h.__version__, "trainer": "trl.SFTTrainer", "records": len(records),
                  "options": {"num_train_epochs": num_train_epochs, "learning_rate": learning_rate,
                              "batch_size": batch_size, "lr_scheduler_type": lr_scheduler_type,
                              "warmup_ratio": warmup_ratio, "max_length": max_length, "seed": seed,
                              "torch_threads": torch_threads, "train_dtype": train_dtype,
                              "deterministic": deterministic},
                  "note": dict(note or {}), "log_history": log_history(trainer),
                  "seconds": round(time.time() - start, 2)}
        save_trained(trainer, tokenizer, stage, record)
    return read_record(output_dir)
