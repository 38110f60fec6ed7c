"""`method=analysis/alignment_vectors` against float64 references written from the
definitions (r3h/analysis/alignment_vectors.py, docs/analysis.md), agreement with the
`tsvm` / `r_tsvm` reports, preflight errors, exclude_keys, the outputs and the CLI.

The pool's values lie on a dyadic grid (θ0 on multiples of 2⁻¹⁰, τ on multiples of 2⁻¹⁴,
|θ| < 8), so θi = θ0 + τi is exact in float32 and so is r3h's float32 τ = θi − θ0: the
references (tests/reference/analysis.py, tsvm.py) recompute every statistic in float64 from θ
read back, with no r3h code, and only the reductions (and the SVDs) differ in precision.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from r3h.analysis import AlignmentVectorAnalysis, excess_kurtosis, layer_index, module_name, pair_stats
from r3h.analysis.alignment_vectors import tsvm_interference
from r3h.io import Checkpoint
from r3h.methods.tsvm import RTSVM, TSVM
from tests.conftest import make_pool, write_checkpoint
from tests.reference.analysis import ref_kurtosis, ref_omega, ref_outlier_mass, ref_pair, ref_summary
from tests.reference.tsvm import add_spikes, gen, lowrank_tau, ref_factors, ref_sti
from tests.test_cli import cli

F64 = torch.float64
EXPERTS = ["helpful", "honest", "harmless"]
SHAPES = {
    "model.embed_tokens.weight": (40, 12),
    "model.layers.0.self_attn.q_proj.weight": (12, 12),
    "model.layers.0.mlp.down_proj.weight": (12, 30),
    "model.layers.0.input_layernorm.weight": (12,),
    "model.layers.1.self_attn.q_proj.weight": (12, 12),
    "model.layers.1.mlp.down_proj.weight": (12, 30),
    "model.layers.1.input_layernorm.weight": (12,),
    "model.norm.weight": (12,),
    "lm_head.weight": (40, 12),
}
ZERO_TAU = ("honest", "model.layers.1.self_attn.q_proj.weight")  # a τ that is exactly 0
EPS, EPS_REL = 0.1, 0.5


def grid(t: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.round(t * 2**bits) / 2**bits


def make_tau(shape, g, i) -> torch.Tensor:
    """Low-rank + spikes (matrices) or cubed Gaussians (vectors), RMS ≈ 0.1, 10 % exact zeros."""
    if len(shape) == 2:
        t = lowrank_tau(shape, g, scale=1.0 + 0.3 * i)
        t = t / t.pow(2).mean().sqrt() * 0.1
        t = add_spikes(t, 2 + 2 * i, g, size=0.5)
    else:
        t = 0.05 * torch.randn(shape, generator=g, dtype=F64) ** 3
    t[torch.rand(shape, generator=g) < 0.1] = 0
    return grid(t, 14)


def make_state(seed=0):
    g = gen(seed)
    base = {k: grid(torch.randn(s, generator=g, dtype=F64).clamp(-4, 4), 10) for k, s in SHAPES.items()}
    experts = {}
    for i, e in enumerate(EXPERTS):
        taus = {k: make_tau(s, g, i) for k, s in SHAPES.items()}
        if e == ZERO_TAU[0]:
            taus[ZERO_TAU[1]].zero_()
        experts[e] = {k: base[k] + taus[k] for k in SHAPES}
    return base, experts


def as_f32(sd):
    out = {k: v.float() for k, v in sd.items()}
    assert all(torch.equal(out[k].double(), sd[k]) for k in sd)  # the grid is exact in float32
    return out


@pytest.fixture(scope="module")
def pool_data(tmp_path_factory):
    base, experts = make_state()
    root = tmp_path_factory.mktemp("pool")
    pool = make_pool(root, as_f32(base), {e: as_f32(sd) for e, sd in experts.items()})
    return pool, base, experts, root


@pytest.fixture(scope="module")
def report(pool_data, tmp_path_factory):
    pool = pool_data[0]
    out = tmp_path_factory.mktemp("analysis") / "av"
    m = AlignmentVectorAnalysis(epsilon=EPS, epsilon_relative=EPS_REL, out_dir=str(out), progress=False,
                                max_svd_dim=30)
    summary = m.run(pool)
    return m, summary, out


# ---------------------------------------------------------------------------------------
# helpers (the float64 references are in tests/reference/analysis.py and tsvm.py)
# ---------------------------------------------------------------------------------------

def taus_of(base, experts, name) -> List[torch.Tensor]:
    return [experts[e][name] - base[name] for e in EXPERTS]


def approx(x, rel=1e-5, abs=1e-9):
    return pytest.approx(x, rel=rel, abs=abs)


# ---------------------------------------------------------------------------------------
# per tensor
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_per_tensor_statistics_match_float64(pool_data, report):
    _, base, experts, _ = pool_data
    m = report[0]
    recs = {r["name"]: r for r in m.last_report["tensors"]}
    assert sorted(recs) == sorted(SHAPES)
    for name, r in recs.items():
        taus = taus_of(base, experts, name)
        assert r["numel"] == taus[0].numel() and r["shape"] == list(SHAPES[name])
        assert r["base_norm"] == approx(float(base[name].norm()))
        assert r["omega_abs"] == approx(ref_omega(taus, EPS, False), rel=0, abs=1e-12)
        assert r["omega_rel"] == approx(ref_omega(taus, EPS_REL, True), rel=0, abs=1e-12)
        T = [ref_outlier_mass(t) for t in taus]
        assert r["outlier_alpha"] == approx([t / sum(T) for t in T])
        for e, t in zip(EXPERTS, taus):
            s = r["experts"][e]
            assert s["norm"] == approx(float(t.norm()))
            assert s["rel_norm"] == approx(float(t.norm() / base[name].norm()))
            assert s["l1"] == approx(float(t.abs().sum()))
            assert s["omega_abs"] == approx(ref_omega([t], EPS, False), rel=0, abs=1e-12)
            assert s["omega_rel"] == approx(ref_omega([t], EPS_REL, True), rel=0, abs=1e-12)
            if (e, name) == ZERO_TAU:
                assert s["kurtosis"] is None and s["outlier_share"] is None and s["norm"] == 0
                continue
            assert s["kurtosis"] == approx(ref_kurtosis(t), rel=1e-4, abs=1e-5)
            assert s["outlier_mass"] == approx(ref_outlier_mass(t))
            assert s["outlier_share"] == approx(ref_outlier_mass(t) / float(t.abs().sum()))
    # the data do exercise the definitions: heavy tails, outliers, zeros, Ω strictly inside (0, 1)
    down = recs["model.layers.0.mlp.down_proj.weight"]["experts"]["harmless"]
    assert down["kurtosis"] > 3 and 0 < down["outlier_share"] < 1 and 0 < down["omega_abs"] < 1


def test_pairwise_cosine_and_sign_conflicts(pool_data, report):
    _, base, experts, _ = pool_data
    pairs = report[0].last_report["pairs"]
    assert len(pairs) == len(SHAPES) * 3
    for p in pairs:
        ta, tb = (experts[p[k]][p["tensor"]] - base[p["tensor"]] for k in ("a", "b"))
        cos, conflicts, both = ref_pair(ta, tb)
        assert (p["conflicts"], p["both_nonzero"]) == (conflicts, both)
        assert both < ta.numel() or both == 0  # the 10 % exact zeros leave the denominator
        if cos is None:
            assert p["cosine"] is None and ZERO_TAU in {(p["a"], p["tensor"]), (p["b"], p["tensor"])}
            assert p["sign_conflict"] is None
        else:
            assert p["cosine"] == approx(cos) and p["sign_conflict"] == approx(conflicts / both)
            assert p["dot"] == approx(float(ta.flatten() @ tb.flatten()))


def test_sti_matches_float64_and_the_tsvm_report(pool_data, report):
    """STI as a float64 SVD reference computes it, and bit for bit as `tsvm` with `svd_solver: full` reports it
    (the analysis runs tsvm's own `FactorSource`: one computation, so `==` holds on any CPU);
    pooled Ω and αi as `r_tsvm` reports them (absolute and relative ε, outlier_norm: sum)."""
    pool, base, experts, root = pool_data
    recs = {r["name"]: r for r in report[0].last_report["tensors"]}
    ck = [Checkpoint(str(root / "base"))] + [Checkpoint(str(root / e)) for e in EXPERTS]

    def tsvm_report(m, name):
        m.setup(EXPERTS)
        m.merge_tensor(name, ck[0].get(name).float(), [c.get(name).float() for c in ck[1:]])
        return m.tensor_reports[name]

    for name, r in recs.items():
        if len(SHAPES[name]) == 1:
            assert r["sti_rule"] == "not_matrix" and "sti" not in r
            continue
        if max(SHAPES[name]) > 30:
            assert r["sti_rule"] == "max_svd_dim" and "sti" not in r  # embed_tokens, lm_head
            continue
        taus = taus_of(base, experts, name)
        active = [t for t in taus if bool(t.any())]
        q = min(SHAPES[name]) // len(taus)
        assert r["sti_rule"] == "svd" and r["q"] == q
        assert r["sti"] == approx(ref_sti(ref_factors(active, q)), rel=1e-4)
        rep = tsvm_report(TSVM(progress=False, device="cpu", svd_solver="full"), name)
        assert r["sti"] == rep["sti"] and r["q"] == rep["q"]
        assert r.get("zero_experts") == rep.get("zero_experts")
        for mode, eps, key in (("absolute", EPS, "omega_abs"), ("relative", EPS_REL, "omega_rel")):
            rrep = tsvm_report(RTSVM(progress=False, device="cpu", epsilon=eps, epsilon_mode=mode,
                                     outlier_norm="sum"), name)
            assert r[key] == rrep["omega"]
            assert r["outlier_alpha"] == approx(rrep["alpha"], rel=1e-12)
    assert recs[ZERO_TAU[1]]["zero_experts"] == [EXPERTS.index(ZERO_TAU[0])]


# ---------------------------------------------------------------------------------------
# whole model and layers
# ---------------------------------------------------------------------------------------

def check_summary(got, want):
    for e in EXPERTS:
        for k, v in want["experts"][e].items():
            assert got["experts"][e][k] == approx(v, rel=1e-4 if k == "kurtosis" else 1e-5), (e, k)
    assert len(got["pairs"]) == 3
    for p in got["pairs"]:
        w = want["pairs"][p["a"], p["b"]]
        assert p["cosine"] == approx(w["cosine"]) and p["sign_conflict"] == approx(w["sign_conflict"])
        assert p["conflicts"] == w["conflicts"]


def test_whole_model_summary(pool_data, report):
    _, base, experts, _ = pool_data
    m, summary, out = report
    check_summary(summary, ref_summary(base, experts, list(SHAPES), EXPERTS, EPS, EPS_REL))
    assert summary["tensors"] == len(SHAPES) and summary["numel"] == sum(v.numel() for v in base.values())
    stis = [r["sti"] for r in m.last_report["tensors"] if "sti" in r]
    assert summary["sti"] == {"matrices": 4, "mean": approx(sum(stis) / 4, rel=1e-12), "max": max(stis)}
    assert summary["out_dir"] == str(out) and summary["kind"] == "alignment_vectors"
    json.dumps(summary, allow_nan=False)  # what fusion_bench writes into program_report.json


def test_per_layer_summary(pool_data, report):
    _, base, experts, _ = pool_data
    layers = report[0].last_report["layers"]
    assert [lay["layer"] for lay in layers] == [0, 1]
    for lay in layers:
        names = [n for n in SHAPES if f"layers.{lay['layer']}." in n]
        assert lay["tensors"] == 3
        check_summary(lay, ref_summary(base, experts, names, EXPERTS, EPS, EPS_REL))


def test_layer_and_module_names():
    assert layer_index("model.layers.17.mlp.up_proj.weight") == 17
    assert layer_index("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_index("model.embed_tokens.weight") is None and layer_index("model.layers_norm.weight") is None
    assert module_name("model.layers.2.self_attn.q_proj.weight") == "self_attn.q_proj"
    assert module_name("model.layers.2.self_attn.q_proj.bias") == "self_attn.q_proj.bias"
    assert module_name("lm_head.weight") == "lm_head"


def test_degenerate_tensors():
    assert excess_kurtosis(torch.full((5, 4), 0.3)) is None
    g = gen(1)
    x = torch.randn(20000, generator=g).pow(3)  # kurtosis ≈ 30; a Gaussian's ≈ 0 would test only abs error
    assert excess_kurtosis(x) == approx(ref_kurtosis(x.double()), rel=1e-5)
    z = torch.zeros(3, 4)
    p = pair_stats(z, torch.ones(3, 4), 0.0, 12.0)
    assert p["cosine"] is None and p["sign_conflict"] is None and p["both_nonzero"] == 0
    assert tsvm_interference([torch.ones(2, 5)] * 3) == {"sti_rule": "too_small", "q": 0}
    assert tsvm_interference([torch.zeros(6, 5)] * 2) == {"sti_rule": "zero", "q": 2}


# ---------------------------------------------------------------------------------------
# checks before any read, options, outputs
# ---------------------------------------------------------------------------------------

def small_state(seed=3):
    g = gen(seed)
    base = {"model.layers.0.w.weight": torch.randn(6, 4, generator=g), "model.layers.0.b.bias": torch.randn(6, generator=g)}
    experts = {e: {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for e in ("a", "b")}
    return base, experts


@pytest.mark.parametrize("case", ["shape", "missing_base", "missing_tensor", "architecture", "epsilon", "regex"])
def test_errors_before_any_tensor_read(tmp_path, count_reads, case):
    base, experts = small_state()
    kw, cfg = {}, None
    if case == "shape":
        experts["b"]["model.layers.0.w.weight"] = torch.randn(6, 5)
        msg = "tensor 'model.layers.0.w.weight': model 'b' has shape (6, 5) but '_pretrained_' has (6, 4)"
    elif case == "missing_base":
        base = None
        msg = "needs a base model: the model pool has no '_pretrained_' entry"
    elif case == "missing_tensor":
        del experts["a"]["model.layers.0.b.bias"]
        msg = "model 'a' is missing tensor 'model.layers.0.b.bias'"
    elif case == "architecture":
        msg = "model 'a' has a different architecture from '_pretrained_': config 'hidden_size' is 8"
    elif case == "epsilon":
        kw, msg = {"epsilon_relative": 0.0}, "epsilon_relative=0.0 must be a number > 0"
    else:
        kw, msg = {"exclude_keys": ["model.(layers"]}, "exclude_keys: 'model.(layers' is not a regular expression"
    pool = make_pool(tmp_path, base, experts)
    if case == "architecture":
        for name, hidden in (("base", 4), ("a", 8)):
            write_checkpoint(tmp_path / name, base if name == "base" else experts[name],
                             {"model_type": "llama", "hidden_size": hidden})
    out = tmp_path / "never"
    with pytest.raises(ValueError) as err:
        AlignmentVectorAnalysis(out_dir=str(out), progress=False, **kw).run(pool)
    assert msg in str(err.value)
    assert count_reads["n"] == 0 and not out.exists()


def test_exclude_keys_svd_switches_and_reads(tmp_path, count_reads):
    base, experts = small_state()
    base["model.embed.weight"] = torch.randn(50, 4)
    base["model.layers.0.idx"] = torch.arange(6)  # not floating: skipped, never read
    for e in experts.values():
        e["model.embed.weight"] = base["model.embed.weight"] + 0.01
        e["model.layers.0.idx"] = torch.arange(6)
    pool = make_pool(tmp_path, base, experts)
    m = AlignmentVectorAnalysis(exclude_keys=[r"model\.layers\.\d+\.b\..*"], max_svd_dim=20,
                                out_dir=str(tmp_path / "o"), plots=False, progress=False)
    m.run(pool)
    names = [r["name"] for r in m.last_report["tensors"]]
    assert sorted(names) == ["model.embed.weight", "model.layers.0.w.weight"]
    assert m.last_report["skipped"] == {"excluded": ["model.layers.0.b.bias"], "non_float": ["model.layers.0.idx"],
                                        "empty": []}
    assert count_reads["n"] == 3 * len(names)  # θ0 and two experts, once each, per analysed tensor
    rules = {r["name"]: r["sti_rule"] for r in m.last_report["tensors"]}
    assert rules == {"model.layers.0.w.weight": "svd", "model.embed.weight": "max_svd_dim"}
    m = AlignmentVectorAnalysis(svd=False, max_svd_dim=None, out_dir=str(tmp_path / "o"), plots=False, progress=False)
    m.run(pool)
    assert {r["sti_rule"] for r in m.last_report["tensors"] if len(r["shape"]) == 2} == {"off"}
    assert m.last_report["summary"]["sti"] == {"matrices": 0, "mean": None, "max": None}


def test_added_vocabulary_rows_are_left_out(tmp_path):
    """An expert with extra embedding rows (added tokens): only the rows the base has are measured."""
    g = gen(5)
    cfg = {"model_type": "llama", "vocab_size": 10}
    base = {"model.embed_tokens.weight": torch.randn(10, 4, generator=g)}
    a = {"model.embed_tokens.weight": torch.cat([base["model.embed_tokens.weight"] + 0.5, torch.randn(2, 4)])}
    b = {"model.embed_tokens.weight": base["model.embed_tokens.weight"] - 0.25}
    m = AlignmentVectorAnalysis(out_dir=str(tmp_path / "o"), plots=False, progress=False)
    m.run(make_pool(tmp_path, base, {"a": a, "b": b}, cfg))
    rec = m.last_report["tensors"][0]
    assert rec["shape"] == [10, 4] and rec["numel"] == 40
    assert rec["experts"]["a"]["norm"] == approx(0.5 * math.sqrt(40))
    assert m.last_report["pairs"][0]["cosine"] == approx(-1.0)


def read_csv(path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_outputs_complete(pool_data, report):
    m, summary, out = report
    files = set(os.listdir(out))
    assert {"alignment_vectors.json", "alignment_vectors.csv", "alignment_pairs.csv"} <= files
    for fig in ("omega_abs", "omega_rel", "kurtosis", "outlier_share", "rel_norm", "cosine", "sign_conflict"):
        png, pdf = out / f"alignment_{fig}.png", out / f"alignment_{fig}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    text = (out / "alignment_vectors.json").read_text()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert saved == json.loads(json.dumps(m.last_report))
    assert set(saved) >= {"options", "tensors", "pairs", "layers", "summary", "experts", "stats", "skipped"}
    assert saved["options"]["epsilon_relative"] == EPS_REL and saved["options"]["max_svd_dim"] == 30
    rows = read_csv(out / "alignment_vectors.csv")
    assert len(rows) == len(SHAPES) * len(EXPERTS)
    recs = {r["name"]: r for r in saved["tensors"]}
    for row in rows:
        s = recs[row["tensor"]]["experts"][row["expert"]]
        for k in ("norm", "omega_abs", "outlier_share", "kurtosis"):
            assert row[k] == ("" if s[k] is None else repr(s[k]))
    pairs = read_csv(out / "alignment_pairs.csv")
    assert len(pairs) == len(saved["pairs"]) == len(SHAPES) * 3
    assert [(p["tensor"], p["a"], p["b"], p["conflicts"]) for p in pairs] == [
        (p["tensor"], p["a"], p["b"], str(p["conflicts"])) for p in saved["pairs"]]


def test_output_is_atomic(tmp_path, monkeypatch):
    """An error while reading (a NaN, named) or while writing (in the plots, after the JSON and
    CSVs): the previous output stays as it was and no temporary folder is left."""
    import r3h.analysis.heatmaps

    base, experts = small_state()
    experts["b"]["model.layers.0.w.weight"][2, 1] = float("nan")
    out = tmp_path / "av"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    with pytest.raises(ValueError, match="model 'b': tensor 'model.layers.0.w.weight' has 1 NaN/Inf entries"):
        AlignmentVectorAnalysis(out_dir=str(out), progress=False).run(make_pool(tmp_path / "p1", base, experts))
    assert os.listdir(out) == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["av", "p1"]

    def broken(report, folder):
        assert "alignment_vectors.json" in os.listdir(folder)  # the report was written, in the temporary
        raise RuntimeError("disk full")

    monkeypatch.setattr(r3h.analysis.heatmaps, "analysis_heatmaps", broken)
    pool = make_pool(tmp_path / "p2", *small_state())
    with pytest.raises(RuntimeError, match="disk full"):
        AlignmentVectorAnalysis(out_dir=str(out), progress=False).run(pool)
    assert os.listdir(out) == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["av", "p1", "p2"]
    AlignmentVectorAnalysis(out_dir=str(out), plots=False, progress=False).run(pool)
    assert sorted(os.listdir(out)) == ["alignment_pairs.csv", "alignment_vectors.csv", "alignment_vectors.json"]


def assert_same_tree(got, want, path="summary"):
    """Equal structure and values; floats to 1e-9 relative (reductions may run on other threads)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for k in want:
            assert_same_tree(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_tree(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), path
    else:
        assert got == want, path


@pytest.mark.slow
def test_cli(pool_data, report, tmp_path):
    """`fusion_bench method=analysis/alignment_vectors modelpool=<pool>`: the report lands in the
    run's log folder and the summary in program_report.json, equal to the in-process run."""
    pool, root = pool_data[0], pool_data[3]
    (tmp_path / "config" / "modelpool").mkdir(parents=True)
    models = {"_pretrained_": root / "base", **{e: root / e for e in EXPERTS}}
    (tmp_path / "config" / "modelpool" / "av_pool.yaml").write_text(
        "_target_: r3h.modelpool.AlignedCausalLMPool\nmodels:\n" + "".join(f"  {k}: {v}\n" for k, v in models.items()))
    r = cli(["method=analysis/alignment_vectors", "modelpool=av_pool", f"method.epsilon={EPS}",
             f"method.epsilon_relative={EPS_REL}", "method.max_svd_dim=30", "method.plots=false"], tmp_path, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    found = list(Path(tmp_path).rglob("alignment_vectors/alignment_vectors.json"))
    assert len(found) == 1
    program = json.loads((found[0].parent.parent / "program_report.json").read_text())
    want = json.loads(json.dumps(dict(report[1], out_dir=str(found[0].parent))))
    assert_same_tree(program, want)
    saved = json.loads(found[0].read_text())
    assert_same_tree(saved["tensors"], json.loads(json.dumps(report[0].last_report["tensors"])), "tensors")
    assert saved["options"]["plots"] is False
