"""DPO / SFT training (r3h.training) and the fusion_bench algorithms that run it
(train/dpo, train/continual_dpo, the data-mixture baselines).

Every training here starts from the cached toy SFT base (tests/conftest.py builds the
tiny_3h pool once per session) and takes one or two optimizer steps on a few dozen pairs."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
from collections import Counter
from fractions import Fraction

import pytest
import torch
import yaml

from r3h.toy import build, world
from r3h.training import dpo as dpo_mod
from r3h.training.dpo import PAPER_RECIPE, accumulation_steps, check_recipe, dpo_config, recipe, to_trl_dataset
from tests.test_cli import REPO

TRAIN_DIR = os.path.join(REPO, "config", "method", "train")
#: a tiny run: two optimizer steps of 16 pairs, no warm-up (a warm-up step has lr 0)
TINY = dict(global_batch_size=16, per_device_batch_size=16, num_train_epochs=1, learning_rate=1e-4,
            warmup_ratio=0.0, max_length=64)


def _base():
    return build.build_tiny_3h()["_pretrained_"]


def _pairs(n=32):
    return world.preference_dataset("toy_truthy")[:n]


def _tensors(folder):
    from tests.conftest import read_folder

    return read_folder(folder)


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


# --------------------------------------------------------------------------- the recipe


def test_accumulation_steps(monkeypatch):
    assert accumulation_steps(128, 2, 1) == 64
    assert accumulation_steps(128, 2, 2) == 32
    assert accumulation_steps(16, 16, 1) == 1
    with pytest.raises(ValueError, match=r"global_batch_size=128 is not a multiple of per_device_batch_size=3 x 1 "
                                         r"process"):
        accumulation_steps(128, 3, 1)
    with pytest.raises(ValueError, match=r"global_batch_size=128 is not a multiple of per_device_batch_size=2 x 3"):
        accumulation_steps(128, 2, 3)
    with pytest.raises(ValueError, match=r"global_batch_size and per_device_batch_size must be >= 1"):
        accumulation_steps(0, 2, 1)
    # the number of processes comes from WORLD_SIZE (torchrun); no DPOConfig is built under
    # a fake WORLD_SIZE (accelerate would try to join a process group)
    from r3h.training import common

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert common.world_size() == 1
    assert dpo_config("/tmp/never", recipe(), cpu=True).gradient_accumulation_steps == 64
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert common.world_size() == 2 and accumulation_steps(128, 2, common.world_size()) == 32
    check_recipe(recipe())
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"global_batch_size=128 .* per_device_batch_size=2 x 3 process"):
        check_recipe(recipe())
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(dpo_mod, "world_size", lambda: 2)  # what dpo_config reads
    assert dpo_config("/tmp/never", recipe(), cpu=True).gradient_accumulation_steps == 32


def test_recipe_defaults_are_the_papers():
    r = recipe()
    assert (r["beta"], r["learning_rate"], r["global_batch_size"], r["num_train_epochs"], r["lr_scheduler_type"],
            r["warmup_ratio"], r["max_length"]) == (0.1, 5e-7, 128, 1, "cosine", 0.1, 4096)
    assert r["loss_type"] == ["sigmoid"] and r == PAPER_RECIPE and r is not PAPER_RECIPE
    assert dpo_mod.BETA_GRID == (0.1, 0.5, 1.0, 2.0) and dpo_mod.LR_GRID == (3e-7, 5e-7)
    assert recipe(beta=None)["beta"] == 0.1  # None keeps the default
    assert recipe(beta=0.5, precompute_ref_log_probs=True)["precompute_ref_log_probs"] is True
    check_recipe(r)
    # the config and the algorithm's defaults say the same
    cfg = yaml.safe_load(open(os.path.join(TRAIN_DIR, "dpo.yaml")))
    assert {k: cfg[k] for k in PAPER_RECIPE} == PAPER_RECIPE
    from r3h.training.algorithms import RECIPE_KEYS, DPOTraining

    assert set(RECIPE_KEYS) == set(PAPER_RECIPE)
    algo = DPOTraining(data=["toy_truthy"])
    assert algo.recipe() == PAPER_RECIPE


@pytest.mark.parametrize("key, value, pattern", [
    ("beta", 0, r"beta must be > 0, got 0"), ("beta", -0.1, r"beta must be > 0"),
    ("learning_rate", 0, r"learning_rate must be > 0, got 0"), ("learning_rate", -1e-7, r"learning_rate must be > 0"),
    ("warmup_ratio", 1.0, r"warmup_ratio must be in \[0, 1\), got 1.0"), ("warmup_ratio", -0.1, r"warmup_ratio"),
    ("num_train_epochs", 0, r"num_train_epochs must be > 0, got 0"), ("num_train_epochs", -1, r"num_train_epochs"),
    ("max_length", 4, r"max_length must be >= 8, got 4"),
])
def test_check_recipe_names_the_option(key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_recipe(recipe(**{key: value}))


def test_dpo_config_on_cpu(tmp_path):
    args = dpo_config(str(tmp_path / "t"), recipe(loss_type=["sigmoid", "sft"], precompute_ref_log_probs=True,
                                                   disable_tqdm=True), cpu=True)
    assert args.bf16 is False and args.gradient_checkpointing is False and args.use_cpu is True
    assert args.gradient_accumulation_steps == 64 and args.per_device_train_batch_size == 2
    assert args.warmup_steps == pytest.approx(0.1)  # a ratio of the total steps
    assert list(args.loss_type) == ["sigmoid", "sft"]
    assert args.precompute_ref_log_probs is True and args.disable_tqdm is True  # extra options pass through
    assert (args.beta, args.learning_rate, args.num_train_epochs, args.max_length) == (0.1, 5e-7, 1.0, 4096)
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine"
    assert args.output_dir == str(tmp_path / "t")
    # explicit bf16 / gradient checkpointing win over "auto"
    args = dpo_config(str(tmp_path / "t"), recipe(gradient_checkpointing=True), cpu=True)
    assert args.gradient_checkpointing is True and args.bf16 is False


def test_dpo_config_extra_options_override_the_defaults(tmp_path):
    args = dpo_config(str(tmp_path / "t"), recipe(logging_steps=1, report_to=["tensorboard"]), cpu=True)
    assert args.logging_steps == 1 and list(args.report_to) == ["tensorboard"]


# --------------------------------------------------------------------------- train_dpo


def _answer_logps(model, tok, pairs, which):
    """Sum of the log-probabilities of the assistant answer given the chat-templated prompt,
    with one plain (right-padded) forward pass over all the pairs."""
    seqs, starts = [], []
    for p in pairs:
        prompt = tok.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(p["prompt"] + p[which], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tok(full, add_special_tokens=False)["input_ids"]
        assert f_ids[:len(p_ids)] == p_ids and len(f_ids) > len(p_ids)
        seqs.append(f_ids)
        starts.append(len(p_ids))
    width = max(map(len, seqs))
    ids = torch.tensor([f + [0] * (width - len(f)) for f in seqs])
    mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in seqs])
    model.eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].double(), dim=-1)
    tok_lp = logp.gather(2, ids[:, 1:, None])[..., 0]  # log p(token t | tokens < t), t >= 1
    pos = torch.arange(1, width)[None, :]
    answer = (pos >= torch.tensor(starts)[:, None]) & (pos < torch.tensor(list(map(len, seqs)))[:, None])
    return (tok_lp * answer).sum(dim=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny DPO run of the toy base on 32 honesty pairs (two steps)."""
    base, pairs = _base(), _pairs(32)
    out = tmp_path_factory.mktemp("dpo") / "honest"
    record = dpo_mod.train_dpo(base, pairs, str(out), data_manifest={"datasets": ["toy_truthy"], "note": "test"},
                               cpu=True, torch_threads=1, disable_tqdm=True, **TINY)
    return base, pairs, out, record


@pytest.mark.slow
def test_train_dpo_output_folder_and_record(trained):
    base, pairs, out, record = trained
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "r3h_train.json"} <= files
    assert "training_args.bin" not in files and ".trainer" not in files
    assert not os.path.exists(os.path.join(os.path.dirname(out), ".honest.training"))
    assert os.listdir(os.path.dirname(out)) == ["honest"]
    assert record == json.load(open(out / "r3h_train.json"))
    assert record["trainer"] == "trl.DPOTrainer" and record["base"] == record["ref_model"] == base
    assert {k: record["recipe"][k] for k in TINY} == TINY
    assert record["recipe"]["beta"] == 0.1 and record["recipe"]["loss_type"] == ["sigmoid"]
    assert record["pairs"] == 32 and record["data"] == {"datasets": ["toy_truthy"], "note": "test"}
    assert record["gradient_accumulation_steps"] == 1 and record["processes"] == 1
    final = record["log_history"][-1]
    assert final["step"] == 2  # 32 pairs / 16 per step
    for key in ("train_loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected"):
        assert _finite(final.get(key)), (key, final)
    assert final["logps/chosen"] < 0 and final["logps/rejected"] < 0
    # the saved tokenizer is the base's
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()


@pytest.mark.slow
def test_train_dpo_moves_the_policy_in_the_dpo_direction(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, pairs, out, _ = trained
    before, after = _tensors(base), _tensors(out)
    assert set(before) == set(after) and all(before[k].shape == after[k].shape for k in before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, changed
    tok = AutoTokenizer.from_pretrained(base)
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pol = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ref_w, ref_l = _answer_logps(ref, tok, pairs, "chosen"), _answer_logps(ref, tok, pairs, "rejected")
    pol_w, pol_l = _answer_logps(pol, tok, pairs, "chosen"), _answer_logps(pol, tok, pairs, "rejected")
    margin = (pol_w - ref_w) - (pol_l - ref_l)  # the DPO implicit reward margin / beta
    assert torch.isfinite(margin).all()
    assert margin.mean() > 0, margin
    assert (margin > 0).float().mean() > 0.5, margin
    # padding changes nothing: one pair alone gives the same log-probability
    torch.testing.assert_close(_answer_logps(ref, tok, pairs[3:4], "rejected"), ref_l[3:4])


@pytest.mark.slow
def test_training_failure_leaves_no_output(tmp_path, monkeypatch):
    import trl

    def boom(self, *a, **k):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(trl.DPOTrainer, "train", boom)
    out = tmp_path / "never"
    with pytest.raises(RuntimeError, match="boom in training"):
        dpo_mod.train_dpo(_base(), _pairs(8), str(out), cpu=True, torch_threads=1, **{**TINY, "global_batch_size": 8,
                                                                                       "per_device_batch_size": 8})
    assert os.listdir(tmp_path) == []  # no output, no .never.training staging folder
    # an existing good output is left intact
    good = tmp_path / "good"
    good.mkdir()
    (good / "r3h_train.json").write_text('{"ok": true}')
    with pytest.raises(RuntimeError, match="boom in training"):
        dpo_mod.train_dpo(_base(), _pairs(8), str(good), cpu=True, torch_threads=1,
                          **{**TINY, "global_batch_size": 8, "per_device_batch_size": 8})
    assert os.listdir(tmp_path) == ["good"] and os.listdir(good) == ["r3h_train.json"]
    assert json.load(open(good / "r3h_train.json")) == {"ok": True}


def _other_llama(folder, **changes):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(build.make_tokenizer().get_vocab()), **{**build.MODEL, **changes})
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    build.make_tokenizer().save_pretrained(str(folder))
    return str(folder)


@pytest.fixture
def no_trainer(monkeypatch):
    """DPOTrainer (and model loading) fail if reached."""
    import transformers
    import trl

    class Never:
        def __init__(self, *a, **k):
            raise AssertionError("DPOTrainer must not be built")

    def never_load(*a, **k):
        raise AssertionError("no model must be loaded")

    monkeypatch.setattr(trl, "DPOTrainer", Never)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never_load)


@pytest.mark.slow
def test_reference_of_another_base_is_an_error_before_training(tmp_path, no_trainer):
    from r3h.training.checks import check_same_base

    other = _other_llama(tmp_path / "other", hidden_size=64, intermediate_size=128)
    with pytest.raises(ValueError, match=r"different architecture.*hidden_size.*128.*64"):
        check_same_base(_base(), other)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"different architecture.*hidden_size"):
        dpo_mod.train_dpo(_base(), _pairs(8), str(out), ref_model=other, cpu=True, **TINY)
    assert not out.exists() and not (tmp_path / ".never.training").exists()
    # a model with a larger vocabulary than its reference
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=len(build.make_tokenizer().get_vocab()) + 4, **build.MODEL)
                     ).save_pretrained(str(tmp_path / "bigger"))
    with pytest.raises(ValueError, match=r"larger vocabulary than the reference .*same tokenizer"):
        check_same_base(str(tmp_path / "bigger"), _base())
    check_same_base(build.build_tiny_3h()["honesty"], _base())  # same base: no error


@pytest.mark.slow
def test_reference_error_names_both_folders(tmp_path):
    from r3h.training.checks import check_same_base

    other = _other_llama(tmp_path / "other_base", hidden_size=64, intermediate_size=128)
    with pytest.raises(ValueError) as e:
        check_same_base(_base(), other)
    assert _base() in str(e.value) and other in str(e.value)


def test_to_trl_dataset():
    ds = to_trl_dataset(_pairs(4))
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 4
    assert ds[0]["prompt"] == _pairs(1)[0]["prompt"]
    with pytest.raises(ValueError, match="no preference pair to train on"):
        to_trl_dataset([])
    bad = [{k: v for k, v in _pairs(1)[0].items() if k != "rejected"}]
    with pytest.raises(ValueError, match=r"preference pair 0 .* lacks \['rejected'\].*load_preference_data"):
        to_trl_dataset(bad)


def test_to_trl_dataset_checks_every_pair():
    pairs = _pairs(3)
    pairs[2] = {k: v for k, v in pairs[2].items() if k != "chosen"}
    with pytest.raises(ValueError, match=r"preference pair 2 .* lacks \['chosen'\]"):
        to_trl_dataset(pairs)


# --------------------------------------------------------------------------- train_sft


def _sft_records(n):
    return [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in world.sft_records()[:n]]


def test_train_sft_on_toy_records(tmp_path):
    from r3h.training import train_sft

    out = tmp_path / "sft"
    record = train_sft(build.make_model(), build.make_tokenizer(), _sft_records(16), str(out), num_train_epochs=1,
                       learning_rate=1e-3, batch_size=8, max_length=64, warmup_ratio=0.0, cpu=True, torch_threads=1,
                       note={"why": "test"})
    assert set(os.listdir(tmp_path)) == {"sft"}
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "r3h_train.json"} <= files
    assert "training_args.bin" not in files and ".trainer" not in files
    assert record == json.load(open(out / "r3h_train.json"))
    assert record["trainer"] == "trl.SFTTrainer" and record["records"] == 16 and record["note"] == {"why": "test"}
    assert record["options"]["learning_rate"] == 1e-3 and record["options"]["batch_size"] == 8
    assert record["log_history"][-1]["step"] == 2 and _finite(record["log_history"][-1]["train_loss"])
    init = build.make_model().state_dict()
    after = _tensors(out)
    assert any(not torch.equal(init[k], after[k]) for k in after)


@pytest.mark.slow
def test_float64_training_is_reproducible_and_saved_in_float32(tmp_path):
    """The toy build's switches (`train_dtype="float64"`, `deterministic`): the same run
    with 1 and with 2 intra-op threads gives bit-identical weights (SFT, then DPO from it),
    saved in float32; float32 training gives other weights."""
    from r3h.io.digest import weights_digest
    from r3h.training import train_sft

    got = {}
    for threads, dtype in ((1, "float64"), (2, "float64"), (1, "float32")):
        sft = tmp_path / f"sft{threads}{dtype}"
        rec = train_sft(build.make_model(), build.make_tokenizer(), _sft_records(32), str(sft), num_train_epochs=1,
                        learning_rate=1e-3, batch_size=8, max_length=64, warmup_ratio=0.0, cpu=True,
                        torch_threads=threads, train_dtype=dtype, deterministic=True)
        assert rec["options"]["train_dtype"] == dtype and rec["options"]["torch_threads"] == threads
        dpo = tmp_path / f"dpo{threads}{dtype}"
        rec = dpo_mod.train_dpo(str(sft), _pairs(16), str(dpo), cpu=True, torch_threads=threads, train_dtype=dtype,
                                deterministic=True, **{**TINY, "learning_rate": 1e-3})
        assert rec["reproducibility"] == {"torch_threads": threads, "train_dtype": dtype, "deterministic": True}
        assert {t.dtype for t in _tensors(dpo).values()} == {torch.float32}
        assert json.load(open(dpo / "config.json")).get("dtype", "float32") == "float32"
        got[threads, dtype] = (weights_digest(str(sft)), weights_digest(str(dpo)))
    assert got[1, "float64"] == got[2, "float64"]
    assert got[1, "float64"][0] != got[1, "float32"][0] and got[1, "float64"][1] != got[1, "float32"][1]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training


def test_train_dtype_errors(tmp_path):
    from r3h.training import train_sft

    with pytest.raises(ValueError, match=r"train_dtype: 'float16' is not one of \['float32', 'float64'\]"):
        train_sft(build.make_model(), build.make_tokenizer(), _sft_records(4), str(tmp_path / "x"),
                  train_dtype="float16")
    start = tmp_path / "init"
    build.make_model().save_pretrained(start)
    build.make_tokenizer().save_pretrained(start)
    with pytest.raises(ValueError, match="train_dtype='float64' with bf16: set bf16=False"):
        dpo_mod.train_dpo(str(start), _pairs(8), str(tmp_path / "y"), cpu=True, train_dtype="float64", bf16=True,
                          **{**TINY, "global_batch_size": 8, "per_device_batch_size": 8})
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def test_train_sft_errors(tmp_path):
    from r3h.training import train_sft

    with pytest.raises(ValueError, match="no SFT record to train on"):
        train_sft(None, None, [], str(tmp_path / "x"))
    with pytest.raises(ValueError, match=r"SFT record 0 lacks \['completion'\]"):
        train_sft(None, None, [{"prompt": [{"role": "user", "content": "hi"}]}], str(tmp_path / "x"))
    with pytest.raises(ValueError, match=r"SFT record 0 lacks \['prompt', 'completion'\]"):
        train_sft(None, None, [{"messages": []}], str(tmp_path / "x"))
    assert os.listdir(tmp_path) == []


def test_train_sft_checks_every_record(tmp_path):
    from r3h.training import train_sft

    records = _sft_records(4)
    records[2] = {"prompt": records[2]["prompt"]}
    with pytest.raises(ValueError, match=r"SFT record 2 lacks \['completion'\]"):
        train_sft(build.make_model(), build.make_tokenizer(), records, str(tmp_path / "x"), batch_size=4, cpu=True)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- parse_data / load_training_data


def test_parse_data_forms():
    from omegaconf import OmegaConf

    from r3h.data import HeuristicMixture
    from r3h.training.algorithms import parse_data

    specs, mix = parse_data(["toy_truthy", {"name": "toy_safety", "limit": 3}])
    assert specs == ["toy_truthy", {"name": "toy_safety", "limit": 3}] and mix is None
    specs, mix = parse_data(OmegaConf.create({"datasets": ["toy_truthy"], "mixture": None}))
    assert specs == ["toy_truthy"] and mix is None
    specs, mix = parse_data(OmegaConf.create({"datasets": ["toy_helpsteer", "toy_truthy"], "mixture": {
        "_target_": "r3h.data.HeuristicMixture", "ratio": "1/10", "seed": 3}}))
    assert specs == ["toy_helpsteer", "toy_truthy"]
    assert isinstance(mix, HeuristicMixture) and mix.ratio == Fraction(1, 10) and mix.seed == 3
    given = HeuristicMixture("1/5")
    assert parse_data({"datasets": ["toy_truthy"], "mixture": given})[1] is given


@pytest.mark.parametrize("data, pattern", [
    (None, r"no preference data given"),
    ({"datasets": ["toy_truthy"], "mix": None}, r"unknown key\(s\) \['mix'\].*datasets.*mixture"),
    ({"datasets": []}, r"data.datasets is empty"),
    ({"mixture": None}, r"data.datasets is empty"),
    ({"datasets": ["toy_truthy"], "mixture": {"ratio": 0.2}}, r"data.mixture needs a `_target_`"),
    ("toy_truthy", r"data must be a list of datasets or \{datasets, mixture\}"),
])
def test_parse_data_errors(data, pattern):
    from r3h.training.algorithms import parse_data

    with pytest.raises(ValueError, match=pattern):
        parse_data(data)


def test_load_training_data(tmp_path):
    from r3h.data import read_mixture
    from r3h.training.algorithms import load_training_data

    pairs, manifest = load_training_data([{"name": "toy_truthy", "limit": 5}, {"name": "toy_safety", "limit": 7}],
                                         out_dir=str(tmp_path / "d"))
    assert len(pairs) == 12
    key = lambda p: (p["prompt"], p["chosen"], p["rejected"], p["dimensions"], p["source"])  # noqa: E731
    assert [key(p) for p in pairs] == [key(p) for p in world.preference_dataset("toy_truthy")[:5]
                                       + world.preference_dataset("toy_safety")[:7]]
    assert manifest["method"] == "concatenate" and manifest["totals"] == {"taken": 12}
    assert manifest["sources"]["toy_truthy"]["taken"] == 5 and manifest["sources"]["toy_safety"]["taken"] == 7
    assert manifest["sources"]["toy_truthy"]["load"]["over_limit"] == 320 - 5
    saved, saved_manifest = read_mixture(str(tmp_path / "d"))
    assert saved == pairs and saved_manifest["files"]["pairs.jsonl"]["lines"] == 12
    for data in (["toy_truthy", "toy_truthy"], [{"name": "toy_truthy", "limit": 2}, "toy_truthy"]):
        with pytest.raises(ValueError, match=r"dataset 'toy_truthy' is listed twice"):
            load_training_data(data, out_dir=str(tmp_path / "twice"))
    with pytest.raises(ValueError, match=r"dataset 'toy_truthy' is listed twice"):
        load_training_data({"datasets": ["toy_truthy", "toy_truthy"],
                            "mixture": {"_target_": "r3h.data.HeuristicMixture", "ratio": 0.0}})
    assert not (tmp_path / "twice").exists()
    # with a mixture: the mixture's own manifest
    pairs, manifest = load_training_data({"datasets": ["toy_helpsteer", "toy_truthy", "toy_safety"], "mixture": {
        "_target_": "r3h.data.HeuristicMixture", "ratio": "1/20"}})
    assert manifest["method"] == "heuristic" and len(pairs) == 640 + 640 // 20


# --------------------------------------------------------------------------- the algorithms


def _no_training(monkeypatch):
    import r3h.training.algorithms as algorithms

    def never(*a, **k):
        raise AssertionError("train_dpo must not run")

    monkeypatch.setattr(algorithms, "train_dpo", never)


@pytest.mark.slow
def test_dpo_training_algorithm(tmp_path):
    from r3h.data import read_mixture
    from r3h.toy import Tiny3HPool
    from r3h.training.algorithms import DPOTraining

    pool = Tiny3HPool(experts=["honesty"])
    out = tmp_path / "m"
    algo = DPOTraining(data=[{"name": "toy_truthy", "limit": 32}], output_dir=str(out), cpu=True, **TINY)
    model = algo.run(pool)
    assert model.r3h_tokenizer_dir == str(out) and model.r3h_merge_info is None
    pairs, manifest = read_mixture(str(out) + ".data")
    assert len(pairs) == 32 and manifest["sources"]["toy_truthy"]["taken"] == 32
    rec = json.load(open(out / "r3h_train.json"))
    assert rec["pairs"] == 32 and rec["base"] == _base() and rec["ref_model"] == _base()
    assert {k: v for k, v in rec["data"].items() if k != "files"} == {k: v for k, v in manifest.items()
                                                                      if k != "files"}
    assert {k: rec["recipe"][k] for k in TINY} == TINY
    saved = _tensors(out)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert any(not torch.equal(saved[k], v) for k, v in _tensors(_base()).items())


@pytest.mark.slow
def test_dpo_training_errors_before_training(tmp_path, monkeypatch):
    from r3h.toy import Tiny3HPool
    from r3h.training.algorithms import DPOTraining

    _no_training(monkeypatch)
    pool = Tiny3HPool(experts=["honesty"])
    out = tmp_path / "m"
    with pytest.raises(ValueError, match=r"model: 'nope' is not in the pool \(models: \['_pretrained_', 'honesty'\]\)"):
        DPOTraining(data=["toy_truthy"], model="nope", output_dir=str(out), **TINY).run(pool)
    with pytest.raises(ValueError, match=r"beta must be > 0"):
        DPOTraining(data=["toy_truthy"], output_dir=str(out), **{**TINY, "beta": 0}).run(pool)
    assert os.listdir(tmp_path) == []  # not even the data


@pytest.mark.slow
def test_continual_dpo(tmp_path, monkeypatch):
    import r3h.training.algorithms as algorithms
    from r3h.toy import Tiny3HPool
    from r3h.training.algorithms import ContinualDPO

    pool = Tiny3HPool(experts=["honesty"])
    root = tmp_path / "c"
    stages = [{"name": "honest", "data": [{"name": "toy_truthy", "limit": 16}]},
              {"name": "safe", "data": {"datasets": [{"name": "toy_safety", "limit": 16}]}}]
    algo = ContinualDPO(stages=stages, output_dir=str(root), cpu=True, **TINY)
    s1, s2 = root / "stage1_honest", root / "stage2_safe"
    assert algo.stage_dirs() == [str(s1), str(s2)]
    model = algo.run(pool)
    assert model.r3h_tokenizer_dir == str(s2)
    r1, r2 = (json.load(open(s / "r3h_train.json")) for s in (s1, s2))
    assert r1["base"] == r1["ref_model"] == _base()
    assert r2["base"] == r2["ref_model"] == str(s1)  # stage 2 starts from stage 1, its reference too
    assert r1["data"]["stage"] == "honest" and r2["data"]["stage"] == "safe"
    assert r1["pairs"] == r2["pairs"] == 16
    assert (root / "stage1_honest.data" / "pairs.jsonl").exists()
    a, b = _tensors(s1), _tensors(s2)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # a rerun skips the trained stages
    calls = []

    def fake(model, pairs, output_dir, **kw):
        calls.append((model, output_dir))
        shutil.copytree(model, output_dir)

    monkeypatch.setattr(algorithms, "train_dpo", fake)
    again = algo.run(pool)
    assert calls == [] and again.r3h_tokenizer_dir == str(s2)
    # only the missing stage is trained, from the previous one
    shutil.rmtree(s2)
    algo.run(pool)
    assert calls == [(str(s1), str(s2))]


@pytest.mark.slow
@pytest.mark.parametrize("stages, pattern", [
    ([{"name": "a", "data": ["toy_truthy"]}, {"name": "a", "data": ["toy_safety"]}],
     r"stages: names must be unique, got \['a', 'a'\]"),
    ([{"name": "a"}], r"stages\[0\] must be \{name, data\}"),
    ([], r"stages: give at least one"),
    ([{"name": "a", "data": {"datasets": []}}], r"data.datasets is empty"),
])
def test_continual_dpo_stage_errors(tmp_path, monkeypatch, stages, pattern):
    from r3h.toy import Tiny3HPool
    from r3h.training.algorithms import ContinualDPO

    _no_training(monkeypatch)
    with pytest.raises(ValueError, match=pattern):
        ContinualDPO(stages=stages, output_dir=str(tmp_path / "c"), **TINY).run(Tiny3HPool(experts=["honesty"]))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- configs and CLI


def _compose(name):
    from hydra import compose, initialize_config_dir

    from fusion_bench.utils.hydra_utils import get_default_config_path

    with initialize_config_dir(config_dir=os.path.abspath(get_default_config_path()), version_base=None):
        return compose("fabric_model_fusion", overrides=[f"method=train/{name}", "modelpool=tiny_3h"])


TRAIN_CONFIGS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(TRAIN_DIR, "*.yaml")))


def test_train_configs_are_the_expected_set():
    assert TRAIN_CONFIGS == ["continual_dpo", "continual_dpo_toy", "dpo", "dpo_toy", "mixture_heuristic",
                             "mixture_heuristic_toy", "mixture_hummer", "mixture_hummer_toy", "mixture_reward_model",
                             "mixture_reward_model_toy"]


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_every_train_config_composes(name):
    from r3h.training.algorithms import parse_data

    cfg = _compose(name)
    m = cfg.method
    want = "ContinualDPO" if name.startswith("continual") else "DPOTraining"
    assert m._target_ == f"r3h.training.algorithms.{want}"
    assert cfg.modelpool._target_ == "r3h.toy.Tiny3HPool"
    toy = name.endswith("_toy")
    values = {k: (list(m[k]) if k == "loss_type" else m[k]) for k in build.TOY_DPO}
    if toy:  # the toy recipe is the one the pool's experts were trained with
        assert values == build.TOY_DPO and m.cpu is True
    else:
        assert values == {k: PAPER_RECIPE[k] for k in build.TOY_DPO}
    if name.startswith("continual"):
        assert m.data is None
        names = [s.name for s in m.stages]
        assert names == ["helpfulness_honesty", "helpfulness_harmlessness", "helpfulness"]
        if toy:
            assert [(s.name, list(s.data.datasets)) for s in m.stages] == build.CONTINUAL
        return
    datasets = list(m.data.datasets)
    if toy:
        assert datasets == list(world.DATASETS)
    mixture = m.data.mixture
    kind = name.replace("_toy", "")
    want_mix = {"dpo": None, "mixture_heuristic": "r3h.data.HeuristicMixture",
                "mixture_hummer": "r3h.data.HummerSelection",
                "mixture_reward_model": "r3h.data.RewardModelSelection"}[kind]
    assert (mixture._target_ if mixture is not None else None) == want_mix
    if toy and mixture is not None:  # the toy mixtures build (their scorer is the toy reward model)
        specs, mix = parse_data(m.data)
        assert specs == datasets and type(mix).__name__ == want_mix.rsplit(".", 1)[1]


def _start_cli(args, cwd, root):
    import subprocess

    from tests.test_cli import FUSION_BENCH

    env = dict(os.environ, FUSION_BENCH_PROJECT_ROOT=str(root), HYDRA_FULL_ERROR="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([FUSION_BENCH, *args, "print_config=false"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    import subprocess

    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_trains_and_saves_and_cfg_job(tmp_path):
    """`fusion_bench method=train/dpo_toy ...` trains and saves; side by side (one thread each:
    most of each run is fusion_bench's start-up), `--cfg job` from the repo root (whose ./config shadows
    fusion_bench's) composes train/continual_dpo_toy."""
    out, saved = tmp_path / "m", tmp_path / "saved"
    (tmp_path / "job").mkdir()
    train = _start_cli(["method=train/dpo_toy", "modelpool=tiny_3h",
                        "method.data.datasets=[{name: toy_truthy, limit: 32}]", "method.num_train_epochs=1",
                        "method.warmup_ratio=0.0", f"method.output_dir={out}", f"merged_model_save_path={saved}"],
                       tmp_path, tmp_path)
    job = _start_cli(["--cfg", "job", "method=train/continual_dpo_toy", "modelpool=tiny_3h"], REPO, tmp_path / "job")
    r_job, r = _finish(job), _finish(train)

    assert r_job.returncode == 0, r_job.stdout[-3000:] + r_job.stderr[-3000:]
    cfg = yaml.safe_load(r_job.stdout)
    assert cfg["method"]["_target_"] == "r3h.training.algorithms.ContinualDPO"
    assert cfg["method"]["learning_rate"] == build.TOY_DPO["learning_rate"]
    assert [s["name"] for s in cfg["method"]["stages"]] == [n for n, _ in build.CONTINUAL]
    assert cfg["modelpool"]["_target_"] == "r3h.toy.Tiny3HPool"
    assert os.listdir(tmp_path / "job") == []  # --cfg job runs nothing

    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.load(open(out / "r3h_train.json"))
    assert rec["pairs"] == 32 and rec["recipe"]["num_train_epochs"] == 1
    assert rec["recipe"]["learning_rate"] == build.TOY_DPO["learning_rate"]
    assert rec["recipe"]["loss_type"] == ["sigmoid", "sft"] and rec["log_history"][-1]["step"] == 1
    assert rec["data"]["sources"]["toy_truthy"]["taken"] == 32
    assert len(open(tmp_path / "m.data" / "pairs.jsonl").readlines()) == 32
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(saved))
    got, trained = _tensors(saved), _tensors(out)
    assert set(got) == set(trained) and all(torch.equal(got[k], trained[k]) for k in got)
    base = _tensors(_base())
    assert any(not torch.equal(base[k], trained[k]) for k in base)


# --------------------------------------------------------------------------- the toy data-mixture baselines


def _key(p):
    return (json.dumps(p["prompt"]), json.dumps(p["chosen"]), json.dumps(p["rejected"]), p["source"])


@pytest.fixture(scope="module")
def toy_data():
    return {name: world.preference_dataset(name) for name in world.DATASETS}


@pytest.fixture(scope="module")
def mixtures():
    built = {}
    for name, mixture in build.baseline_mixtures().items():
        built[name] = mixture.build(list(world.DATASETS))
    return built


def _text(messages):
    return " ".join(m["content"] for m in messages)


def _rewards(p, which):
    from r3h.toy.reward import rewards

    return rewards(_text(p["prompt"]), _text(p[which]))


@pytest.mark.slow
@pytest.mark.parametrize("name, ratio", [("mixture_heuristic_1_5", Fraction(1, 5)),
                                         ("mixture_heuristic_1_10", Fraction(1, 10)),
                                         ("mixture_heuristic_1_20", Fraction(1, 20))])
def test_toy_heuristic_mixture_counts(toy_data, mixtures, name, ratio):
    pairs, manifest = mixtures[name]
    help_pairs = [p for ps in toy_data.values() for p in ps if "helpfulness" in p["dimensions"]]
    n_help = len(help_pairs)
    assert n_help == 640 + 576 + 768  # toy_helpsteer, toy_ultrafeedback, toy_saferlhf
    budget = math.floor(ratio * n_help)
    assert len(pairs) == n_help + budget
    got = Counter(_key(p) for p in pairs)
    assert not Counter(_key(p) for p in help_pairs) - got  # every helpfulness pair is in
    rest = got - Counter(_key(p) for p in help_pairs)
    by_source = Counter(k[3] for k in rest.elements())
    # honesty (toy_truthy) gets the odd one
    assert by_source == Counter({"toy_truthy": budget - budget // 2, "toy_safety": budget // 2})
    everything = Counter(_key(p) for ps in toy_data.values() for p in ps)
    assert not got - everything
    assert manifest["totals"]["budget"] == budget and manifest["totals"]["helpfulness_pairs"] == n_help


def test_toy_reward_model_selection(toy_data, mixtures):
    pairs, manifest = mixtures["mixture_reward_model"]
    want = [p for ps in toy_data.values() for p in ps
            if all(c >= r for c, r in zip(_rewards(p, "chosen"), _rewards(p, "rejected")))]
    assert [_key(p) for p in pairs] == [_key(p) for p in want]
    assert 0 < len(want) < sum(len(v) for v in toy_data.values())
    for name, ps in toy_data.items():
        kept = sum(1 for p in want if p["source"] == name)
        assert manifest["sources"][name]["taken"] == kept and manifest["sources"][name]["available"] == len(ps)


def test_toy_hummer_selection(toy_data, mixtures):
    pairs, manifest = mixtures["mixture_hummer"]
    dims = ["helpfulness", "honesty", "harmlessness"]
    kept = []
    for name, ps in toy_data.items():
        served = {d for p in ps for d in p["dimensions"]}
        conflicts = {}
        for j, d in enumerate(dims):
            if d not in served:
                conflicts[d] = sum(_rewards(p, "chosen")[j] < _rewards(p, "rejected")[j] for p in ps) / len(ps)
        adc = max(conflicts.values()) if conflicts else 0.0
        src = manifest["sources"][name]
        assert src["adc"] == pytest.approx(adc), name
        assert src["conflict"] == pytest.approx(conflicts), name
        assert src["decision"] == ("kept" if adc <= 0.2 else "left_out"), (name, adc)
        if adc <= 0.2:
            kept.append(name)
    assert 0 < len(kept) < len(toy_data)  # the threshold separates the toy datasets
    assert "toy_truthy" not in kept and "toy_safety" not in kept  # they conflict with helpfulness
    assert manifest["totals"]["kept_datasets"] == kept
    assert [_key(p) for p in pairs] == [_key(p) for name in kept for p in toy_data[name]]
