"""The SVD-factor cache of TSVM / R-TSVM (`svd_cache`, r3h.core.svd_cache).

A warm run must give the cold run's model bit for bit whatever α, γ, ε, the outlier
options or rank selection, run no SVD, and record hits and misses per tensor; changed
checkpoints or environments must recompute (stale), unreadable files be rewritten
(corrupt), a larger q recompute (short) and a smaller one be served by slicing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r3h.core import svd_cache as cache_mod
from r3h.methods.tsvm import RTSVM, TSVM
from r3h.modelpool import AlignedCausalLMPool
from tests.conftest import read_folder, write_checkpoint

N_EXPERTS = 3


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=48, hidden_size=24, intermediate_size=40, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)


def base_state(seed=0):
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config())
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def expert_state(base, seed, scale=0.02, zero=()):
    """θ0 + τ with τ low-rank + noise and a few large entries (outliers for Eq. 6-7)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in base.items():
        if k in zero:
            sd[k] = v.clone()
            continue
        if v.dim() == 2:
            m, d = v.shape
            tau = scale * (torch.randn(m, 3, generator=g) @ torch.randn(3, d, generator=g) / 2
                           + torch.randn(m, d, generator=g))
            idx = torch.randperm(tau.numel(), generator=g)[: 3 + seed % 5]
            tau.view(-1)[idx] += 8 * scale
        else:
            tau = scale * torch.randn(v.shape, generator=g)
        sd[k] = v + tau
    return sd


def write_pool(root: Path, n=N_EXPERTS, zero=None, seed=0):
    """Checkpoint folders: base and experts e0..e{n-1}; returns {name: path}."""
    base = base_state(seed)
    cfg = llama_config().to_dict()
    paths = {"_pretrained_": write_checkpoint(root / "base", base, cfg)}
    for i in range(n):
        paths[f"e{i}"] = write_checkpoint(root / f"e{i}", expert_state(base, 10 * seed + i + 1,
                                                                      zero=(zero or {}).get(i, ())), cfg)
    return paths


def pool_of(paths, names=None):
    names = names or [k for k in paths if k != "_pretrained_"]
    return AlignedCausalLMPool(models={"_pretrained_": paths["_pretrained_"], **{n: paths[n] for n in names}},
                               tokenizer=None)


def run(cls, pool, **kw):
    m = cls(progress=False, device="cpu", **kw)
    return m.run(pool), m


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(a, b):
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"not bit-identical: {bad}"


def cache_reports(m):
    return {k: v["svd_cache"] for k, v in m.last_report["tensors"].items() if "svd_cache" in v}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_pool(tmp_path_factory.mktemp("pool"))


# ---------------------------------------------------------------------------------------
# warm == cold, no SVD
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tsvm_warm_equals_cold_for_several_alphas(paths, tmp_path):
    pool = pool_of(paths)
    folder = tmp_path / "cache"
    first = None
    for i, alpha in enumerate([1.0, 0.5, 1.3]):
        cold, _ = run(TSVM, pool, alpha=alpha)
        warm, m = run(TSVM, pool, alpha=alpha, svd_cache=str(folder))
        assert_identical(state(cold), state(warm))
        reports = cache_reports(m)
        assert len(reports) == 9  # every matrix of the Llama: 7 projections, embeddings, lm_head
        if i == 0:
            first = state(warm)
            assert all(r["factors"] == ["miss"] * N_EXPERTS and r["polar"] == "miss" for r in reports.values())
            assert m.last_report["svd_cache"]["svds"] == 9 * (N_EXPERTS + 2)
        else:
            assert all(r["factors"] == ["hit"] * N_EXPERTS and r["polar"] == "hit" and r["svds"] == 0
                       for r in reports.values())
            assert m.last_report["svd_cache"]["svds"] == 0
            assert m.last_report["svd_cache"]["factors"]["hit"] == 9 * N_EXPERTS
            assert any(not torch.equal(first[k], v) for k, v in state(warm).items())  # α does matter


R_TSVM_CONFIGS = [
    dict(gamma=0.5),
    dict(gamma=0.0),
    dict(gamma=0.3, epsilon_mode="relative", epsilon=0.6),
    dict(gamma=0.9, epsilon_mode="relative", epsilon=0.6, alpha=0.7),
    dict(gamma=1.0, epsilon_mode="relative", epsilon=1.0, outlier_norm="sum"),
    dict(outlier_weighting=False, gamma=0.8, epsilon_mode="relative", epsilon=0.6),
    dict(rank_selection=False, alpha=1.2),
    dict(outlier_weighting=False, rank_selection=False),
    dict(outlier_reading="inverse", outlier_min_share=0.0, gamma=0.4, epsilon_mode="relative", epsilon=0.6),
    dict(outlier_reading="share", outlier_min_share=0.0, rank_selection=False),
    dict(outlier_reading="inverse", outlier_min_share=0.9, outlier_norm="sum"),
]


@pytest.mark.slow
def test_r_tsvm_warm_equals_cold_across_gamma_epsilon_and_switches(paths, tmp_path):
    pool = pool_of(paths)
    folder = tmp_path / "cache"
    results, ranks = [], set()
    for i, opts in enumerate(R_TSVM_CONFIGS):
        cold, mc = run(RTSVM, pool, **opts)
        warm, m = run(RTSVM, pool, svd_cache=str(folder), **opts)
        assert_identical(state(cold), state(warm))
        # the reports agree too, apart from timing and the cache record
        strip = lambda t: {k: {f: v for f, v in r.items() if f not in ("seconds", "svd_cache", "routes")}  # noqa: E731
                           for k, r in t.items()}
        assert strip(mc.last_report["tensors"]) == strip(m.last_report["tensors"])
        svds = m.last_report["svd_cache"]["svds"]
        assert svds == (9 * (N_EXPERTS + 2) if i == 0 else 0), (opts, svds)
        results.append(state(warm))
        ranks.add(tuple(m.last_report["tensors"]["model.layers.0.mlp.up_proj.weight"]["k_i"]))
        if "outlier_reading" in opts:  # another reading or guard: other weights, still no SVD
            rules = {r["alpha_rule"] for r in m.last_report["tensors"].values() if r["rule"] == "svd"}
            assert rules == {"equal (guard)" if opts["outlier_min_share"] > 0.5 else opts["outlier_reading"]}
    assert len(ranks) > 2  # the configurations really keep different ranks
    assert len({tuple(float(r[k].sum()) for k in sorted(r)) for r in results}) == len(results)


@pytest.mark.slow
def test_warm_tsvm_reads_no_expert_matrix(paths, tmp_path, count_reads):
    pool = pool_of(paths)
    folder = tmp_path / "cache"
    run(TSVM, pool, svd_cache=str(folder))
    cold_reads = count_reads["n"]
    assert cold_reads == 12 * (1 + N_EXPERTS)  # 12 tensors: base + every expert
    count_reads["n"] = 0
    run(TSVM, pool, svd_cache=str(folder), alpha=0.8)
    assert count_reads["n"] == 12 + 3 * N_EXPERTS  # base tensors + the experts' three norms
    count_reads["n"] = 0
    run(RTSVM, pool, svd_cache=str(folder))  # R-TSVM needs τ for Ω and the outlier weights
    assert count_reads["n"] == 12 * (1 + N_EXPERTS)


@pytest.mark.slow
def test_zero_expert_is_cached_as_a_flag(tmp_path, count_reads):
    up = "model.layers.0.mlp.up_proj.weight"
    paths = write_pool(tmp_path / "pool", zero={1: (up,)})
    pool = pool_of(paths)
    cold, _ = run(TSVM, pool)
    folder = tmp_path / "cache"
    run(TSVM, pool, svd_cache=str(folder))
    count_reads["n"] = 0
    warm, m = run(TSVM, pool, svd_cache=str(folder))
    assert_identical(state(cold), state(warm))
    rep = m.last_report["tensors"][up]
    assert rep["zero_experts"] == [1] and rep["k_i"][1] == 0
    assert rep["svd_cache"] == {"factors": ["hit"] * 3, "polar": "hit", "svds": 0}
    assert count_reads["n"] == 12 + 3 * N_EXPERTS


# ---------------------------------------------------------------------------------------
# stale, corrupt, short
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_changed_checkpoint_is_stale_and_recomputed(tmp_path):
    paths = write_pool(tmp_path / "pool")
    pool = pool_of(paths)
    folder = tmp_path / "cache"
    run(RTSVM, pool, svd_cache=str(folder), gamma=0.4)
    # retrain expert e2 in place: same names and shapes, other values
    new = expert_state(base_state(0), seed=99)
    write_checkpoint(Path(paths["e2"]), new, llama_config().to_dict())
    f = os.path.join(paths["e2"], "model.safetensors")
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse file-system clocks
    cold, _ = run(RTSVM, pool, gamma=0.4)
    warm, m = run(RTSVM, pool, svd_cache=str(folder), gamma=0.4)
    assert_identical(state(cold), state(warm))
    for r in cache_reports(m).values():
        assert r["factors"] == ["hit", "hit", "stale"] and r["polar"] == "stale" and r["svds"] == 3
    again, m2 = run(RTSVM, pool, svd_cache=str(folder), gamma=0.4)
    assert_identical(state(cold), state(again))
    assert m2.last_report["svd_cache"]["svds"] == 0


@pytest.mark.slow
def test_other_thread_count_is_stale(paths, tmp_path):
    pool = pool_of(paths)
    folder = tmp_path / "cache"
    run(TSVM, pool, svd_cache=str(folder), cpu_threads=1)
    cold, _ = run(TSVM, pool, cpu_threads=2)
    warm, m = run(TSVM, pool, svd_cache=str(folder), cpu_threads=2)
    assert_identical(state(cold), state(warm))
    assert all(r["factors"] == ["stale"] * 3 and r["polar"] == "stale" for r in cache_reports(m).values())


def _entry_files(folder, tensor, kind):
    d = Path(folder) / cache_mod.tensor_folder(tensor)
    return sorted(d.glob(f"{kind}-*.safetensors"))


@pytest.mark.slow
def test_corrupt_entries_are_ignored_and_rewritten(paths, tmp_path):
    pool = pool_of(paths)
    folder = tmp_path / "cache"
    cold, _ = run(RTSVM, pool, gamma=0.6)
    run(RTSVM, pool, svd_cache=str(folder), gamma=0.6)
    q_proj, down = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"
    # a truncated factor file and a polar file of garbage
    f = _entry_files(folder, q_proj, "factors")[0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _entry_files(folder, q_proj, "polar")[0].write_bytes(b"not a safetensors file")
    # a well-formed file whose metadata is right but whose U holds a NaN (found when the
    # factors are loaded, i.e. when the polar entry is missing)
    g = _entry_files(folder, down, "factors")[1]
    _entry_files(folder, down, "polar")[0].unlink()
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(g), "pt") as h:
        meta, tensors = h.metadata(), {k: h.get_tensor(k) for k in h.keys()}
    tensors["U"][0, 0] = float("nan")
    save_file(tensors, str(g), metadata=meta)
    warm, m = run(RTSVM, pool, svd_cache=str(folder), gamma=0.6)
    assert_identical(state(cold), state(warm))
    reps = cache_reports(m)
    assert sorted(reps[q_proj]["factors"]) == ["corrupt", "hit", "hit"] and reps[q_proj]["polar"] == "corrupt"
    assert sorted(reps[down]["factors"]) == ["corrupt", "hit", "hit"] and reps[down]["polar"] == "miss"
    assert reps[down]["svds"] == reps[q_proj]["svds"] == 1 + 2
    assert all(r["svds"] == 0 for k, r in reps.items() if k not in (q_proj, down))
    again, m2 = run(RTSVM, pool, svd_cache=str(folder), gamma=0.6)
    assert_identical(state(cold), state(again))
    assert m2.last_report["svd_cache"]["svds"] == 0 and m2.last_report["svd_cache"]["factors"]["corrupt"] == 0


@pytest.mark.slow
def test_expert_subset_short_then_sliced(paths, tmp_path):
    """Two experts (q = ⌊r/2⌋) first: the three-expert run (q = ⌊r/3⌋) then takes every
    expert's factors from the cache by slicing and runs only the polar SVDs, bit for bit
    (the exact solver `full`: its first q columns do not depend on q)."""
    folder = tmp_path / "cache"
    three, two = pool_of(paths), pool_of(paths, ["e0", "e1"])
    run(TSVM, three, svd_cache=str(folder), svd_solver="full")  # q = r/3 stored
    cold2, _ = run(TSVM, two, svd_solver="full")
    warm2, m = run(TSVM, two, svd_cache=str(folder), svd_solver="full")
    assert_identical(state(cold2), state(warm2))
    assert all(r["factors"] == ["short", "short"] and r["polar"] == "miss" for r in cache_reports(m).values())
    # now e0 and e1 hold q = r/2 ≥ r/3; a fresh folder's worth of polar entries is needed for e0, e1, e2
    folder2 = tmp_path / "cache2"
    run(TSVM, two, svd_cache=str(folder2), svd_solver="full")
    cold3, _ = run(TSVM, three, svd_solver="full")
    warm3, m3 = run(TSVM, three, svd_cache=str(folder2), svd_solver="full")
    assert_identical(state(cold3), state(warm3))
    for r in cache_reports(m3).values():
        assert r["factors"] == ["hit", "hit", "miss"] and r["polar"] == "miss" and r["svds"] == 1 + 2


@pytest.mark.slow
def test_auto_solver_is_keyed_by_q_and_solver(paths, tmp_path):
    """The Gram route's factors depend on q (and its fallback on σ1/σq): another q misses
    instead of slicing; a `full` entry is never served to `auto` (the solver is in the key)."""
    folder = tmp_path / "cache"
    three, two = pool_of(paths), pool_of(paths, ["e0", "e1"])
    run(TSVM, three, svd_cache=str(folder))
    cold2, _ = run(TSVM, two)
    warm2, m = run(TSVM, two, svd_cache=str(folder))
    assert_identical(state(cold2), state(warm2))
    assert all(r["factors"] == ["miss", "miss"] for r in cache_reports(m).values())
    _, m2 = run(TSVM, three, svd_cache=str(folder), svd_solver="full")
    assert all(r["factors"] == ["miss"] * 3 for r in cache_reports(m2).values())
    _, m3 = run(TSVM, three, svd_cache=str(folder), alpha=0.5)
    assert m3.last_report["svd_cache"]["svds"] == 0
    routes = [r.get("routes") for r in m2.last_report["tensors"].values() if r.get("rule") == "svd"]
    assert routes and all(set(v.values()) == {"svd"} for v in routes)


@pytest.mark.slow
def test_randomized_solver_is_keyed_by_q_and_position(paths, tmp_path):
    folder = tmp_path / "cache"
    three, two = pool_of(paths), pool_of(paths, ["e0", "e2"])
    opts = dict(svd_solver="randomized", seed=5)
    run(TSVM, three, svd_cache=str(folder), **opts)
    cold, _ = run(TSVM, three, alpha=0.6, **opts)
    warm, m = run(TSVM, three, svd_cache=str(folder), alpha=0.6, **opts)
    assert_identical(state(cold), state(warm))
    assert m.last_report["svd_cache"]["svds"] == 0
    cold2, _ = run(TSVM, two, **opts)
    warm2, m2 = run(TSVM, two, svd_cache=str(folder), **opts)
    assert_identical(state(cold2), state(warm2))
    assert m2.last_report["svd_cache"]["factors"]["hit"] == 0  # other q, other position: other keys
    _, m3 = run(TSVM, three, svd_cache=str(folder), **{**opts, "seed": 6})
    assert m3.last_report["svd_cache"]["factors"]["hit"] == 0  # the seed is part of the key


# ---------------------------------------------------------------------------------------
# reports, options, failures
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_report_and_model_card(paths, tmp_path):
    pool = pool_of(paths)
    folder, out = tmp_path / "cache", tmp_path / "merged"
    m = RTSVM(progress=False, device="cpu", svd_cache=str(folder), out_dir=str(out))
    assert m.run(pool) is None
    info = json.load(open(out / "r3h_merge.json"))
    assert "svd_cache" not in info["hyperparameters"]  # where the factors live does not change the model
    assert info["svd_cache"]["folder"] == str(folder) and info["svd_cache"]["tensors"] == 9
    assert info["svd_cache"]["factors"]["miss"] == 27 and info["svd_cache"]["polar"]["miss"] == 9
    assert info["tensors"]["model.norm.weight"].get("svd_cache") is None  # the mean rule uses no SVD
    assert info["tensors"]["lm_head.weight"]["svd_cache"] == {"factors": ["miss"] * 3, "polar": "miss", "svds": 5}
    files = list(folder.rglob("*.safetensors"))
    assert len(files) == 9 * 4 and not list(folder.rglob(".tmp-*"))


@pytest.mark.parametrize("value,word", [(5, "svd_cache must be a folder"), ("FILE", "is a file")])
def test_bad_svd_cache_fails_before_reading(paths, tmp_path, count_reads, value, word):
    if value == "FILE":
        value = str(tmp_path / "afile")
        Path(value).write_text("x")
    with pytest.raises(ValueError, match=word):
        RTSVM(progress=False, device="cpu", svd_cache=value).run(pool_of(paths))
    assert count_reads["n"] == 0


def test_failed_cache_write_does_not_stop_the_merge(paths, tmp_path, monkeypatch):
    pool = pool_of(paths)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod, "save_file", full_disk)
    cold, _ = run(RTSVM, pool)
    warm, m = run(RTSVM, pool, svd_cache=str(tmp_path / "cache"))
    assert_identical(state(cold), state(warm))
    assert m.last_report["svd_cache"]["unwritten"] == 9 * 4
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_entries_under_the_old_folder_name_are_still_read(tmp_path):
    """Entries an earlier r3h wrote under its own slug of the tensor name (which differs from
    `r3h.core.paths.slug` for a name with '=') are still hits; rewrites go to the new folder."""
    name = "block=0.weight"
    assert cache_mod.tensor_folder(name) != cache_mod.legacy_tensor_folder(name)
    assert cache_mod.tensor_folder("model.layers.0.mlp.down_proj.weight") == \
        cache_mod.legacy_tensor_folder("model.layers.0.mlp.down_proj.weight")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 6, generator=g)
    thetas = {"base": base, **{f"e{i}": base + 0.1 * torch.randn(8, 6, generator=g) for i in range(3)}}
    paths = {"_pretrained_" if k == "base" else k: write_checkpoint(tmp_path / k, {name: t}) for k, t in thetas.items()}
    folder = tmp_path / "cache"

    def merge():
        m = TSVM(progress=False, device="cpu", svd_cache=str(folder), alpha=1.0)
        m.prepare(pool_of(paths))
        out = m.merge_tensor(name, base.clone(), [thetas[f"e{i}"].clone() for i in range(3)])
        return out, m.tensor_reports[name]["svd_cache"]

    cold, rec = merge()
    assert rec == {"factors": ["miss"] * 3, "polar": "miss", "svds": 5}
    (folder / cache_mod.tensor_folder(name)).rename(folder / cache_mod.legacy_tensor_folder(name))
    warm, rec = merge()
    assert rec == {"factors": ["hit"] * 3, "polar": "hit", "svds": 0}
    assert torch.equal(cold, warm)
    for f in (folder / cache_mod.legacy_tensor_folder(name)).glob("polar-*.safetensors"):
        f.unlink()  # the factors alone, from the old folder; the polar entry is rewritten in the new one
    again, rec = merge()
    assert rec == {"factors": ["hit"] * 3, "polar": "miss", "svds": 2}
    assert torch.equal(cold, again)
    assert len(_entry_files(folder, name, "polar")) == 1 and not _entry_files(folder, name, "factors")


# ---------------------------------------------------------------------------------------
# several ranks
# ---------------------------------------------------------------------------------------

FUSION_BENCH = str(Path(sys.executable).with_name("fusion_bench"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_ranks_write_their_own_factors(tmp_path):
    """2 CPU ranks fill the cache (each its own tensors); a one-process run with another γ
    then finds every entry and gives the cold model bit for bit."""
    from r3h.core.distributed import assign_tensors
    from r3h.core.engine import plan_merge
    from r3h.modelpool.sources import pool_checkpoints

    paths = write_pool(tmp_path / "pool")
    (tmp_path / "config" / "modelpool").mkdir(parents=True)
    (tmp_path / "config" / "modelpool" / "cache_pool.yaml").write_text(
        "_target_: r3h.modelpool.AlignedCausalLMPool\nmodels:\n" + "".join(f"  {k}: {v}\n" for k, v in paths.items()))
    folder, out = tmp_path / "cache", tmp_path / "two"
    env = dict(os.environ, FUSION_BENCH_PROJECT_ROOT=str(tmp_path), HYDRA_FULL_ERROR="1")
    r = subprocess.run([FUSION_BENCH, "method=r_tsvm", "modelpool=cache_pool", f"method.svd_cache={folder}",
                        "method.gamma=0.3", "method.cpu_threads=1", f"method.out_dir={out}",
                        "fabric.accelerator=cpu", "fabric.devices=2",
                        "fabric.strategy=ddp", "print_config=false"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = json.load(open(out / "r3h_merge.json"))
    assert info["stats"]["world_size"] == 2
    assert info["svd_cache"]["factors"]["miss"] == 27 and info["svd_cache"]["svds"] == 45
    pool = pool_of(paths)
    shares = assign_tensors(plan_merge(*pool_checkpoints(pool, True)), 2)
    for share in shares:  # both ranks had matrices, and every matrix has its entries
        mats = [n for n in share if n in info["tensors"] and "svd_cache" in info["tensors"][n]]
        assert mats
        for n in mats:
            assert len(_entry_files(folder, n, "factors")) == 3 and len(_entry_files(folder, n, "polar")) == 1
    cold_two = read_folder(out)
    cold_one, _ = run(RTSVM, pool, gamma=0.3, cpu_threads=1)
    assert_identical(state(cold_one), cold_two)
    cold, _ = run(RTSVM, pool, gamma=0.8, cpu_threads=1)
    warm, m = run(RTSVM, pool, gamma=0.8, svd_cache=str(folder), cpu_threads=1)
    assert_identical(state(cold), state(warm))
    assert m.last_report["svd_cache"]["svds"] == 0 and m.last_report["svd_cache"]["factors"]["hit"] == 27
