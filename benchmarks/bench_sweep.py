"""Benchmark an R-TSVM hyperparameter sweep with and without the SVD cache.

How to run (from the repository root, in the project's virtual environment)::

    python benchmarks/bench_sweep.py                        # default: ~35 s on 2 CPU cores
    python benchmarks/bench_sweep.py --gammas 0.2,0.5,0.8 --alphas 0.5,1.0 --experts 3
    python benchmarks/bench_sweep.py --shapes 256x256,512x256 --json /tmp/sweep.json   # quicker

A synthetic pool (base + ``--experts`` experts; one float32 matrix per ``--shapes`` entry plus
a bias; each task vector a rank-8 part plus dense noise, with a few outliers) is written to a
temporary folder. The same `r3h.sweeps.MergeSweep` of ``r_tsvm`` over the grid ``--gammas`` ×
``--alphas`` (default 3 × 2 = 6 points, ``epsilon_mode=relative`` so that γ moves the kept
ranks) then runs twice, each member written to its own folder (``out_dir``):

- ``cold``:   ``svd_cache: false`` -- every member does all its SVDs (n per matrix for the
              experts' top-q triplets, 2 for the polar factors of the stacks);
- ``cached``: ``svd_cache`` in a fresh folder -- the first member does the SVDs and stores
              them, the others load them and do none.

Each run is timed as a whole (wall clock of ``MergeSweep.run``, including reading the
checkpoints and writing the members); the per-member seconds and SVD counts come from the
sweep's report. The merged tensors of every member are then compared: they must be identical
bit for bit (``torch.equal``), else the script exits with status 1. Printed: a table per run,
the speed-up cold / cached, and the check. ``--json`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List

import torch
from safetensors.torch import load_file, save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_shapes(text: str) -> List[tuple]:
    out = []
    for part in text.split(","):
        m, d = part.lower().split("x")
        out.append((int(m), int(d)))
    return out


def build_pool(root: str, shapes, experts: int, seed: int = 0) -> Dict[str, str]:
    g = torch.Generator().manual_seed(seed)
    base = {f"layers.{i}.weight": 0.02 * torch.randn(m, d, generator=g) for i, (m, d) in enumerate(shapes)}
    base["norm.bias"] = torch.zeros(shapes[0][0])
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    paths = {}
    for name in ["_pretrained_"] + [f"expert_{i}" for i in range(experts)]:
        folder = os.path.join(root, name)
        os.makedirs(folder)
        if name == "_pretrained_":
            sd = base
        else:
            sd = {}
            for k, v in base.items():
                if v.dim() == 2:
                    m, d = v.shape
                    tau = (torch.randn(m, 8, generator=g) @ torch.randn(8, d, generator=g)) * 2e-4 \
                        + 1e-4 * torch.randn(m, d, generator=g)
                    idx = torch.randperm(tau.numel(), generator=g)[:50]
                    tau.view(-1)[idx] += 2e-3
                else:
                    tau = 1e-4 * torch.randn(v.shape, generator=g)
                sd[k] = v + tau
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(folder, "model.safetensors"))
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f)
        paths[name] = folder
    return paths


def run_sweep(pool, grid, out_dir: str, svd_cache) -> dict:
    """One timed sweep; SVD calls counted by wrapping torch.linalg.svd (all of them: the
    experts' and the polar factors')."""
    from r3h.sweeps import MergeSweep

    sweep = MergeSweep(method="r_tsvm", grid=grid, out_dir=out_dir, svd_cache=svd_cache,
                       options={"epsilon_mode": "relative", "epsilon": 0.5, "progress": False, "device": "cpu"})
    orig, calls = torch.linalg.svd, {"n": 0}

    def counted(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)

    torch.linalg.svd = counted
    try:
        t0 = time.perf_counter()
        assert sweep.run(pool) is None
        wall = time.perf_counter() - t0
    finally:
        torch.linalg.svd = orig
    rep = sweep.last_report
    members = {n: {"merge_s": m["stats"]["seconds"], "svds": (m.get("svd_cache") or {}).get("svds")}
               for n, m in rep["members"].items()}
    return {"wall_s": wall, "svd_calls": calls["n"], "members": members, "names": list(rep["members"])}


def compare(a_dir: str, b_dir: str, names) -> dict:
    worst, tensors, differing = 0.0, 0, []
    for n in names:
        a, b = load_file(os.path.join(a_dir, n, "model.safetensors")), load_file(os.path.join(b_dir, n, "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            tensors += 1
            if not torch.equal(a[k], b[k]):
                differing.append(f"{n}/{k}")
                worst = max(worst, float((a[k].double() - b[k].double()).abs().max()))
    return {"tensors_compared": tensors, "differing": differing, "max_abs_diff": worst}


def table(label: str, res: dict) -> str:
    lines = [f"{label}: {res['wall_s']:.2f} s wall, {res['svd_calls']} SVD calls",
             "| member | merge (s) | SVDs (cache report) |", "|---|---:|---:|"]
    for n in res["names"]:
        m = res["members"][n]
        lines.append(f"| {n} | {m['merge_s']:.2f} | {'–' if m['svds'] is None else m['svds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="512x512,512x512,768x768,1024x512,512x1024,1024x1024")
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--gammas", default="0.25,0.5,0.75")
    ap.add_argument("--alphas", default="0.5,1.0")
    ap.add_argument("--json", default=None, help="write every number to this file")
    ap.add_argument("--keep", default=None, help="build the pool and outputs in this folder and keep them")
    args = ap.parse_args(argv)
    shapes = parse_shapes(args.shapes)
    grid = {"gamma": [float(x) for x in args.gammas.split(",")], "alpha": [float(x) for x in args.alphas.split(",")]}
    work = args.keep or tempfile.mkdtemp(prefix="r3h-bench-sweep-")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        paths = build_pool(os.path.join(work, "pool"), shapes, args.experts)
        from r3h.modelpool import AlignedCausalLMPool

        pool = AlignedCausalLMPool(models=paths, tokenizer=None)
        points = len(grid["gamma"]) * len(grid["alpha"])
        print(f"pool: base + {args.experts} experts, matrices {args.shapes} (+1 bias), float32; built in "
              f"{time.perf_counter() - t0:.1f} s; grid {grid} = {points} points; torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs, SVDs on 1 thread (cpu_threads=1)", flush=True)
        cold = run_sweep(pool, grid, os.path.join(work, "cold"), svd_cache=False)
        print(table("cold (no cache: every point does its SVDs)", cold), flush=True)
        cached = run_sweep(pool, grid, os.path.join(work, "cached"), svd_cache=os.path.join(work, "svd_cache"))
        print(table("cached (one SVD pass)", cached), flush=True)
        check = compare(os.path.join(work, "cold"), os.path.join(work, "cached"), cold["names"])
        ratio = cold["wall_s"] / cached["wall_s"]
        first = cached["members"][cached["names"][0]]["merge_s"]
        rest = [cached["members"][n]["merge_s"] for n in cached["names"][1:]]
        cold_mean = sum(m["merge_s"] for m in cold["members"].values()) / points
        print(f"\nspeed-up (whole sweep, wall): {cold['wall_s']:.2f} s / {cached['wall_s']:.2f} s = {ratio:.2f}x")
        print(f"per point: cold {cold_mean:.2f} s; cached: first {first:.2f} s (SVDs + writing the factors), "
              f"then {sum(rest) / max(1, len(rest)):.3f} s on average")
        print(f"SVD calls: cold {cold['svd_calls']}, cached {cached['svd_calls']}")
        ok = not check["differing"]
        print(f"check: {check['tensors_compared']} merged tensors compared, "
              + ("all bit-identical" if ok else f"{len(check['differing'])} differ "
                 f"(max |diff| {check['max_abs_diff']:.3g}): {check['differing'][:5]}"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"shapes": shapes, "experts": args.experts, "grid": grid, "cold": cold, "cached": cached,
                           "speedup": ratio, "check": check}, f, indent=2)
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
