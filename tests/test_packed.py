"""r3h.evaluation.packed: packed log-likelihoods equal each reply scored alone (its definition)."""

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama):
    """tests/conftest.py's tiny Llama with SmolLM2's tokenizer and chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval(), \
        AutoTokenizer.from_pretrained(tiny_llama)


def _alone(model, tok, context, reply):
    """Σ log p(reply tokens | context): the whole sequence run on its own, logits at every position."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    ids = tok(context + reply, add_special_tokens=False)["input_ids"]
    assert ids[: len(ctx)] == ctx
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(len(ctx), len(ids))), len(ids) - len(ctx)


PROMPTS = ["What is 2 + 3?", "Name a prime number larger than ten, please.", "hi",
           "Tell me about the moon and the tides in one sentence.", "Is water wet?"]
REPLIES = [[" 5", " 6"], [" 11 is prime.", " 12", " I do not know."], [" Hello!"],
           [" The moon's gravity pulls the oceans.", " I can't help with that."], [" Yes", " No"]]


@pytest.mark.parametrize("pack_tokens,batch_size", [(48, 1), (96, 2), (4096, 4)])
def test_packed_loglikelihoods_equal_each_reply_alone(model_and_tokenizer, pack_tokens, batch_size):
    from r3h.evaluation.packed import shared_context_loglikelihoods

    model, tok = model_and_tokenizer
    contexts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in PROMPTS]
    got = shared_context_loglikelihoods(model, tok, list(zip(contexts, REPLIES)), pack_tokens=pack_tokens,
                                        batch_size=batch_size)
    assert [len(g) for g in got] == [len(r) for r in REPLIES]
    for context, replies, scores in zip(contexts, REPLIES, got):
        for reply, s in zip(replies, scores):
            want, n = _alone(model, tok, context, reply)
            assert s["tokens"] == n and not s["truncated"]
            assert s["sum"] == pytest.approx(want, abs=1e-4)
            assert s["mean"] == pytest.approx(want / n, abs=1e-4)


def test_an_item_longer_than_a_pack_is_scored_alone_and_bad_items_are_refused(model_and_tokenizer):
    from r3h.evaluation.lite import answer_loglikelihoods
    from r3h.evaluation.packed import shared_context_loglikelihoods

    model, tok = model_and_tokenizer
    long_ctx = "<|im_start|>user\n" + "word " * 60 + "<|im_end|>\n<|im_start|>assistant\n"
    short_ctx = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    got = shared_context_loglikelihoods(model, tok, [(long_ctx, [" a", " b"]), (short_ctx, [" c"])], pack_tokens=32,
                                        max_length=40)
    want = answer_loglikelihoods(model, tok, [long_ctx, long_ctx], [" a", " b"], max_length=40)
    assert [g["sum"] for g in got[0]] == pytest.approx([w["sum"] for w in want], abs=1e-5)
    assert all(g["truncated"] for g in got[0])
    assert got[1][0]["sum"] == pytest.approx(_alone(model, tok, short_ctx, " c")[0], abs=1e-4)
    with pytest.raises(ValueError, match="item 0: no reply"):
        shared_context_loglikelihoods(model, tok, [(short_ctx, [])])
    with pytest.raises(ValueError, match="item 1: the reply ''"):
        shared_context_loglikelihoods(model, tok, [(short_ctx, [" a"]), (short_ctx, [""])])


def test_bf16_autocast_stays_close_to_float32_and_bad_dtypes_are_refused(model_and_tokenizer):
    """autocast='bfloat16': matrix products in bf16 (8-bit mantissa), the head in float32; on this
    random 2-layer model the mean log-likelihoods stay within 0.05 nats/token of float32."""
    from r3h.evaluation.packed import shared_context_loglikelihoods

    model, tok = model_and_tokenizer
    contexts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in PROMPTS]
    items = list(zip(contexts, REPLIES))
    a = shared_context_loglikelihoods(model, tok, items)
    b = shared_context_loglikelihoods(model, tok, items, autocast="bfloat16")
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert v["mean"] == pytest.approx(u["mean"], abs=0.05) and u["tokens"] == v["tokens"]
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched
    with pytest.raises(ValueError, match="autocast: 'float16'"):
        shared_context_loglikelihoods(model, tok, items, autocast="float16")
