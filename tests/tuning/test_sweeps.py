"""Deployment-time sweeps (`r3h.sweeps.MergeSweep`, `method=sweep`, `method=sweep/...`) and
the Pareto helper: members equal direct runs bit for bit, TSVM-family grids do one SVD pass,
Rewarded Soup λ grids one streaming pass, `out_dir` writes one folder per member, the 3H
task pool scores a sweep into one table, bad sweeps fail before any tensor is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from r3h.evaluation.benchmark import Benchmark, BenchmarkResult
from r3h.methods import DareMerging, DellaMerging, RewardedSoup, RTSVM, TSVM, TiesMerging
from r3h.modelpool import AlignedCausalLMPool, ModelSweep
from r3h.plots import pareto_table
from r3h.sweeps import MergeSweep, NamedModelSweep, grid_points, member_name
from tests.conftest import read_folder
from tests.core.test_svd_cache import assert_identical, pool_of, state, write_pool

REPO = Path(__file__).resolve().parents[2]
SWEEP_CONFIGS = REPO / "config" / "method" / "sweep"
FUSION_BENCH = str(Path(sys.executable).with_name("fusion_bench"))
QUIET = {"progress": False}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_pool(tmp_path_factory.mktemp("pool"))


def sweep(**kw) -> MergeSweep:
    kw["options"] = {**QUIET, **kw.get("options", {})}
    return MergeSweep(**kw)


def direct(cls, pool, **opts):
    return state(cls(progress=False, **opts).run(pool))


def cache_svds(report):
    return {n: (m.get("svd_cache") or {}).get("svds") for n, m in report["members"].items()}


# ---------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------

def test_grid_points_and_member_names():
    pts = grid_points({"alpha": [0.5, 1.0], "gamma": [0.25, 0.5, 0.75]})
    assert [member_name(p) for p in pts] == [
        "alpha=0.5,gamma=0.25", "alpha=0.5,gamma=0.5", "alpha=0.5,gamma=0.75",
        "alpha=1.0,gamma=0.25", "alpha=1.0,gamma=0.5", "alpha=1.0,gamma=0.75"]
    assert grid_points([{"alpha": 1.0, "gamma": 0.0}, {"alpha": 0.5}]) == [{"alpha": 1.0, "gamma": 0.0},
                                                                        {"alpha": 0.5}]
    assert member_name({"weights": [1, 0.5], "flag": True, "x": None}) == "weights=1_0.5,flag=true,x=null"
    assert member_name({"preference": {"a": 0.25, "b": 0.75}}) == "preference=a:0.25_b:0.75"
    assert member_name({"exclude_keys": ["lm/head"]}) == "exclude_keys=lm_head"


# ---------------------------------------------------------------------------------------
# TSVM family: one SVD pass
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_r_tsvm_grid_equals_direct_runs_with_one_svd_pass(paths, tmp_path):
    pool = pool_of(paths)
    opts = {"epsilon_mode": "relative", "epsilon": 0.6, "device": "cpu"}
    sw = sweep(method="r_tsvm", grid={"alpha": [0.5, 1.0], "gamma": [0.25, 0.75]}, options=opts)
    res = sw.run(pool)
    names = ["alpha=0.5,gamma=0.25", "alpha=0.5,gamma=0.75", "alpha=1.0,gamma=0.25", "alpha=1.0,gamma=0.75"]
    assert isinstance(res, NamedModelSweep) and isinstance(res, ModelSweep)
    assert list(res.keys()) == names == sw.member_names
    assert res.manifest == {n: p for n, p in zip(names, sw.points)} and res.manifest[names[1]] == {"alpha": 0.5,
                                                                                                  "gamma": 0.75}
    for name, model in res.items():
        assert_identical(direct(RTSVM, pool, **opts, **res.manifest[name]), state(model))
        hp = model.r3h_merge_info["hyperparameters"]
        assert (hp["alpha"], hp["gamma"], hp["epsilon_mode"]) == (res.manifest[name]["alpha"],
                                                                  res.manifest[name]["gamma"], "relative")
    assert cache_svds(sw.last_report) == {names[0]: 9 * 5, names[1]: 0, names[2]: 0, names[3]: 0}
    info = sw.last_report["svd_cache"]
    assert info["temporary"] and not os.path.exists(info["folder"])  # the temporary cache is gone
    assert res[names[3]] is res.values()[3] and names[0] in res and "alpha=2" not in res
    # saved by the pool as fusion_bench's program does: one folder per member and sweep.json
    out = tmp_path / "saved"
    AlignedCausalLMPool(models=dict(paths), tokenizer=None).save_model(res, str(out))
    assert json.load(open(out / "sweep.json")) == res.manifest
    assert_identical(read_folder(out / names[2]), state(res[names[2]]))


@pytest.mark.slow
def test_kept_cache_is_reused_and_false_turns_it_off(paths, tmp_path):
    pool = pool_of(paths)
    folder = tmp_path / "factors"
    sw = sweep(method="tsvm", grid={"alpha": [0.5, 1.0]}, svd_cache=str(folder))
    sw.run(pool)
    assert cache_svds(sw.last_report) == {"alpha=0.5": 45, "alpha=1.0": 0}
    assert folder.is_dir() and len(list(folder.rglob("*.safetensors"))) == 9 * 4
    sw2 = sweep(method="tsvm", grid={"alpha": [0.7, 1.3]}, svd_cache=str(folder))
    res = sw2.run(pool)
    assert cache_svds(sw2.last_report) == {"alpha=0.7": 0, "alpha=1.3": 0}
    assert_identical(direct(TSVM, pool, alpha=1.3), state(res["alpha=1.3"]))
    off = sweep(method="tsvm", grid={"alpha": [0.5, 1.0]}, svd_cache=False)
    res = off.run(pool)
    assert off.last_report["svd_cache"] is None
    assert all("svd_cache" not in m for m in off.last_report["members"].values())
    assert "svd_cache" not in res["alpha=1.0"].r3h_merge_info


@pytest.mark.slow
def test_out_dir_writes_one_folder_per_member(paths, tmp_path, monkeypatch):
    pool = pool_of(paths)
    out = tmp_path / "sweep"
    sw = sweep(method="r_tsvm", grid={"gamma": [0.2, 0.9]}, out_dir=str(out))
    assert sw.run(pool) is None
    assert sorted(p.name for p in out.iterdir()) == ["gamma=0.2", "gamma=0.9", "r3h_sweep.json", "sweep.json"]
    assert json.load(open(out / "sweep.json")) == {"gamma=0.2": {"gamma": 0.2}, "gamma=0.9": {"gamma": 0.9}}
    for g in (0.2, 0.9):
        assert_identical(direct(RTSVM, pool, gamma=g), read_folder(out / f"gamma={g}"))
        info = json.load(open(out / f"gamma={g}" / "r3h_merge.json"))
        assert info["hyperparameters"]["gamma"] == g and info["svd_cache"]["svds"] == (45 if g == 0.2 else 0)
    rep = json.load(open(out / "r3h_sweep.json"))
    assert rep["members"]["gamma=0.9"]["out_dir"] == str(out / "gamma=0.9")
    assert not list(tmp_path.glob(".r3h-svd-cache-*"))  # the temporary cache (beside out_dir) is gone
    # a sweep that fails half way leaves no sweep.json: the folder does not look finished
    calls = {"n": 0}
    orig = RTSVM.run

    def fail_second(self, modelpool):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return orig(self, modelpool)

    monkeypatch.setattr(RTSVM, "run", fail_second)
    with pytest.raises(RuntimeError, match="disk on fire") as exc:
        sweep(method="r_tsvm", grid={"gamma": [0.3, 0.6]}, out_dir=str(out)).run(pool)
    assert any("gamma=0.6" in n for n in getattr(exc.value, "__notes__", []))
    assert not (out / "sweep.json").exists() and not (out / "r3h_sweep.json").exists()
    assert (out / "gamma=0.3").is_dir() and not (out / "gamma=0.6").exists()


# ---------------------------------------------------------------------------------------
# other methods: weights, seeds, Rewarded Soup
# ---------------------------------------------------------------------------------------

def test_weights_grid_with_a_method_config_dict(paths):
    pool = pool_of(paths)
    method = {"_target_": "r3h.methods.TiesMerging", "density": 0.3}
    grid = {"weights": [[1.0, 0.5, 0.5], {"e0": 0.2, "e1": 1.0, "e2": 1.0}]}
    res = sweep(method=method, grid=grid).run(pool)
    assert list(res.keys()) == ["weights=1.0_0.5_0.5", "weights=e0:0.2_e1:1.0_e2:1.0"]
    for (name, model), w in zip(res.items(), grid["weights"]):
        assert_identical(direct(TiesMerging, pool, density=0.3, weights=w), state(model))


@pytest.mark.parametrize("config,cls", [("dare_seeds", DareMerging), ("della_seeds", DellaMerging)])
def test_seed_sweeps_of_the_random_sparsifiers(paths, config, cls):
    pool = pool_of(paths)
    cfg = OmegaConf.load(SWEEP_CONFIGS / f"{config}.yaml")
    assert cfg.grid.seed == [0, 1, 2, 3, 4]
    cfg.options = QUIET
    cfg.grid.seed = [0, 1, 2]
    sw = MergeSweep(**{k: v for k, v in cfg.items() if k != "_target_"})
    res = sw.run(pool)
    states = {n: state(m) for n, m in res.items()}
    assert list(states) == ["seed=0", "seed=1", "seed=2"]
    for s in (0, 2):
        assert_identical(direct(cls, pool, seed=s), states[f"seed={s}"])
    k = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(states["seed=0"][k], states["seed=1"][k])  # the draw does differ


def test_rewarded_soup_grid_is_one_pass(paths, tmp_path, count_reads):
    pool = pool_of(paths)
    vectors = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]]
    RewardedSoup(preference=vectors[0], progress=False).run(pool)
    one_model = count_reads["n"]
    count_reads["n"] = 0
    sw = sweep(method="rewarded_soup", grid={"preference": vectors})
    res = sw.run(pool)
    assert count_reads["n"] == one_model  # three members for the reads of one
    assert sw.last_report["one_pass"] is True
    assert list(res.keys()) == ["preference=1.0_0.0_0.0", "preference=0.5_0.5_0.0", "preference=0.25_0.25_0.5"]
    for (name, model), v in zip(res.items(), vectors):
        assert_identical(direct(RewardedSoup, pool, preference=v), state(model))
    out = tmp_path / "soup"
    assert sweep(method="rewarded_soup", grid={"preference": vectors}, out_dir=str(out)).run(pool) is None
    assert json.load(open(out / "sweep.json")) == {n: {"preference": v} for n, v in zip(res.keys(), vectors)}
    assert_identical(read_folder(out / "preference=0.5_0.5_0.0"), state(res["preference=0.5_0.5_0.0"]))
    assert (out / "r3h_sweep.json").is_file()


def test_rewarded_soup_grid_config_on_three_named_experts(paths, count_reads):
    cfg = OmegaConf.to_container(OmegaConf.load(SWEEP_CONFIGS / "rewarded_soup_grid.yaml"))
    prefs = cfg["grid"]["preference"]
    simplex = {(a / 4, b / 4, (4 - a - b) / 4) for a in range(5) for b in range(5 - a)}
    assert len(prefs) == 15 and {(p["helpfulness"], p["honesty"], p["harmlessness"]) for p in prefs} == simplex
    named = {"_pretrained_": paths["_pretrained_"], "helpfulness": paths["e0"], "honesty": paths["e1"],
             "harmlessness": paths["e2"]}
    sw = MergeSweep(method=cfg["method"], grid=cfg["grid"], options=QUIET)
    with pytest.raises(ValueError, match=r"sweep member 'preference=helpfulness:1.0_honesty:0.0_harmlessness:0.0'"
                                         r": preference: 'helpfulness' is not an expert"):
        sw.run(pool_of(paths))  # the pool's experts are e0, e1, e2
    assert count_reads["n"] == 0
    pool = AlignedCausalLMPool(models=named, tokenizer=None)
    res = sw.run(pool)
    assert len(res) == 15
    name = "preference=helpfulness:0.25_honesty:0.25_harmlessness:0.5"
    assert_identical(direct(RewardedSoup, pool, preference=sw.manifest[name]["preference"]), state(res[name]))


def test_every_sweep_config_builds():
    from hydra.utils import instantiate

    files = sorted(SWEEP_CONFIGS.glob("*.yaml")) + [REPO / "config" / "method" / "sweep.yaml"]
    assert {f.stem for f in files} >= {"r_tsvm_gamma", "dare_seeds", "della_seeds", "rewarded_soup_grid",
                                       "ties_density", "sweep"}
    built = {}
    for f in files:
        sw = instantiate(OmegaConf.load(f), _recursive_=False)
        assert isinstance(sw, MergeSweep), f
        built[f.stem] = sw
    assert [p["gamma"] for p in built["r_tsvm_gamma"].points] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert built["r_tsvm_gamma"].uses_svd_cache() and not built["ties_density"].uses_svd_cache()
    assert built["ties_density"].member_names == [f"density={d}" for d in (0.1, 0.3, 0.5, 0.7, 0.9)]
    assert len(built["sweep"].member_names) == 6


# ---------------------------------------------------------------------------------------
# bad sweeps
# ---------------------------------------------------------------------------------------

BAD = [
    (dict(method="r_tsvm", grid={"gama": [0.1]}), r"grid: 'gama' is not an option of r3h.methods.RTSVM"),
    (dict(method="tsvm", grid={"weights": [[1, 1, 1]]}), r"'weights' is not an option"),
    (dict(method="r_tsvm", grid={"gamma": [0.5]}, options={"epsilon_mod": "relative"}), r"options: 'epsilon_mod'"),
    (dict(method="r_tsvm", grid={"gamma": 0.5}), r"grid.gamma: expected a list"),
    (dict(method="r_tsvm", grid={"gamma": []}), r"grid.gamma: the list of values is empty"),
    (dict(method="r_tsvm", grid={}), r"grid: no option to sweep"),
    (dict(method="r_tsvm", grid="gamma"), r"grid: expected a mapping"),
    (dict(method="r_tsvm"), r"grid: give the options"),
    (dict(method="r_tsvm", grid={"out_dir": ["/x"]}), r"'out_dir' is set by the sweep"),
    (dict(method="r_tsvm", grid={"gamma": [0.5]}, options={"svd_cache": "/x"}), r"'svd_cache' is set by the sweep"),
    (dict(method="no_such_method", grid={"alpha": [1]}), r"method: no config 'no_such_method'"),
    (dict(method="sweep", grid={"alpha": [1]}), r"cannot sweep a sweep"),
    (dict(method={"alpha": 1.0}, grid={"alpha": [1]}), r"has no _target_"),
    (dict(method={"_target_": "r3h.methods.Nope"}, grid={"alpha": [1]}), r"cannot import _target_"),
    (dict(method="r_tsvm", grid=[{"gamma": 0.5}, {"gamma": 0.5}]), r"'gamma=0.5' appears more than once"),
    (dict(method="r_tsvm", grid={"gamma": [0.5]}, svd_cache=3), r"svd_cache must be a folder"),
]


@pytest.mark.parametrize("kw,match", BAD, ids=[m for _, m in BAD])
def test_bad_sweep_options_fail_when_built(kw, match):
    with pytest.raises(ValueError, match=match):
        MergeSweep(**kw)


def test_bad_value_fails_before_any_tensor_is_read(paths, tmp_path, count_reads):
    out = tmp_path / "never"
    sw = sweep(method="r_tsvm", grid={"gamma": [0.5, 1.5]}, out_dir=str(out))
    with pytest.raises(ValueError, match=r"sweep member 'gamma=1.5': gamma=1.5 is outside \[0.0, 1.0\]"):
        sw.run(pool_of(paths))
    assert count_reads["n"] == 0
    assert not out.exists() and not list(tmp_path.glob(".r3h-svd-cache-*"))


# ---------------------------------------------------------------------------------------
# the 3H task pool and the Pareto table
# ---------------------------------------------------------------------------------------

class AlphaProbe(Benchmark):
    """A stand-in benchmark scoring a member from its α (read from its model card): helpful
    = 10 α, harmless = 10 − 10 |α − 1|. Enough to see that every row is its own member."""

    uses_generator = False

    def __init__(self, column: str, dimension: str):
        self.column, self.dimension = column, dimension

    def run(self, ctx):
        alpha = float(ctx.model.r3h_merge_info["hyperparameters"]["alpha"])
        score = 10 * alpha if self.dimension == "helpful" else 10 - 10 * abs(alpha - 1)
        return BenchmarkResult(self.column, score)


@pytest.mark.slow
def test_sweep_scored_by_the_3h_taskpool_into_one_table(paths, tmp_path, tiny_lm_path):
    from r3h.evaluation.taskpool import ThreeHTaskPool

    res = sweep(method="tsvm", grid={"alpha": [0.25, 0.5, 1.0, 1.5]}).run(pool_of(paths))
    probe = lambda c, d: {"_target_": "tests.tuning.test_sweeps.AlphaProbe", "column": c, "dimension": d}  # noqa: E731
    taskpool = ThreeHTaskPool(benchmarks={"Probe-helpful": probe("Probe-helpful", "helpful"),
                                          "Probe-harmless": probe("Probe-harmless", "harmless")},
                              tokenizer=tiny_lm_path, output_dir=str(tmp_path / "eval"), print_table=False)
    report = taskpool.evaluate(res)
    names = ["alpha=0.25", "alpha=0.5", "alpha=1.0", "alpha=1.5"]
    assert report["members"] == names and report["sweep"] == res.manifest
    rows = json.load(open(report["files"]["json"]))["rows"]
    assert [r["method"] for r in rows] == names
    assert [report["averages"][n]["Helpful_Avg"] for n in names] == [2.5, 5.0, 10.0, 15.0]
    table = pareto_table(report)
    assert table.front == ["alpha=1.0", "alpha=1.5"]
    assert table.dominated == ["alpha=0.25", "alpha=0.5"]
    by = {r["name"]: r["dominated_by"] for r in table.rows}
    assert by["alpha=0.5"] == ["alpha=1.0", "alpha=1.5"] and by["alpha=1.0"] == []
    assert table.rows[0]["options"] == {"alpha": 0.25}
    assert "| alpha=0.5 | 5 | 5 | no | alpha=1.0, alpha=1.5 |" in table.to_markdown()
    again = pareto_table(report["files"]["report"])  # the saved 3h_report.json
    assert again.rows == table.rows
    png, pdf = table.plot(tmp_path / "fig" / "pareto")
    assert Path(png).stat().st_size > 0 and Path(pdf).stat().st_size > 0
    # the taskpool drew the front itself, for the only pair of averages every member has
    assert list(report["files"]["pareto"]) == ["Helpful_Avg/Harmless_Avg"]
    drawn = report["files"]["pareto"]["Helpful_Avg/Harmless_Avg"]
    assert drawn["front"] == table.front and open(drawn["table"]).read() == table.to_markdown() + "\n"
    assert [Path(p).read_bytes()[:4] for p in drawn["plot"]] == [b"\x89PNG", b"%PDF"]


def test_pareto_table_forms_and_errors():
    rows = {"a": {"H": 1.0, "S": 9.0}, "b": {"H": 5.0, "S": 5.0}, "c": {"H": 4.0, "S": 4.0},
            "d": {"H": 5.0, "S": 5.0}, "e": {"H": 9.0, "S": 1.0}}
    t = pareto_table(rows, x="H", y="S")
    assert t.front == ["a", "b", "d", "e"] and t.dominated == ["c"]  # equal points do not dominate
    assert next(r for r in t.rows if r["name"] == "c")["dominated_by"] == ["b", "d"]
    low = pareto_table(rows, x="H", y="S", maximize=[True, False])  # S minimised
    assert low.front == ["e"] and low.dominated == ["a", "b", "c", "d"]
    listed = pareto_table([{"method": k, **v} for k, v in rows.items()], x="H", y="S")
    assert listed.rows == t.rows
    with pytest.raises(ValueError, match=r"member 'a' has no 'Harmless_Avg'"):
        pareto_table(rows, x="H")
    with pytest.raises(ValueError, match=r"member 'a': 'H' is not a number"):
        pareto_table({"a": {"H": "x", "S": 1}}, x="H", y="S")


# ---------------------------------------------------------------------------------------
# fusion_bench CLI
# ---------------------------------------------------------------------------------------

def cli(args, tmp_path, timeout=600):
    env = dict(os.environ, FUSION_BENCH_PROJECT_ROOT=str(tmp_path), HYDRA_FULL_ERROR="1")
    return subprocess.run([FUSION_BENCH, *args, "print_config=false"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_sweep_on_two_cpu_ranks(tmp_path):
    """`method=sweep` with 2 Fabric ranks: the ranks share one temporary SVD cache (its
    folder broadcast by rank 0), each member is bit-identical to a one-process run and
    only the first does SVDs."""
    paths = write_pool(tmp_path / "pool")
    (tmp_path / "config" / "modelpool").mkdir(parents=True)
    (tmp_path / "config" / "modelpool" / "sweep_pool.yaml").write_text(
        "_target_: r3h.modelpool.AlignedCausalLMPool\nmodels:\n" + "".join(f"  {k}: {v}\n" for k, v in paths.items()))
    out = tmp_path / "out" / "sweep"
    r = cli(["method=sweep", "modelpool=sweep_pool", "method.method=r_tsvm", "~method.grid",
             "+method.grid={gamma: [0.2, 0.8]}",
             "+method.options.epsilon_mode=relative", "+method.options.epsilon=0.6", f"method.out_dir={out}",
             "+method.options.cpu_threads=1", "fabric.accelerator=cpu", "fabric.devices=2", "fabric.strategy=ddp"],
            tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.load(open(out / "r3h_sweep.json"))
    assert cache_svds(rep) == {"gamma=0.2": 45, "gamma=0.8": 0}
    pool = pool_of(paths)
    for g in (0.2, 0.8):
        info = json.load(open(out / f"gamma={g}" / "r3h_merge.json"))
        assert info["stats"]["world_size"] == 2
        assert_identical(direct(RTSVM, pool, gamma=g, epsilon_mode="relative", epsilon=0.6, cpu_threads=1),
                         read_folder(out / f"gamma={g}"))
    assert not list((tmp_path / "out").glob(".r3h-*"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_r_tsvm_gamma_sweep_on_tiny_3h_gives_one_table(tmp_path):
    """The toy 3H world end to end: `method=sweep/r_tsvm_gamma taskpool=3h_tiny` merges each
    γ (one SVD pass), saves one folder per member and scores all of them in one table."""
    save, evald = tmp_path / "merged", tmp_path / "eval"
    r = cli(["method=sweep/r_tsvm_gamma", "modelpool=tiny_3h", "taskpool=3h_tiny", "method.grid.gamma=[0.0,1.0]",
             "+method.options.epsilon_mode=relative", "+method.options.epsilon=0.5", f"taskpool.output_dir={evald}",
             f"merged_model_save_path={save}"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.load(open(evald / "3h_report.json"))
    assert report["members"] == ["gamma=0.0", "gamma=1.0"]
    assert report["sweep"] == {"gamma=0.0": {"gamma": 0.0}, "gamma=1.0": {"gamma": 1.0}}
    md = (evald / "3h_results.md").read_text()
    assert "gamma=0.0" in md and "gamma=1.0" in md
    assert json.load(open(save / "sweep.json")) == report["sweep"]
    infos = {g: json.load(open(save / f"gamma={g}" / "r3h_merge.json")) for g in ("0.0", "1.0")}
    assert infos["0.0"]["svd_cache"]["svds"] > 0 and infos["1.0"]["svd_cache"]["svds"] == 0
    ks = [infos[g]["tensors"]["model.layers.0.mlp.down_proj.weight"]["k_i"] for g in ("0.0", "1.0")]
    assert ks[0] != ks[1]  # γ does change the kept ranks
    table = pareto_table(evald / "3h_report.json")
    assert {r["name"] for r in table.rows} == {"gamma=0.0", "gamma=1.0"} and table.front
