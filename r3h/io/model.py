"""From merged tensors to a Hugging Face model or folder: config, weights,
tokenizer files and a model card."""

from __future__ import annotations

import functools
import json
import os
import shutil
from typing import Dict, Optional

import torch

import r3h
from r3h.io.plain import jsonable

# Files of a tokenizer folder (and the chat template) that a merged model carries over.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


def parse_dtype(dtype) -> Optional[torch.dtype]:
    """`None`, a torch dtype or a name such as "bfloat16" / "bf16" / "fp32"."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(str(dtype), str(dtype)).replace("torch.", "")
    if name not in {"float32", "float16", "bfloat16", "float64"}:
        raise ValueError(f"out_dtype: {dtype!r} is not one of float32, float16, bfloat16, float64")
    return getattr(torch, name)


def build_model(config: dict, state_dict: Dict[str, torch.Tensor], dtype: Optional[torch.dtype] = None):
    """A `AutoModelForCausalLM` whose parameters are the tensors of `state_dict` (no copy).

    Parameters are created on the meta device (accelerate's `init_empty_weights`,
    buffers stay real) and then assigned, so no random initialisation is spent.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    if dtype is None:
        dtype = next((t.dtype for t in state_dict.values() if t.is_floating_point()), torch.float32)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if unexpected:
        raise ValueError(f"merged tensor '{unexpected[0]}' has no place in {type(model).__name__}")
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise ValueError(f"the merged checkpoint has no tensor for parameter '{still_meta[0]}' of {type(model).__name__}")
    model.eval()
    model.r3h_merge_info = None
    model.r3h_tokenizer_dir = None
    model.save_pretrained = functools.partial(save_complete, model)
    return model


def save_complete(model, save_directory, *args, **kwargs):
    """`model.save_pretrained` of a model built here: the Hugging Face folder, then the
    tokenizer files, chat template and generation config of `model.r3h_tokenizer_dir` and,
    when `model.r3h_merge_info` is set, the model card and ``r3h_merge.json``.

    Whoever saves the model (r3h's pools, fusion_bench's own `CausalLMPool.save_model`
    through `merged_model_save_path=`, a notebook) gets a folder `AutoTokenizer` and
    `AutoModelForCausalLM` both load.
    """
    out = type(model).save_pretrained(model, save_directory, *args, **kwargs)
    save_extras(model, str(save_directory))
    return out


def save_extras(model, folder: str) -> bool:
    """Into a saved model's `folder`: the files of `model.r3h_tokenizer_dir` (tokenizer,
    chat template, generation config) and, with `model.r3h_merge_info`, the model card and
    ``r3h_merge.json``. Returns whether a tokenizer folder was known."""
    tok = getattr(model, "r3h_tokenizer_dir", None)
    if tok:
        copy_model_files(tok, folder, tok)
    info = getattr(model, "r3h_merge_info", None)
    if info is not None:
        write_model_folder_extras(folder, info)
    return bool(tok)


def output_config(config: dict, dtype: Optional[torch.dtype]) -> dict:
    cfg = dict(config)
    if dtype is not None:
        cfg["dtype"] = DTYPE_NAMES[dtype]
        cfg.pop("torch_dtype", None)
    return cfg


def copy_model_files(src_dir: str, out_dir: str, tokenizer_dir: Optional[str] = None) -> None:
    """Copy generation config and tokenizer files (from `tokenizer_dir`, else `src_dir`)."""
    gen = os.path.join(src_dir, "generation_config.json")
    if os.path.exists(gen):
        shutil.copy2(gen, out_dir)
    tok = tokenizer_dir or src_dir
    for fn in TOKENIZER_FILES:
        p = os.path.join(tok, fn)
        if os.path.exists(p):
            shutil.copy2(p, out_dir)


def model_card(info: dict) -> str:
    """A README.md that records method, hyperparameters, input models and r3h version."""
    base = info.get("base_model")
    front = ["---", "library_name: transformers", "tags:", "- merge", "- r3h", f"- {info['method']}"]
    if base:
        front.append(f"base_model: {base}")
    front.append("---")
    lines = [
        *front,
        "",
        f"# {info['method']} merge",
        "",
        f"Merged with [r3h](https://arxiv.org/abs/2502.06876) {info.get('r3h_version', r3h.__version__)} "
        f"using `{info['method']}` ({info.get('algorithm', '')}).",
        "",
        "## Input models",
        "",
    ]
    if base:
        lines.append(f"- base (`_pretrained_`): `{base}`")
    for name, path in info.get("models", {}).items():
        lines.append(f"- {name}: `{path}`")
    lines += ["", "## Hyperparameters", "", "```json", json.dumps(jsonable(info.get("hyperparameters", {})), indent=2), "```", ""]
    return "\n".join(lines)


def write_model_folder_extras(out_dir: str, info: dict) -> None:
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(model_card(info))
    with open(os.path.join(out_dir, "r3h_merge.json"), "w") as f:
        json.dump(jsonable(info), f, indent=2)
