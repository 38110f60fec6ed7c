"""Batched chat generation: chat template, greedy determinism, JSONL resume, clear errors."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r3h.evaluation.generation import ChatGenerator, GenerationConfig, generate_jsonl, read_jsonl


@pytest.fixture(scope="module")
def tiny(tiny_lm_path):
    path = tiny_lm_path
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.slow
def test_chat_template_and_batching_do_not_change_greedy_answers(tiny):
    model, tok = tiny
    prompts = ["w1 w2 w3", "w4", "w5 w6", "w7 w8 w9 w10 w11"]
    g1 = ChatGenerator(model, tok, max_new_tokens=6, batch_size=1)
    g4 = ChatGenerator(model, tok, max_new_tokens=6, batch_size=4)
    one, four = g1.generate(prompts), g4.generate(prompts)
    assert one == four and all(isinstance(a, str) and a for a in one)
    assert g1.render("w1").startswith("<|user|> w1") and g1.render("w1").endswith("<|assistant|> ")
    # The answer is what the model generates after the rendered prompt, token for token.
    ids = tok(g1.render(prompts[0]), return_tensors="pt", add_special_tokens=False)
    ref = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(ref[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == one[0]


@pytest.mark.slow
def test_sampling_is_seeded(tiny):
    model, tok = tiny
    a = ChatGenerator(model, tok, max_new_tokens=8, temperature=1.0, seed=3).generate(["w1 w2"] * 3)
    b = ChatGenerator(model, tok, max_new_tokens=8, temperature=1.0, seed=3).generate(["w1 w2"] * 3)
    c = ChatGenerator(model, tok, max_new_tokens=8, temperature=1.0, seed=4).generate(["w1 w2"] * 3)
    assert a == b and a != c


@pytest.mark.slow
def test_jsonl_resumes_without_regenerating(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    gen = ChatGenerator(model, tok, max_new_tokens=4, batch_size=2)
    records = [{"id": i, "prompt": f"w{i} w{i + 1}", "category": "x"} for i in range(5)]
    path = tmp_path / "gen" / "answers.jsonl"
    first = generate_jsonl(gen, records[:3], str(path))
    assert [r["id"] for r in first] == ["0", "1", "2"] and first[0]["category"] == "x"
    calls = []
    orig = gen.generate
    monkeypatch.setattr(gen, "generate", lambda prompts: calls.append(list(prompts)) or orig(prompts))
    rows = generate_jsonl(gen, records, str(path))
    assert calls == [["w3 w4", "w4 w5"]]  # only the two missing prompts were generated
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"] and len(read_jsonl(str(path))) == 5
    assert json.loads(path.read_text().splitlines()[0])["generation"]["max_new_tokens"] == 4

    # an interrupted write (a torn last line) is dropped and that one answer generated again
    path.write_text(path.read_text()[:-10])
    calls.clear()
    again = generate_jsonl(gen, records, str(path))
    assert calls == [["w4 w5"]] and again == rows
    assert len(path.read_text().splitlines()) == 5
    # a saved answer the caller does not accept (here: another prompt) is generated again
    calls.clear()
    changed = [dict(r, prompt="w9 w9") if r["id"] == 1 else r for r in records]
    redone = generate_jsonl(gen, changed, str(path), valid=lambda r, saved: saved["prompt"] == r["prompt"])
    assert calls == [["w9 w9"]] and redone[1]["prompt"] == "w9 w9" and redone[0] == rows[0]


def test_errors_before_generation(tiny):
    model, tok = tiny
    no_template = AutoTokenizer.from_pretrained(tok.name_or_path)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        ChatGenerator(model, no_template)
    assert ChatGenerator(model, no_template, use_chat_template=False).render("w1") == "w1"
    with pytest.raises(ValueError, match="unknown generation option 'beams'"):
        ChatGenerator(model, tok, beams=4)
    with pytest.raises(ValueError, match="top_p"):
        ChatGenerator(model, tok, config=GenerationConfig(top_p=0))
    with pytest.raises(ValueError, match="not unique"):
        generate_jsonl(ChatGenerator(model, tok), [{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}], "/tmp/x.jsonl")


def test_vllm_backend_plumbing(tiny, tmp_path, monkeypatch):
    """vLLM is not installable here (no CUDA): a stand-in `vllm` module checks what r3h
    hands it: the saved model, the same token ids as the HF path, the sampling settings,
    one engine for several calls, and the answers in order."""
    import importlib.machinery
    import os
    import sys
    import types

    model, tok = tiny
    seen = {"init": [], "calls": []}

    class LLM:
        def __init__(self, model, tokenizer, seed, **kwargs):
            assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(model))
            seen["init"].append(dict(model=model, tokenizer=tokenizer, seed=seed, **kwargs))

        def generate(self, requests, params):
            seen["calls"].append((requests, params.kw))
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" answer {len(r['prompt_token_ids'])} ")])
                    for r in requests]

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)

    gen = ChatGenerator(model, tok, backend="vllm", max_new_tokens=7, temperature=0.5, top_p=0.9, seed=11,
                        vllm_kwargs={"tensor_parallel_size": 2})
    prompts = ["w1 w2", [{"role": "user", "content": "w3"}, {"role": "assistant", "content": "w4"},
                         {"role": "user", "content": "w5 w6"}]]
    out = gen.generate(prompts)
    gen.generate(["w7"])
    want_ids = [tok(gen.render(p), add_special_tokens=False)["input_ids"] for p in prompts]
    assert out == [f"answer {len(i)}" for i in want_ids]
    assert len(seen["init"]) == 1 and seen["init"][0]["seed"] == 11 and seen["init"][0]["tensor_parallel_size"] == 2
    requests, params = seen["calls"][0]
    assert [r["prompt_token_ids"] for r in requests] == want_ids
    assert params == {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 11}
    assert ChatGenerator(model, tok, backend="auto").backend == ("vllm" if torch.cuda.is_available() else "hf")


def test_vllm_backend_missing(tiny, monkeypatch):
    import r3h.evaluation.generation as g

    model, tok = tiny
    monkeypatch.setattr(g, "vllm_available", lambda: False)
    with pytest.raises(ValueError, match="backend 'vllm' needs the vllm package"):
        ChatGenerator(model, tok, backend="vllm")
    assert ChatGenerator(model, tok, backend="auto").backend == "hf"
    with pytest.raises(ValueError, match="backend must be hf, vllm or auto"):
        ChatGenerator(model, tok, backend="tgi")
