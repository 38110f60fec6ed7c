"""`AlignedCausalLMPool`: fusion_bench's `CausalLMPool` with r3h's saving rules."""

from __future__ import annotations

import os
from typing import Optional

from fusion_bench.mixins.serialization import auto_register_config
from fusion_bench.modelpool.causal_lm.causal_lm import CausalLMPool
from r3h.io.checkpoint import resolve_checkpoint_dir
from r3h.io.model import parse_dtype, save_extras
from r3h.io.writer import atomic_output_dir
from r3h.modelpool.sweep import ModelSweep, write_sweep_manifest


@auto_register_config
class AlignedCausalLMPool(CausalLMPool):
    """A pool of aligned checkpoints: `_pretrained_` (the aligned instruct model) and
    its experts, by local path or hub id, exactly as `CausalLMPool`.

    `save_model` writes the Hugging Face folder (config, safetensors shards of at most
    `max_shard_size`, tokenizer files, generation config) plus a model card recording
    method, hyperparameters, input models and r3h version, into a temporary folder
    that is moved into place only when complete. A `ModelSweep` is saved as one
    sub-folder per model.
    """

    def __init__(self, models, *, tokenizer=None, model_kwargs=None, enable_lazy_loading: bool = False,
                 max_shard_size: str = "5GB", **kwargs):
        super().__init__(models, tokenizer=tokenizer, model_kwargs=model_kwargs,
                         enable_lazy_loading=enable_lazy_loading, **kwargs)

    def load_model(self, model_name_or_config, *args, **kwargs):
        """`CausalLMPool.load_model`, with a hub id resolved as the merges resolve it
        (`r3h.io.checkpoint.resolve_checkpoint_dir`: the renamed accounts of
        `HUB_ACCOUNT_ALIASES` are tried under both names)."""
        entry = self._models.get(model_name_or_config) if isinstance(model_name_or_config, str) else None
        if isinstance(entry, str) and not os.path.isdir(os.path.expanduser(entry)):
            local = resolve_checkpoint_dir(entry, model_name_or_config)
            cfg = {"_target_": "transformers.AutoModelForCausalLM.from_pretrained", "pretrained_model_name_or_path": local}
            return super().load_model(cfg, *args, **kwargs)
        return super().load_model(model_name_or_config, *args, **kwargs)

    def save_model(self, model, path: str, model_dtype: Optional[str] = None, **kwargs):
        path = os.path.expanduser(path)
        with atomic_output_dir(path) as tmp:
            if isinstance(model, ModelSweep):
                for name, m in model.items():
                    os.makedirs(os.path.join(tmp, name))
                    self._save_one(m, os.path.join(tmp, name), model_dtype)
                write_sweep_manifest(tmp, model.manifest)
            else:
                self._save_one(model, tmp, model_dtype)

    def _save_one(self, model, folder: str, model_dtype) -> None:
        if model_dtype is not None:
            model.to(dtype=parse_dtype(model_dtype))
        model.save_pretrained(folder, max_shard_size=self.max_shard_size)
        # a merge's own save_pretrained already did this (r3h.io.model.save_complete); a trained or loaded model's did not
        if not save_extras(model, folder) and self.tokenizer is not None:
            self.load_tokenizer().save_pretrained(folder)
