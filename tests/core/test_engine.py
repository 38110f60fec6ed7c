"""The streaming engine and I/O: bad inputs, atomic output, shards, vocabulary growth."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from r3h.io import Checkpoint, ShardWriter, atomic_output_dir, parse_size
from r3h.methods import (
    DareMerging,
    DellaMerging,
    ModelStockMerging,
    RewardedSoup,
    TaskArithmetic,
    TiesMerging,
    WeightAverage,
)
from tests.conftest import read_folder, write_checkpoint


def rand_sd(seed, shapes=None):
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or {"layer.weight": (6, 4), "layer.bias": (6,), "embed_tokens.weight": (10, 4)}
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def experts_of(base, n=3, scale=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {f"e{i}": {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()} for i in range(n)}



def leftovers(parent):
    return [p for p in os.listdir(parent) if ".tmp-" in p]


# -- bad input: each stops before heavy work, names what is at fault, leaves nothing ----------

def test_nan_in_expert_names_model_and_tensor(tmp_path, pool_factory):
    base = rand_sd(0)
    ex = experts_of(base)
    ex["e1"]["layer.bias"][2] = float("nan")
    pool = pool_factory(base, ex)
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match=r"model 'e1': tensor 'layer.bias' has 1 NaN/Inf"):
        TaskArithmetic(progress=False, out_dir=str(out)).run(pool)
    assert not out.exists() and leftovers(tmp_path) == []


def test_inf_in_base(pool_factory):
    base = rand_sd(0)
    ex = experts_of(base)
    base["layer.weight"][0, 0] = float("inf")
    pool = pool_factory(base, ex)
    with pytest.raises(ValueError, match=r"model '_pretrained_': tensor 'layer.weight'"):
        TiesMerging(progress=False).run(pool)


def test_missing_tensor(pool_factory, count_reads):
    base = rand_sd(0)
    ex = experts_of(base)
    del ex["e2"]["layer.bias"]
    pool = pool_factory(base, ex)
    with pytest.raises(ValueError, match=r"model 'e2' is missing tensor 'layer.bias'"):
        TaskArithmetic(progress=False).run(pool)
    assert count_reads["n"] == 0


def test_extra_tensor(pool_factory):
    base = rand_sd(0)
    ex = experts_of(base)
    ex["e0"]["stray.weight"] = torch.zeros(2)
    pool = pool_factory(base, ex)
    with pytest.raises(ValueError, match=r"model 'e0' has tensor 'stray.weight'"):
        TaskArithmetic(progress=False).run(pool)


def test_wrong_shape_names_tensor_and_both_shapes(pool_factory, count_reads):
    base = rand_sd(0)
    ex = experts_of(base)
    ex["e1"]["layer.weight"] = torch.zeros(6, 5)
    pool = pool_factory(base, ex)
    with pytest.raises(ValueError, match=r"tensor 'layer.weight': model 'e1' has shape \(6, 5\) but '_pretrained_' has \(6, 4\)"):
        TaskArithmetic(progress=False).run(pool)
    assert count_reads["n"] == 0


def test_different_architecture(tmp_path, count_reads):
    from r3h.modelpool import AlignedCausalLMPool

    base = rand_sd(0)
    ex = experts_of(base, n=2)
    cfg = {"model_type": "llama", "hidden_size": 4, "num_hidden_layers": 1}
    models = {"_pretrained_": write_checkpoint(tmp_path / "b", base, cfg),
              "e0": write_checkpoint(tmp_path / "e0", ex["e0"], cfg),
              "e1": write_checkpoint(tmp_path / "e1", ex["e1"], {**cfg, "model_type": "mistral"})}
    pool = AlignedCausalLMPool(models=models, tokenizer=None)
    with pytest.raises(ValueError, match=r"model 'e1' has a different architecture .*'model_type' is 'mistral'"):
        TaskArithmetic(progress=False).run(pool)
    assert count_reads["n"] == 0


def test_pool_without_base(pool_factory):
    base = rand_sd(0)
    pool = pool_factory(None, experts_of(base))
    for method in (TaskArithmetic, TiesMerging, ModelStockMerging, DareMerging):
        with pytest.raises(ValueError, match=r"needs a base model: the model pool has no '_pretrained_'"):
            method(progress=False).run(pool)

def test_weight_average_and_rewarded_soup_need_no_base(tmp_path, pool_factory):
    base = rand_sd(0)
    ex = experts_of(base)
    pool = pool_factory(None, ex)
    WeightAverage(progress=False, out_dir=str(tmp_path / "wa")).run(pool)
    RewardedSoup(progress=False, preference=[0.5, 0.25, 0.25], out_dir=str(tmp_path / "rs")).run(pool)
    wa, rs = read_folder(tmp_path / "wa"), read_folder(tmp_path / "rs")
    k = "layer.weight"
    torch.testing.assert_close(wa[k], sum(ex[n][k] for n in ex) / 3)
    torch.testing.assert_close(rs[k], 0.5 * ex["e0"][k] + 0.25 * ex["e1"][k] + 0.25 * ex["e2"][k])


@pytest.mark.parametrize(
    "method, kwargs, message",
    [
        (TiesMerging, {"density": 1.5}, r"density=1.5 is outside \(0.0, 1.0\]"),
        (TiesMerging, {"density": 0.0}, r"density=0.0 is outside \(0.0, 1.0\]"),
        (DareMerging, {"density": -0.1}, r"density=-0.1 is outside"),
        (TaskArithmetic, {"weights": [1.0, -0.5, 1.0]}, r"weights: expert 'e1' has weight -0.5"),
        (TaskArithmetic, {"weights": [1.0, 1.0]}, r"weights: 2 values for 3 experts"),
        (TaskArithmetic, {"weights": {"e0": 1, "nope": 1, "e2": 1}}, r"weights: 'nope' is not an expert"),
        (RewardedSoup, {"preference": [0.5, 0.3, 0.3]}, r"preference: Σ λi = 1.1"),
        (RewardedSoup, {"preference": [1.2, -0.2, 0.0]}, r"preference: λ for expert 'e1' is negative"),
        (RewardedSoup, {"preference": [[1, 0, 0], [0.5, 0.6, 0]]}, r"preference\[1\]: Σ λi = 1.1"),
        (DellaMerging, {"density": 0.5, "epsilon": 0.6}, r"epsilon=0.6: density ± epsilon must lie in"),
        (TiesMerging, {"consensus": "vote"}, r"consensus must be 'sum' or 'count'"),
        (DareMerging, {"rescale": "l2"}, r"rescale must be one of inverse, l1, none"),
        (TaskArithmetic, {"scaling_factor": float("nan")}, r"scaling_factor=nan is not a finite number"),
    ],
)
def test_bad_hyperparameters(tmp_path, pool_factory, count_reads, method, kwargs, message):
    base = rand_sd(0)
    pool = pool_factory(base, experts_of(base))
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match=message):
        method(progress=False, out_dir=str(out), **kwargs).run(pool)
    assert count_reads["n"] == 0
    assert not out.exists() and leftovers(tmp_path) == []


def test_bad_out_dtype_and_regex():
    with pytest.raises(ValueError, match=r"out_dtype: 'int8'"):
        TaskArithmetic(out_dtype="int8")
    with pytest.raises(ValueError, match=r"exclude_keys: '\(' is not a regular expression"):
        TaskArithmetic(exclude_keys=["("])


def test_model_stock_needs_two_experts(pool_factory):
    base = rand_sd(0)
    pool = pool_factory(base, experts_of(base, n=1))
    with pytest.raises(ValueError, match=r"at least 2 experts"):
        ModelStockMerging(progress=False).run(pool)


# -- vocabulary growth -------------------------------------------------------------------------

def test_added_vocabulary_rows(pool_factory):
    """Shared rows are merged by the method; added rows come from the experts that have them."""
    base = rand_sd(0)
    ex = experts_of(base, n=3)
    cfg = {"model_type": "llama", "vocab_size": 10}
    g = torch.Generator().manual_seed(5)
    extra1 = torch.randn(2, 4, generator=g)
    extra2 = torch.randn(3, 4, generator=g)
    ex["e1"]["embed_tokens.weight"] = torch.cat([ex["e1"]["embed_tokens.weight"], extra1])
    ex["e2"]["embed_tokens.weight"] = torch.cat([ex["e2"]["embed_tokens.weight"], extra2])
    pool = pool_factory(base, ex, config=cfg)
    method = TaskArithmetic(progress=False, scaling_factor=0.5)
    plan = method.prepare(pool)
    assert plan.shapes["embed_tokens.weight"] == (13, 4) and plan.config["vocab_size"] == 13
    from r3h.io import StateDictSink
    from r3h.core import stream_merge

    sink = StateDictSink()
    stream_merge(plan, method.merge_tensor, [sink], progress=False)
    got = sink["embed_tokens.weight"].double()
    b = base["embed_tokens.weight"].double()
    shared = b + 0.5 * sum(ex[f"e{i}"]["embed_tokens.weight"][:10].double() - b for i in range(3))
    torch.testing.assert_close(got[:10], shared, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[10:12], ((extra1 + extra2[:2]) / 2).double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[12:], extra2[2:].double(), rtol=1e-6, atol=1e-7)


def test_grown_rows_only_for_vocabulary_matrices(pool_factory):
    base = rand_sd(0)
    ex = experts_of(base, n=2)
    ex["e0"]["layer.weight"] = torch.cat([ex["e0"]["layer.weight"], torch.zeros(1, 4)])
    pool = pool_factory(base, ex, config={"model_type": "llama", "vocab_size": 10})
    with pytest.raises(ValueError, match=r"tensor 'layer.weight': model 'e0' has shape \(7, 4\)"):
        TaskArithmetic(progress=False).run(pool)


# -- output ------------------------------------------------------------------------------------

def test_streaming_shards_match_in_memory(tmp_path, pool_factory):
    base = rand_sd(0, {f"w{i}": (16, 16) for i in range(6)})
    pool = pool_factory(base, experts_of(base), shards=2)
    from r3h.core import stream_merge
    from r3h.io import StateDictSink

    method = TiesMerging(progress=False)
    ref = StateDictSink()
    stream_merge(method.prepare(pool), method.merge_tensor, [ref], progress=False)
    out = tmp_path / "merged"
    TiesMerging(progress=False, out_dir=str(out), max_shard_size="2KiB").run(pool)
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) == 3 and shards[0] == "model-00001-of-00003.safetensors"
    index = json.load(open(out / "model.safetensors.index.json"))
    assert set(index["weight_map"]) == set(base)
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in base.values())
    info = json.load(open(out / "r3h_merge.json"))
    assert info["method"] == "ties" and info["hyperparameters"]["density"] == 0.2
    assert not [k for k in info["hyperparameters"] if k.startswith("_")]
    assert set(info["models"]) == {"e0", "e1", "e2"}
    card = open(out / "README.md").read()
    assert "ties" in card and "r3h" in card and "density" in card
    streamed = read_folder(out)
    assert all(torch.equal(streamed[k], ref[k]) for k in base)
    out2 = tmp_path / "merged_one_shard"
    TiesMerging(progress=False, out_dir=str(out2)).run(pool)
    assert os.listdir(out2).count("model.safetensors") == 1
    for k, v in read_folder(out2).items():
        assert torch.equal(v, streamed[k])


def test_out_dtype(tmp_path, pool_factory):
    base = rand_sd(0)
    pool = pool_factory(base, experts_of(base))
    out = tmp_path / "bf16"
    TaskArithmetic(progress=False, out_dir=str(out), out_dtype="bfloat16").run(pool)
    sd = read_folder(out)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert json.load(open(out / "config.json"))["dtype"] == "bfloat16"


def test_base_dtype_kept_and_math_in_float32(tmp_path, pool_factory):
    base = {k: v.to(torch.bfloat16) for k, v in rand_sd(0).items()}
    ex = {n: {k: v.to(torch.bfloat16) for k, v in sd.items()} for n, sd in experts_of(rand_sd(0)).items()}
    pool = pool_factory(base, ex)
    out = tmp_path / "m"
    TaskArithmetic(scaling_factor=1.0, progress=False, out_dir=str(out)).run(pool)
    sd = read_folder(out)
    k = "layer.weight"
    want = base[k].float() + sum(ex[n][k].float() - base[k].float() for n in ex)
    assert sd[k].dtype == torch.bfloat16
    torch.testing.assert_close(sd[k], want.to(torch.bfloat16))


def test_existing_output_replaced_only_when_complete(tmp_path, pool_factory):
    base = rand_sd(0)
    ex = experts_of(base)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    ex["e2"]["layer.weight"][0, 0] = float("nan")
    pool = pool_factory(base, ex)
    with pytest.raises(ValueError, match="layer.weight"):
        TaskArithmetic(progress=False, out_dir=str(out)).run(pool)
    assert (out / "old.txt").read_text() == "previous run"
    assert leftovers(tmp_path) == []


def test_atomic_output_dir_cleans_up(tmp_path):
    target = tmp_path / "x"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(str(target)) as tmp:
            open(os.path.join(tmp, "partial"), "w").close()
            raise RuntimeError("boom")
    assert not target.exists() and os.listdir(tmp_path) == []


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("five")


def test_shard_writer_round_trip(tmp_path):
    w = ShardWriter(str(tmp_path), max_shard_size=100)
    tensors = {f"t{i}": torch.full((10,), float(i)) for i in range(5)}  # 40 bytes each
    for k, v in tensors.items():
        w.put(k, v)
    w.close()
    got = read_folder(tmp_path)
    assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)


def test_shard_writer_writes_a_full_shard_at_once(tmp_path):
    """A shard is written as soon as it is full (a tensor larger than a shard is one), not
    held while the next tensor merges; the shards are still at most max_shard_size or one tensor."""
    w = ShardWriter(str(tmp_path), max_shard_size=100)
    w.put("big", torch.zeros(40))  # 160 bytes >= 100: written now
    assert len(w.shards) == 1 and w.shards[0][1] == ["big"] and not w._buffer
    w.put("a", torch.zeros(15))  # 60
    assert len(w.shards) == 1
    w.put("b", torch.zeros(10))  # 60 + 40 = 100: full, written now
    assert [s[1] for s in w.shards] == [["big"], ["a", "b"]] and not w._buffer
    w.put("c", torch.zeros(5))
    w.close()
    assert [s[1] for s in w.shards][-1] == ["c"]
    assert set(read_folder(tmp_path)) == {"big", "a", "b", "c"}


def test_checkpoint_reads_every_dtype(tmp_path):
    sd = {
        "f32": torch.randn(3, 2),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "f16": torch.randn(2, 2).half(),
        "i64": torch.arange(4),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    for fmt in ("safetensors", "bin"):
        ck = Checkpoint(write_checkpoint(tmp_path / fmt, sd, fmt=fmt), "m")
        for k, v in sd.items():
            got = ck.get(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model 'x': no model.safetensors"):
        (tmp_path / "empty").mkdir()
        Checkpoint(str(tmp_path / "empty"), "x")
    with pytest.raises(FileNotFoundError, match=r"model 'y': 'not/a-local-or-hub-model'"):
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            Checkpoint("not/a-local-or-hub-model", "y")
        finally:
            del os.environ["HF_HUB_OFFLINE"]


@pytest.mark.slow
@pytest.mark.slow
def test_in_memory_model_is_usable(tmp_path):
    """The returned model is a working transformers model with the merged weights."""
    from r3h.toy import Tiny3HPool

    pool = Tiny3HPool()
    model = TaskArithmetic(progress=False, scaling_factor=0.3).run(pool)
    ids = torch.tensor([[1, 10, 11, 12]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 4, model.config.vocab_size) and torch.isfinite(logits).all()
    base = Checkpoint(pool.get_model_path("_pretrained_"))
    experts = [Checkpoint(pool.get_model_path(n)) for n in pool.model_names]
    k = "model.layers.0.mlp.down_proj.weight"
    want = base.get(k) + 0.3 * sum(e.get(k) - base.get(k) for e in experts)
    torch.testing.assert_close(model.state_dict()[k], want)
    assert math.isclose(model.r3h_merge_info["hyperparameters"]["scaling_factor"], 0.3)
