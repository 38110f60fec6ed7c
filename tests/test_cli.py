"""`fusion_bench` CLI end to end: r3h's configs are found from any folder, with no flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import read_folder

REPO = Path(__file__).resolve().parents[1]
FUSION_BENCH = str(Path(sys.executable).with_name("fusion_bench"))


def cli(args, cwd, tmp_path):
    env = dict(os.environ, FUSION_BENCH_PROJECT_ROOT=str(tmp_path), HYDRA_FULL_ERROR="1")
    return subprocess.run([FUSION_BENCH, *args, "print_config=false"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_same_model(folder, model):
    got = read_folder(folder)
    want = model.state_dict()
    assert set(got) == set(want)
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.subprocess
def test_tiny_3h_from_any_folder(tmp_path):
    from r3h.methods import TiesMerging
    from r3h.toy import Tiny3HPool

    out = tmp_path / "ties"
    r = cli(["method=ties", "modelpool=tiny_3h", "method.density=0.3", f"merged_model_save_path={out}"], tmp_path, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = json.load(open(out / "r3h_merge.json"))
    assert info["method"] == "ties" and info["hyperparameters"]["density"] == 0.3
    assert {"tokenizer.json", "config.json", "README.md", "model.safetensors"} <= set(os.listdir(out))
    assert_same_model(out, TiesMerging(density=0.3, progress=False).run(Tiny3HPool()))


@pytest.mark.slow
@pytest.mark.subprocess
def test_repo_root_config_folder_and_name_clash(tmp_path):
    """From the repo root (./config is fusion_bench's primary config folder there),
    `r3h_task_arithmetic` is r3h's method; fusion_bench's `task_arithmetic` stays its own."""
    out = tmp_path / "ta"
    r = cli(["method=r3h_task_arithmetic", "modelpool=tiny_3h", "method.scaling_factor=0.5",
             f"merged_model_save_path={out}"], REPO, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = json.load(open(out / "r3h_merge.json"))
    assert info["method"] == "r3h_task_arithmetic" and info["algorithm"] == "r3h.methods.task_arithmetic.TaskArithmetic"


@pytest.mark.slow
@pytest.mark.subprocess
def test_fusion_bench_causal_lm_pool_of_local_models(tmp_path):
    """A user's own fusion_bench CausalLMPool config (in ./config of their project)."""
    from fusion_bench.modelpool.causal_lm.causal_lm import CausalLMPool

    from r3h.methods import DareMerging
    from r3h.toy.build import build_tiny_3h

    paths = build_tiny_3h(os.environ["R3H_CACHE"])
    (tmp_path / "config" / "modelpool").mkdir(parents=True)
    models = {"_pretrained_": paths["_pretrained_"], "helpfulness": paths["helpfulness"], "honesty": paths["honesty"]}
    yaml = "_target_: fusion_bench.modelpool.CausalLMPool\nmodels:\n" + "".join(
        f"  {k}: {v}\n" for k, v in models.items()) + f"tokenizer: {paths['_pretrained_']}\n"
    (tmp_path / "config" / "modelpool" / "local_3h.yaml").write_text(yaml)
    out = tmp_path / "dare"
    r = cli(["method=dare", "modelpool=local_3h", "method.density=0.3", "method.seed=7",
             "method.weights={helpfulness: 1.0, honesty: 0.5}", f"merged_model_save_path={out}"], tmp_path, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pool = CausalLMPool(models=models, tokenizer=paths["_pretrained_"])
    model = DareMerging(density=0.3, seed=7, weights={"helpfulness": 1.0, "honesty": 0.5}, progress=False).run(pool)
    assert_same_model(out, model)


@pytest.mark.slow
@pytest.mark.subprocess
def test_resm_is_r_tsvm_from_the_cli(tmp_path):
    """`method=resm` (the paper's v3 name) runs R-TSVM: the same class, options and merge, bit for bit."""
    from tests.core.test_svd_cache import write_pool

    paths = write_pool(tmp_path / "pool")
    (tmp_path / "config" / "modelpool").mkdir(parents=True)
    yaml = "_target_: r3h.modelpool.AlignedCausalLMPool\nmodels:\n" + "".join(
        f"  {k}: {v}\n" for k, v in paths.items()) + "tokenizer: null\n"
    (tmp_path / "config" / "modelpool" / "mini_3h.yaml").write_text(yaml)
    infos = {}
    for name in ("resm", "r_tsvm"):
        r = cli([f"method={name}", "modelpool=mini_3h", "method.epsilon_mode=relative", "method.epsilon=0.5",
                 "method.outlier_reading=inverse", f"method.out_dir={tmp_path / name}"], tmp_path, tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        infos[name] = json.load(open(tmp_path / name / "r3h_merge.json"))
    assert infos["resm"]["algorithm"] == infos["r_tsvm"]["algorithm"] == "r3h.methods.tsvm.r_tsvm.RTSVM"
    assert infos["resm"]["hyperparameters"] == infos["r_tsvm"]["hyperparameters"]
    assert infos["resm"]["hyperparameters"]["outlier_reading"] == "inverse"
    a, b = read_folder(tmp_path / "resm"), read_folder(tmp_path / "r_tsvm")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.subprocess
def test_bad_option_fails_cleanly(tmp_path):
    out = tmp_path / "never"
    r = cli(["method=ties", "modelpool=tiny_3h", "method.density=1.5", f"merged_model_save_path={out}"], tmp_path, tmp_path)
    assert r.returncode != 0
    assert "density=1.5 is outside (0.0, 1.0]" in r.stdout + r.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_streaming_out_dir_from_cli(tmp_path):
    out = tmp_path / "streamed"
    r = cli(["method=breadcrumbs", "modelpool=tiny_3h", f"method.out_dir={out}", "method.max_shard_size=100KB"], tmp_path, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = os.listdir(out)
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    assert "merged model written to" in r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_r_tsvm_two_cpu_processes_bit_identical(tmp_path):
    """`fabric.accelerator=cpu fabric.devices=2 fabric.strategy=ddp` splits the tensors over
    two ranks and gives the one-process model bit for bit, with the per-tensor report."""
    one, two = tmp_path / "one", tmp_path / "two"
    # a fixed per-process thread count is what makes CPU merges bit-identical across process counts
    common = ["method=r_tsvm", "modelpool=tiny_3h", "method.epsilon_mode=relative", "method.epsilon=0.5",
              "method.cpu_threads=1"]
    r1 = cli([*common, f"merged_model_save_path={one}"], tmp_path, tmp_path)
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    r2 = cli([*common, f"merged_model_save_path={two}", "fabric.accelerator=cpu", "fabric.devices=2",
              "fabric.strategy=ddp"], tmp_path, tmp_path)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert "rank 1/2 merges" in r2.stdout + r2.stderr
    a, b = read_folder(one), read_folder(two)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    info1, info2 = (json.load(open(p / "r3h_merge.json")) for p in (one, two))
    assert info2["stats"]["world_size"] == 2
    assert set(info1["tensors"]) == set(info2["tensors"]) == set(a)
    down = info2["tensors"]["model.layers.0.mlp.down_proj.weight"]
    assert down["rule"] == "svd" and len(down["alpha"]) == 5 and 0 < down["omega"] < 1
    assert down["k_i"] == info1["tensors"]["model.layers.0.mlp.down_proj.weight"]["k_i"]
    reports = list(Path(tmp_path).rglob("r3h_merge_report.json"))
    assert reports, "the per-tensor report is written into the run's log folder"


@pytest.mark.slow
@pytest.mark.subprocess
def test_tsvm_streams_with_two_processes(tmp_path):
    out = tmp_path / "streamed"
    r = cli(["method=tsvm", "modelpool=tiny_3h", f"method.out_dir={out}", "method.max_shard_size=200KB",
             "method.cpu_threads=1", "fabric.accelerator=cpu", "fabric.devices=2", "fabric.strategy=ddp"],
            tmp_path, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = os.listdir(out)
    assert "model.safetensors.index.json" in files and not any(f.startswith(".") for f in files)
    index = json.load(open(out / "model.safetensors.index.json"))
    assert len(index["weight_map"]) == 21
    from r3h.methods import TSVM
    from r3h.toy import Tiny3HPool

    assert_same_model(out, TSVM(progress=False, cpu_threads=1).run(Tiny3HPool()))


@pytest.mark.slow
@pytest.mark.subprocess
def test_error_on_one_rank_stops_every_rank(tmp_path):
    """A NaN in a tensor that only one rank reads: both ranks stop with the error naming
    model and tensor (no rank waits forever), and no output is left."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import write_checkpoint

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    base = {k: v.clone() for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    (tmp_path / "config" / "modelpool").mkdir(parents=True)
    models = {"_pretrained_": write_checkpoint(tmp_path / "base", base, cfg.to_dict())}
    for i, name in enumerate(["a", "b"]):
        sd = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items()}
        if name == "b":
            sd["model.norm.weight"][3] = float("nan")
        models[name] = write_checkpoint(tmp_path / name, sd, cfg.to_dict())
    (tmp_path / "config" / "modelpool" / "nan_pool.yaml").write_text(
        "_target_: r3h.modelpool.AlignedCausalLMPool\nmodels:\n" + "".join(f"  {k}: {v}\n" for k, v in models.items()))
    out = tmp_path / "never"
    r = cli(["method=tsvm", "modelpool=nan_pool", f"method.out_dir={out}", "fabric.accelerator=cpu",
             "fabric.devices=2", "fabric.strategy=ddp"], tmp_path, tmp_path)
    assert r.returncode != 0
    text = " ".join((r.stdout + r.stderr).replace("[rank1]:", " ").split())
    assert "ValueError: model 'b': tensor 'model.norm.weight' has 1 NaN/Inf entries (on rank" in text
    assert text.count("Traceback") >= 1
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".r3h-merge-")]
