"""The eleven merging methods against float64 references written from the definitions
in the design (docs: methods.md), plus their edge cases, determinism and end-to-end runs.

The references (tests/reference/methods.py) never call `r3h.ops`: top-k, ranks, keep
probabilities, sign election, normalisation and Model Stock's cosines are all recomputed there
in float64; only the generator of the random masks' uniforms (`tensor_generator`) is r3h's, so
that both draw the same masks.
"""

from __future__ import annotations

import math
from typing import Dict

import pytest
import torch

from r3h.methods import METHODS
from r3h.ops import tensor_generator
from tests.conftest import make_pool, read_folder
from tests.reference import methods as ref
from tests.reference.methods import _desc_order, ref_breadcrumbs_mask, ref_combine, ref_model_stock_t, ref_topk_mask

RTOL, ATOL = 1e-5, 5e-6


def reference(method: str, kwargs: dict, name: str, base, experts):
    """The float64 reference merge, its random masks drawn with r3h's seeding rule."""
    return ref.reference(method, kwargs, name, base, experts, generator_for=tensor_generator)


# ---------------------------------------------------------------------------------------
# data and helpers
# ---------------------------------------------------------------------------------------

WEIGHTS = [0.7, 1.3, 0.45]
PREFS = {1: [1.0], 2: [0.3, 0.7], 3: [0.2, 0.5, 0.3]}
SWEEPS = {1: [[1.0], [1.0]], 2: [[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]], 3: [[0.2, 0.5, 0.3], [0.0, 0.0, 1.0]]}


def resolve(kwargs: dict, n: int) -> dict:
    """Replace the placeholders W (weights), P (one preference), PS (a λ sweep) for n experts."""
    out = dict(kwargs)
    if out.get("weights") == "W":
        out["weights"] = WEIGHTS[:n]
    if out.get("preference") == "P":
        out["preference"] = PREFS[n]
    if out.get("preference") == "PS":
        out["preference"] = SWEEPS[n]
    return out


def make_method(method: str, **kwargs):
    m = METHODS[method](progress=False, **kwargs)
    return m


def make_taus(shape, n, gen, flip=0.25):
    """n task vectors with well separated, distinct magnitudes (no top-k or rank ties)
    and partly shared signs (so the experts agree in part, conflict in part)."""
    numel = math.prod(shape)
    common = torch.where(torch.rand(numel, generator=gen) < 0.5, -1.0, 1.0).double()
    taus = []
    for _ in range(n):
        mags = (torch.randperm(numel, generator=gen).double() + 1 + 0.6 * torch.rand(numel, generator=gen).double()) / numel
        sign = torch.where(torch.rand(numel, generator=gen) < flip, -common, common)
        taus.append((sign * mags).reshape(shape))
    return taus


def make_case(shape, n, seed):
    """(θ0, [θ1 … θn]) in float32."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    experts = [(base.double() + t).float() for t in make_taus(shape, n, gen)]
    return base, experts


# a matrix, a bias, and a one-column matrix (DELLA's rows of one entry keep p = density)
SHAPES = {"model.layers.0.mlp.w": (8, 12), "model.layers.0.mlp.b": (12,), "model.layers.0.mlp.col": (6, 1)}


def assert_ref(actual, expected, rtol=RTOL, atol=ATOL):
    assert actual.dtype == torch.float32
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)


def fresh(experts):
    """merge_tensor may work in the experts' buffers in place (the engine hands it fresh
    copies), so direct calls pass copies and keep the originals for the reference."""
    return [e.clone() for e in experts]


def merge(method: str, kwargs: dict, name: str, base, experts):
    m = make_method(method, **kwargs)
    m.setup([f"expert{i}" for i in range(len(experts))])
    return m.merge_tensor(name, base, fresh(experts))


# ---------------------------------------------------------------------------------------
# 1. every method against its reference
# ---------------------------------------------------------------------------------------

CASES = [
    ("weight_average", {}),
    ("weight_average", {"weights": "W"}),
    ("rewarded_soup", {}),
    ("rewarded_soup", {"preference": "P"}),
    ("rewarded_soup", {"preference": "PS"}),
    ("r3h_task_arithmetic", {}),
    ("r3h_task_arithmetic", {"scaling_factor": 0.6, "weights": "W"}),
    ("ties", {}),
    ("ties", {"density": 0.5, "scaling_factor": 0.8, "weights": "W"}),
    ("ties", {"density": 0.35, "consensus": "count", "normalize": False}),
    ("ties", {"density": 0.6, "consensus": "count", "normalize": True, "weights": "W"}),
    ("dare", {}),
    ("dare", {"density": 0.7, "rescale": "l1", "seed": 7, "weights": "W", "scaling_factor": 0.9}),
    ("dare", {"density": 0.3, "rescale": "none"}),
    ("dare_ties", {}),
    ("dare_ties", {"density": 0.6, "normalize": True, "consensus": "count", "weights": "W"}),
    ("dare_ties", {"rescale": "l1", "seed": 3, "scaling_factor": 1.5}),
    ("della", {}),
    ("della", {"density": 0.6, "epsilon": 0.3, "rescale": "l1", "weights": "W", "scaling_factor": 1.2}),
    ("della", {"epsilon": 0.0, "rescale": "none"}),
    ("della", {"density": 0.4, "epsilon": 0.2, "seed": 11}),
    ("della_ties", {}),
    ("della_ties", {"normalize": False, "consensus": "count", "density": 0.7, "epsilon": 0.25}),
    ("della_ties", {"rescale": "none", "weights": "W", "seed": 5}),
    ("breadcrumbs", {}),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.1, "weights": "W", "scaling_factor": 0.7}),
    ("breadcrumbs", {"density": 0.6, "gamma": 0.5}),  # n_top + n_keep > n: the top shrinks
    ("breadcrumbs", {"density": 0.3, "gamma": 0.2}),
    ("breadcrumbs_ties", {}),
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.1, "normalize": True, "consensus": "count"}),
    ("breadcrumbs_ties", {"density": 0.7, "gamma": 0.15, "weights": "W"}),
    ("model_stock", {}),
]


def _case_id(case):
    method, kw = case
    return method + ("-" + "-".join(f"{k}={v}" for k, v in kw.items()) if kw else "")


@pytest.mark.parametrize("n", [1, 2, 3], ids=lambda n: f"{n}experts")
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_method_matches_reference(case, n):
    method, kwargs = case
    if method == "model_stock" and n == 1:
        pytest.skip("model_stock needs two experts (see test_model_stock_one_expert_raises)")
    kwargs = resolve(kwargs, n)
    for k, (name, shape) in enumerate(SHAPES.items()):
        base, experts = make_case(shape, n, seed=100 * n + k)
        out = merge(method, kwargs, name, base, experts)
        ref = reference(method, kwargs, name, base, experts)
        if method == "rewarded_soup":
            assert isinstance(out, list) and len(out) == len(ref)
            for o, r in zip(out, ref):
                assert_ref(o, r)
        else:
            assert isinstance(out, torch.Tensor) and out.shape == shape
            assert_ref(out, ref)
            if method != "weight_average" and shape == (8, 12):
                # the merge moved away from θ0 (the reference is not trivially the base)
                assert not torch.allclose(ref, base.double())


def test_reference_masks_are_nontrivial():
    """Guard the reference data: the sparsifiers keep a strict, non-empty subset and
    the experts disagree in sign somewhere (so sign election matters)."""
    base, experts = make_case((8, 12), 3, seed=300)
    taus = [e.double() - base.double() for e in experts]
    assert ref_topk_mask(taus[0], 0.35).sum() == 33
    bc = ref_breadcrumbs_mask(taus[0], 0.6, 0.5)
    assert bc.sum() == 57 and not bc.reshape(-1)[_desc_order(taus[0])[0]]
    mask, p = ref.ref_magprune(taus[0], 0.5, 0.1, tensor_generator(42, "x", 0))
    assert 0 < mask.sum() < 96 and p.min() == pytest.approx(0.4) and p.max() == pytest.approx(0.6)
    signs = torch.stack([t.sign() for t in taus])
    assert ((signs != signs[0]).any(dim=0)).sum() > 10


# ---------------------------------------------------------------------------------------
# 2. edge cases
# ---------------------------------------------------------------------------------------

def test_model_stock_one_expert_raises(pool_factory):
    base, experts = make_case((8, 12), 1, seed=1)
    m = make_method("model_stock")
    m.setup(["a"])
    with pytest.raises(ValueError, match="two|2"):
        m.merge_tensor("w", base, fresh(experts))
    pool = pool_factory({"w": base}, {"a": {"w": experts[0]}})
    with pytest.raises(ValueError, match="two|2"):
        make_method("model_stock").run(pool)


@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_one_expert_closed_forms(scaling):
    """With one expert, the methods reduce to simple closed forms."""
    name = "model.layers.0.mlp.w"
    base, (theta,) = make_case((8, 12), 1, seed=2)
    tau = theta.double() - base.double()
    b = base.double()
    assert_ref(merge("weight_average", {"weights": [0.3]}, name, base, [theta]), theta.double())
    assert_ref(merge("rewarded_soup", {}, name, base, [theta])[0], theta.double())
    kw = {"scaling_factor": scaling, "weights": [0.5]}
    assert_ref(merge("r3h_task_arithmetic", kw, name, base, [theta]), b + scaling * 0.5 * tau)
    # ties with normalize: the disjoint mean of one expert is τ̃ itself, whatever its weight
    topk = torch.where(ref_topk_mask(tau, 0.25), tau, torch.zeros_like(tau))
    assert_ref(merge("ties", {**kw, "density": 0.25}, name, base, [theta]), b + scaling * topk)
    assert_ref(merge("ties", {**kw, "density": 0.25, "normalize": False}, name, base, [theta]), b + scaling * 0.5 * topk)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name", list(SHAPES))
def test_density_one_is_task_arithmetic_or_ties_without_trim(n, name):
    base, experts = make_case(SHAPES[name], n, seed=7 + n)
    common = {"weights": WEIGHTS[:n], "scaling_factor": 0.8}
    ta = merge("r3h_task_arithmetic", common, name, base, experts)
    assert_ref(ta, reference("r3h_task_arithmetic", common, name, base, experts))
    for method, extra in [("dare", {}), ("dare", {"rescale": "l1"}), ("della", {"epsilon": 0.3}),
                          ("breadcrumbs", {"gamma": 0.2}), ("breadcrumbs", {"gamma": 0.0})]:
        out = merge(method, {**common, **extra, "density": 1.0}, name, base, experts)
        torch.testing.assert_close(out, ta, rtol=1e-6, atol=1e-6, msg=f"{method} {extra}")
    for normalize in (True, False):
        ties = merge("ties", {**common, "density": 1.0, "normalize": normalize}, name, base, experts)
        # TIES without trimming: sign election over the full τi
        expected = base.double() + 0.8 * ref_combine([e.double() - base.double() for e in experts],
                                                     WEIGHTS[:n], "sum", normalize)
        assert_ref(ties, expected)
        for method in ("dare_ties", "della_ties", "breadcrumbs_ties"):
            out = merge(method, {**common, "density": 1.0, "normalize": normalize}, name, base, experts)
            torch.testing.assert_close(out, ties, rtol=1e-6, atol=1e-6, msg=method)


@pytest.mark.parametrize("density", [0.9, 0.4])
def test_breadcrumbs_gamma_zero_keeps_the_top(density):
    """γ = 0 removes nothing from the top: the mask is the top-density fraction
    (MergeKit's `[n_bot:-0]` slice would zero the whole τ)."""
    name = "model.layers.0.mlp.w"
    base, experts = make_case((8, 12), 2, seed=21)
    out = merge("breadcrumbs", {"density": density, "gamma": 0.0, "scaling_factor": 1.0}, name, base, experts)
    taus = [e.double() - base.double() for e in experts]
    kept = [torch.where(ref_topk_mask(t, density), t, torch.zeros_like(t)) for t in taus]
    assert_ref(out, base.double() + kept[0] + kept[1])
    # the largest entry of each τ survives; the merge is not θ0
    assert not torch.allclose(out, base)
    top = _desc_order(taus[0])[0]
    assert out.reshape(-1)[top] != base.reshape(-1)[top]
    out_ties = merge("breadcrumbs_ties", {"density": density, "gamma": 0.0, "scaling_factor": 1.0}, name, base,
                     experts)
    assert_ref(out_ties, base.double() + ref_combine(kept, [1.0, 1.0], "sum", False))


@pytest.mark.parametrize("n", [2, 3])
def test_identical_experts(n):
    """Where the definition gives the expert back, it comes back."""
    name = "model.layers.0.mlp.w"
    base, (theta,) = make_case((8, 12), 1, seed=31)
    experts = [theta.clone() for _ in range(n)]
    tau = theta.double() - base.double()
    b, th = base.double(), theta.double()
    assert_ref(merge("weight_average", {"weights": WEIGHTS[:n]}, name, base, experts), th)
    for o in merge("rewarded_soup", {"preference": SWEEPS[n]}, name, base, experts):
        assert_ref(o, th)
    w = [1.0 / n] * n
    s1 = {"scaling_factor": 1.0}
    assert_ref(merge("r3h_task_arithmetic", {"weights": w, **s1}, name, base, experts), th)
    assert_ref(merge("r3h_task_arithmetic", s1, name, base, experts), b + n * tau)
    # at the default s = 0.2, task arithmetic of n copies of τ is θ0 + 0.2 n τ
    assert_ref(merge("r3h_task_arithmetic", {}, name, base, experts), b + 0.2 * n * tau)
    # TIES with normalize: the disjoint mean of n copies of τ̃ is τ̃
    assert_ref(merge("ties", {"density": 1.0, "weights": WEIGHTS[:n], **s1}, name, base, experts), th)
    topk = torch.where(ref_topk_mask(tau, 0.3), tau, torch.zeros_like(tau))
    assert_ref(merge("ties", {"density": 0.3, "weights": WEIGHTS[:n], **s1}, name, base, experts), b + topk)
    assert_ref(merge("ties", {"density": 0.3, "normalize": False, **s1}, name, base, experts), b + n * topk)
    for method in ("dare_ties", "della_ties", "breadcrumbs_ties"):
        assert_ref(merge(method, {"density": 1.0, "normalize": True, **s1}, name, base, experts), th)
    # Model Stock: every cosine is 1, so c = 1, t = 1 and θ = mean θi = θ
    assert ref_model_stock_t([tau] * n) == pytest.approx(1.0)
    assert_ref(merge("model_stock", {}, name, base, experts), th)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_zero_task_vectors_give_the_base(case, n):
    method, kwargs = case
    if method == "model_stock" and n == 1:
        pytest.skip("model_stock needs two experts")
    kwargs = resolve(kwargs, n)
    for name, shape in SHAPES.items():
        base = torch.randn(shape, generator=torch.Generator().manual_seed(5))
        out = merge(method, kwargs, name, base, [base.clone() for _ in range(n)])
        for o in out if isinstance(out, list) else [out]:
            assert torch.isfinite(o).all()
            torch.testing.assert_close(o, base, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method, kwargs", [
    ("rewarded_soup", {"preference": [0.5, 0.6]}),
    ("rewarded_soup", {"preference": [1.2, -0.2]}),
    ("rewarded_soup", {"preference": [[0.5, 0.5], [0.9, 0.2]]}),
    ("weight_average", {"weights": [1.0, -1.0]}),
    ("weight_average", {"weights": [0.0, 0.0]}),
    ("r3h_task_arithmetic", {"weights": [1.0, 2.0, 3.0]}),
    ("ties", {"density": 0.0}),
    ("ties", {"density": 1.5}),
    ("ties", {"consensus": "max"}),
    ("dare", {"rescale": "l2"}),
    ("della", {"density": 0.5, "epsilon": 0.5}),
    ("della", {"density": 0.8, "epsilon": 0.3}),
    ("della", {"epsilon": -0.1}),
    ("breadcrumbs", {"gamma": 1.0}),
])
def test_invalid_hyperparameters_fail_at_setup(method, kwargs):
    """Refused at setup, before any tensor is read, by an error that names the option at fault."""
    with pytest.raises(ValueError, match="|".join(kwargs)):
        make_method(method, **kwargs).setup(["a", "b"])


# ---------------------------------------------------------------------------------------
# 3. Model Stock's degenerate rule
# ---------------------------------------------------------------------------------------

def test_model_stock_opposite_task_vectors_stay_at_base():
    """c = −1 (two opposite τ): t = 0, θ = θ0 (MergeKit's formula would give 2c/(1+c) = ∞)."""
    base, (theta,) = make_case((8, 12), 1, seed=41)
    tau = theta - base
    out = merge("model_stock", {}, "w", base, [base + tau, base - tau])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, base, rtol=0, atol=0)


def test_model_stock_pole_at_minus_half_stays_at_base():
    """Three τ at 120°: c = −1/2 = −1/(n−1), the pole of n·c/(1+(n−1)·c)."""
    base = torch.randn(2, 3, generator=torch.Generator().manual_seed(42))
    u, v = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    dirs = [u, -0.5 * u + (3 ** 0.5 / 2) * v, -0.5 * u - (3 ** 0.5 / 2) * v]
    experts = [base + d.reshape(2, 3) for d in dirs]
    out = merge("model_stock", {}, "w", base, experts)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, base, rtol=0, atol=0)


def test_model_stock_slightly_negative_c_stays_at_base():
    base = torch.zeros(4)
    experts = [torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([-0.1, 1.0, 0.0, 0.0])]
    out = merge("model_stock", {}, "b", base + 1, [e + 1 for e in experts])
    torch.testing.assert_close(out, base + 1, rtol=0, atol=0)


def test_model_stock_small_positive_c():
    """c > 0 uses Jang et al.'s ratio unclamped: here c = 0.1, t = 2·0.1/1.1."""
    base = torch.full((4,), 2.0)
    t1 = torch.tensor([1.0, 0.0, 0.0, 0.0])
    t2 = torch.tensor([0.1, math.sqrt(1 - 0.01), 0.0, 0.0])
    out = merge("model_stock", {}, "b", base, [base + t1, base + t2])
    t = 2 * 0.1 / 1.1
    expected = base.double() + t * (t1.double() + t2.double()) / 2
    assert_ref(out, expected)


def test_model_stock_zero_task_vector_counts_cosine_zero():
    """τ1 = τ2 = v, τ3 = 0: cosines (1, 0, 0), c = 1/3, t = 3c/(1+2c) = 0.6,
    θ = θ0 + 0.6 · (2v/3) = θ0 + 0.4 v."""
    gen = torch.Generator().manual_seed(43)
    base = torch.randn(8, 12, generator=gen)
    v = torch.randn(8, 12, generator=gen)
    out = merge("model_stock", {}, "w", base, [base + v, base + v, base.clone()])
    assert_ref(out, base.double() + 0.4 * (base + v).double() - 0.4 * base.double())
    # a pair with one zero τ: c = 0 → θ0
    out2 = merge("model_stock", {}, "w", base, [base + v, base.clone()])
    torch.testing.assert_close(out2, base, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# 4. determinism of the random methods
# ---------------------------------------------------------------------------------------

RANDOM = [
    ("dare", {"density": 0.5}),
    ("dare_ties", {"density": 0.4, "rescale": "l1"}),
    ("della", {"density": 0.5, "epsilon": 0.2}),
    ("della_ties", {"density": 0.6, "epsilon": 0.1}),
]
TENSORS = {f"model.layers.{i}.w": (8, 12) for i in range(3)} | {"model.norm.weight": (12,)}


def _inputs():
    return {name: make_case(shape, 3, seed=500 + i) for i, (name, shape) in enumerate(TENSORS.items())}


@pytest.mark.parametrize("case", RANDOM, ids=[c[0] for c in RANDOM])
def test_random_methods_same_seed_bit_identical_in_any_order(case):
    method, kwargs = case
    inputs = _inputs()
    names = list(inputs)
    m1 = make_method(method, seed=123, **kwargs)
    m1.setup(["a", "b", "c"])
    first = {n: m1.merge_tensor(n, inputs[n][0], fresh(inputs[n][1])) for n in names}
    m2 = make_method(method, seed=123, **kwargs)
    m2.setup(["a", "b", "c"])
    # reversed order, and with repeated work interleaved: no state carries between calls
    second = {}
    for n in reversed(names):
        m2.merge_tensor(names[0], inputs[names[0]][0], fresh(inputs[names[0]][1]))
        second[n] = m2.merge_tensor(n, inputs[n][0], fresh(inputs[n][1]))
    for n in names:
        assert torch.equal(first[n], second[n]), n
        assert_ref(first[n], reference(method, {"seed": 123, **kwargs}, n, *inputs[n]))


@pytest.mark.parametrize("case", RANDOM, ids=[c[0] for c in RANDOM])
def test_random_methods_depend_on_seed_name_and_index(case):
    method, kwargs = case
    base, experts = make_case((8, 12), 3, seed=77)
    a = merge(method, {"seed": 1, **kwargs}, "x.weight", base, experts)
    b = merge(method, {"seed": 2, **kwargs}, "x.weight", base, experts)
    assert not torch.equal(a, b)
    # the same values under another name draw other masks
    c = merge(method, {"seed": 1, **kwargs}, "y.weight", base, experts)
    assert not torch.equal(a, c)
    # the mask follows the expert's index, not its values
    d = merge(method, {"seed": 1, **kwargs}, "x.weight", base, [experts[1], experts[0], experts[2]])
    assert not torch.equal(a, d)


# ---------------------------------------------------------------------------------------
# 5-6. end to end through run(pool)
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama():
    """(config dict, base state dict) of a real tiny Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return cfg.to_dict(), sd


def llama_experts(base_sd: Dict[str, torch.Tensor], n: int, seed: int) -> Dict[str, Dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    experts = {f"expert{i}": {} for i in range(n)}
    for name, t in base_sd.items():
        taus = make_taus(tuple(t.shape), n, gen)
        for i in range(n):
            experts[f"expert{i}"][name] = (t.double() + 0.05 * taus[i]).float()
    return experts


def check_against_reference(merged: Dict[str, torch.Tensor], method, kwargs, base_sd, experts, exclude=()):
    import re

    assert set(merged) == set(base_sd)
    ex = list(experts.values())
    for name in base_sd:
        got = merged[name]
        assert got.dtype == base_sd[name].dtype and got.shape == base_sd[name].shape
        thetas = [e[name] for e in ex]
        if any(re.fullmatch(p, name) for p in exclude):
            b = base_sd[name].double()
            expected = b + sum(t.double() - b for t in thetas) / len(thetas)
        else:
            expected = reference(method, kwargs, name, base_sd[name], thetas)
            if isinstance(expected, list):  # rewarded_soup: one λ
                (expected,) = expected
        assert_ref(got, expected)


def model_tensors(model) -> Dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_run_in_memory_ties(llama, tmp_path):
    cfg, base_sd = llama
    experts = llama_experts(base_sd, 3, seed=1)
    pool = make_pool(tmp_path, base_sd, experts, config=cfg)
    kwargs = {"density": 0.4, "weights": [0.5, 1.0, 0.8], "scaling_factor": 0.9}
    model = make_method("ties", **kwargs).run(pool)
    assert type(model).__name__ == "LlamaForCausalLM"
    check_against_reference(model_tensors(model), "ties", kwargs, base_sd, experts)


def test_run_out_dir_dare_ties_sharded_inputs(llama, tmp_path):
    cfg, base_sd = llama
    experts = llama_experts(base_sd, 2, seed=2)
    pool = make_pool(tmp_path / "in", base_sd, experts, config=cfg, shards=3)
    kwargs = {"density": 0.6, "seed": 9, "normalize": True}
    out = tmp_path / "merged"
    assert make_method("dare_ties", out_dir=str(out), **kwargs).run(pool) is None
    assert (out / "config.json").exists()
    merged = read_folder(out)
    check_against_reference(merged, "dare_ties", kwargs, base_sd, experts)
    # a second run gives bit-identical tensors
    out2 = tmp_path / "merged2"
    make_method("dare_ties", out_dir=str(out2), **kwargs).run(pool)
    again = read_folder(out2)
    assert all(torch.equal(merged[k], again[k]) for k in merged)


def test_run_bin_inputs_della_in_memory_and_out_dir(llama, tmp_path):
    cfg, base_sd = llama
    experts = llama_experts(base_sd, 3, seed=3)
    pool = make_pool(tmp_path / "in", base_sd, experts, config=cfg, fmt="bin")
    kwargs = {"density": 0.5, "epsilon": 0.2, "weights": [1.0, 0.5, 0.25]}
    model = make_method("della", **kwargs).run(pool)
    in_memory = model_tensors(model)
    check_against_reference(in_memory, "della", kwargs, base_sd, experts)
    make_method("della", out_dir=str(tmp_path / "merged"), **kwargs).run(pool)
    on_disk = read_folder(tmp_path / "merged")
    assert all(torch.equal(in_memory[k], on_disk[k]) for k in on_disk)


def test_run_breadcrumbs_and_model_stock(llama, tmp_path):
    cfg, base_sd = llama
    experts = llama_experts(base_sd, 3, seed=4)
    pool = make_pool(tmp_path, base_sd, experts, config=cfg)
    kwargs = {"density": 0.5, "gamma": 0.1}
    check_against_reference(model_tensors(make_method("breadcrumbs", **kwargs).run(pool)),
                            "breadcrumbs", kwargs, base_sd, experts)
    check_against_reference(model_tensors(make_method("model_stock").run(pool)),
                            "model_stock", {}, base_sd, experts)


def test_run_weight_average_and_rewarded_soup_without_base(llama, tmp_path):
    cfg, base_sd = llama
    experts = llama_experts(base_sd, 2, seed=5)
    pool = make_pool(tmp_path / "in", None, experts, config=cfg)
    model = make_method("weight_average", weights={"expert1": 1.0, "expert0": 3.0}).run(pool)
    check_against_reference(model_tensors(model), "weight_average", {"weights": [3.0, 1.0]}, base_sd, experts)
    sweep = [[0.25, 0.75], [1.0, 0.0]]
    out = tmp_path / "soup"
    make_method("rewarded_soup", preference=sweep, out_dir=str(out)).run(pool)
    for i, lam in enumerate(sweep):
        merged = read_folder(out / f"preference_{i:02d}")
        check_against_reference(merged, "rewarded_soup", {"preference": [lam]}, base_sd, experts)
    assert (out / "sweep.json").exists()


def test_exclude_keys_take_base_plus_mean_task_vector(llama, tmp_path):
    cfg, base_sd = llama
    experts = llama_experts(base_sd, 3, seed=6)
    pool = make_pool(tmp_path, base_sd, experts, config=cfg)
    exclude = [r"model\.embed_tokens\.weight", r".*norm.*"]
    kwargs = {"density": 0.3}
    model = make_method("ties", exclude_keys=exclude, **kwargs).run(pool)
    merged = model_tensors(model)
    check_against_reference(merged, "ties", kwargs, base_sd, experts, exclude=exclude)
    excluded = [n for n in base_sd if any(__import__("re").fullmatch(p, n) for p in exclude)]
    assert "model.embed_tokens.weight" in excluded and "model.norm.weight" in excluded
    assert "lm_head.weight" not in excluded
    # the excluded tensors are really not trimmed: they differ from the TIES merge
    ties = {n: reference("ties", kwargs, n, base_sd[n], [e[n] for e in experts.values()]) for n in excluded}
    assert all(not torch.allclose(merged[n].double(), ties[n], atol=1e-4) for n in excluded)


def test_exclude_keys_is_a_full_match(llama, tmp_path):
    """'embed_tokens' only matches a name equal to it: model.embed_tokens.weight is merged."""
    cfg, base_sd = llama
    experts = llama_experts(base_sd, 2, seed=7)
    pool = make_pool(tmp_path, base_sd, experts, config=cfg)
    kwargs = {"density": 0.3}
    model = make_method("ties", exclude_keys=["embed_tokens", "lm_head"], **kwargs).run(pool)
    check_against_reference(model_tensors(model), "ties", kwargs, base_sd, experts)


def test_declared_capabilities_are_what_the_methods_do():
    """What a sweep or a search does differently for a method comes from the method's class:
    `uses_svd_cache` iff it takes an `svd_cache` option, `multi_preference` iff a list of λ
    gives one model per λ, `distributed` iff it runs on Fabric."""
    import inspect

    from fusion_bench.mixins.lightning_fabric import LightningFabricMixin

    from r3h.methods.configs import build_method, declares, load_method_config

    for name, cls in METHODS.items():
        takes_cache = any("svd_cache" in inspect.signature(k.__init__).parameters for k in cls.__mro__
                          if "__init__" in k.__dict__)
        assert declares(cls, "uses_svd_cache") == takes_cache, name
        assert declares(cls, "distributed") == issubclass(cls, LightningFabricMixin), name
        m = build_method(load_method_config(name), progress=False)
        assert type(m) is cls
        if "preference" in inspect.signature(cls.__init__).parameters:
            m = build_method(load_method_config(name), preference=[[1.0, 0.0], [0.5, 0.5]])
            m.setup(["a", "b"])
            assert declares(cls, "multi_preference") == (m.output_names() is not None and len(m.output_names()) == 2)
        else:
            assert not declares(cls, "multi_preference"), name
    assert [n for n, c in METHODS.items() if declares(c, "multi_preference")] == ["rewarded_soup"]
