"""Which settings make the toy world's build reproducible, and what they cost.

How to run (from the repository root, in the project's virtual environment)::

    python benchmarks/toy_reproducibility.py                  # short recipe (SFT 3 epochs, DPO 1), every config
    python benchmarks/toy_reproducibility.py --sft-epochs 30 --dpo-epochs 4 --only f32,f64,f64_avx2
    python benchmarks/toy_reproducibility.py --experts honesty harmlessness
    python benchmarks/toy_reproducibility.py --step-cost      # CPU seconds per training step, per switch

Every configuration trains, in a fresh subprocess and its own cache folder, the toy's SFT
base and the `--experts` (default: the honesty expert) of toy seed 0, then prints their
stage fingerprints (`r3h.toy.fingerprints`: the weights' hash and the greedy answers'
hash on the test split, with the AVG they score) and the training time of each stage.
The table compares every configuration with the first one of its dtype.

A configuration sets the toy's training switches (`build.THREADS`, `build.TRAIN_DTYPE`,
`build.DETERMINISTIC`) and, for the "another CPU" rows, environment variables that make
this CPU take another floating-point path, as another x86-64 CPU would:
`ATEN_CPU_CAPABILITY=avx2` (PyTorch's vectorised kernels for AVX2 instead of AVX-512) and
`MKL_CBWR=COMPATIBLE` (oneMKL's SSE2 code branch instead of the one it picks for this CPU).
They stand in for a second CPU model, which this machine does not have; they are not the
only differences two CPUs can have (oneMKL picks kernels per CPU model, not only per ISA).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

#: both of the environment's stand-ins for another CPU
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}
#: name -> (training switches, environment)
CONFIGS = {
    "f32": ({"THREADS": 1, "TRAIN_DTYPE": "float32", "DETERMINISTIC": False}, {}),
    "f32_again": ({"THREADS": 1, "TRAIN_DTYPE": "float32", "DETERMINISTIC": False}, {}),
    "f32_2threads": ({"THREADS": 2, "TRAIN_DTYPE": "float32", "DETERMINISTIC": False}, {}),
    "f32_det": ({"THREADS": 1, "TRAIN_DTYPE": "float32", "DETERMINISTIC": True}, {}),
    "f32_avx2": ({"THREADS": 1, "TRAIN_DTYPE": "float32", "DETERMINISTIC": False}, {"ATEN_CPU_CAPABILITY": "avx2"}),
    "f32_mkl_compat": ({"THREADS": 1, "TRAIN_DTYPE": "float32", "DETERMINISTIC": False}, {"MKL_CBWR": "COMPATIBLE"}),
    "f32_other_cpu": ({"THREADS": 1, "TRAIN_DTYPE": "float32", "DETERMINISTIC": False}, OTHER_CPU),
    "f64": ({"THREADS": 1, "TRAIN_DTYPE": "float64", "DETERMINISTIC": True}, {}),
    "f64_again": ({"THREADS": 1, "TRAIN_DTYPE": "float64", "DETERMINISTIC": True}, {}),
    "f64_2threads": ({"THREADS": 2, "TRAIN_DTYPE": "float64", "DETERMINISTIC": True}, {}),
    "f64_avx2": ({"THREADS": 1, "TRAIN_DTYPE": "float64", "DETERMINISTIC": True}, {"ATEN_CPU_CAPABILITY": "avx2"}),
    "f64_mkl_compat": ({"THREADS": 1, "TRAIN_DTYPE": "float64", "DETERMINISTIC": True}, {"MKL_CBWR": "COMPATIBLE"}),
    "f64_other_cpu": ({"THREADS": 1, "TRAIN_DTYPE": "float64", "DETERMINISTIC": True}, OTHER_CPU),
}


def child(spec: dict) -> None:
    import logging

    logging.disable(logging.WARNING)
    from r3h.toy import build, fingerprints

    for k, v in spec["switches"].items():
        setattr(build, k, v)
    build.TOY_SFT["num_train_epochs"] = spec["sft_epochs"]
    build.TOY_DPO["num_train_epochs"] = spec["dpo_epochs"]
    start, cpu = time.time(), time.process_time()
    paths = build.build_tiny_3h(spec["cache"], experts=spec["experts"])
    total, cpu = time.time() - start, time.process_time() - cpu
    root = build.root_dir(spec["cache"])
    stages = fingerprints.input_stages(0)
    seconds = {}
    for name, folder in paths.items():
        stage = "base" if name == "_pretrained_" else name
        from transformers import AutoModelForCausalLM

        stages[stage] = {"weights": fingerprints.weights_digest(folder),
                         **fingerprints.answers_digest(AutoModelForCausalLM.from_pretrained(folder),
                                                       os.path.join(root, ".answers", stage))}
        with open(os.path.join(folder, "r3h_train.json")) as f:
            seconds[stage] = json.load(f)["seconds"]
    env = fingerprints.environment()
    folders = {("base" if n == "_pretrained_" else n): f for n, f in paths.items()}
    print("RESULT " + json.dumps({"stages": stages, "seconds": seconds, "folders": folders, "build_s": round(total, 1),
                                  "build_cpu_s": round(cpu, 1),
                                  "cpu_capability": env["cpu_capability"]}))


def step_cost(repeats: int = 2, steps: int = 15) -> None:
    """CPU seconds per training step of the toy model (batch 64 x 24 tokens, AdamW, one
    thread) in float32 / float64, with and without deterministic algorithms (best of `repeats`)."""
    import torch

    from r3h.toy import build

    torch.set_num_threads(1)
    x = torch.randint(0, 80, (64, 24), generator=torch.Generator().manual_seed(0))
    best = {}
    for _ in range(repeats):
        for dtype in (torch.float32, torch.float64):
            for det in (False, True):
                torch.use_deterministic_algorithms(det)
                model = build.make_model(0).to(dtype)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
                for i in range(steps + 2):
                    if i == 2:
                        start = time.process_time()
                    model(input_ids=x, labels=x).loss.backward()
                    opt.step()
                    opt.zero_grad()
                key = (str(dtype).split(".")[1], det)
                best[key] = min(best.get(key, float("inf")), (time.process_time() - start) / steps)
    torch.use_deterministic_algorithms(False)
    ref = best["float32", False]
    print("| dtype | deterministic | CPU s / step | ratio |\n|---|---|---:|---:|")
    for (dtype, det), v in best.items():
        print(f"| {dtype} | {det} | {v:.4f} | {v / ref:.2f} |")


def weight_differences(a: str, b: str) -> str:
    """How two saved models' weights differ: share of weights that differ, median relative
    difference, largest absolute difference."""
    import torch
    from safetensors.torch import load_file

    x, y = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    d = torch.cat([(x[k].double() - y[k].double()).abs().flatten() for k in sorted(x)])
    w = torch.cat([x[k].double().abs().flatten() for k in sorted(x)])
    rel = (d / w.clamp_min(1e-30)).sort().values
    return f"{100 * float((d > 0).double().mean()):.0f}%, median rel {float(rel[len(rel) // 2]):.1e}, max {float(d.max()):.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations, in order")
    ap.add_argument("--sft-epochs", type=float, default=3)
    ap.add_argument("--dpo-epochs", type=float, default=1)
    ap.add_argument("--experts", nargs="*", default=["honesty"])
    ap.add_argument("--out", default=None, help="where to keep each configuration's cache (default: a temp folder)")
    ap.add_argument("--step-cost", action="store_true", help="only time one training step per switch")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.step_cost:
        return step_cost()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--only: unknown {unknown}; choose from {list(CONFIGS)}")
    out = args.out or tempfile.mkdtemp(prefix="r3h-toy-repro-")
    results = {}
    for name in names:
        switches, env = CONFIGS[name]
        spec = {"switches": switches, "sft_epochs": args.sft_epochs, "dpo_epochs": args.dpo_epochs,
                "experts": args.experts, "cache": os.path.join(out, name)}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                              env={**os.environ, **env})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(line[0][7:])
        r = results[name]
        print(f"{name}: capability {r['cpu_capability']}, build {r['build_s']} s (CPU {r['build_cpu_s']} s), "
              + ", ".join(f"{k} {v} s" for k, v in r["seconds"].items()), flush=True)
        for stage, fp in r["stages"].items():
            print(f"   {stage:<12} " + "  ".join(f"{k} {v}" for k, v in fp.items()), flush=True)
    print(f"\nSFT {args.sft_epochs:g} epochs, DPO {args.dpo_epochs:g} epochs, experts {args.experts}; "
          "'=' same as the first configuration of its dtype, 'differs' otherwise\n")
    stages = [s for s in results[names[0]]["stages"] if s in ("init", "base", *args.experts)]
    print("| config | " + " | ".join(f"{s} weights | {s} answers (AVG)" for s in stages if s != "init")
          + " | init | training s (SFT + DPO) | build CPU s |")
    print("|---|" + "---|---|" * (len(stages) - 1) + "---|---:|---:|")
    first = {}
    for name in names:
        r = results[name]
        ref = results[first.setdefault(CONFIGS[name][0]["TRAIN_DTYPE"], name)]
        cells = []
        for s in stages:
            if s == "init":
                continue
            fp, rf = r["stages"][s], ref["stages"][s]
            cells.append("=" if fp["weights"] == rf["weights"] else
                         f"differs ({weight_differences(r['folders'][s], ref['folders'][s])})")
            cells.append(("=" if fp["answers"] == rf["answers"] else "differs") + f" ({fp['AVG']:.2f})")
        init = "=" if r["stages"]["init"] == results[names[0]]["stages"]["init"] else "differs"
        print(f"| {name} | " + " | ".join(cells) + f" | {init} | {sum(r['seconds'].values()):.1f} | {r['build_cpu_s']:.1f} |")


if __name__ == "__main__":
    main()
