"""What SFT and DPO training share: a staged output folder that appears only when
complete (also under several processes), the saved record, thread settings."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from typing import Any, Dict, Iterator, List, Mapping, Optional

import torch

from r3h.io.plain import jsonable
from r3h.io.writer import move_into_place

RECORD = "r3h_train.json"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def staged_output(output_dir: str) -> Iterator[str]:
    """A staging folder beside `output_dir` (the same path on every process); rank 0
    moves it to `output_dir` when the block succeeds and removes it when it fails, so
    a half-trained model never sits under the final name."""
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    stage = os.path.join(os.path.dirname(output_dir), f".{os.path.basename(output_dir)}.training")
    if rank() == 0 and os.path.exists(stage):
        shutil.rmtree(stage)
    _barrier()
    os.makedirs(stage, exist_ok=True)
    try:
        yield stage
    except BaseException:
        if rank() == 0:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    _barrier()
    if rank() == 0:
        shutil.rmtree(os.path.join(stage, ".trainer"), ignore_errors=True)
        move_into_place(stage, output_dir)
    _barrier()


@contextlib.contextmanager
def torch_threads_set(n: Optional[int]) -> Iterator[None]:
    """Run with `n` intra-op CPU threads (unchanged when `n` is None)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: dtypes a model may be trained in on CPU with `train_dtype` (saved in float32 either way)
TRAIN_DTYPES = ("float32", "float64")


def train_dtype_of(name: Optional[str]) -> Optional[torch.dtype]:
    """The torch dtype of a `train_dtype` option (None: the trainer's own choice)."""
    if name is None:
        return None
    if name not in TRAIN_DTYPES:
        raise ValueError(f"train_dtype: {name!r} is not one of {list(TRAIN_DTYPES)}")
    return getattr(torch, name)


@contextlib.contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """Run with `torch.use_deterministic_algorithms(True)` when `on` (restored afterwards)."""
    old = torch.are_deterministic_algorithms_enabled()
    if on:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old)


def checkpointing_option(config_cls, kwargs: dict) -> dict:
    """`gradient_checkpointing` under the name this transformers version uses
    (`activation_checkpointing` from 5.x on)."""
    kwargs = dict(kwargs)
    if "gradient_checkpointing" in kwargs and "activation_checkpointing" in config_cls.__dataclass_fields__:
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    return kwargs


def log_history(trainer) -> List[dict]:
    """The trainer's logged metrics, JSON-safe (non-finite floats -> None)."""
    return [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in h.items()}
            for h in trainer.state.log_history]


class LogCallback:
    """Send the trainer's logs to Python logging (INFO) instead of print."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Log(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and state.is_world_process_zero:
                    logging.getLogger("r3h.training").info("step %d: %s", state.global_step, logs)

        return _Log()


def quiet_printer(trainer) -> None:
    """Replace transformers' PrinterCallback (print of every log) with `LogCallback`."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogCallback())


def save_trained(trainer, tokenizer, stage: str, record: Mapping[str, Any]) -> None:
    """Save the trained model, tokenizer and `r3h_train.json`; a model trained in float64
    (`train_dtype`) is saved in float32 (rounded once, at the end)."""
    if next(trainer.model.parameters()).dtype == torch.float64:
        trainer.model.to(torch.float32)
    trainer.save_model(stage)
    if trainer.is_world_process_zero():
        args_file = os.path.join(stage, "training_args.bin")  # a pickle; the record below says the same
        if os.path.exists(args_file):
            os.remove(args_file)
        tokenizer.save_pretrained(stage)
        with open(os.path.join(stage, RECORD), "w") as f:
            json.dump(jsonable(dict(record)), f, indent=2)


def read_record(folder: str) -> Dict[str, Any]:
    with open(os.path.join(folder, RECORD)) as f:
        return json.load(f)
