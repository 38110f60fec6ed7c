"""Benchmark r3h's TSVM / R-TSVM against fusion_bench's TaskSingularVectorMerging.

How to run (from the repository root, in the project's virtual environment)::

    python benchmarks/bench_tsvm.py                      # issue 12's comparison: three whole commands, ratios, checks
    python benchmarks/bench_tsvm.py --all                # every run below (long)
    python benchmarks/bench_tsvm.py --only r3h_tsvm,r3h_tsvm_full --skip-check   # a subset
    python benchmarks/bench_tsvm.py --r3h-commit HEAD    # measure a snapshot of r3h/ (+ config/) at HEAD
    python benchmarks/bench_tsvm.py --hidden 128 --layers 2 --intermediate 256 --vocab 1000 --heads 4 \
        --out /tmp/tsvm_tiny                             # a quick check of the script
    python benchmarks/bench_tsvm.py --shape llama3-8b --layers 2 --device cuda   # a real shape on a GPU
    python benchmarks/bench_tsvm.py --shape llama3-8b    # on CPU: the scaled-down llama3-8b-cpu shape
    python benchmarks/bench_tsvm.py --routes --threads 1 # the SVD routes alone, one matrix at a time

The pool mode uses the same pool as ``bench_merge.py`` (same defaults: 148M parameters per model,
base + 5 experts, float32; same cache under ``benchmarks/results/pools/``; built there on first
use) and reuses its functions. By default it runs, one after another, fusion_bench's TSVM, r3h's
``tsvm`` and r3h's ``r_tsvm`` as whole ``fusion_bench`` commands at their defaults, and prints
the ratios against issue 12's targets (wall <= 0.6x, peak RSS <= 0.25x fusion_bench's; merged
task vectors within 1e-4 relative Frobenius of fusion_bench's; R-TSVM within 1.1x TSVM's wall).

The shape mode (``--shape``) builds synthetic base + expert tensors of a real model's shapes
(no download), times ``--layers`` decoder layers plus the embedding and ``lm_head`` tensor by
tensor for r3h and fusion_bench (``--no-peer``: r3h only), and projects the whole model's merge
time; on CPU, ``llama3-8b`` runs its scaled-down ``llama3-8b-cpu`` unless ``--full-size``.

Runs, each in a fresh process (the parent imports no torch until every run is over):

- ``fb_tsvm_cli``, ``r3h_tsvm_cli``, ``r3h_r_tsvm_cli``: ``fusion_bench
                       method=task_singular_vector/TaskSingularVectorMerging`` (a ``CausalLMPool``
                       yaml), ``method=tsvm`` and ``method=r_tsvm`` (an ``AlignedCausalLMPool`` yaml)
                       with ``merged_model_save_path``, each method's defaults; wall = the whole
                       command, peak RSS = its VmHWM (the default runs)
- ``r3h_tsvm_full``    r3h ``tsvm`` with ``svd_solver='full'`` (LAPACK SVD throughout), in process
- ``fb_tsvm``          fusion_bench ``TaskSingularVectorMerging(alpha=1.0, exclude_keys=[])`` on
                       fusion_bench's ``CausalLMPool`` (torch threads = ``--threads``, default
                       all cores, as a user gets it)
- ``r3h_tsvm``         r3h ``TSVM(alpha=1.0)`` on ``AlignedCausalLMPool``,
                       in memory, one process (r3h's defaults: ``svd_solver=auto``, all threads)
- ``r3h_tsvm_stream``  the same with ``out_dir`` and ``max_shard_size`` ``--stream-shard-size``
                       (default 100MB); its time includes the write
- ``r3h_tsvm_rand``    the same as r3h_tsvm with ``svd_solver='randomized'`` (default
                       oversample / power iterations)
- ``r3h_r_tsvm``       r3h ``RTSVM()`` with its defaults (``epsilon_mode='absolute'``, ε = 0.1)
- ``r3h_r_tsvm_rel``   ``RTSVM(epsilon_mode='relative')``: run when the absolute rule gives
                       Ω ≈ 1 on every matrix (``--r-tsvm-relative auto``, the default)
- ``r3h_tsvm_2proc``   r3h's TSVM through the ``fusion_bench`` CLI with ``fabric.accelerator=cpu
                       fabric.devices=2 fabric.strategy=ddp`` and ``merged_model_save_path``;
                       the modelpool yaml (``AlignedCausalLMPool`` of the pool folders) is
                       written into ``./config/modelpool/`` of a scratch cwd. Wall = the whole
                       command (Python start-up, imports, Fabric launch, merge, save). Memory:
                       the parent polls the process tree (psutil, every 0.2 s) and reads each
                       process's ``VmHWM``; the row's peak is the *sum of the per-process
                       peaks* (an upper bound on the simultaneous peak); the JSON also has the
                       largest sampled sum of RSS (a lower bound) and the per-rank peaks r3h
                       writes into ``r3h_merge.json`` (``stats.peak_rss_gb_per_rank``, taken
                       after each rank's share, before rank 0 assembles the model).

In-process runs: wall = model-pool construction + ``method.run``; peak RSS = the child's own
``VmHWM`` right after the merge, before anything is saved (it includes the imports: torch,
transformers, fusion_bench, r3h, the same in every child). The merged model is then saved (first
repeat only) for the checks. Repeats: every run once; then, up to ``--repeats`` rounds in all,
the r3h in-process runs again while the elapsed time plus the run's last wall time fits in
``--budget-min`` (fb_tsvm and the CLI run are not repeated). Wall = best, RSS = largest.

Checks (float64, tensor by tensor, after all runs):

- r3h_tsvm vs fb_tsvm: max |diff| over all tensors, also relative to the largest |weight| and to
  the largest |merged task vector| (merged − base); should be float32 round-off.
- r3h_tsvm vs r3h_tsvm_stream: must be bit-identical (max |diff| exactly 0); vs r3h_tsvm_2proc: relative
  difference (bit-identical only with a fixed `cpu_threads` on both, tested in tests/test_cli.py).
- r3h_tsvm_rand vs r3h_tsvm: relative Frobenius error of the merged task vectors over all matrices,
  sqrt(Σ‖Δ_rand − Δ_full‖²) / sqrt(Σ‖Δ_full‖²), and the largest per-matrix ‖Δ_rand − Δ_full‖ / ‖Δ_full‖.
- R-TSVM vs TSVM: the same relative difference (informational), and Ω / k_i from R-TSVM's report.

What it prints: one line per finished run, the checks, then a markdown table (method, peak RSS in
GB, wall in s, ratios against the fusion_bench run of the same kind, PASS/FAIL against issue 12's
targets). The table goes to ``<out>/tsvm_<size>.md``, every raw number to ``<out>/tsvm_<size>.json``.
GB = 1e9 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_merge as bm  # noqa: E402

REPO = bm.REPO
DEFAULT_OUT = bm.DEFAULT_OUT

RUNS = ["fb_tsvm_cli", "r3h_tsvm_cli", "r3h_r_tsvm_cli", "fb_tsvm", "r3h_tsvm", "r3h_tsvm_full", "r3h_tsvm_2proc",
        "r3h_tsvm_stream", "r3h_tsvm_rand", "r3h_r_tsvm", "r3h_r_tsvm_rel"]
DEFAULT_RUNS = ["fb_tsvm_cli", "r3h_tsvm_cli", "r3h_r_tsvm_cli"]  # the issue's comparison: whole commands
LABELS = {
    "fb_tsvm_cli": "fusion_bench TaskSingularVectorMerging, `fusion_bench` command (its defaults)",
    "r3h_tsvm_cli": "r3h tsvm, `fusion_bench method=tsvm` (defaults)",
    "r3h_r_tsvm_cli": "r3h r_tsvm, `fusion_bench method=r_tsvm` (defaults)",
    "r3h_tsvm_full": "r3h tsvm, svd_solver=full (in memory)",
    "fb_tsvm": "fusion_bench TaskSingularVectorMerging (in memory)",
    "r3h_tsvm": "r3h tsvm (in memory, 1 process)",
    "r3h_tsvm_2proc": "r3h tsvm, fusion_bench CLI, 2 CPU ranks (whole command)",
    "r3h_tsvm_stream": "r3h tsvm (out_dir, incl. write)",
    "r3h_tsvm_rand": "r3h tsvm, svd_solver=randomized",
    "r3h_r_tsvm": "r3h r_tsvm (defaults: epsilon_mode=absolute)",
    "r3h_r_tsvm_rel": "r3h r_tsvm (epsilon_mode=relative)",
}
IN_PROCESS_R3H = ("r3h_tsvm", "r3h_tsvm_stream", "r3h_tsvm_rand", "r3h_r_tsvm", "r3h_r_tsvm_rel")
REPEAT_ORDER = ("r3h_tsvm", "r3h_tsvm_rand", "r3h_tsvm_stream", "r3h_r_tsvm", "r3h_r_tsvm_rel")
TARGET_RUNS = ("r3h_tsvm_cli", "r3h_tsvm", "r3h_tsvm_stream")  # the same method as the peer
RSS_TARGET = 0.25  # issue 12: peak RSS ≤ 0.25× fusion_bench's
TIME_TARGET = 0.6  # issue 12: wall ≤ 0.6× fusion_bench's
R_TSVM_TARGET = 1.10  # R-TSVM's wall within 10 % of TSVM's
OUTPUT_TARGET = 1e-4  # relative Frobenius difference of the merged task vectors vs fusion_bench's


def peer_of(run: str) -> str:
    """The fusion_bench run a row is compared with: whole command vs whole command."""
    return "fb_tsvm_cli" if run.endswith("_cli") else "fb_tsvm"
OMEGA_ALL_ONE = 0.999  # "Ω ≈ 1 everywhere": the smallest Ω over the matrices is above this


# ---------------------------------------------------------------------------------------
# The child: one merge, in its own process
# ---------------------------------------------------------------------------------------
def _omega_summary(tensors: dict) -> dict:
    """Ω, k, k_i/q and αi over the SVD-rule tensors of an R-TSVM report."""
    import statistics

    svd_rows = {k: v for k, v in tensors.items() if v.get("rule") == "svd"}
    out = {"svd_tensors": len(svd_rows),
           "rules": {r: sum(1 for v in tensors.values() if v.get("rule") == r) for r in ("svd", "mean", "zero")}}
    om = [v["omega"] for v in svd_rows.values() if "omega" in v]
    if om:
        out["omega"] = {"min": min(om), "median": statistics.median(om), "max": max(om)}
    fr = [ki / v["q"] for v in svd_rows.values() for ki in v.get("k_i", []) if v.get("q")]
    if fr:
        out["k_i_over_q"] = {"min": min(fr), "median": statistics.median(fr), "max": max(fr)}
    al = [a for v in svd_rows.values() for a in v.get("alpha", [])]
    if al:
        out["alpha_i"] = {"min": min(al), "max": max(al)}
    ex = {}
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.embed_tokens.weight", "lm_head.weight"):
        v = svd_rows.get(name)
        if v:
            ex[name] = {k: v.get(k) for k in ("shape", "q", "omega", "k", "k_i", "alpha", "sti")}
    out["examples"] = ex
    return out


def child_main(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file
    from fusion_bench.method.task_singular_vector.TSVM import TaskSingularVectorMerging as FBTSVM
    from fusion_bench.modelpool.causal_lm.causal_lm import CausalLMPool
    from r3h.methods.tsvm import RTSVM, TSVM
    from r3h.modelpool import AlignedCausalLMPool
    from transformers import LlamaForCausalLM  # noqa: F401

    with open(os.path.join(args.pool_dir, "pool.json")) as f:
        pool_info = json.load(f)
    models = pool_info["models"]
    dtype = pool_info["spec"]["dtype"]
    run = args.child
    rss_imports = bm.current_rss_bytes()

    def build():
        if run == "fb_tsvm":
            pool = CausalLMPool(models=dict(models), tokenizer=None, model_kwargs={"torch_dtype": dtype})
            return pool, FBTSVM(alpha=1.0, exclude_keys=[])
        pool = AlignedCausalLMPool(models=dict(models), tokenizer=None)
        methods = {
            "r3h_tsvm": lambda: TSVM(alpha=1.0, progress=False),
            "r3h_tsvm_stream": lambda: TSVM(alpha=1.0, progress=False, out_dir=args.save_path,
                                                                 max_shard_size=args.stream_shard_size),
            "r3h_tsvm_rand": lambda: TSVM(alpha=1.0, progress=False, svd_solver="randomized"),
            "r3h_tsvm_full": lambda: TSVM(alpha=1.0, progress=False, svd_solver="full"),
            "r3h_r_tsvm": lambda: RTSVM(progress=False),
            "r3h_r_tsvm_rel": lambda: RTSVM(progress=False, epsilon_mode="relative"),
        }
        if run not in methods:
            raise SystemExit(f"unknown in-process run {run}")
        return pool, methods[run]()

    def summarize(report):
        if run.startswith("r3h_r_tsvm"):
            return {"r_tsvm_summary": _omega_summary(report.get("tensors") or {})}
        return {}

    bm.measure_merge(args, run, build, rss_imports, save_model=run != "r3h_tsvm_stream", summarize=summarize)


# ---------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------
def run_child(args, run: str, pool_dir: str, work: str, save: bool) -> dict:
    result_file = os.path.join(work, f"{run}.result.json")
    if os.path.exists(result_file):
        os.remove(result_file)
    save_path = None
    if run == "r3h_tsvm_stream":
        save_path = os.path.join(work, "r3h_tsvm_stream_out")
        shutil.rmtree(save_path, ignore_errors=True)
    elif save:
        save_path = os.path.join(work, f"{run}.safetensors")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", run, "--pool-dir", pool_dir,
           "--result", result_file, "--threads", str(args.threads), "--stream-shard-size", args.stream_shard_size]
    if save_path:
        cmd += ["--save-path", save_path]
    res = bm.spawn_child(cmd, run, result_file, os.path.join(work, f"{run}.log"), bm.child_env(args))
    res["save_path"] = save_path
    return res


def _status_kb(pid: int) -> Dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


# Whole `fusion_bench` commands, default settings of each method, except r3h's α: its default
# (0.5, chosen on the toy) is set to fusion_bench's 1.0 so that the outputs can be compared.
# α scales the merged Δ after the SVD work and does not change the time.
CLI_RUNS = {
    "fb_tsvm_cli": ["method=task_singular_vector/TaskSingularVectorMerging", "modelpool=fb_pool"],
    "r3h_tsvm_cli": ["method=tsvm", "modelpool=bench_pool", "method.alpha=1.0", "method.progress=false"],
    "r3h_r_tsvm_cli": ["method=r_tsvm", "modelpool=bench_pool", "method.alpha=1.0", "method.progress=false"],
    "r3h_tsvm_2proc": ["method=tsvm", "modelpool=bench_pool", "method.alpha=1.0", "method.progress=false",
                       "fabric.accelerator=cpu", "fabric.devices=2", "fabric.strategy=ddp"],
}


def run_cli_2proc(args, pool_dir: str, work: str, run: str = "r3h_tsvm_2proc") -> dict:
    """A whole `fusion_bench` command (`CLI_RUNS[run]`); polls the process tree's memory."""
    import psutil

    with open(os.path.join(pool_dir, "pool.json")) as f:
        info = json.load(f)
    models = {k: v if os.path.isabs(v) else os.path.join(REPO, v) for k, v in info["models"].items()}
    cwd = os.path.join(work, f"cli_{run}")
    shutil.rmtree(cwd, ignore_errors=True)
    os.makedirs(os.path.join(cwd, "config", "modelpool"))
    listing = "models:\n" + "".join(f"  {k}: {v}\n" for k, v in models.items())
    with open(os.path.join(cwd, "config", "modelpool", "bench_pool.yaml"), "w") as f:
        f.write("_target_: r3h.modelpool.AlignedCausalLMPool\n" + listing)
    with open(os.path.join(cwd, "config", "modelpool", "fb_pool.yaml"), "w") as f:
        f.write("_target_: fusion_bench.modelpool.CausalLMPool\n" + listing + "tokenizer: null\n"
                f"model_kwargs:\n  torch_dtype: {info['spec']['dtype']}\n")
    out = os.path.join(work, f"{run}_out")
    shutil.rmtree(out, ignore_errors=True)
    exe = os.path.join(os.path.dirname(sys.executable), "fusion_bench")
    cmd = [exe, *CLI_RUNS[run], f"merged_model_save_path={out}", "print_config=false"]
    env = bm.child_env(args)
    env.update(FUSION_BENCH_PROJECT_ROOT=cwd, HYDRA_FULL_ERROR="1")
    probe = subprocess.run([sys.executable, "-c", "import r3h; print(r3h.__file__)"], cwd=cwd, env=env,
                           capture_output=True, text=True)
    r3h_file = probe.stdout.strip() or probe.stderr[-300:]
    log_file = os.path.join(work, f"{run}.log")
    hwm: Dict[int, int] = {}
    cmdlines: Dict[int, str] = {}
    max_sum_rss, samples = 0, 0
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        root = psutil.Process(proc.pid)
        code = None
        while code is None:
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                procs = []
            total = 0
            for p in procs:
                st = _status_kb(p.pid)
                if not st:
                    continue
                total += st.get("VmRSS", 0)
                hwm[p.pid] = max(hwm.get(p.pid, 0), st.get("VmHWM", 0))
                if p.pid not in cmdlines:
                    try:
                        cmdlines[p.pid] = " ".join(p.cmdline())[:300]
                    except psutil.Error:
                        cmdlines[p.pid] = "?"
            max_sum_rss = max(max_sum_rss, total)
            samples += 1
            time.sleep(0.2)
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                proc.returncode = code
    wall = time.perf_counter() - t0
    if code != 0 or not os.path.isdir(out):
        return bm.failed_run(run, code if code is not None else -1, log_file)
    if root.pid in hwm:  # the command's own process: its exact peak (polling may miss the last one)
        hwm[root.pid] = max(hwm[root.pid], rusage.ru_maxrss * 1024)
    per_proc = [{"pid": pid, "peak_rss_bytes": b, "cmdline": cmdlines.get(pid, "?")}
                for pid, b in sorted(hwm.items())]
    big = [p for p in per_proc if p["peak_rss_bytes"] > 100e6]  # the ranks (not helper processes)
    res = {"run": run, "wall_s": wall, "command": " ".join(cmd), "cwd": cwd, "r3h_file": r3h_file,
           "peak_rss_bytes": sum(p["peak_rss_bytes"] for p in per_proc),
           "peak_rss_per_process_bytes": per_proc, "python_processes_over_100MB": len(big),
           "max_sampled_sum_rss_bytes": max_sum_rss, "samples": samples, "save_path": out,
           "note": "peak = sum of the per-process VmHWM (upper bound on the simultaneous peak)"}
    try:
        with open(os.path.join(out, "r3h_merge.json")) as f:
            info = json.load(f)
        res["r3h_stats"] = info.get("stats")
    except (OSError, ValueError) as exc:
        res["r3h_stats"] = {"error": str(exc)}
    with open(log_file) as f:
        text = f.read()
    res["rank_lines"] = [l.strip() for l in text.splitlines() if "merges" in l and "rank" in l][:4]
    return res


def summarize(runs: List[dict]) -> dict:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return {"failed": runs[-1]["failed"] if runs else "not run"}
    best = min(ok, key=lambda r: r["wall_s"])
    out = {"peak_rss_gb": max(r["peak_rss_bytes"] for r in ok) / 1e9, "wall_s": best["wall_s"],
           "wall_s_all": [round(r["wall_s"], 2) for r in ok],
           "peak_rss_gb_all": [round(r["peak_rss_bytes"] / 1e9, 4) for r in ok], "repeats": len(ok),
           "r3h_stats": ok[-1].get("r3h_stats")}
    for k in ("pool_s", "run_s"):
        if k in best:
            out[k] = best[k]
    if any("rss_after_imports_bytes" in r for r in ok):
        out["rss_after_imports_gb"] = max(r.get("rss_after_imports_bytes", 0) for r in ok) / 1e9
    if "max_sampled_sum_rss_bytes" in ok[0]:
        out["max_sampled_sum_rss_gb"] = max(r["max_sampled_sum_rss_bytes"] for r in ok) / 1e9
        out["peak_rss_per_process_gb"] = [round(p["peak_rss_bytes"] / 1e9, 3)
                                          for p in ok[-1]["peak_rss_per_process_bytes"]]
    if "r_tsvm_summary" in ok[0]:
        out["r_tsvm_summary"] = ok[0]["r_tsvm_summary"]
    return out


# ---------------------------------------------------------------------------------------
# Checks (the parent, after every run)
# ---------------------------------------------------------------------------------------
def _index(path: str) -> Dict[str, str]:
    from safetensors import safe_open

    files = ([os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
             if os.path.isdir(path) else [path])
    out = {}
    for fn in files:
        with safe_open(fn, framework="pt") as f:
            for k in f.keys():
                out[k] = fn
    return out


def compare(path_a: str, path_b: str, base_path: str) -> dict:
    """a vs b (b = the reference), tensor by tensor in float64, with the base for task vectors."""
    from safetensors import safe_open

    ia, ib, i0 = _index(path_a), _index(path_b), _index(base_path)
    common = sorted(set(ia) & set(ib))
    res = {"tensors_compared": len(common), "only_in_a": sorted(set(ia) - set(ib)),
           "only_in_b": sorted(set(ib) - set(ia)), "max_abs_diff": 0.0, "worst_tensor": None,
           "max_abs_weight": 0.0, "max_abs_task_vector": 0.0, "bit_identical": True}
    num2 = den2 = a2 = 0.0
    worst_rel, worst_rel_name, matrices = 0.0, None, 0
    for k in common:
        with safe_open(ia[k], framework="pt") as fa, safe_open(ib[k], framework="pt") as fb, \
                safe_open(i0[k], framework="pt") as f0:
            a, b, t0 = fa.get_tensor(k), fb.get_tensor(k), f0.get_tensor(k)
        if a.shape != b.shape:
            return {"error": f"tensor {k}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"}
        if a.dtype != b.dtype or not bool((a == b).all()):
            res["bit_identical"] = False
        a, b, t0 = a.double(), b.double(), t0.double()
        d = float((a - b).abs().max()) if a.numel() else 0.0
        if d > res["max_abs_diff"] or res["worst_tensor"] is None:
            res["max_abs_diff"], res["worst_tensor"] = d, k
        res["max_abs_weight"] = max(res["max_abs_weight"], float(b.abs().max()))
        tb = b - t0
        res["max_abs_task_vector"] = max(res["max_abs_task_vector"], float(tb.abs().max()))
        if b.dim() == 2:
            matrices += 1
            e2 = float(((a - b) ** 2).sum())
            n2 = float((tb ** 2).sum())
            num2 += e2
            den2 += n2
            a2 += float(((a - t0) ** 2).sum())
            rel = (e2 ** 0.5) / (n2 ** 0.5) if n2 > 0 else (0.0 if e2 == 0 else float("inf"))
            if rel > worst_rel or worst_rel_name is None:
                worst_rel, worst_rel_name = rel, k
    res.update(matrices=matrices,
               rel_fro_task_vector=(num2 ** 0.5) / (den2 ** 0.5) if den2 > 0 else 0.0,
               max_rel_fro_per_matrix=worst_rel, worst_rel_matrix=worst_rel_name,
               task_vector_norm_ratio=(a2 ** 0.5) / (den2 ** 0.5) if den2 > 0 else 0.0)
    res["max_abs_diff_rel_weight"] = res["max_abs_diff"] / res["max_abs_weight"] if res["max_abs_weight"] else 0.0
    res["max_abs_diff_rel_task_vector"] = (res["max_abs_diff"] / res["max_abs_task_vector"]
                                           if res["max_abs_task_vector"] else 0.0)
    return res


CHECKS = [  # name, a, b (reference), kind
    ("r3h_tsvm_cli vs fb_tsvm_cli", "r3h_tsvm_cli", "fb_tsvm_cli", "roundoff"),
    ("r3h_r_tsvm_cli vs r3h_tsvm_cli", "r3h_r_tsvm_cli", "r3h_tsvm_cli", "info"),
    ("r3h_tsvm vs fb_tsvm", "r3h_tsvm", "fb_tsvm", "roundoff"),
    ("r3h_tsvm vs r3h_tsvm_full", "r3h_tsvm", "r3h_tsvm_full", "approx"),
    ("r3h_tsvm_2proc vs r3h_tsvm", "r3h_tsvm_2proc", "r3h_tsvm", "approx"),
    ("r3h_tsvm_stream vs r3h_tsvm", "r3h_tsvm_stream", "r3h_tsvm", "identical"),
    ("r3h_tsvm_rand vs r3h_tsvm", "r3h_tsvm_rand", "r3h_tsvm", "approx"),
    ("r3h_r_tsvm vs r3h_tsvm", "r3h_r_tsvm", "r3h_tsvm", "info"),
    ("r3h_r_tsvm_rel vs r3h_tsvm", "r3h_r_tsvm_rel", "r3h_tsvm", "info"),
]


def check_line(name: str, kind: str, c: dict) -> str:
    if "error" in c:
        return f"- {name}: ERROR {c['error']}"
    extra = ""
    if c["only_in_a"] or c["only_in_b"]:
        extra = f"; names only in the first: {c['only_in_a']}, only in the second: {c['only_in_b']}"
    if kind == "identical":
        verdict = "PASS (bit-identical)" if c["bit_identical"] else "FAIL (not bit-identical)"
        return (f"- {name}: {verdict}; max |diff| = {c['max_abs_diff']:.3e} over {c['tensors_compared']} "
                f"tensors{'' if c['bit_identical'] else ' (largest in `' + str(c['worst_tensor']) + '`)'}{extra}")
    if kind == "roundoff":
        verdict = "PASS" if c["rel_fro_task_vector"] <= OUTPUT_TARGET else "FAIL"
        return (f"- {name}: {verdict} (target: relative Frobenius difference <= {OUTPUT_TARGET:g}); max |diff| = {c['max_abs_diff']:.3e} over {c['tensors_compared']} tensors (largest in "
                f"`{c['worst_tensor']}`) = {c['max_abs_diff_rel_weight']:.2e} of the largest |weight| "
                f"({c['max_abs_weight']:.4g}) and {c['max_abs_diff_rel_task_vector']:.2e} of the largest "
                f"|merged task vector| ({c['max_abs_task_vector']:.3g}); relative Frobenius difference of the "
                f"task vectors over {c['matrices']} matrices {c['rel_fro_task_vector']:.2e}{extra}")
    return (f"- {name}: relative Frobenius difference of the merged task vectors (merged − base) over "
            f"{c['matrices']} matrices {c['rel_fro_task_vector']:.3e}; largest per matrix "
            f"{c['max_rel_fro_per_matrix']:.3e} (`{c['worst_rel_matrix']}`); max |diff| {c['max_abs_diff']:.3e}; "
            f"‖Δ‖_F ratio (first / second) {c['task_vector_norm_ratio']:.4f}{extra}")


# ---------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------
def verdicts(summary: Dict[str, dict]) -> Dict[str, dict]:
    out = {}
    for run in TARGET_RUNS:
        s, p = summary.get(run), summary.get(peer_of(run))
        if s and p and "failed" not in s and "failed" not in p:
            rr, tr = s["peak_rss_gb"] / p["peak_rss_gb"], s["wall_s"] / p["wall_s"]
            out[run] = {"rss_ratio": rr, "time_ratio": tr, "rss_pass": rr <= RSS_TARGET, "time_pass": tr <= TIME_TARGET}
    for rt, t in (("r3h_r_tsvm_cli", "r3h_tsvm_cli"), ("r3h_r_tsvm", "r3h_tsvm")):
        a, b = summary.get(rt), summary.get(t)
        if a and b and "failed" not in a and "failed" not in b:
            ratio = a["wall_s"] / b["wall_s"]
            out[rt] = {"vs_tsvm": ratio, "pass": ratio <= R_TSVM_TARGET}
    full, rand = summary.get("r3h_tsvm"), summary.get("r3h_tsvm_rand")
    if full and rand and "failed" not in full and "failed" not in rand:
        out["r3h_tsvm_rand"] = {"speedup_vs_r3h_tsvm": full["wall_s"] / rand["wall_s"]}
    return out


def omega_line(run: str, s: dict) -> Optional[str]:
    o = s.get("r_tsvm_summary")
    if not o or "omega" not in o:
        return None
    om, kq, al = o["omega"], o.get("k_i_over_q", {}), o.get("alpha_i", {})
    return (f"- {run}: Ω over the {o['svd_tensors']} SVD matrices: min {om['min']:.4f}, median "
            f"{om['median']:.4f}, max {om['max']:.4f}; k_i / q: min {kq.get('min', float('nan')):.3f}, median "
            f"{kq.get('median', float('nan')):.3f}, max {kq.get('max', float('nan')):.3f}; outlier weights αi "
            f"in [{al.get('min', float('nan')):.4f}, {al.get('max', float('nan')):.4f}]")


def make_table(summary, checks, meta) -> str:
    git = meta.get("git") or {}
    commit = git.get("commit", "?")[:10] + (" + uncommitted changes in r3h/" if git.get("r3h_dirty") else "")
    if git.get("snapshot"):
        commit += f" (a snapshot of its r3h/, `--r3h-commit {git['requested']}`)"
    if git.get("changed_during_run"):
        commit += f" (WARNING: r3h/ changed during the run: {', '.join(git.get('changed_files') or ['?'])})"
    v = meta.get("versions", {})
    lines = [
        f"## TSVM benchmark: {meta['tag']} ({meta['parameters']:,} parameters per model, base + "
        f"{meta['experts']} experts, {meta['dtype']}, {meta['threads']} torch threads)",
        "",
        f"r3h at `{commit}`; fusion_bench {v.get('fusion-bench')}, torch {v.get('torch')}, transformers "
        f"{v.get('transformers')}; {meta['cpu_count']} CPUs. Command: `{meta['command']}` "
        f"(started {meta['started_utc']}, {meta['elapsed_min']:.1f} min in all). r3h imported from: "
        f"{', '.join('`' + os.path.relpath(p, REPO) + '`' for p in meta.get('r3h_files', []))}.",
        "",
        "Whole-command rows (`_cli`): wall = the whole `fusion_bench` command (start-up, imports, model pool, "
        "merge, saving the merged model); peak RSS = the command's VmHWM (for several ranks: the sum of the "
        "per-process VmHWM, polled). In-process rows: wall = model pool construction + `method.run` in a fresh "
        "process (best of the repeats); peak RSS = the process's own VmHWM right after the merge, before saving, "
        f"including ~{meta['import_rss_gb']:.2f} GB of imports. Every method at its defaults: fusion_bench's "
        f"TSVM and r3h's (`svd_solver: auto`, `cpu_threads: null`) both use torch's {meta['threads']} threads "
        "(OMP/MKL_NUM_THREADS set to that in every child). GB = 1e9 bytes.",
        "",
        f"| method | peak RSS (GB) | wall (s) | RSS vs fb | time vs fb | target RSS <= {RSS_TARGET}x fb | "
        f"target time <= {TIME_TARGET}x fb | notes |",
        "|---|---:|---:|---:|---:|:---:|:---:|---|",
    ]
    vd = verdicts(summary)
    for run in RUNS:
        if run not in summary:
            continue
        s = summary[run]
        if "failed" in s:
            lines.append(f"| {LABELS[run]} | failed: {s['failed']} | | | | | | |")
            continue
        rr = tr = "–"
        p = summary.get(peer_of(run))
        p_ok = p is not None and "failed" not in p
        if not run.startswith("fb_") and p_ok:
            rr = f"{s['peak_rss_gb'] / p['peak_rss_gb']:.2f}x"
            tr = f"{s['wall_s'] / p['wall_s']:.2f}x"
        rt = tt = ""
        if run in TARGET_RUNS and run in vd:
            rt = "PASS" if vd[run]["rss_pass"] else "FAIL"
            tt = "PASS" if vd[run]["time_pass"] else "FAIL"
        notes = []
        if s.get("repeats", 1) > 1:
            notes.append(f"best of {s['repeats']}")
        if run == "r3h_tsvm_rand" and "r3h_tsvm_rand" in vd:
            notes.append(f"{vd['r3h_tsvm_rand']['speedup_vs_r3h_tsvm']:.2f}x faster than r3h tsvm (full SVD)")
        if run == "r3h_tsvm_2proc":
            st = s.get("r3h_stats") or {}
            per = st.get("peak_rss_gb_per_rank")
            notes.append(f"per-process VmHWM {s.get('peak_rss_per_process_gb')} GB; max sampled sum of RSS "
                         f"{s.get('max_sampled_sum_rss_gb', 0):.2f} GB; r3h's per-rank peaks {per} GB; "
                         f"merge {st.get('seconds')} s (slowest rank)")
        if run in vd and "vs_tsvm" in vd[run]:
            notes.append(f"{vd[run]['vs_tsvm']:.2f}x TSVM's wall ({'PASS' if vd[run]['pass'] else 'FAIL'}: "
                         f"target <= {R_TSVM_TARGET:.2f}x)")
        if run.endswith("_cli"):
            notes.append(f"vs {peer_of(run)}; whole command incl. start-up, imports and saving")
        elif run != "fb_tsvm":
            notes.append("vs fb_tsvm (in-process rows: pool + method.run)")
        if run.startswith("r3h_r_tsvm") and s.get("r_tsvm_summary", {}).get("omega"):
            om = s["r_tsvm_summary"]["omega"]
            notes.append(f"Ω {om['min']:.3f}–{om['max']:.3f}")
        lines.append(f"| {LABELS[run]} | {s['peak_rss_gb']:.2f} | {s['wall_s']:.1f} | {rr} | {tr} | {rt} | {tt} | "
                     f"{'; '.join(notes)} |")
    lines.append("")
    lines.append("Wall times of every repeat (s): " + "; ".join(
        f"{r} {summary[r]['wall_s_all']}" for r in RUNS if r in summary and "wall_s_all" in summary[r]) + ".")
    lines.append("")
    if checks:
        lines.append("Checks (float64, tensor by tensor):")
        lines.append("")
        for name, (kind, c) in checks.items():
            lines.append(check_line(name, kind, c))
        lines.append("")
    om_lines = [omega_line(r, summary[r]) for r in ("r3h_r_tsvm", "r3h_r_tsvm_rel") if r in summary]
    om_lines = [l for l in om_lines if l]
    if om_lines:
        lines.append("R-TSVM reports (k_i = ranks kept per expert, q = ⌊r/n⌋ = TSVM's):")
        lines.append("")
        lines.extend(om_lines)
        if meta.get("r_tsvm_relative_reason"):
            lines.append(f"- r3h_r_tsvm_rel: {meta['r_tsvm_relative_reason']}")
        lines.append("")
    return "\n".join(lines)


def parent_main(args) -> None:
    started = time.time()
    started_utc = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    pool_dir = os.path.abspath(args.pool_dir or os.path.join(out, "pools", bm.shape_name(args)))
    spec = bm.pool_spec(args)
    pool_info = bm.read_pool(pool_dir, spec)
    if pool_info is None:
        subprocess.run([sys.executable, os.path.abspath(bm.__file__), "--build-pool", "--pool-dir", pool_dir,
                        *bm.shape_argv(args)], check=True, env=bm.child_env(args), cwd=REPO)
        pool_info = bm.read_pool(pool_dir, spec)
        if pool_info is None:
            raise SystemExit(f"building the pool in {pool_dir} failed")
    else:
        print(f"pool: reusing {pool_dir}", flush=True)
    params = pool_info["parameters"]
    tag = f"{round(params / 1e6)}M" + (f"_{args.dtype}" if args.dtype != "float32" else "") + \
          (f"_e{args.experts}" if args.experts != 5 else "")
    print(f"pool: {params:,} parameters per model ({params / 1e6:.1f}M), {pool_info['tensors']} tensors, "
          f"{args.dtype}; base + {args.experts} experts", flush=True)
    runs = [r for r in (args.only.split(",") if args.only else RUNS if args.all else DEFAULT_RUNS) if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {unknown}; choose from {RUNS}")
    if args.r_tsvm_relative == "always" and "r3h_r_tsvm_rel" not in runs:
        runs.append("r3h_r_tsvm_rel")
    work = os.path.join(out, f"work_tsvm_{tag}")
    os.makedirs(work, exist_ok=True)
    git = bm.git_state()
    if args.r3h_commit:
        git = bm.snapshot_r3h(args, out)
    budget_s = args.budget_min * 60

    raw: Dict[str, List[dict]] = {r: [] for r in runs}
    rel_reason = None

    def do(run: str, rep: int) -> None:
        if run in CLI_RUNS:
            res = run_cli_2proc(args, pool_dir, work, run)
        else:
            res = run_child(args, run, pool_dir, work, save=(rep == 0 and not args.skip_check))
        raw[run].append(res)
        if "failed" not in res:
            extra = ""
            if "pool_s" in res:
                extra = (f" (pool {res['pool_s']:.2f} s + run {res['run_s']:.2f} s), peak RSS "
                         f"{res['peak_rss_bytes'] / 1e9:.3f} GB (after imports {res['rss_after_imports_bytes'] / 1e9:.3f} GB)")
            else:
                extra = (f", peak RSS (sum of per-process VmHWM) {res['peak_rss_bytes'] / 1e9:.3f} GB, "
                         f"per process {[round(p['peak_rss_bytes'] / 1e9, 3) for p in res['peak_rss_per_process_bytes']]}, "
                         f"max sampled sum {res['max_sampled_sum_rss_bytes'] / 1e9:.3f} GB; r3h stats {res.get('r3h_stats')}")
            om = omega_line(run, {"r_tsvm_summary": res.get("r_tsvm_summary")}) if "r_tsvm_summary" in res else None
            print(f"  [round {rep + 1}] {run:16s} wall {res['wall_s']:8.2f} s{extra}"
                  f" [{(time.time() - started) / 60:.1f} min elapsed]", flush=True)
            if om:
                print("   " + om, flush=True)

    explicit_rel = "r3h_r_tsvm_rel" in runs and (args.only or args.r_tsvm_relative == "always")
    if "r3h_r_tsvm_rel" in runs:
        runs.remove("r3h_r_tsvm_rel")
    for run in runs:
        do(run, 0)
    want_rel = bool(explicit_rel) and args.r_tsvm_relative != "never"
    ab = next((r for r in raw.get("r3h_r_tsvm", []) if "failed" not in r), None)
    om = ((ab or {}).get("r_tsvm_summary") or {}).get("omega")
    if om and om["min"] > OMEGA_ALL_ONE:
        rel_reason = (f"the absolute rule (ε = 0.1) gave Ω ≥ {om['min']:.4f} on every matrix (the task "
                      f"vectors are far below 0.1), so R-TSVM was also run with epsilon_mode=relative")
        want_rel = want_rel or args.r_tsvm_relative == "auto"
    if want_rel:
        runs.append("r3h_r_tsvm_rel")
        raw["r3h_r_tsvm_rel"] = []
        do("r3h_r_tsvm_rel", 0)
    for rep in range(1, args.repeats):
        for run in [r for r in REPEAT_ORDER if r in runs]:
            last = next((r for r in reversed(raw[run]) if "failed" not in r), None)
            if last is None:
                continue
            need = last.get("process_lifetime_s", last["wall_s"]) * 1.1 + 5
            if time.time() - started + need + args.check_reserve_s > budget_s:
                print(f"  [round {rep + 1}] {run}: not repeated (would pass --budget-min {args.budget_min})", flush=True)
                continue
            do(run, rep)
    summary = {r: summarize(raw[r]) for r in raw if raw[r]}

    checks = {}
    if not args.skip_check:
        base_path = pool_info["models"]["_pretrained_"]

        def saved(run):
            ok = next((r for r in raw.get(run, []) if "failed" not in r and r.get("save_path")), None)
            return ok["save_path"] if ok else None

        for name, a, b, kind in CHECKS:
            pa, pb = saved(a), saved(b)
            if pa and pb:
                t0 = time.perf_counter()
                c = compare(pa, pb, base_path)
                checks[name] = (kind, c)
                print(f"check ({time.perf_counter() - t0:.0f} s): " + check_line(name, kind, c)[2:], flush=True)
    if not args.keep_outputs:
        for r in (r for rs in raw.values() for r in rs):
            p = r.get("save_path")
            if p and os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif p and os.path.exists(p):
                os.remove(p)

    if not args.r3h_commit:
        end = bm.git_state()
        if end["r3h_fingerprint"] != git["r3h_fingerprint"]:
            git = {**git, "end": end, "changed_during_run": True, "changed_files": bm.changed_r3h_files(git, end)}
    versions = next((r["versions"] for rs in raw.values() for r in rs if "versions" in r), None) or bm._versions()
    import_rss = [s["rss_after_imports_gb"] for s in summary.values() if "rss_after_imports_gb" in s]
    meta = {"tag": tag, "parameters": params, "experts": args.experts, "dtype": args.dtype,
            "threads": args.threads, "repeats": args.repeats, "budget_min": args.budget_min,
            "pool_dir": pool_dir, "spec": spec, "import_rss_gb": max(import_rss) if import_rss else 0.0,
            "cpu_count": os.cpu_count(), "git": git, "versions": versions,
            "stream_shard_size": args.stream_shard_size, "started_utc": started_utc,
            "elapsed_min": (time.time() - started) / 60, "r_tsvm_relative_reason": rel_reason,
            "r3h_files": sorted({r["r3h_file"] for rs in raw.values() for r in rs if r.get("r3h_file")}),
            "command": " ".join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), os.getcwd())] + sys.argv[1:])}
    table = make_table(summary, checks, meta)
    print()
    print(table)
    md = os.path.join(out, f"tsvm_{tag}.md")
    with open(md, "w") as f:
        f.write(table + "\n")
    doc = {"meta": meta, "summary": summary, "targets": verdicts(summary),
           "checks": {k: {"kind": kind, **c} for k, (kind, c) in checks.items()}, "raw": raw}
    with open(os.path.join(out, f"tsvm_{tag}.json"), "w") as f:
        json.dump(doc, f, indent=2, default=str)
    print(f"written: {md} and {md[:-3]}.json")


# ---------------------------------------------------------------------------------------
# --shape: one or two decoder layers + embedding + lm_head of a real model shape, synthetic
# ---------------------------------------------------------------------------------------
SHAPES = {  # hidden, intermediate, vocab, attention heads, kv heads, decoder layers
    "llama3-8b": dict(hidden=4096, intermediate=14336, vocab=128256, heads=32, kv_heads=8, layers=32),
    "llama3-8b-cpu": dict(hidden=512, intermediate=1792, vocab=16032, heads=4, kv_heads=1, layers=32),
    "llama2-7b": dict(hidden=4096, intermediate=11008, vocab=32000, heads=32, kv_heads=32, layers=32),
}
CPU_SCALED = {"llama3-8b": "llama3-8b-cpu"}  # what --device cpu runs unless --full-size


def shape_tensors(sh: dict) -> List[tuple]:
    """(name, shape, per-model count) of every matrix: one decoder layer's seven, then the
    embedding and lm_head (norms are vectors: θ0 + mean τ, negligible)."""
    h, i, v = sh["hidden"], sh["intermediate"], sh["vocab"]
    kv = h // sh["heads"] * sh["kv_heads"]
    layer = [("q_proj", (h, h)), ("k_proj", (kv, h)), ("v_proj", (kv, h)), ("o_proj", (h, h)),
             ("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))]
    return [(n, s, sh["layers"]) for n, s in layer] + [("embed_tokens", (v, h), 1), ("lm_head", (v, h), 1)]


def shape_main(args) -> None:
    """Time r3h's TSVM (and fusion_bench's, unless --no-peer) tensor by tensor on synthetic
    base + expert tensors of a real shape, on --device, and project the whole model."""
    import torch

    from fusion_bench.method.task_singular_vector.utils import TSVM_utils
    from r3h.methods.tsvm import TSVM

    dev = torch.device(args.device)
    name = args.shape
    if dev.type == "cpu" and name in CPU_SCALED and not args.full_size:
        name = CPU_SCALED[name]
    if name not in SHAPES:
        raise SystemExit(f"--shape: unknown shape {name!r}; choose from {sorted(SHAPES)}")
    sh = SHAPES[name]
    n = args.experts
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def make(shape, seed):
        g = torch.Generator(device=dev).manual_seed(seed)
        base = 0.02 * torch.randn(shape, generator=g, device=dev)
        experts = []
        for _ in range(n):  # a DPO-sized update: a few directions plus dense noise
            low = torch.randn(shape[0], 16, generator=g, device=dev) @ torch.randn(16, shape[1], generator=g, device=dev)
            experts.append(base + 2e-4 * low / 16 + 5e-5 * torch.randn(shape, generator=g, device=dev))
        return base, experts

    method = TSVM(progress=False, device=str(dev), svd_solver=args.svd_solver)
    method.setup([f"e{i}" for i in range(n)])
    rows = []
    print(f"shape {name} ({sh}), base + {n} experts, float32, device {dev}"
          + ("" if cuda else f", {torch.get_num_threads()} torch threads"), flush=True)
    for layer in range(max(1, args.layers)):
        for tname, shape, count in shape_tensors(sh):
            if count == 1 and layer > 0:
                continue
            base, experts = make(shape, 1000 * layer + len(rows))
            clones = [e.clone() for e in experts]  # merge_tensor takes τ in place in its inputs
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
                held = torch.cuda.memory_allocated(dev)
            t0 = time.perf_counter()
            out = method.merge_tensor(tname, base, clones)
            sync()
            t_r3h = time.perf_counter() - t0
            work_gb = (torch.cuda.max_memory_allocated(dev) - held) / 1e9 if cuda else None
            del clones
            rep = method.tensor_reports[tname]
            del out
            t_fb = None
            if not args.no_peer:
                sync()
                t0 = time.perf_counter()
                taus = [{tname: e - base} for e in experts]
                merged = TSVM_utils.compute_and_sum_svd_mem_reduction(taus, exclude_keys=[], accelerator=dev)
                out = base + merged[tname]
                sync()
                t_fb = time.perf_counter() - t0
                del taus, merged, out
            del base, experts
            routes = sorted({r.split(" (")[0] + (" (fallback)" if "fallback" in r else "")
                             for r in rep.get("routes", {}).values()})
            rows.append({"layer": layer if count > 1 else None, "tensor": tname, "shape": list(shape), "count": count,
                         "r3h_s": t_r3h, "fb_s": t_fb, "routes": routes, "r3h_work_gpu_gb": work_gb})
            print(f"  {tname:12s} {str(tuple(shape)):16s} r3h {t_r3h:8.3f} s" +
                  (f"  fusion_bench {t_fb:8.3f} s  ({t_r3h / t_fb:.2f}x)" if t_fb else "") +
                  f"  routes {routes}", flush=True)
            if cuda:
                torch.cuda.empty_cache()

    def project(key):
        if any(r[key] is None for r in rows):
            return None
        total = 0.0
        for tname, shape, count in shape_tensors(sh):
            ts = [r[key] for r in rows if r["tensor"] == tname]
            total += count * sum(ts) / len(ts)
        return total

    p_r3h, p_fb = project("r3h_s"), project("fb_s")
    peak = max(r["r3h_work_gpu_gb"] for r in rows) if cuda else None
    dev_name = torch.cuda.get_device_name(dev) if cuda else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    lines = [f"## TSVM on the {name} shape: {max(1, args.layers)} decoder layer(s) + embedding + lm_head timed, "
             f"whole model projected (base + {n} experts, float32, {dev_name})", "",
             "| tensor | shape | per model | r3h s/tensor | fusion_bench s/tensor | r3h / fb | r3h routes |",
             "|---|---|---:|---:|---:|---:|---|"]
    for tname, shape, count in shape_tensors(sh):
        rs = [r for r in rows if r["tensor"] == tname]
        a = sum(r["r3h_s"] for r in rs) / len(rs)
        b = None if rs[0]["fb_s"] is None else sum(r["fb_s"] for r in rs) / len(rs)
        lines.append(f"| {tname} | {shape[0]}×{shape[1]} | {count} | {a:.3f} | "
                     f"{'–' if b is None else f'{b:.3f}'} | {'–' if b is None else f'{a / b:.2f}x'} | "
                     f"{', '.join(sorted({x for r in rs for x in r['routes']}))} |")
    lines.append("")
    lines.append(f"Projected merge time of the whole model (matrices only; reading and writing not included): "
                 f"r3h {p_r3h:.0f} s" + (f", fusion_bench {p_fb:.0f} s, ratio {p_r3h / p_fb:.2f}x" if p_fb else "")
                 + (f"; r3h's largest working memory on the GPU for one tensor, beyond its inputs: {peak:.1f} GB"
                    if peak is not None else "") + ".")
    lines.append(f"Command: `python benchmarks/bench_tsvm.py {' '.join(sys.argv[1:])}`.")
    table = "\n".join(lines)
    print()
    print(table)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"tsvm_shape_{name}_{dev.type}.md")
    with open(path, "w") as f:
        f.write(table + "\n")
    with open(path[:-3] + ".json", "w") as f:
        json.dump({"shape": name, "spec": sh, "device": dev_name, "rows": rows, "projected_r3h_s": p_r3h,
                   "projected_fb_s": p_fb, "peak_accelerator_gb": peak}, f, indent=2)
    print(f"written: {path}")


def routes_main(args) -> None:
    """Single-matrix timings of the routes: LAPACK's SVD (`full`) against the Gram routes
    (`auto`) for the top-q triplets and the polar factor, on the pool's matrix shapes."""
    import torch

    from r3h.ops import svd as core

    torch.set_num_threads(args.threads)

    def best(f, k=3):
        b = float("inf")
        for _ in range(k):
            t0 = time.perf_counter()
            f()
            b = min(b, time.perf_counter() - t0)
        return b

    h, i, v, n = args.hidden, args.intermediate, args.vocab, args.experts
    print(f"routes at {args.threads} torch thread(s), best of 3 (s); n = {n} experts")
    print("| shape | top-q full | top-q auto | speed-up | polar full | polar auto | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m, d in [(h, h), (i, h), (h, i), (v, h)]:
        g = torch.Generator().manual_seed(m + d)
        A = 0.01 * torch.randn(m, d, generator=g)
        q = min(m, d) // n
        tf = best(lambda: core.top_triplets(A, q, "full"))
        tg = best(lambda: core.top_triplets(A, q, "auto"))
        U = torch.linalg.qr(torch.randn(m, n * q, generator=g)).Q + 0.01 * torch.randn(m, n * q, generator=g)
        pf = best(lambda: core.polar_factor(U.clone(), "full"))
        pg = best(lambda: core.polar_factor(U.clone(), "auto", inplace=True))
        print(f"| {m}×{d} | {tf:.3f} | {tg:.3f} | {tf / tg:.1f}x | {pf:.3f} | {pg:.3f} | {pf / pg:.1f}x |", flush=True)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=None,
                    help="decoder layers of the pool (default 12); with --shape: layers timed (default 1)")
    ap.add_argument("--intermediate", type=int, default=2560, help="default 2560: 148.3M parameters")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    ap.add_argument("--experts", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=sorted(bm.DTYPE_BYTES))
    ap.add_argument("--out", default=DEFAULT_OUT, help="results folder (default benchmarks/results, gitignored)")
    ap.add_argument("--pool-dir", default=None, help="where the pool is cached (default <out>/pools/<shape>)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in every child")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of the in-process r3h runs at most (within --budget-min); fb_tsvm and the CLI run once")
    ap.add_argument("--budget-min", type=float, default=35.0, help="no repeat starts that would end the run later")
    ap.add_argument("--check-reserve-s", type=float, default=120.0, help="time kept for the checks (s)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(RUNS)}")
    ap.add_argument("--all", action="store_true", help="every run (default: " + ",".join(DEFAULT_RUNS) + ")")
    ap.add_argument("--r-tsvm-relative", default="auto", choices=["auto", "always", "never"],
                    help="run r3h_r_tsvm_rel: auto = when the absolute rule gives Ω ≈ 1 on every matrix")
    ap.add_argument("--stream-shard-size", default="100MB", help="max_shard_size of r3h_tsvm_stream")
    ap.add_argument("--r3h-commit", default=None, help="measure r3h/ as of this git revision (see bench_merge.py)")
    ap.add_argument("--skip-check", action="store_true", help="no saving, no checks")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the merged models in <out>/work_tsvm_<size>")
    ap.add_argument("--shape", default=None, help=f"time one model shape synthetically: {', '.join(sorted(SHAPES))} "
                    "(on CPU, llama3-8b runs its scaled-down llama3-8b-cpu unless --full-size)")
    ap.add_argument("--device", default="cpu", help="with --shape: cpu or cuda[:i]")
    ap.add_argument("--svd-solver", default="auto", help="with --shape: r3h's svd_solver")
    ap.add_argument("--full-size", action="store_true", help="with --shape on CPU: the real shape")
    ap.add_argument("--no-peer", action="store_true", help="with --shape: skip fusion_bench's timing")
    ap.add_argument("--routes", action="store_true", help="time the SVD routes alone on the pool's matrix shapes")
    ap.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--save-path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.layers is None:
        args.layers = 1 if args.shape else 12
    if args.routes:
        routes_main(args)
    elif args.shape:
        shape_main(args)
    elif args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
