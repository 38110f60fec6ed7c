"""Time r3h's WUDI per matrix on a real model shape and project the whole model.

    python benchmarks/bench_wudi.py                                  # llama3-8b-cpu shape on CPU
    python benchmarks/bench_wudi.py --shape llama3-8b --device cuda  # the real shape on a GPU

The shapes are `bench_tsvm.py`'s (`SHAPES`, `shape_tensors`: one decoder layer's seven matrices;
the embedding and lm_head only with `--with-vocab`, since WUDI excludes them by default). For each
distinct matrix shape it draws `--experts` random task vectors on `--device`, times the statistics
(A = Σ τiᵀτi/wi, B = Σ τiτiᵀτi/wi: `r3h.ops.wudi.wudi_statistics`) and `--time-iterations` Adam
iterations (`r3h.ops.wudi.wudi`), and projects each matrix at `--iterations` (default 300) and the
whole model (each matrix times its count per model). On CPU `--shape llama3-8b` runs its
scaled-down `llama3-8b-cpu` unless `--full-size`; the table then also gives the projection of the
full shape from the floating-point operations an iteration needs (2·m·k² for τm·A) at
`--tflops` (an assumed sustained rate of the GPU, not a measurement).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _bench_tsvm():
    spec = importlib.util.spec_from_file_location("bench_tsvm", os.path.join(HERE, "bench_tsvm.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_matrix(shape, n, iterations, device, seed=0, repeats=2):
    """(seconds of the statistics and the final loss: WUDI at 0 iterations, seconds per Adam
    iteration: the difference to WUDI at `iterations`, divided), best of `repeats`."""
    import torch

    from r3h.ops.wudi import wudi

    g = torch.Generator(device="cpu").manual_seed(seed)
    taus = [(1e-3 * torch.randn(shape, generator=g)).to(device) for _ in range(n)]
    wudi(iter(taus), 1)  # warm up (torch.optim's first step, kernels)

    def timed(its):
        _sync(device)
        t0 = time.perf_counter()
        wudi(iter(taus), its)
        _sync(device)
        return time.perf_counter() - t0

    stats = min(timed(0) for _ in range(repeats))
    full = min(timed(iterations) for _ in range(repeats))
    return stats, max(full - stats, 0.0) / max(iterations, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full-size", action="store_true", help="on CPU, time the real shape, not its scaled-down one")
    ap.add_argument("--experts", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=300, help="WUDI's iterations to project")
    ap.add_argument("--time-iterations", type=int, default=3, help="Adam iterations timed per shape")
    ap.add_argument("--with-vocab", action="store_true", help="also the embedding and lm_head (excluded by default)")
    ap.add_argument("--tflops", type=float, default=50.0,
                    help="assumed sustained float32 TFLOP/s of the GPU for the operation-count projection")
    args = ap.parse_args(argv)
    import torch

    bt = _bench_tsvm()
    device = torch.device(args.device)
    name = args.shape
    if device.type == "cpu" and not args.full_size:
        name = bt.CPU_SCALED.get(name, name)
    full = bt.SHAPES[args.shape]
    mats = [t for t in bt.shape_tensors(bt.SHAPES[name]) if args.with_vocab or t[0] not in ("embed_tokens", "lm_head")]
    full_mats = {t[0]: t for t in bt.shape_tensors(full)}
    print(f"WUDI on {name} ({args.device}, {torch.get_num_threads()} CPU threads), {args.experts} experts, "
          f"{args.time_iterations} timed iterations, projected at {args.iterations}")
    lines = ["| matrix | shape | per model | statistics (s) | per iteration (s) | per matrix at "
             f"{args.iterations} (s) | {args.shape} GFLOP per iteration |", "|---|---|---:|---:|---:|---:|---:|"]
    total = flops_total = 0.0
    seen = {}
    for mname, shape, count in mats:
        if shape not in seen:
            seen[shape] = time_matrix(shape, args.experts, args.time_iterations, device)
        stats, per_it = seen[shape]
        per_matrix = stats + args.iterations * per_it
        total += count * per_matrix
        m, k = full_mats[mname][1]
        it_flops = 2.0 * m * k * k
        setup_flops = args.experts * (2.0 * m * k * k + 2.0 * m * k * k)
        flops_total += full_mats[mname][2] * (setup_flops + args.iterations * it_flops)
        lines.append(f"| {mname} | {tuple(shape)} | {count} | {stats:.3f} | {per_it:.4f} | {per_matrix:.1f} | "
                     f"{it_flops / 1e9:.0f} |")
    print("\n".join(lines))
    print(f"\nwhole model ({name}, measured on {args.device}): {total:.0f} s = {total / 60:.1f} min")
    print(f"whole model ({args.shape}, operation count at an assumed {args.tflops:g} TFLOP/s): "
          f"{flops_total / 1e12:.0f} TFLOP, {flops_total / (args.tflops * 1e12) / 60:.1f} min")


if __name__ == "__main__":
    main()
