"""TSVM and R-TSVM against float64 references written from the design card
(docs: r_tsvm.md), their invariants, parity with fusion_bench's TSVM, the rules for
tensors that skip the SVD, bad input, and the randomized solver.

The references (tests/reference/tsvm.py) never call `r3h` (the one exception here is the
sign-flip test that exercises `r3h.analysis.matrices.merge_factors` itself): SVDs, polar
factors, outlier mass, sparsity, rank budgets and the merged Δ are recomputed in float64 from
θ's read back in float64. r3h computes in float32, hence tolerances of ~1e-4 relative.
"""

from __future__ import annotations

import json
from typing import List, Sequence

import pytest
import torch

from r3h.methods.tsvm import RTSVM, TSVM
from tests.conftest import make_pool, read_folder
from tests.reference.tsvm import (F64, add_spikes, gen, lowrank_tau, make_case, orthonormal, ref_factors,
                                  ref_omega_counts, ref_outlier_mass, ref_polar, ref_rank_budget, ref_rtsvm,
                                  ref_rtsvm_delta_from_factors, ref_stack, ref_tsvm, ref_tsvm_delta_from_factors,
                                  ref_weights, taus64)
from tests.test_cli import REPO

TOL = 1e-4  # relative to the scale of the merged Δ (float32 SVDs vs float64)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

def tsvm(**kw) -> TSVM:
    return TSVM(progress=False, device="cpu", **kw)


def rtsvm(**kw) -> RTSVM:
    return RTSVM(progress=False, device="cpu", **kw)


def merge(m, name, base, experts):
    m.setup([f"e{i}" for i in range(len(experts))])
    return m.merge_tensor(name, base.clone(), [e.clone() for e in experts])


def assert_rel(actual, expected, scale, tol=TOL, what=""):
    err = float((actual.double() - expected.double()).abs().max())
    assert err <= tol * float(scale), f"{what}: max error {err:.3g} > {tol:g} × scale {float(scale):.3g}"


def assert_merged(out, base, alpha, delta_ref, tol=TOL):
    assert out.dtype == torch.float32 and out.shape == base.shape
    assert torch.isfinite(out).all()
    expected = base.double() + alpha * delta_ref
    assert_rel(out, expected, abs(alpha) * delta_ref.abs().max(), tol, "merged tensor")



# ---------------------------------------------------------------------------------------
# 1. TSVM against the float64 reference
# ---------------------------------------------------------------------------------------

TSVM_CASES = [
    ((24, 16), 2, 1.0),
    ((16, 40), 3, 0.7),   # wide
    ((48, 20), 4, 1.0),   # tall
    ((20, 20), 5, 1.3),   # square, nq = r
    ((33, 17), 3, 0.7),   # nq = 15 < r = 17
    ((12, 30), 2, -0.5),
]


@pytest.mark.parametrize("shape,n,alpha", TSVM_CASES)
def test_tsvm_matches_reference(shape, n, alpha):
    base, experts = make_case(shape, n, seed=10 + n + shape[0])
    m = tsvm(alpha=alpha)
    out = merge(m, "layer.weight", base, experts)
    delta, info = ref_tsvm(base, experts)
    assert_merged(out, base, alpha, delta)
    rep = m.tensor_reports["layer.weight"]
    assert rep["rule"] == "svd" and rep["shape"] == list(shape)
    assert rep["q"] == info["q"] == min(shape) // n
    assert rep["alpha"] == [1.0] * n and rep["k_i"] == [info["q"]] * n
    assert rep["sti"] == pytest.approx(info["sti"], rel=1e-4)
    assert info["sti"] > 1e-2  # the stacks do interfere: the check is not 0 == 0
    assert rep["seconds"] >= 0
    # Orthogonalisation matters here: Σi Ui Si Viᵀ (no polar) is far from Δ.
    naive = sum(f[0] @ torch.diag(f[1]) @ f[2].T for f in ref_factors(taus64(base, experts), info["q"]))
    assert float((naive - delta).abs().max()) > 100 * TOL * float(delta.abs().max())


def test_tsvm_polar_reference_is_orthonormal_procrustes():
    """Sanity of the reference itself: U⊥ has orthonormal columns and is the nearest such
    matrix to Û (it beats a QR orthonormalisation in Frobenius distance)."""
    base, experts = make_case((30, 18), 3, seed=3)
    Uh, _, _ = ref_stack(ref_factors(taus64(base, experts), 6))
    Uo = ref_polar(Uh)
    torch.testing.assert_close(Uo.T @ Uo, torch.eye(18, dtype=F64), atol=1e-12, rtol=0)
    Qr = torch.linalg.qr(Uh).Q
    Qr = Qr * torch.sign(torch.diag(Qr.T @ Uh))
    assert torch.linalg.matrix_norm(Uo - Uh) < torch.linalg.matrix_norm(Qr - Uh)


# ---------------------------------------------------------------------------------------
# 2. R-TSVM against the float64 reference of Eq. 6–10
# ---------------------------------------------------------------------------------------

RTSVM_CASES = {
    # name: (shape, n, spikes per expert, method options, alpha, expectations)
    "default": ((24, 16), 2, [3, 10], {}, 1.0, {"trunc": True, "weights": True}),
    "relative_sum_gamma1": ((16, 40), 3, [0, 4, 12], dict(gamma=1.0, epsilon=0.5, epsilon_mode="relative",
                                                         outlier_norm="sum", outlier_min_share=0.0), 0.7,
                           {"trunc": True, "weights": True}),
    "tall_4": ((48, 20), 4, [1, 2, 6, 15], dict(gamma=0.8, epsilon=0.15), 1.0, {"trunc": True, "weights": True}),
    "k_clamped_to_1": ((40, 24), 3, [2, 5, 9], dict(gamma=1.0, epsilon=5.0, epsilon_mode="relative"), 1.0,
                       {"ki1": True, "weights": True}),
    "no_truncation": ((20, 36), 2, [2, 9], dict(gamma=0.05), 1.2, {"weights": True}),
    "w/o_outlier_weighting": ((24, 16), 3, [1, 4, 10], dict(outlier_weighting=False, gamma=0.9), 1.0,
                              {"trunc": True}),
    "w/o_rank_selection": ((24, 18), 3, [1, 4, 10], dict(rank_selection=False, outlier_norm="sum", gamma=1.0),
                           0.8, {"weights": True}),
    # d = 8 ≤ 9 columns: by Samuelson's inequality no entry can reach μ + 3σ, so every T is 0
    "all_T_zero_mean": ((30, 8), 2, None, dict(gamma=1.0, epsilon=0.05), 1.0, {"equal": True}),
    "all_T_zero_sum": ((30, 8), 3, None, dict(outlier_norm="sum", rank_selection=False), 1.0, {"equal": True}),
    "all_T_zero_no_guard": ((30, 8), 3, None, dict(outlier_min_share=0.0), 1.0, {"equal": True}),
    # the readings (expert i has the most outlier mass for the largest i)
    "inverse": ((24, 40), 3, [2, 6, 14], dict(outlier_reading="inverse"), 1.0, {"weights": True, "trunc": True}),
    "inverse_sum": ((40, 24), 3, [3, 8, 20], dict(outlier_reading="inverse", outlier_norm="sum",
                                                  rank_selection=False), 0.8, {"weights": True}),
    "share": ((24, 40), 3, [2, 6, 14], dict(outlier_reading="share", gamma=0.9), 1.0,
              {"weights": True, "trunc": True}),
    "share_sum_no_guard": ((16, 40), 3, [0, 4, 12], dict(outlier_reading="share", outlier_norm="sum",
                                                         outlier_min_share=0.0), 0.7, {"weights": True}),
    "guard_high": ((24, 40), 3, [2, 6, 14], dict(outlier_reading="inverse", outlier_min_share=0.5), 1.0,
                   {"equal": True}),
}


@pytest.mark.parametrize("case", list(RTSVM_CASES))
def test_rtsvm_matches_reference(case):
    shape, n, spikes, opts, alpha, expect = RTSVM_CASES[case]
    base, experts = make_case(shape, n, seed=100 + list(RTSVM_CASES).index(case), spikes=spikes)
    m = rtsvm(alpha=alpha, **opts)
    out = merge(m, "mlp.weight", base, experts)
    delta, info = ref_rtsvm(base, experts, **opts)
    assert_merged(out, base, alpha, delta)
    rep = m.tensor_reports["mlp.weight"]
    assert rep["rule"] == "svd" and rep["q"] == info["q"]
    assert rep["omega"] == info["omega"]  # same counts
    assert rep["k"] == info["k"]
    assert rep["k_i"] == info["k_i"]
    assert rep["alpha"] == pytest.approx(info["alpha"], rel=1e-5)
    assert rep["alpha_rule"] == info["alpha_rule"]
    taus = taus64(base, experts)
    if opts.get("outlier_weighting", True):
        shares = [ref_outlier_mass(t) / float(t.abs().sum()) for t in taus]
        assert rep["outlier_share"] == pytest.approx(shares, rel=1e-5, abs=1e-12)
    assert rep["sti"] == pytest.approx(info["sti"], rel=1e-4)
    # The case exercises what it claims to.
    q = info["q"]
    if expect.get("trunc"):
        assert all(k < q for k in info["k_i"]), info
    if expect.get("ki1"):
        assert info["k_i"] == [1] * n and info["k"] < n, info
    if expect.get("weights"):
        assert max(info["alpha"]) - min(info["alpha"]) > 0.05, info["alpha"]
    if expect.get("equal"):
        if case == "guard_high":
            assert rep["alpha_rule"] == "equal (guard)" and min(rep["outlier_share"]) > 0
        else:
            assert all(ref_outlier_mass(t) == 0 for t in taus)
            assert rep["alpha_rule"] == ("equal (no outliers)" if "no_guard" in case else "equal (guard)")
        w = 1.0 if opts.get("outlier_norm", "mean") == "mean" else 1.0 / n
        assert rep["alpha"] == pytest.approx([w] * n, rel=1e-12)
    reading = opts.get("outlier_reading", "eq8")
    if expect.get("weights"):
        assert rep["alpha_rule"] == reading
        T = [ref_outlier_mass(t) for t in taus]
        order = sorted(range(n), key=lambda i: T[i] / float(taus[i].abs().sum()) if reading == "share" else T[i])
        if reading == "inverse":  # more outlier mass, less weight
            assert sorted(range(n), key=lambda i: -rep["alpha"][i]) == order
        else:
            assert sorted(range(n), key=lambda i: rep["alpha"][i]) == order
    if "sum" == opts.get("outlier_norm"):
        assert sum(rep["alpha"]) == pytest.approx(1.0, rel=1e-9)
    else:
        assert sum(rep["alpha"]) == pytest.approx(n, rel=1e-9)
    if opts.get("outlier_weighting") is False:
        assert rep["alpha"] == [1.0] * n
    if opts.get("rank_selection") is False:
        assert rep["k_i"] == [q] * n


def test_rtsvm_truncates_after_orthogonalising():
    """Truncate-then-orthogonalise (polar of the ki-column stacks) gives a different Δ;
    r3h must follow Appendix A.3 (orthogonalise the full q-column stacks first)."""
    base, experts = make_case((24, 16), 2, seed=5, spikes=[2, 8])
    opts = dict(gamma=1.0, outlier_weighting=False)
    m = rtsvm(alpha=1.0, **opts)
    out = merge(m, "w", base, experts)
    delta, info = ref_rtsvm(base, experts, **opts)
    assert info["k_i"][0] < info["q"]
    ki = info["k_i"][0]
    wrong = ref_tsvm_delta_from_factors([(U[:, :ki], S[:ki], V[:, :ki])
                                         for U, S, V in ref_factors(taus64(base, experts), info["q"])])
    assert float((wrong - delta).abs().max()) > 100 * TOL * float(delta.abs().max())
    assert_merged(out, base, 1.0, delta)


def test_rtsvm_report_in_run_and_json(tmp_path):
    """End to end: the per-tensor αi, Ω, k, ki and STI land in last_report and r3h_merge.json."""
    names = {"a.weight": (24, 16), "b.weight": (16, 28), "c.bias": (16,)}
    g = gen(7)
    base = {k: (0.3 * torch.randn(s, generator=g)) for k, s in names.items()}
    experts = {}
    for i in range(3):
        sd = {}
        for k, s in names.items():
            tau = lowrank_tau(s, g, scale=1 + 0.3 * i) if len(s) == 2 else 0.1 * torch.randn(s, generator=g, dtype=F64)
            if len(s) == 2:
                tau = add_spikes(tau, 2 + 4 * i, g, 1.0)
            sd[k] = (base[k].double() + tau).float()
        experts[f"e{i}"] = sd
    pool = make_pool(tmp_path / "pool", base, experts)
    out = tmp_path / "merged"
    opts = dict(gamma=0.7, epsilon=0.1)
    m = rtsvm(alpha=0.9, out_dir=str(out), **opts)
    assert m.run(pool) is None
    merged = read_folder(out)
    with open(out / "r3h_merge.json") as f:
        saved = json.load(f)["tensors"]
    assert set(saved) == set(names) and saved == json.loads(json.dumps(m.last_report["tensors"]))
    ex = [experts[f"e{i}"] for i in range(3)]
    for k in ("a.weight", "b.weight"):
        delta, info = ref_rtsvm(base[k], [e[k] for e in ex], **opts)
        assert_merged(merged[k], base[k], 0.9, delta)
        rep = saved[k]
        assert rep["rule"] == "svd" and rep["k"] == info["k"] and rep["k_i"] == info["k_i"]
        assert rep["omega"] == pytest.approx(info["omega"], abs=1e-15)
        assert rep["alpha"] == pytest.approx(info["alpha"], rel=1e-5)
        assert rep["sti"] == pytest.approx(info["sti"], rel=1e-4)
        assert rep["alpha_rule"] == info["alpha_rule"] == "eq8" and len(rep["outlier_share"]) == 3
    assert saved["c.bias"]["rule"] == "mean"
    mean = torch.stack(taus64(base["c.bias"], [e["c.bias"] for e in ex])).mean(0)
    assert_rel(merged["c.bias"], base["c.bias"].double() + 0.9 * mean, 1.0, 1e-6)


def test_rank_budget_exact_at_integer_boundary():
    g = gen(0)

    def tau(n_big):  # exactly n_big of 120 entries have |τ| ≥ 0.1, all others < 0.05
        t = torch.rand(10, 12, generator=g) * 0.04 + 0.01
        idx = torch.randperm(120, generator=g)[:n_big]
        t.view(-1)[idx] = torch.rand(n_big, generator=g) * 0.5 + 0.5
        return t * torch.where(torch.rand(10, 12, generator=g) < 0.5, -1.0, 1.0)

    base = torch.zeros(10, 12)
    experts = [tau(24), tau(24)]  # Ω = 192 / 240 = 0.8 exactly
    m = rtsvm(gamma=0.75, epsilon=0.1)
    merge(m, "w", base, experts)
    rep = m.tensor_reports["w"]
    small, total = ref_omega_counts(taus64(base, experts), 0.1, "absolute")
    assert (small, total) == (192, 240)
    k, ki = ref_rank_budget(10, 2, 5, small, total, 0.75)
    assert (k, ki) == (4, 2)
    assert (rep["k"], rep["k_i"]) == (k, [ki, ki])


def adam_like_case(shape=(48, 64), n=3, spikes=4, seed=40, lr=5e-5):
    """Task vectors of a short Adam run: every entry ≈ ±lr (sign(g)·lr·(1 + 0.01u), u ~ U(−1, 1),
    bounded, so no entry of a row reaches μ + 3σ and T = 0), the last expert with a handful
    of entries raised to 3·lr (its only outliers): the pattern that made Eq. 8 keep one expert."""
    g = gen(seed)
    base = (0.3 * torch.randn(shape, generator=g, dtype=F64)).float()
    taus = []
    for i in range(n):
        sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).to(F64)
        tau = sign * lr * (1 + 0.01 * (2 * torch.rand(shape, generator=g, dtype=F64) - 1))
        if i == n - 1:
            idx = torch.randperm(tau.numel(), generator=g)[:spikes]
            tau.view(-1)[idx] *= 3
        taus.append(tau)
    return base, [(base.double() + t).float() for t in taus]


def test_adam_like_eq8_collapses_and_the_guard_gives_equal_weights():
    base, experts = adam_like_case()
    taus = taus64(base, experts)
    T = [ref_outlier_mass(t) for t in taus]
    assert T[0] == T[1] == 0 < T[2]  # the case is what it claims to be
    share = T[2] / float(taus[2].abs().sum())
    assert 0 < share < 0.01
    # Eq. 8 with the guard off: one expert takes all the weight, the others are dropped
    off = rtsvm(outlier_min_share=0.0, rank_selection=False)
    merge(off, "w", base, experts)
    rep = off.tensor_reports["w"]
    assert rep["alpha_rule"] == "eq8" and rep["alpha"] == pytest.approx([0.0, 0.0, 3.0], abs=1e-12)
    # ... the scale-free share collapses the same way; the inverse reading has 1/0 and is equal
    for reading, alpha, rule in [("share", [0.0, 0.0, 3.0], "share"), ("inverse", [1.0] * 3, "equal (no outliers)")]:
        m = rtsvm(outlier_min_share=0.0, outlier_reading=reading, rank_selection=False)
        merge(m, "w", base, experts)
        assert m.tensor_reports["w"]["alpha_rule"] == rule
        assert m.tensor_reports["w"]["alpha"] == pytest.approx(alpha, abs=1e-12)
    # the default guard: equal weights, reported as such, the same merge as without weighting
    for reading in ("eq8", "inverse", "share"):
        for norm in ("mean", "sum"):
            m = rtsvm(outlier_reading=reading, outlier_norm=norm)
            out = merge(m, "w", base, experts)
            rep = m.tensor_reports["w"]
            assert rep["alpha_rule"] == "equal (guard)"
            assert rep["alpha"] == pytest.approx([1.0] * 3 if norm == "mean" else [1 / 3] * 3, rel=1e-12)
            assert rep["outlier_share"] == pytest.approx([0.0, 0.0, share], rel=1e-5)
            if norm == "mean":
                assert torch.equal(out, merge(rtsvm(outlier_weighting=False), "w", base, experts))
    # (the merged Δ is not compared with the float64 reference: the spectrum of a sign
    # matrix is flat, so its top-q subspace moves with float32 rounding)
    assert ref_weights(taus, "mean") == ([1.0] * 3, "equal (guard)")


@pytest.mark.parametrize("T,L,norm,reading,min_share,alpha,rule", [
    # an expert with τ = 0 here (L = 0) scores 0 and is ignored by the guard
    ([0.0, 2.0, 6.0], [0.0, 10.0, 30.0], "mean", "eq8", 0.1, [0.0, 0.75, 2.25], "eq8"),
    ([0.0, 2.0, 6.0], [0.0, 10.0, 30.0], "mean", "inverse", 0.1, [0.0, 2.25, 0.75], "inverse"),
    ([0.0, 2.0, 6.0], [0.0, 10.0, 60.0], "sum", "share", 0.05, [0.0, 2 / 3, 1 / 3], "share"),
    # inverse: a nonzero expert with T = 0 makes 1/T undefined: equal weights
    ([0.0, 2.0, 6.0], [5.0, 10.0, 30.0], "sum", "inverse", 0.0, [1 / 3] * 3, "equal (no outliers)"),
    ([0.0, 0.0], [5.0, 10.0], "mean", "eq8", 0.0, [1.0, 1.0], "equal (no outliers)"),
    # the guard looks at each expert's share, not at the total
    ([1.0, 9.0], [100.0, 100.0], "mean", "eq8", 0.02, [1.0, 1.0], "equal (guard)"),
    ([1.0, 9.0], [100.0, 100.0], "mean", "eq8", 0.01, [0.2, 1.8], "eq8"),
])
def test_weights_from_outliers_rules(T, L, norm, reading, min_share, alpha, rule):
    from r3h.ops.rtsvm import weights_from_outliers

    ow = weights_from_outliers(T, L, norm, reading, min_share)
    assert ow.weights == pytest.approx(alpha, rel=1e-12) and ow.rule == rule
    assert ow.shares == [t / l if l > 0 else None for t, l in zip(T, L)]


def test_outlier_mass_of_an_adam_first_step_is_zero():
    """Adam's first step moves every entry by lr·g/(|g| + eps) ≈ ±lr: no outliers. The
    one-pass σ = sqrt(mean τ² − μ²) cancels in float32, is 0 on some rows and then counts
    about half of their entries as outliers; r3h's two-pass σ does not."""
    from r3h.ops.rtsvm import outlier_mass

    w = torch.nn.Parameter(torch.zeros(64, 256))
    opt = torch.optim.Adam([w], lr=5e-5)
    w.grad = torch.randn(64, 256, generator=gen(2))
    opt.step()
    tau = w.detach()
    a = tau.abs()
    mu = a.mean(dim=1, keepdim=True)
    one_pass = (tau.pow(2).mean(dim=1, keepdim=True) - mu.pow(2)).clamp_min(0).sqrt()
    assert float((a * (a >= mu + 3 * one_pass)).sum()) > 0  # the artefact is there to avoid
    assert outlier_mass(tau) == ref_outlier_mass(tau.double()) == 0


# ---------------------------------------------------------------------------------------
# 3. invariants
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,n,alpha", TSVM_CASES[:4])
def test_rtsvm_without_switches_is_tsvm(shape, n, alpha):
    base, experts = make_case(shape, n, seed=3 * n, spikes=[i * 3 for i in range(n)])
    a = merge(tsvm(alpha=alpha), "w", base, experts)
    m = rtsvm(alpha=alpha, outlier_weighting=False, rank_selection=False, gamma=1.0)
    b = merge(m, "w", base, experts)
    assert torch.equal(a, b)
    for reading in ("inverse", "share"):  # the outlier options do nothing with the switch off
        m = rtsvm(alpha=alpha, outlier_weighting=False, rank_selection=False, outlier_reading=reading,
                  outlier_min_share=0.0)
        assert torch.equal(a, merge(m, "w", base, experts))
        assert m.tensor_reports["w"]["alpha_rule"] == "off"
    # ... and an R-TSVM that does reweight is not TSVM on these inputs.
    for reading in ("eq8", "inverse", "share"):
        c = merge(rtsvm(alpha=alpha, rank_selection=False, outlier_reading=reading, outlier_min_share=0.0),
                  "w", base, experts)
        assert float((c - a).abs().max()) > 1e-3 * float((a - base).abs().max())


def test_rtsvm_without_switches_is_tsvm_end_to_end(tmp_path):
    g = gen(11)
    shapes = {"x.weight": (20, 12), "y.weight": (8, 24), "z.bias": (12,)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    experts = {f"e{i}": {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for i in range(3)}
    pool = make_pool(tmp_path, base, experts)
    tsvm(alpha=0.8, out_dir=str(tmp_path / "a")).run(pool)
    rtsvm(alpha=0.8, outlier_weighting=False, rank_selection=False, out_dir=str(tmp_path / "b")).run(pool)
    a, b = read_folder(tmp_path / "a"), read_folder(tmp_path / "b")
    assert a.keys() == b.keys() == base.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stacked_factors(seed, shape=(20, 14), n=3, q=4):
    from r3h.ops.svd import StackedFactors

    g = gen(seed)
    m, d = shape
    Us, Ss, Vs = [], [], []
    for i in range(n):
        Us.append(orthonormal(m, q, g))
        Vs.append(orthonormal(d, q, g))
        Ss.append((1 + i) * torch.linspace(1.0, 0.5, q, dtype=F64))
    return StackedFactors(torch.cat(Us, 1).float(), torch.cat(Ss).float(), torch.cat(Vs, 1).float(), q, n)


@pytest.mark.parametrize("weights,ranks", [(None, None), ([0.5, 1.7, 0.8], None), (None, [1, 3, 2]),
                                           ([2.0, 0.3, 0.7], [4, 1, 2])])
def test_merge_factors_sign_flip_invariance(weights, ranks):
    from r3h.analysis.matrices import merge_factors
    from r3h.ops.svd import StackedFactors

    f = stacked_factors(0)
    ref = merge_factors(f, weights, ranks)
    scale = float(ref.abs().max())
    g = gen(1)
    for _ in range(4):
        d = torch.where(torch.rand(f.U.shape[1], generator=g) < 0.5, -1.0, 1.0)
        assert (d < 0).any()
        flipped = StackedFactors(f.U * d, f.S.clone(), f.V * d, f.q, f.n)
        assert_rel(merge_factors(flipped, weights, ranks), ref, scale, 1e-5, "sign flip")
        # Negating u alone (not v) is not a symmetry: the check is sensitive.
        half = StackedFactors(f.U * d, f.S.clone(), f.V.clone(), f.q, f.n)
        assert float((merge_factors(half, weights, ranks) - ref).abs().max()) > 1e-2 * scale
    # and merge_factors agrees with the float64 reference on these factors
    facs = [(f.U[:, f.block(i)].double(), f.S[f.block(i)].double(), f.V[:, f.block(i)].double()) for i in range(f.n)]
    expected = ref_rtsvm_delta_from_factors(facs, weights or [1.0] * f.n, ranks or [f.q] * f.n)
    assert_rel(ref, expected, scale, 1e-5, "merge_factors")


def explicit_case(shape, n, seed):
    """τi = Ai diag(si) Biᵀ from explicit orthonormal factors with distinct si."""
    g = gen(seed)
    m, d = shape
    r = min(m, d)
    base = (0.3 * torch.randn(shape, generator=g, dtype=F64)).float()
    factors = []
    for i in range(n):
        A, B = orthonormal(m, r, g), orthonormal(d, r, g)
        s = (1 + 0.4 * i) * torch.linspace(1.0, 0.3, r, dtype=F64)
        factors.append((A, s, B))
    experts = [(base.double() + A @ torch.diag(s) @ B.T).float() for A, s, B in factors]
    return base, experts, factors


@pytest.mark.parametrize("solver", ["full", "auto"])
@pytest.mark.parametrize("cls", ["tsvm", "r_tsvm", "r_tsvm_inverse", "r_tsvm_share"])
def test_sign_convention_end_to_end(cls, solver, monkeypatch):
    """r3h's result equals the reference built from the explicit factors under any sign
    choice, and does not move when torch's SVD (or, on the Gram route, eigh) returns
    randomly flipped singular (eigen) vectors."""
    shape, n = (26, 18), 3
    base, experts, factors = explicit_case(shape, n, seed=21)
    q = min(shape) // n
    opts = dict(svd_solver=solver) if cls == "tsvm" else dict(gamma=0.5, epsilon=0.3, outlier_min_share=0.0,
                                                              svd_solver=solver)
    if cls != "tsvm":
        opts["outlier_reading"] = cls.split("_")[2] if cls.count("_") == 2 else "eq8"
        cls = "r_tsvm"
    make = (lambda: tsvm(alpha=0.9, **opts)) if cls == "tsvm" else (lambda: rtsvm(alpha=0.9, **opts))
    m = make()
    out = merge(m, "w", base, experts)
    rep = m.tensor_reports["w"]
    if cls == "r_tsvm":
        assert rep["k_i"][0] < q
    g = gen(2)
    for _ in range(3):
        facs = []
        for A, s, B in factors:
            d = torch.where(torch.rand(q, generator=g) < 0.5, -1.0, 1.0).to(F64)
            facs.append((A[:, :q] * d, s[:q], B[:, :q] * d))
        if cls == "tsvm":
            delta = ref_tsvm_delta_from_factors(facs)
        else:
            delta = ref_rtsvm_delta_from_factors(facs, rep["alpha"], rep["k_i"])
        assert_merged(out, base, 0.9, delta)

    orig = torch.linalg.svd
    gs = gen(3)
    flips = {"calls": 0, "negated": 0}

    def flipped_svd(A, full_matrices=True, **kw):
        U, S, Vh = orig(A, full_matrices=full_matrices, **kw)
        k = S.shape[-1]
        d = torch.where(torch.rand(k, generator=gs) < 0.5, -1.0, 1.0).to(U.dtype)
        flips["calls"] += 1
        flips["negated"] += int((d < 0).sum())
        U = torch.cat([U[:, :k] * d, U[:, k:]], dim=1)
        Vh = torch.cat([Vh[:k] * d[:, None], Vh[k:]], dim=0)
        return U, S, Vh

    orig_eigh = torch.linalg.eigh

    def flipped_eigh(A, *a, **kw):
        w, W = orig_eigh(A, *a, **kw)
        d = torch.where(torch.rand(W.shape[-1], generator=gs) < 0.5, -1.0, 1.0).to(W.dtype)
        flips["calls"] += 1
        flips["negated"] += int((d < 0).sum())
        return w, W * d

    if solver == "full":
        monkeypatch.setattr(torch.linalg, "svd", flipped_svd)
    else:
        monkeypatch.setattr(torch.linalg, "eigh", flipped_eigh)
    m2 = make()
    out2 = merge(m2, "w", base, experts)
    assert flips["calls"] == n + 2 and flips["negated"] > 0  # n expert decompositions + two polar factors
    assert_rel(out2 - base, out - base, float((out - base).abs().max()), 1e-5, "flipped SVD")
    routes = m2.tensor_reports["w"]["routes"]
    assert all(r.startswith("gram" if solver == "auto" else "svd") for r in routes.values()), routes


# ---------------------------------------------------------------------------------------
# 4. parity with fusion_bench's TaskSingularVectorMerging
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_checkpoints(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import write_checkpoint

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    base = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    g = gen(12)
    root = tmp_path_factory.mktemp("llama")
    paths = {"_pretrained_": write_checkpoint(root / "base", base, cfg.to_dict())}
    for i in range(3):
        sd = {k: v + (0.01 + 0.005 * i) * torch.randn(v.shape, generator=g) for k, v in base.items()}
        paths[f"expert_{i}"] = write_checkpoint(root / f"expert_{i}", sd, cfg.to_dict())
    return paths


@pytest.mark.parametrize("alpha", [1.0, 0.7])
@pytest.mark.parametrize("exclude", [[], ["model.layers.0.mlp.down_proj.weight"]])
def test_parity_with_fusion_bench(llama_checkpoints, alpha, exclude):
    from fusion_bench.method.task_singular_vector.TSVM import TaskSingularVectorMerging as FBTSVM
    from fusion_bench.modelpool.causal_lm.causal_lm import CausalLMPool

    from r3h.modelpool import AlignedCausalLMPool

    fb_model = FBTSVM(alpha=alpha, exclude_keys=list(exclude)).run(
        CausalLMPool(models=dict(llama_checkpoints), tokenizer=None))
    ours = tsvm(alpha=alpha, exclude_keys=list(exclude)).run(
        AlignedCausalLMPool(models=dict(llama_checkpoints), tokenizer=None))
    a, b = fb_model.state_dict(), ours.state_dict()
    assert a.keys() == b.keys()
    base = read_folder(llama_checkpoints["_pretrained_"])
    ex = [read_folder(llama_checkpoints[f"expert_{i}"]) for i in range(3)]
    n_svd = 0
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32
        scale = float(a[k].abs().max())
        err = float((a[k] - b[k]).abs().max())
        assert err <= 1e-5 * scale, f"{k}: {err:.3g} vs scale {scale:.3g}"
        mean_rule = base[k].double() + alpha * torch.stack(taus64(base[k], [e[k] for e in ex])).mean(0)
        if a[k].dim() == 2 and k not in exclude:
            n_svd += 1  # both really ran the SVD rule here
            assert float((a[k].double() - mean_rule).abs().max()) > 1e-3 * float((mean_rule - base[k]).abs().max())
        else:
            assert_rel(b[k], mean_rule, scale, 1e-6, k)
    assert n_svd == 9 - len(exclude)


# ---------------------------------------------------------------------------------------
# 5. rules for the other tensors, bad input
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda **k: tsvm(**k), lambda **k: rtsvm(**k)], ids=["tsvm", "r_tsvm"])
def test_mean_rule_for_non_matrices_and_excluded(make):
    g = gen(4)
    cases = {"layer.bias": (16,), "conv.weight": (6, 4, 3), "model.embed_tokens.weight": (20, 12),
             "layer.weight": (20, 12)}
    m = make(alpha=0.6, exclude_keys=[r".*embed_tokens.*"])
    m.setup(["a", "b", "c"])
    for name, shape in cases.items():
        base = torch.randn(shape, generator=g)
        experts = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(3)]
        out = m.merge_tensor(name, base.clone(), [e.clone() for e in experts])
        mean_rule = base.double() + 0.6 * torch.stack(taus64(base, experts)).mean(0)
        rule = m.tensor_reports[name]["rule"]
        if name == "layer.weight":
            assert rule == "svd"
            assert float((out.double() - mean_rule).abs().max()) > 1e-3
        else:
            assert rule == "mean", name
            assert_rel(out, mean_rule, 1.0, 1e-6, name)


@pytest.mark.parametrize("make", [lambda: tsvm(alpha=0.5), lambda: rtsvm(), lambda: rtsvm(svd_solver="randomized")],
                         ids=["tsvm", "r_tsvm", "r_tsvm_randomized"])
def test_zero_task_vectors_give_base_exactly(make, tmp_path):
    g = gen(5)
    base = torch.randn(12, 10, generator=g)
    m = make()
    out = merge(m, "w", base, [base.clone() for _ in range(3)])
    assert torch.equal(out, base)
    assert m.tensor_reports["w"]["rule"] == "zero"
    # end to end, next to tensors that do change
    sd = {"w": base, "v": torch.randn(12, 10, generator=g)}
    experts = {f"e{i}": {"w": base.clone(), "v": sd["v"] + 0.1 * torch.randn(12, 10, generator=g)} for i in range(3)}
    model_out = tmp_path / "out"
    m = make()
    m.out_dir = str(model_out)
    m.run(make_pool(tmp_path, sd, experts))
    merged = read_folder(model_out)
    assert torch.equal(merged["w"], base) and torch.isfinite(merged["v"]).all()
    assert not torch.equal(merged["v"], sd["v"])
    assert m.last_report["tensors"]["w"]["rule"] == "zero"
    assert m.last_report["tensors"]["v"]["rule"] == "svd"


@pytest.mark.parametrize("shape,n", [((2, 10), 3), ((10, 2), 3), ((1, 8), 2), ((4, 4), 5)])
def test_matrix_too_small_takes_mean(shape, n):
    g = gen(6)
    base = torch.randn(shape, generator=g)
    experts = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n)]
    for m in (tsvm(alpha=0.8), rtsvm(alpha=0.8)):
        out = merge(m, "w", base, experts)
        assert m.tensor_reports["w"]["rule"] == "mean"
        mean_rule = base.double() + 0.8 * torch.stack(taus64(base, experts)).mean(0)
        assert_rel(out, mean_rule, 1.0, 1e-6)


def simple_pool(tmp_path, n=3):
    g = gen(8)
    base = {"w": torch.randn(8, 6, generator=g), "b": torch.randn(6, generator=g)}
    experts = {f"e{i}": {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for i in range(n)}
    return make_pool(tmp_path, base, experts)


@pytest.mark.parametrize("cls", [TSVM, RTSVM])
def test_fewer_than_two_experts(cls, tmp_path, count_reads):
    pool = simple_pool(tmp_path, n=1)
    with pytest.raises(ValueError, match="at least 2 experts"):
        cls(progress=False, device="cpu").run(pool)
    assert count_reads["n"] == 0


BAD_OPTIONS = [
    (RTSVM, dict(gamma=-0.1), "gamma"),
    (RTSVM, dict(gamma=1.5), "gamma"),
    (RTSVM, dict(epsilon=0.0), "epsilon"),
    (RTSVM, dict(epsilon=-1.0), "epsilon"),
    (RTSVM, dict(epsilon_mode="percent"), "epsilon_mode"),
    (RTSVM, dict(outlier_norm="max"), "outlier_norm"),
    (RTSVM, dict(outlier_reading="eq9"), "outlier_reading"),
    (RTSVM, dict(outlier_min_share=-0.1), "outlier_min_share"),
    (RTSVM, dict(outlier_min_share=1.5), "outlier_min_share"),
    (RTSVM, dict(outlier_min_share=float("nan")), "outlier_min_share"),
    (RTSVM, dict(outlier_min_share="high"), "outlier_min_share"),
    (RTSVM, dict(svd_solver="lanczos"), "svd_solver"),
    (TSVM, dict(svd_solver="lanczos"), "svd_solver"),
]


@pytest.mark.parametrize("cls,opts,word", BAD_OPTIONS, ids=[f"{c.__name__}-{o}" for c, o, _ in BAD_OPTIONS])
def test_bad_options_fail_before_reading(cls, opts, word, tmp_path, count_reads):
    pool = simple_pool(tmp_path)
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match=word):
        cls(progress=False, device="cpu", out_dir=str(out), **opts).run(pool)
    assert count_reads["n"] == 0
    assert not out.exists()


@pytest.mark.parametrize("solver", ["full", "auto"])
@pytest.mark.parametrize("mode", ["nan", "linalg_error"])
@pytest.mark.parametrize("cls", [TSVM, RTSVM])
def test_nonfinite_svd_names_the_tensor(cls, mode, solver, tmp_path, monkeypatch):
    """A failing or non-finite decomposition (LAPACK's SVD, or eigh on the Gram route) is an
    error naming the tensor."""
    pool = simple_pool(tmp_path)
    orig, orig_eigh = torch.linalg.svd, torch.linalg.eigh

    def bad_svd(A, full_matrices=True, **kw):
        if mode == "linalg_error":
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        U, S, Vh = orig(A, full_matrices=full_matrices, **kw)
        return U * float("nan"), S, Vh

    def bad_eigh(A, *a, **kw):
        if mode == "linalg_error":
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        w, W = orig_eigh(A, *a, **kw)
        return w, W * float("nan")

    if solver == "full":
        monkeypatch.setattr(torch.linalg, "svd", bad_svd)
    else:
        monkeypatch.setattr(torch.linalg, "eigh", bad_eigh)
    with pytest.raises(ValueError, match=r"tensor 'w'"):
        cls(progress=False, device="cpu", svd_solver=solver).run(pool)
    with pytest.raises(ValueError, match=r"tensor 'layers\.3\.w'"):
        merge(cls(progress=False, device="cpu", svd_solver=solver), "layers.3.w", torch.zeros(8, 6),
              [torch.ones(8, 6), torch.eye(8, 6)])


# ---------------------------------------------------------------------------------------
# 6. the randomized solver
# ---------------------------------------------------------------------------------------

def randomized_case(shape, n, seed, noise=1e-4):
    """Clearly low-rank τi: rank q + 4 ≤ q + oversample, with a small noise floor."""
    g = gen(seed)
    q = min(shape) // n
    base = (0.3 * torch.randn(shape, generator=g, dtype=F64)).float()
    experts = [(base.double() + lowrank_tau(shape, g, scale=1 + 0.2 * i, rank=q + 4, noise=noise, lo=0.5)).float()
               for i in range(n)]
    return base, experts


@pytest.mark.slow
@pytest.mark.parametrize("shape,n", [((96, 64), 4), ((40, 120), 3)])
def test_randomized_close_to_full(shape, n):
    base, experts = randomized_case(shape, n, seed=shape[0])
    q = min(shape) // n
    assert q + 10 < min(shape)  # the range finder really is a sketch here
    full = merge(tsvm(alpha=1.0), "w", base, experts) - base
    rand = merge(tsvm(alpha=1.0, svd_solver="randomized", svd_oversample=10, svd_n_iter=4), "w", base, experts) - base
    rel = float(torch.linalg.matrix_norm(rand - full) / torch.linalg.matrix_norm(full))
    assert rel < 1e-3, rel
    delta, _ = ref_tsvm(base, experts)
    assert float(torch.linalg.matrix_norm(rand.double() - delta) / torch.linalg.matrix_norm(delta)) < 1e-3
    # R-TSVM with the randomized solver: same weights and ranks, close Δ
    mf, mr = rtsvm(gamma=0.5, epsilon=0.02), rtsvm(gamma=0.5, epsilon=0.02, svd_solver="randomized")
    a, b = merge(mf, "w", base, experts) - base, merge(mr, "w", base, experts) - base
    assert mf.tensor_reports["w"]["k_i"] == mr.tensor_reports["w"]["k_i"]
    assert mf.tensor_reports["w"]["alpha"] == mr.tensor_reports["w"]["alpha"]
    assert float(torch.linalg.matrix_norm(b - a) / torch.linalg.matrix_norm(a)) < 1e-3


def test_randomized_is_seeded():
    base, experts = randomized_case((64, 48), 3, seed=9, noise=1e-2)
    a = merge(tsvm(svd_solver="randomized", seed=42), "w", base, experts)
    torch.manual_seed(123)  # the global RNG plays no part
    torch.randn(10)
    b = merge(tsvm(svd_solver="randomized", seed=42), "w", base, experts)
    assert torch.equal(a, b)
    c = merge(tsvm(svd_solver="randomized", seed=43), "w", base, experts)
    assert not torch.equal(a, c)
    # the tensor name is part of the seed, too
    d = merge(tsvm(svd_solver="randomized", seed=42), "other", base, experts)
    assert not torch.equal(a, d)
    # a poor sketch (no oversampling, no power iterations) on a not-exactly-low-rank input
    # is visibly seed-dependent
    e = merge(tsvm(svd_solver="randomized", svd_oversample=0, svd_n_iter=0, seed=1), "w", base, experts)
    f = merge(tsvm(svd_solver="randomized", svd_oversample=0, svd_n_iter=0, seed=2), "w", base, experts)
    assert float((e - f).abs().max()) > 1e-4 * float((e - base).abs().max())


def test_zero_task_vector_experts_are_left_out_of_the_stacks():
    """An expert whose τ is all zero on a matrix adds nothing: the merge is the stack of the
    others (q still ⌊r/n⌋ with n counting every expert), whatever basis LAPACK would pick for
    the zero matrix; the report lists the expert and keeps k_i = 0 for it."""
    base, experts = make_case((12, 9), 2, seed=31)
    experts = [experts[0], base.clone(), experts[1]]
    taus = taus64(base, experts)
    q = min(base.shape) // 3
    factors = ref_factors([taus[0], taus[2]], q)
    m = tsvm(alpha=1.0)
    out = merge(m, "w", base, experts)
    assert_merged(out, base, 1.0, ref_tsvm_delta_from_factors(factors))
    rep = m.tensor_reports["w"]
    assert rep["zero_experts"] == [1] and rep["k_i"] == [q, 0, q]
    # The same with the zero expert's SVD returning a different (arbitrary) basis.
    real_svd = torch.linalg.svd

    def svd_with_other_basis(A, full_matrices=True):
        U, S, Vh = real_svd(A, full_matrices=full_matrices)
        if not A.any():
            U, Vh = torch.flip(U, dims=[1]), torch.flip(Vh, dims=[0])
        return U, S, Vh

    import r3h.ops.svd as core

    orig = core.torch.linalg.svd
    core.torch.linalg.svd = svd_with_other_basis
    try:
        out2 = merge(tsvm(alpha=1.0), "w", base, experts)
    finally:
        core.torch.linalg.svd = orig
    assert torch.equal(out, out2)


# ---------------------------------------------------------------------------------------
# RESM: the paper's v3 name for R-TSVM
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("alias", ["resm", "resm_no_outlier", "resm_no_rank"])
def test_resm_configs_are_r_tsvm(alias):
    """`method=resm` (arXiv 2502.06876v3's "Reweighting Enhanced task Singular Merging") is
    R-TSVM: the same class, and every option of the r_tsvm config it stands for."""
    import importlib
    import os

    import yaml

    import r3h.methods as methods

    assert methods.RESM is RTSVM and methods.ALIASES[alias] == alias.replace("resm", "r_tsvm")
    folder = os.path.join(REPO, "config", "method")
    from r3h.methods.configs import load_config

    with open(os.path.join(folder, f"{alias}.yaml")) as f:
        assert yaml.safe_load(f) == {"defaults": [methods.ALIASES[alias], "_self_"]}  # composes, copies nothing
    cfg = load_config("method", alias)
    assert cfg == load_config("method", methods.ALIASES[alias])
    assert cfg["_target_"] == "r3h.methods.RTSVM" and cfg["device"] == "auto" and "tmp_dir" in cfg
    module, _, cls = cfg["_target_"].rpartition(".")
    assert getattr(importlib.import_module(module), cls) is RTSVM
    # fusion_bench has no method of that name for it to shadow
    fb = importlib.util.find_spec("fusion_bench_config")
    if fb is not None:
        fb_dir = list(fb.submodule_search_locations)[0]
        assert not os.path.exists(os.path.join(fb_dir, "method", f"{alias}.yaml"))


# ---------------------------------------------------------------------------------------
# 7. the Gram routes (svd_solver: auto) against the exact SVD, and their fallback
# ---------------------------------------------------------------------------------------

def realistic_taus(kind: str, shape, n: int, seed: int) -> List[torch.Tensor]:
    """Task vectors as fine-tuning gives them: a decaying low-rank part plus dense noise
    (`lowrank`), or DPO-sized updates (~1e-4 entries, a few directions over ~2e-5 noise)."""
    g = gen(seed)
    m, d = shape
    out = []
    for _ in range(n):
        if kind == "lowrank":
            t = lowrank_tau(shape, g, scale=0.05, rank=min(m, d) // 4, noise=0.05)
        else:
            t = lowrank_tau(shape, g, scale=1e-3, rank=6, lo=0.2) + 2e-5 * torch.randn(m, d, generator=g, dtype=F64)
        out.append(t)
    return out


@pytest.mark.parametrize("kind", ["lowrank", "dpo"])
@pytest.mark.parametrize("shape,n", [((96, 64), 4), ((40, 120), 3), ((300, 48), 5), ((64, 64), 5)])
def test_gram_route_matches_exact_svd(kind, shape, n):
    """`auto` (Gram routes) gives the exact SVD route's merged tensor within 1e-4 relative
    Frobenius, and the float64 reference closer still; every decomposition took the Gram
    route (these task vectors are well conditioned enough)."""
    from r3h.ops import svd as core

    taus = realistic_taus(kind, shape, n, seed=shape[0] + n)
    base = 0.3 * torch.randn(*shape, generator=gen(1), dtype=F64)
    experts = [(base + t).float() for t in taus]
    base32 = base.float()
    delta = ref_tsvm_delta_from_factors(ref_factors(taus64(base32, experts), min(shape) // n))
    ma, mf = tsvm(alpha=1.0), tsvm(alpha=1.0, svd_solver="full")
    auto = merge(ma, "w", base32, experts).double() - base32.double()
    full = merge(mf, "w", base32, experts).double() - base32.double()
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert rel(auto, full) <= 1e-4
    # as close to the float64 reference as the float32 SVD is (the polar factor of a nearly
    # square stack amplifies float32 round-off in both), or within 1e-5
    assert rel(auto, delta) <= max(1e-5, 2 * rel(full, delta)), (rel(auto, delta), rel(full, delta))
    routes = ma.tensor_reports["w"]["routes"]
    assert len(routes) == n + 2 and all(r.startswith("gram") for r in routes.values()), routes
    assert all(r == "svd" for r in mf.tensor_reports["w"]["routes"].values())
    # the triplets themselves: σ and the rank-q reconstruction U diag(σ) Vᵀ
    q = min(shape) // n
    for t in taus[:2]:
        (U, S, V), route = core.top_triplets(t.float(), q, "auto")
        U64, S64, Vh64 = torch.linalg.svd(t, full_matrices=False)
        assert route.name == "gram" and route.cond == pytest.approx(float(S64[0] / S64[q - 1]), rel=1e-6)
        assert_rel(S, S64[:q], S64[0], 1e-6, "singular values")
        ref = U64[:, :q] @ torch.diag(S64[:q]) @ Vh64[:q]
        assert_rel((U.double() * S.double()) @ V.double().T, ref, S64[0], 1e-5, "rank-q part")


def test_ill_conditioned_task_vector_falls_back_to_the_svd():
    """τ of rank 2 < q: σq = 0, the Gram cannot give Uq = τ Vq / σq; the route falls back to
    the exact SVD (the same triplets as `full`, bit for bit) and the report says so."""
    from r3h.ops import svd as core

    g = gen(7)
    shape, n = (30, 24), 3
    q = min(shape) // n
    base = torch.randn(*shape, generator=g)
    experts = [base + 0.01 * torch.randn(*shape, generator=g) for _ in range(n - 1)]
    low = (torch.randn(30, 2, generator=g) @ torch.randn(2, 24, generator=g)) * 0.01
    experts.append(base + low)
    tau = experts[-1] - base
    got, route = core.top_triplets(tau.clone(), q, "auto")
    assert route.fallback and route.name == "svd" and route.cond > core.GRAM_MAX_COND
    assert "fallback" in route.describe()
    exact, _ = core.top_triplets(tau.clone(), q, "full")
    assert all(torch.equal(a, b) for a, b in zip(got, exact))
    m = tsvm()
    out = merge(m, "w", base, experts)
    routes = m.tensor_reports["w"]["routes"]
    assert routes["expert 2"].startswith("svd (fallback: κ=") and routes["expert 0"].startswith("gram")
    delta = ref_tsvm_delta_from_factors(ref_factors(taus64(base, experts), q))
    # only the rank-2 part of expert 2 is determined; its other columns carry σ ≈ 0 but move
    # the polar factors, as they do for the exact SVD: compare with the `full` route
    full = merge(tsvm(svd_solver="full"), "w", base, experts)
    assert float((out.double() - full.double()).norm() / (full.double() - base.double()).norm()) <= 1e-4
    assert torch.isfinite(delta).all()


def test_nearly_dependent_stack_falls_back_for_the_polar_factor():
    """Two experts with the same τ: the stacked Û has repeated columns, λmin(ÛᵀÛ) ≈ 0, and the
    polar factor falls back to the exact SVD (bit for bit `polar`)."""
    from r3h.ops import svd as core

    g = gen(8)
    A = torch.linalg.qr(torch.randn(40, 6, generator=g)).Q.float()
    stack = torch.cat([A, A], dim=1)
    P, G, route = core.polar_factor(stack.clone(), "auto")
    assert route.fallback and route.cond > core.GRAM_MAX_COND
    assert torch.equal(P, core.polar(stack))
    assert torch.allclose(G, stack.double().T @ stack.double())
    # well conditioned: the Gram route, equal to the float64 polar factor
    B = torch.randn(40, 12, generator=g)
    P, _, route = core.polar_factor(B.clone(), "auto")
    assert route.name == "gram" and not route.fallback
    assert_rel(P, ref_polar(B.double()), 1.0, 1e-5, "polar factor")
    # a merge with two identical experts takes the fallback for both stacks and says so (the
    # polar factor of a rank-deficient stack is not unique: any route's completion is arbitrary)
    base = torch.randn(24, 18, generator=g)
    e = base + 0.02 * torch.randn(24, 18, generator=g)
    experts = [e, e.clone(), base + 0.02 * torch.randn(24, 18, generator=g)]
    m = tsvm()
    out = merge(m, "w", base, experts)
    routes = m.tensor_reports["w"]["routes"]
    assert "fallback" in routes["polar U"] and "fallback" in routes["polar V"], routes
    assert torch.isfinite(out).all()


class CountingExperts(Sequence):
    """The engine's lazy experts: a fresh copy per read; counts the copies alive at once."""

    def __init__(self, tensors):
        self.tensors, self.alive, self.most, self.reads = tensors, 0, 0, 0

    def __len__(self):
        return len(self.tensors)

    def _gone(self):
        self.alive -= 1

    def __getitem__(self, i):
        import weakref

        t = self.tensors[i].clone()
        self.alive += 1
        self.reads += 1
        self.most = max(self.most, self.alive)
        weakref.finalize(t, self._gone)
        return t


@pytest.mark.parametrize("mode, most", [("absolute", 1), ("relative", 4)])
def test_r_tsvm_holds_one_task_vector_at_a_time(mode, most):
    """R-TSVM takes each τi's statistics as its triplets are computed and releases it, as
    TSVM does; only the relative ε (the RMS of every τ first) holds them all. The merge is
    the definition's either way."""
    g = gen(11)
    base = torch.randn(24, 16, generator=g)
    experts = [base + 0.05 * torch.randn(24, 16, generator=g) for _ in range(4)]
    m = rtsvm(alpha=0.7, gamma=0.5, epsilon=0.04 if mode == "absolute" else 0.5, epsilon_mode=mode,
              outlier_min_share=0.0)
    m.setup([f"e{i}" for i in range(4)])
    lazy = CountingExperts(experts)
    out = m.merge_tensor("layer.weight", base.clone(), lazy)
    assert lazy.reads == 4 and lazy.most == most
    want = merge(rtsvm(alpha=0.7, gamma=0.5, epsilon=0.04 if mode == "absolute" else 0.5, epsilon_mode=mode,
                       outlier_min_share=0.0), "layer.weight", base, experts)
    assert torch.equal(out, want)


def test_merge_diagnostics_count_the_guard_and_omega_at_one():
    """r3h.analysis.merge_report.svd_merge_summary on R-TSVM's own report: Adam-like DPO updates
    (|τ| ≈ 5e-5 against the absolute ε = 0.1) give Ω = 1 on every matrix, so k = ⌊r (1 − γ)⌋, and
    the guard gives equal weights; a Gaussian τ of scale 1 gives Ω < 1 and Eq. 8's weights."""
    from r3h.analysis.merge_report import svd_merge_summary

    base, experts = adam_like_case()
    m = rtsvm()
    m.setup([f"e{i}" for i in range(len(experts))])
    for name in ("a", "b"):
        m.merge_tensor(name, base.clone(), [e.clone() for e in experts])
    m.merge_tensor("bias", base[0].clone(), [e[0].clone() for e in experts])  # a vector: the mean rule
    g = gen(7)
    wide = [(base.double() + torch.randn(base.shape, generator=g, dtype=F64)).float() for _ in experts]
    m.merge_tensor("c", base.clone(), wide)
    d = svd_merge_summary(m.tensor_reports)
    r = min(base.shape)
    assert d["tensors"] == 4 and d["svd_matrices"] == 3 and d["rules"] == {"svd": 3, "mean": 1}
    assert d["alpha_rule"] == {"equal (guard)": 2, "eq8": 1}
    om = [1.0, 1.0, m.tensor_reports["c"]["omega"]]
    assert om[2] < 0.2  # |N(0, 1)| < 0.1 for about 8% of the entries
    assert d["omega"] == pytest.approx({"mean": sum(om) / 3, "min": om[2], "max": 1.0, "share_at_1": 2 / 3})
    assert m.tensor_reports["a"]["k"] == int(r * (1 - 0.5))
    assert d["k_over_r"]["min"] == pytest.approx(int(r * 0.5) / r)
    a = m.tensor_reports["c"]["alpha"]
    assert d["alpha_max_over_min"] == pytest.approx(max(a) / min(a))
    assert svd_merge_summary({"x": {"rule": "mean"}}) == {"tensors": 1, "svd_matrices": 0, "rules": {"mean": 1}}
