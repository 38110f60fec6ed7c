"""The 2025–26 merges (Iso-C, Iso-CTS, WUDI, RAM, RAM+) and SVC calibration against float64
references written from their definitions (tests/reference/recent_methods.py), plus their
options, reports, exclusions and end-to-end runs. The references never call `r3h.ops`: Iso-C's polar factor comes from an
eigendecomposition, Iso-CTS is written with NumPy's SVD, WUDI differentiates its loss with
autograd as the paper writes it, RAM counts entry by entry, SVC loops over the subspaces.
Parity with the released peers is in tests/methods/test_peer_parity.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import pytest
import torch

from r3h.methods import IsoC, IsoCTS, RAM, RAMPlus, TiesMerging, WUDI
from r3h.methods.wudi import VOCAB_KEYS
from tests.conftest import make_pool, read_folder
from tests.reference.recent_methods import ref_iso_c, ref_iso_cts, ref_ram, ref_svc, ref_wudi


class Fresh(Sequence):
    """The experts as the engine hands them: a fresh copy on every access."""

    def __init__(self, tensors):
        self.tensors = list(tensors)

    def __len__(self):
        return len(self.tensors)

    def __getitem__(self, i):
        return self.tensors[i].clone()


def case(shape, n, seed, sparsity=0.0, scale=0.1, dtype=torch.float64):
    """(θ0, [θi]) with random τ; `sparsity` zeroes that share of each τ's entries."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=dtype)
    experts = []
    for _ in range(n):
        tau = scale * torch.randn(shape, generator=g, dtype=dtype)
        if sparsity:
            tau = tau * (torch.rand(shape, generator=g) >= sparsity)
        experts.append(base + tau)
    return base, experts


def run_tensor(method, name, base, experts):
    method.setup([f"e{i}" for i in range(len(experts))])
    return method.merge_tensor(name, base, Fresh(experts))


SHAPES = [(20, 12), (12, 20), (16, 16)]


# --------------------------------------------------------------------------- definitions

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 3, 5])
def test_iso_c_matches_definition(shape, n):
    base, experts = case(shape, n, seed=n)
    taus = [e - base for e in experts]
    got = run_tensor(IsoC(scaling_factor=0.7, progress=False), "w", base, experts)
    torch.testing.assert_close(got, base + 0.7 * ref_iso_c(taus), rtol=1e-9, atol=1e-10)
    # the merged task matrix is isotropic: all its singular values equal
    s = torch.linalg.svdvals((got - base) / 0.7)
    assert float(s.max() - s.min()) < 1e-9 * float(s.max())


@pytest.mark.parametrize("method", [IsoC, IsoCTS])
def test_isotropic_methods_take_the_scaled_mean_off_matrices(method):
    base, experts = case((7,), 3, seed=2)
    got = run_tensor(method(scaling_factor=1.3, progress=False), "b", base, experts)
    torch.testing.assert_close(got, base + 1.3 * sum(e - base for e in experts) / 3)


@pytest.mark.parametrize("shape", SHAPES + [(30, 8)])
@pytest.mark.parametrize("n, fraction", [(2, 0.8), (3, 0.5), (5, 0.8), (4, 0.0), (3, 1.0)])
def test_iso_cts_matches_definition(shape, n, fraction):
    base, experts = case(shape, n, seed=10 + n)
    taus = [e - base for e in experts]
    m = IsoCTS(scaling_factor=0.9, common_space_fraction=fraction, progress=False)
    got = run_tensor(m, "w", base, experts)
    torch.testing.assert_close(got, base + 0.9 * ref_iso_cts(taus, fraction), rtol=1e-8, atol=1e-9)
    rep = m.tensor_reports["w"]
    assert rep["rule"] == "iso_cts" and rep["common"] + n * rep["per_task"] == min(shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", ["squared", "plain"])
def test_wudi_matches_definition(shape, norm):
    base, experts = case(shape, 3, seed=20)
    taus = [e - base for e in experts]
    m = WUDI(iterations=40, learning_rate=1e-3, norm=norm, scaling_factor=1.0, device="cpu", progress=False)
    got = run_tensor(m, "w", base, experts)
    expected = base + ref_wudi(taus, 40, 1e-3, norm)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    assert float((got - base - sum(taus)).abs().max()) > 1e-3  # Adam really moved τm
    rep = m.tensor_reports["w"]
    assert rep["rule"] == "wudi" and rep["iterations"] == 40 and rep["loss_end"] < rep["loss_start"]


def test_wudi_scaling_and_non_matrices():
    base, experts = case((9, 6), 2, seed=21)
    taus = [e - base for e in experts]
    got = run_tensor(WUDI(iterations=5, learning_rate=1e-3, scaling_factor=0.5, device="cpu"), "w", base, experts)
    torch.testing.assert_close(got, base + 0.5 * ref_wudi(taus, 5, 1e-3), rtol=1e-9, atol=1e-10)
    b, ex = case((9,), 2, seed=22)
    got = run_tensor(WUDI(scaling_factor=0.5, device="cpu"), "bias", b, ex)
    torch.testing.assert_close(got, b + sum(e - b for e in ex) / 2)  # the mean, not scaled


def test_wudi_zero_task_vector_is_left_out():
    """A zero τi has the term 0/0 in the loss: r3h leaves it out (fusion_bench's loss is NaN)."""
    base, experts = case((8, 5), 2, seed=23)
    taus = [e - base for e in experts]
    got = run_tensor(WUDI(iterations=10, learning_rate=1e-3, scaling_factor=1.0, device="cpu"), "w", base,
                     experts + [base.clone()])
    torch.testing.assert_close(got, base + ref_wudi(taus, 10, 1e-3), rtol=1e-9, atol=1e-10)
    all_zero = run_tensor(WUDI(iterations=10, device="cpu"), "w", base, [base.clone(), base.clone()])
    torch.testing.assert_close(all_zero, base)


@pytest.mark.parametrize("shape", [(64,), (12, 10), (3, 4, 5)])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_ram_and_ram_plus_match_definition(shape, n):
    base, experts = case(shape, n, seed=30 + n, sparsity=0.6)
    experts[0] = experts[0] + 5e-6 * (torch.arange(math.prod(shape)).reshape(shape) % 2)  # below ε
    taus = [e - base for e in experts]
    got = run_tensor(RAM(progress=False), "t", base, experts)
    torch.testing.assert_close(got, base + ref_ram(taus, 1e-5), rtol=1e-12, atol=1e-12)
    m = RAMPlus(r=0.3, alpha=0.5, progress=False)
    got = run_tensor(m, "t", base, experts)
    torch.testing.assert_close(got, base + ref_ram(taus, 1e-5, r=0.3, alpha=0.5), rtol=1e-12, atol=1e-12)
    rep = m.tensor_reports["t"]
    assert rep["rule"] == "ram" and len(rep["lambda"]) == n and sum(rep["unique"]) > 0 and sum(rep["shared"]) > 0


def test_ram_keeps_unique_updates_whole_and_averages_shared_ones():
    base = torch.zeros(4, dtype=torch.float64)
    t1 = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    t2 = torch.tensor([0.0, 4.0, 3.0, 0.0], dtype=torch.float64)
    got = run_tensor(RAM(), "t", base, [t1, t2])
    assert got.tolist() == [1.0, 3.0, 3.0, 0.0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [1.0, 0.1])
def test_svc_calibration_matches_definition(shape, alpha):
    """TIES with `calibration: svc` is the TIES merge followed by Algorithm 1 per matrix."""
    base, experts = case(shape, 3, seed=40)
    taus = [e - base for e in experts]
    plain = run_tensor(TiesMerging(density=0.5, progress=False), "w", base, experts)
    m = TiesMerging(density=0.5, calibration="svc", calibration_alpha=alpha, progress=False)
    m.setup(["a", "b", "c"])
    got = m.calibrated_merge("w", base, Fresh(experts))
    delta, gamma = ref_svc(plain - base, taus, alpha)
    torch.testing.assert_close(got, base + delta, rtol=1e-8, atol=1e-10)
    rep = m.tensor_reports["w"]
    assert rep["calibration"] == "svc"
    assert rep["gamma_min"] == pytest.approx(float(gamma.min()), abs=1e-6)
    if alpha == 1.0:  # α = 1: γ ≤ 1, SVC only shrinks
        assert float(gamma.max()) <= 1.0 + 1e-12
    # non-matrices are left as merged
    b, ex = case((5,), 3, seed=41)
    assert torch.equal(m.calibrated_merge("b", b, Fresh(ex)), run_tensor(TiesMerging(density=0.5), "b", b, ex))


# --------------------------------------------------------------------------- options

@pytest.mark.parametrize("cls, kwargs, option", [
    (IsoC, {"scaling_factor": float("nan")}, "scaling_factor"),
    (IsoCTS, {"common_space_fraction": 1.5}, "common_space_fraction"),
    (IsoCTS, {"common_space_fraction": -0.1}, "common_space_fraction"),
    (WUDI, {"iterations": -1}, "iterations"),
    (WUDI, {"iterations": 2.5}, "iterations"),
    (WUDI, {"learning_rate": 0.0}, "learning_rate"),
    (WUDI, {"norm": "l1"}, "norm"),
    (RAM, {"epsilon": -1e-5}, "epsilon"),
    (RAMPlus, {"r": float("inf")}, "r"),
    (RAMPlus, {"alpha": -0.2}, "alpha"),
    (RAMPlus, {"rho": "layer"}, "rho"),
])
def test_bad_options_are_refused_before_any_tensor_is_read(cls, kwargs, option, pool_factory, count_reads):
    base, experts = case((4, 3), 2, seed=50, dtype=torch.float32)
    pool = pool_factory({"w": base}, {f"e{i}": {"w": e} for i, e in enumerate(experts)})
    count_reads["n"] = 0
    with pytest.raises(ValueError, match=rf"^{option}\b"):
        cls(progress=False, **kwargs).run(pool)
    assert count_reads["n"] == 0


@pytest.mark.parametrize("kwargs, option", [
    ({"calibration": "svd"}, "calibration"),
    ({"calibration": "svc", "calibration_alpha": 0.0}, "calibration_alpha"),
    ({"calibration": "svc", "calibration_alpha": "x"}, "calibration_alpha"),
])
def test_bad_calibration_options_are_refused(kwargs, option):
    with pytest.raises(ValueError, match=rf"^{option}\b"):
        TiesMerging(**kwargs)


def test_calibration_needs_a_base(pool_factory, count_reads):
    from r3h.methods import WeightAverage

    _, experts = case((4, 3), 2, seed=51, dtype=torch.float32)
    pool = pool_factory(None, {f"e{i}": {"w": e} for i, e in enumerate(experts)})
    count_reads["n"] = 0
    with pytest.raises(ValueError, match="calibration=svc needs the pool's base"):
        WeightAverage(calibration="svc", progress=False).run(pool)
    assert count_reads["n"] == 0


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    return cfg.to_dict(), {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def llama_pool(tmp_path, llama, n=3, seed=0, sparsity=0.0):
    cfg, base_sd = llama
    g = torch.Generator().manual_seed(seed)
    experts = {}
    for i in range(n):
        sd = {}
        for k, v in base_sd.items():
            tau = 0.02 * torch.randn(v.shape, generator=g)
            if sparsity:
                tau = tau * (torch.rand(v.shape, generator=g) >= sparsity)
            sd[k] = v + tau
        experts[f"expert{i}"] = sd
    return make_pool(tmp_path, base_sd, experts, config=cfg), base_sd, experts


def _mean(base, thetas):
    return base.double() + sum(t.double() - base.double() for t in thetas) / len(thetas)


@pytest.mark.parametrize("cls, kwargs", [
    (IsoC, {"scaling_factor": 0.6}),
    (IsoCTS, {"scaling_factor": 0.6}),
    (WUDI, {"iterations": 3, "device": "cpu"}),
    (RAM, {}),
    (RAMPlus, {}),
])
def test_exclude_keys_take_base_plus_mean_and_reports_are_written(cls, kwargs, tmp_path, llama):
    """Through run(pool) with out_dir: excluded tensors take θ0 + mean τi (the engine's rule, as
    for every method), every other floating tensor has its entry in r3h_merge.json."""
    pool, base_sd, experts = llama_pool(tmp_path / "in", llama)
    exclude = [r"model\.norm\.weight", r".*q_proj\.weight"]
    out = tmp_path / "out"
    cls(exclude_keys=exclude, out_dir=str(out), progress=False, **kwargs).run(pool)
    merged = read_folder(out)
    info = json.loads((out / "r3h_merge.json").read_text())
    for name in ("model.norm.weight", "model.layers.0.self_attn.q_proj.weight"):
        torch.testing.assert_close(merged[name].double(), _mean(base_sd[name], [e[name] for e in experts.values()]),
                                   rtol=1e-6, atol=1e-7)
        assert name not in info["tensors"]
    reported = set(info["tensors"])
    assert "model.layers.0.mlp.down_proj.weight" in reported
    excluded_default = [k for k in base_sd if any(re.fullmatch(p, k) for p in exclude)]
    expected = set(base_sd) - set(excluded_default)
    if cls is WUDI:  # + its default exclusion is replaced by this exclude_keys
        assert "model.embed_tokens.weight" in reported
    assert reported == expected


def test_wudi_leaves_vocabulary_matrices_out_by_default(tmp_path, llama):
    """r3h's WUDI excludes the embeddings and lm_head by default (θ0 + mean τi); fusion_bench's
    puts them through the optimisation (its V × V products do not fit on 7-8B vocabularies)."""
    assert WUDI().exclude_keys == VOCAB_KEYS
    pool, base_sd, experts = llama_pool(tmp_path / "in", llama)
    m = WUDI(iterations=3, device="cpu", progress=False)
    model = m.run(pool)
    sd = model.state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        torch.testing.assert_close(sd[name].double(), _mean(base_sd[name], [e[name] for e in experts.values()]),
                                   rtol=1e-6, atol=1e-7)
        assert name not in m.last_report["tensors"]
    assert m.last_report["tensors"]["model.layers.0.mlp.up_proj.weight"]["rule"] == "wudi"


def test_ram_plus_model_rho_is_the_papers_reading(tmp_path, llama):
    """rho: model counts ρi over every tensor before the merge, as `ram-main.py`'s
    `agentic_reinforcement_merge_rescale_v2` (ratio = overlap / (changed − overlap),
    rescale = 1 + (F − 1) · min(1, ratio)); r3h's r = F − 1, alpha = 1 give the same merge."""
    pool, base_sd, experts = llama_pool(tmp_path / "in", llama, sparsity=0.7, seed=3)
    eps, F = 1e-5, 1.2
    n = len(experts)
    changed, overlap = [0] * n, [0] * n
    for name, b in base_sd.items():
        diffs = torch.stack([e[name] - b for e in experts.values()])
        mask = diffs.abs() > eps
        over = mask.sum(0) >= 2
        for j in range(n):
            changed[j] += int(mask[j].sum())
            overlap[j] += int((mask[j] & over).sum())
    ratio = [o / (c - o) for o, c in zip(overlap, changed)]
    rescale = [1 + (F - 1) * min(1.0, r) for r in ratio]
    m = RAMPlus(r=F - 1, alpha=1.0, rho="model", progress=False)
    sd = m.run(pool).state_dict()
    assert m.last_report["model_rho"]["rho"] == pytest.approx(ratio)
    for name, b in base_sd.items():
        taus = [(e[name] - b).double() for e in experts.values()]
        mask = torch.stack([t.abs() > eps for t in taus])
        count = mask.sum(0)
        expected = torch.zeros_like(taus[0])
        for j, t in enumerate(taus):
            expected += torch.where(count == 1, t * rescale[j], t / count.clamp(min=1)) * mask[j]
        torch.testing.assert_close(sd[name].double(), b.double() + expected, rtol=1e-5, atol=1e-6)
        assert m.last_report["tensors"][name]["lambda"] == pytest.approx(rescale, abs=1e-6)
    # the tensor-local reading (MergeKit's) gives another merge
    local = RAMPlus(r=F - 1, alpha=1.0, progress=False).run(pool).state_dict()
    assert any(not torch.allclose(local[k], sd[k]) for k in sd)


def test_ties_with_svc_through_run(tmp_path, llama):
    pool, base_sd, experts = llama_pool(tmp_path / "in", llama)
    plain = TiesMerging(density=0.5, progress=False).run(pool).state_dict()
    m = TiesMerging(density=0.5, calibration="svc", calibration_alpha=0.5, progress=False)
    cal = m.run(pool).state_dict()
    assert m.last_report["hyperparameters"]["calibration"] == "svc"
    assert "calibration" not in TiesMerging(progress=False).hyperparameters()
    name = "model.layers.0.mlp.gate_proj.weight"
    b = base_sd[name].double()
    delta, _ = ref_svc(plain[name].double() - b, [e[name].double() - b for e in experts.values()], 0.5)
    torch.testing.assert_close(cal[name].double(), b + delta, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cal["model.norm.weight"], plain["model.norm.weight"])
    assert m.last_report["tensors"][name]["calibration"] == "svc"


def test_svds_that_return_wrong_factors_are_computed_again_in_float64(monkeypatch, caplog):
    """oneMKL's threaded float32 gesdd returned, without an error, a U that was not orthonormal
    (‖UᵀU − I‖ = 1.0) on one Iso-CTS basis of bench_merge.py's 148M pool, which put r3h 2e-3 away
    from fusion_bench on that tensor. thin_svd checks every SVD with random probes and computes
    a failed one again in float64; a correct one is returned bit for bit. Here float32 SVDs
    return a U with two columns swapped for copies of a third (the kind of wrong factor the
    probes must catch); Iso-C, Iso-CTS, SVC and TSVM's exact route still give the float64 result."""
    import r3h.ops.isotropic as iso
    from r3h.ops.svc import svc
    from r3h.ops.svd import svd_error, thin_svd, top_triplets

    g = torch.Generator().manual_seed(5)
    taus = [torch.randn(16, 10, generator=g) * 1e-3 for _ in range(3)]
    total64 = sum(t.double() for t in taus)
    want_c = iso.iso_c(total64)
    want_cts, _ = iso.iso_cts(total64, lambda: (t.double() for t in taus), 3, 0.5)
    want_svc, _ = svc(total64 * 0.4, (t.double() for t in taus), 1.0)
    x = sum(taus)
    good = thin_svd(x)
    real = torch.linalg.svd
    assert all(torch.equal(a, b) for a, b in zip(good, real(x, full_matrices=False)))  # bits kept
    assert svd_error(x, *good) < 1e-5

    def wrong(a, *args, **kw):
        U, S, Vh = real(a, *args, **kw)
        if a.dtype == torch.float32:
            U = U.clone()
            U[:, 1] = U[:, 0]
            U[:, 2] = U[:, 0]
        return U, S, Vh

    monkeypatch.setattr(torch.linalg, "svd", wrong)
    assert svd_error(x, *torch.linalg.svd(x, full_matrices=False)) > 1e-2
    with caplog.at_level("WARNING", logger="r3h.ops.svd"):
        got_c = iso.iso_c(x)
    assert "computed again in float64" in caplog.text
    got_cts, _ = iso.iso_cts(x, lambda: iter(taus), 3, 0.5)
    got_svc, _ = svc(x * 0.4, iter(taus), 1.0)
    (U, S, V), _ = top_triplets(x, 4, solver="full")
    assert got_c.dtype == got_cts.dtype == got_svc.dtype == torch.float32
    torch.testing.assert_close(got_c.double(), want_c, atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(got_cts.double(), want_cts, atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(got_svc.double(), want_svc, atol=1e-8, rtol=1e-4)
    torch.testing.assert_close((U.T @ U).double(), torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)


def test_iso_svds_retry_in_float64_when_lapack_does_not_converge(monkeypatch):
    """Iso-CTS's last step orthogonalises nearly orthonormal matrices (singular values all ≈ 1),
    where float32 gesdd can fail to converge (seen on SmolLM2's DPO experts): r3h.ops.svd.thin_svd
    retries in float64. Here float32 SVDs are made to fail; Iso-C and Iso-CTS still give the
    float64 computation's result, in float32."""
    import r3h.ops.isotropic as iso

    g = torch.Generator().manual_seed(3)
    taus = [torch.randn(12, 8, generator=g) * 1e-3 for _ in range(3)]
    want_c = iso.iso_c(sum(t.double() for t in taus)).float()
    want_cts, _ = iso.iso_cts(sum(t.double() for t in taus), lambda: (t.double() for t in taus), 3, 0.5)
    real = torch.linalg.svd

    def flaky(x, *a, **kw):
        if x.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(x, *a, **kw)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    got_c = iso.iso_c(sum(taus))
    got_cts, info = iso.iso_cts(sum(taus), lambda: iter(taus), 3, 0.5)
    assert got_c.dtype == got_cts.dtype == torch.float32
    assert torch.allclose(got_c, want_c, atol=1e-8, rtol=1e-4)
    assert torch.allclose(got_cts, want_cts.float(), atol=1e-8, rtol=1e-4)
    with pytest.raises(torch.linalg.LinAlgError):  # float64 failing too is not hidden
        monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: (_ for _ in ()).throw(torch.linalg.LinAlgError("x")))
        iso.iso_c(sum(taus))
