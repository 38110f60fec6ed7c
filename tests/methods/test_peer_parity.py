"""Parity of the 2025–26 merges with their released peers, on random float64 tensors (no
near-tied singular values):

- fusion_bench 0.2.33's `isotropic_merging` `iso_c` / `iso_cts`, `wudi_merging` (learning rate
  1e-5, its fixed value, and squared-norm weighting on both sides) and
  `subspace_consistency_spectral_calibration_accelerated` (SVC), called as functions;
- MergeKit 0.1.5's `ram` and `ramplus_tl` through `merge_tensors(..., dtype=float32)`, run in a
  subprocess on the 0.1.5 folder scripts/install.sh puts beside the environment
  (benchmarks/parity-requirements-0.1.5.txt: the environment keeps 0.1.4 for
  tests/methods/test_mergekit_parity.py).

Where r3h differs from a peer on purpose (docs/methods.md), a test pins the difference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from r3h.methods import IsoC, IsoCTS, RAM, RAMPlus, TaskArithmetic, WUDI
from r3h.ops import svc
from tests.methods.test_recent_methods import Fresh, case, run_tensor
from tests.optional import missing

from fusion_bench.method.isotropic_merging import iso_utils as fb_iso  # noqa: E402
from fusion_bench.method.singular_value_calibration.utils import (  # noqa: E402
    subspace_consistency_spectral_calibration_accelerated as fb_svc,
)
from fusion_bench.method.wudi.wudi import wudi_merging as fb_wudi  # noqa: E402

SHAPES = [(20, 12), (12, 20), (16, 16), (40, 9)]
KEY = "model.layers.0.mlp.up_proj.weight"


def _fb_vectors(base, experts):
    return [{KEY: e - base} for e in experts]


# --------------------------------------------------------------------------- fusion_bench

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 5])
def test_iso_c_matches_fusion_bench(shape, n):
    base, experts = case(shape, n, seed=100 + n)
    theirs = base + 1.5 * fb_iso.iso_c(_fb_vectors(base, experts), accelerator="cpu")[KEY]
    ours = run_tensor(IsoC(scaling_factor=1.5), KEY, base, experts)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n, fraction", [(2, 0.8), (3, 0.8), (5, 0.5), (3, 0.0), (4, 1.0)])
def test_iso_cts_matches_fusion_bench(shape, n, fraction):
    base, experts = case(shape, n, seed=200 + n)
    theirs = fb_iso.iso_cts(_fb_vectors(base, experts), common_space_fraction=fraction, accelerator="cpu")[KEY]
    ours = run_tensor(IsoCTS(scaling_factor=1.0, common_space_fraction=fraction), KEY, base, experts)
    torch.testing.assert_close(ours, base + theirs, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_wudi_matches_fusion_bench(shape):
    base, experts = case(shape, 3, seed=300)
    iters = 60
    theirs = base + fb_wudi(_fb_vectors(base, experts), accelerator="cpu", iter_num=iters)[KEY].detach()
    ours = run_tensor(WUDI(iterations=iters, learning_rate=1e-5, norm="squared", scaling_factor=1.0, device="cpu"),
                      KEY, base, experts)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-11)
    moved = float((theirs - base - sum(e - base for e in experts)).abs().max())
    assert moved > 100 * 1e-11  # the optimisation moved τm well beyond the tolerance


def test_default_scalings_differ_from_fusion_bench():
    """r3h's defaults come from the toy sweep of five experts (docs/methods.md): Iso-C and Iso-CTS
    α = 0.7 and WUDI s = 0.2, where fusion_bench's configs take α = 1 and WUDI adds τm whole."""
    assert IsoC().scaling_factor == IsoCTS().scaling_factor == 0.7
    assert WUDI().scaling_factor == 0.2
    base, experts = case((12, 10), 3, seed=303)
    theirs = base + fb_iso.iso_c(_fb_vectors(base, experts), accelerator="cpu")[KEY]  # its config's α = 1
    assert not torch.allclose(run_tensor(IsoC(), KEY, base, experts), theirs, atol=1e-3)
    theirs = base + fb_wudi(_fb_vectors(base, experts), accelerator="cpu", iter_num=5)[KEY].detach()
    ours = run_tensor(WUDI(iterations=5, device="cpu"), KEY, base, experts)
    torch.testing.assert_close(ours - base, 0.2 * (theirs - base), rtol=1e-9, atol=1e-11)


def test_wudi_plain_norm_differs_from_fusion_bench():
    """`norm: plain` (wi = ‖τi‖) is r3h's option; fusion_bench always weighs by ‖τi‖²."""
    base, experts = case((12, 10), 3, seed=301, scale=0.5)
    theirs = base + fb_wudi(_fb_vectors(base, experts), accelerator="cpu", iter_num=50)[KEY].detach()
    ours = run_tensor(WUDI(iterations=50, norm="plain", scaling_factor=1.0, device="cpu"), KEY, base, experts)
    assert not torch.allclose(ours, theirs, rtol=1e-8, atol=1e-9)


def test_wudi_fusion_bench_puts_vocabulary_matrices_through_the_optimisation():
    """fusion_bench's WUDI optimises every 2-D tensor, embeddings and lm_head included; r3h's
    default `exclude_keys` gives them θ0 + mean τi (tests/methods/test_recent_methods.py runs it)."""
    base, experts = case((24, 6), 2, seed=302)
    vec = [{"model.embed_tokens.weight": e - base} for e in experts]
    theirs = fb_wudi(vec, accelerator="cpu", iter_num=20)["model.embed_tokens.weight"].detach()
    mean = sum(e - base for e in experts) / 2
    assert not torch.allclose(theirs, mean, atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [1.0, 0.1])
def test_svc_matches_fusion_bench(shape, alpha):
    base, experts = case(shape, 3, seed=400)
    merged = run_tensor(TaskArithmetic(scaling_factor=0.6), KEY, base, experts)
    theirs = fb_svc(base, experts, merged, alpha=alpha, accelerator="cpu")
    delta, _ = svc(merged - base, [e - base for e in experts], alpha)
    torch.testing.assert_close(base + delta, theirs, rtol=1e-10, atol=1e-11)
    m = TaskArithmetic(scaling_factor=0.6, calibration="svc", calibration_alpha=alpha)
    m.setup(["a", "b", "c"])
    torch.testing.assert_close(m.calibrated_merge(KEY, base, Fresh(experts)), theirs, rtol=1e-10, atol=1e-11)


def test_exclude_keys_iso_c_differs_from_fusion_bench():
    """fusion_bench's Iso-C gives an excluded matrix θ0 + α · mean τi; r3h's engine gives every
    method's excluded tensors θ0 + mean τi (docs/methods.md)."""
    base, experts = case((10, 8), 3, seed=500)
    mean = sum(e - base for e in experts) / 3
    theirs = fb_iso.iso_c(_fb_vectors(base, experts), accelerator="cpu", exclude_keys=[KEY])[KEY]
    torch.testing.assert_close(theirs, mean)  # and they scale it by α afterwards
    # r3h: the engine's rule, shown on a pool in tests/methods/test_recent_methods.py (exclude_keys test)
    assert IsoC().engine_exclude_keys() == []
    assert IsoC(exclude_keys=[KEY]).engine_exclude_keys() == [KEY]


# --------------------------------------------------------------------------- MergeKit 0.1.5

MK015 = os.environ.get("R3H_MERGEKIT_015") or os.path.join(sys.prefix, "peers", "mergekit-0.1.5")

MK_SCRIPT = textwrap.dedent("""
    import sys, importlib.metadata, torch
    import mergekit
    assert mergekit.__file__.startswith(sys.argv[3]), mergekit.__file__
    from mergekit.merge_methods.api import merge_tensors
    cases = torch.load(sys.argv[1])
    out = []
    for c in cases:
        out.append(merge_tensors([c["base"], *c["experts"]], c["method"], parameters=c["params"],
                                 base_index=0, dtype=torch.float32))
    torch.save({"version": importlib.metadata.version("mergekit"), "out": out}, sys.argv[2])
""")


def _mergekit_015(cases, tmp_path):
    if not os.path.isdir(os.path.join(MK015, "mergekit")):
        missing(f"MergeKit 0.1.5 in {MK015} (benchmarks/parity-requirements-0.1.5.txt)")
    src, dst = tmp_path / "cases.pt", tmp_path / "out.pt"
    torch.save(cases, src)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([MK015, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", MK_SCRIPT, str(src), str(dst), MK015], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(dst)
    assert res["version"] == "0.1.5"
    return res["out"]


RAM_CASES = [(shape, n, sp) for shape in [(64,), (16, 24), (33, 17), (4, 6, 5)] for n in [2, 3, 5]
             for sp in [0.0, 0.7]]


@pytest.mark.slow
@pytest.mark.subprocess  # MergeKit 0.1.5 runs in a Python process of its own
def test_ram_and_ram_plus_match_mergekit_015(tmp_path):
    cases, ours = [], []
    for k, (shape, n, sparsity) in enumerate(RAM_CASES):
        base, experts = case(shape, n, seed=600 + k, sparsity=sparsity, dtype=torch.float32)
        # entries just below and above ε, so the threshold is exercised
        experts[0] = experts[0] + 8e-6 * (torch.rand(shape, generator=torch.Generator().manual_seed(k)) < 0.1)
        for method, cls, params in [("ram", RAM, {"epsilon": 1e-5}),
                                    ("ramplus_tl", RAMPlus, {"epsilon": 1e-5, "r": 0.1, "alpha": 0.2}),
                                    ("ramplus_tl", RAMPlus, {"epsilon": 1e-4, "r": 0.5, "alpha": 3.0})]:
            cases.append({"base": base, "experts": experts, "method": method, "params": params})
            ours.append(run_tensor(cls(**params), "t", base, experts))
    theirs = _mergekit_015(cases, tmp_path)
    for c, o, t in zip(cases, ours, theirs):
        assert o.dtype == t.dtype == torch.float32
        torch.testing.assert_close(o, t, rtol=2e-7, atol=1e-7, msg=lambda m: f"{c['method']} {c['params']}: {m}")
