"""A merged folder is a complete model whatever pool it came from (issue 11, item 9):
fusion_bench's own `CausalLMPool` with `merged_model_save_path=` gets the tokenizer, the
chat template, the model card and `r3h_merge.json`, as r3h's own pools do."""

from __future__ import annotations

import json
import os

import pytest

from tests.test_cli import assert_same_model, cli

WEIGHTS_ONLY = ("config.json", "generation_config.json", "model.safetensors")


@pytest.fixture()
def bare_pool(tmp_path):
    """Three local checkpoints with weights and config only (no tokenizer files), and
    the tokenizer in a folder of its own: the layout of a user's own fine-tunes."""
    from r3h.toy.build import build_tiny_3h

    paths = build_tiny_3h(os.environ["R3H_CACHE"], ["helpfulness", "honesty"])
    models = {}
    for name in ("_pretrained_", "helpfulness", "honesty"):
        folder = tmp_path / "ckpt" / name
        folder.mkdir(parents=True)
        for fn in WEIGHTS_ONLY:
            os.link(os.path.join(paths[name], fn), folder / fn)
        models[name] = str(folder)
    tok = tmp_path / "tokenizer"
    tok.mkdir()
    for fn in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        os.link(os.path.join(paths["_pretrained_"], fn), tok / fn)
    return models, str(tok)


def assert_complete(folder, tokenizer_dir, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "README.md", "r3h_merge.json"} <= files, files
    info = json.load(open(os.path.join(folder, "r3h_merge.json")))
    assert info["method"] == method and info["stats"]
    assert f"# {method} merge" in open(os.path.join(folder, "README.md")).read()
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == AutoTokenizer.from_pretrained(tokenizer_dir).chat_template
    assert tok.chat_template
    AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.slow
def test_fusion_bench_causal_lm_pool_writes_a_complete_folder(tmp_path, bare_pool):
    from fusion_bench.modelpool.causal_lm.causal_lm import CausalLMPool

    from r3h.methods import TaskArithmetic

    models, tok = bare_pool
    (tmp_path / "config" / "modelpool").mkdir(parents=True)
    yaml = "_target_: fusion_bench.modelpool.CausalLMPool\nmodels:\n" + "".join(
        f"  {k}: {v}\n" for k, v in models.items()) + f"tokenizer: {tok}\n"
    (tmp_path / "config" / "modelpool" / "mine.yaml").write_text(yaml)
    out = tmp_path / "merged"
    r = cli(["method=r3h_task_arithmetic", "modelpool=mine", "method.scaling_factor=0.4",
             f"merged_model_save_path={out}"], tmp_path, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_complete(out, tok, "r3h_task_arithmetic")
    pool = CausalLMPool(models=models, tokenizer=tok)
    assert_same_model(out, TaskArithmetic(scaling_factor=0.4, progress=False).run(pool))


@pytest.mark.slow
def test_program_save_of_a_sweep_and_of_tsvm(tmp_path, bare_pool):
    """Without the CLI: `CausalLMPool.save_model` (what `merged_model_save_path=` calls)
    on a TSVM merge (its own build path) and on a Rewarded-Soup sweep (one folder per λ)."""
    from fusion_bench.modelpool.causal_lm.causal_lm import CausalLMPool

    from r3h.methods import RewardedSoup, TSVM

    models, tok = bare_pool
    pool = CausalLMPool(models=models, tokenizer=tok)
    merged = TSVM(progress=False).run(pool)
    pool.save_model(merged, str(tmp_path / "tsvm"))
    assert_complete(tmp_path / "tsvm", tok, merged.r3h_merge_info["method"])
    sweep = RewardedSoup(preference=[[0.25, 0.75], [0.75, 0.25]], progress=False).run(pool)
    pool.save_model(sweep, str(tmp_path / "soup"))
    subs = sorted(d for d in os.listdir(tmp_path / "soup") if os.path.isdir(tmp_path / "soup" / d))
    assert len(subs) == 2 and os.path.exists(tmp_path / "soup" / "sweep.json")
    assert subs == sorted(sweep.keys())
    for d in subs:
        assert_complete(tmp_path / "soup" / d, tok, sweep[d].r3h_merge_info["method"])
        assert_same_model(tmp_path / "soup" / d, sweep[d])

@pytest.mark.slow
def test_pool_without_tokenizer_takes_the_base_folder(tmp_path):
    """No `tokenizer` in the pool: the merged folder carries the base's tokenizer files."""
    from fusion_bench.modelpool.causal_lm.causal_lm import CausalLMPool

    from r3h.methods import WeightAverage
    from r3h.toy.build import build_tiny_3h

    paths = build_tiny_3h(os.environ["R3H_CACHE"], ["helpfulness", "honesty"])
    pool = CausalLMPool(models={k: paths[k] for k in ("_pretrained_", "helpfulness", "honesty")}, tokenizer=None)
    model = WeightAverage(progress=False).run(pool)
    pool.save_model(model, str(tmp_path / "avg"))
    assert_complete(tmp_path / "avg", paths["_pretrained_"], model.r3h_merge_info["method"])
    assert_same_model(tmp_path / "avg", model)
