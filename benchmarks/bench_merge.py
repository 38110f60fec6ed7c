"""Benchmark r3h's streaming merges against fusion_bench's causal-LM merges.

How to run (from the repository root, in the project's virtual environment)::

    python benchmarks/bench_merge.py                      # 148M-parameter pool, fp32, base + 5 experts
    python benchmarks/bench_merge.py --repeats 3          # best-of-3 wall time for task arithmetic
    python benchmarks/bench_merge.py --only fb_ta,r3h_ta  # a subset of the runs
    python benchmarks/bench_merge.py --hidden 256 --layers 2 --intermediate 512 --vocab 4000 --heads 8   # quick

On the 2-core, 24 GB development machine the default run takes about 3 minutes
(``--repeats 5``: about 6), the pool build about 1 more the first time. fusion_bench's
TIES alone takes about 1 minute (up to 3 when the machine is busy) and peaks at about
24 GB for the default pool: it is skipped with a message where it cannot fit in RAM
(``--force-fb-ties`` runs it anyway). While other work edits r3h/, use
``--r3h-commit HEAD`` to measure a fixed snapshot of r3h/ instead of the working tree.

What it does:

1. Builds (once, in a subprocess; cached under ``--pool-dir``, by default
   ``<out>/pools/<shape>``) a Llama-shaped pool: ``base`` plus ``--experts`` experts,
   each a Hugging Face folder (``config.json`` written by ``transformers.LlamaConfig`` +
   one ``model.safetensors``). Weights are seeded ``torch.Generator`` draws made tensor
   by tensor (the shapes come from a meta-device model; no model is ever randomly
   initialised); each expert is the base plus a small dense delta. A rerun with the
   same shape reuses the pool (``pool.json`` is written last and records the spec).
2. Runs every merge in a fresh subprocess (``bench_merge.py --child RUN ...``); every
   child imports the same modules and uses the same torch thread count (``--threads``,
   also exported as OMP/MKL_NUM_THREADS). The child times the merge call (model pool
   construction + ``method.run``), records its own peak RSS right after the merge and
   before anything is saved (Linux ``VmHWM``; see ``peak_rss_bytes`` for why not
   ``ru_maxrss``), and only then writes the merged state dict to a safetensors file
   (task arithmetic only; the streaming run's output folder is compared as is). Runs:

   - ``fb_ta``         fusion_bench ``TaskArithmeticForCausalLM`` (scaling_factor 1.0,
                       model_save_path None) on fusion_bench's ``CausalLMPool``
   - ``r3h_ta``        r3h ``TaskArithmetic`` (scaling_factor 1.0) on ``AlignedCausalLMPool``,
                       in memory (returns a model)
   - ``r3h_ta_stream`` the same with ``out_dir`` (r3h's default ``max_shard_size``, or
                       ``--stream-shard-size``): writes the merged model to disk; its time
                       includes the write
   - ``fb_ties``       fusion_bench ``TiesMergingForCausalLM`` (scaling_factor 1.0,
                       threshold 20 = top 20 % over each expert's flattened model, merge_func sum)
   - ``r3h_ties``      r3h ``TiesMerging`` (scaling_factor 1.0, density 0.2 per tensor)

   Repeats are interleaved (run order fb_ta, r3h_ta, r3h_ta_stream, ... per round).
3. Checks that r3h's task arithmetic (in memory and streamed) equals fusion_bench's:
   the maximum absolute difference over all tensors (compared in float64).

What it prints: the pool's parameter count, one line per finished run, the max-abs-diff
check, and a markdown table (method, peak RSS in GB, wall time in s, the RSS and time
ratios against the fusion_bench run of the same method, and PASS/FAIL for the task
arithmetic targets: r3h peak RSS <= 0.4x fusion_bench's, r3h time <= fusion_bench's).
The two TIES definitions differ (fusion_bench trims over the whole flattened model, r3h
per tensor), so the TIES rows compare time and memory only, as the output says. The
table goes to ``<out>/merge_<size>.md`` and every raw number (each repeat, versions,
the r3h git commit measured) to ``<out>/merge_<size>.json``.

GB means 10**9 bytes. Peak RSS includes the imports (torch, transformers, fusion_bench,
r3h), the same in every child; the JSON has the RSS after imports of each run.
Wall time is the best over repeats, peak RSS the largest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results")

RUNS = ["fb_ta", "r3h_ta", "r3h_ta_stream", "fb_ties", "r3h_ties",
        "fb_iso_c", "r3h_iso_c", "fb_iso_cts", "r3h_iso_cts", "fb_wudi", "r3h_wudi"]
LABELS = {
    "fb_ta": "fusion_bench TaskArithmeticForCausalLM",
    "r3h_ta": "r3h TaskArithmetic (in memory)",
    "r3h_ta_stream": "r3h TaskArithmetic (out_dir, incl. write)",
    "fb_ties": "fusion_bench TiesMergingForCausalLM",
    "r3h_ties": "r3h TiesMerging (in memory)",
    "fb_iso_c": "fusion_bench ISO_C_Merge",
    "r3h_iso_c": "r3h IsoC (out_dir, incl. write)",
    "fb_iso_cts": "fusion_bench ISO_CTS_Merge",
    "r3h_iso_cts": "r3h IsoCTS (out_dir, incl. write)",
    "fb_wudi": "fusion_bench WUDIMerging",
    "r3h_wudi": "r3h WUDI (out_dir, incl. write)",
}
PEER = {"r3h_ta": "fb_ta", "r3h_ta_stream": "fb_ta", "r3h_ties": "fb_ties",
        "r3h_iso_c": "fb_iso_c", "r3h_iso_cts": "fb_iso_cts", "r3h_wudi": "fb_wudi"}
TA_RUNS = ("fb_ta", "r3h_ta", "r3h_ta_stream")
TIES_RUNS = ("fb_ties", "r3h_ties")
# the 2025-26 merges against fusion_bench's (Iso-C, Iso-CTS at scaling_factor 1.0 and k/r 0.8;
# WUDI at --wudi-iterations, lr 1e-5, squared norms, the vocabulary matrices excluded on both
# sides): r3h streams into out_dir; both outputs are saved and compared
NEW_RUNS = ("fb_iso_c", "r3h_iso_c", "fb_iso_cts", "r3h_iso_cts", "fb_wudi", "r3h_wudi")
STREAM_RUNS = ("r3h_ta_stream", "r3h_iso_c", "r3h_iso_cts", "r3h_wudi")
NEW_RSS_TARGET = 0.3  # issue 19: peak RSS <= 0.3 x fusion_bench's
WUDI_EXCLUDE = ["model.embed_tokens.weight", "lm_head.weight"]
RSS_TARGET = 0.4  # r3h peak RSS <= 0.4 x fusion_bench's
TIME_TARGET = 1.0  # r3h wall time <= fusion_bench's
# fusion_bench's TIES peaked at 23.1-24.4 GB for 148M fp32 parameters x (base + 5 experts):
# 0.57 GB of imports + up to 40 model sizes. Used only to skip it where it cannot fit.
FB_TIES_MODEL_SIZES = 40

SEED = 1234
BASE_STD = 0.02
DELTA_STD = 1e-3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def ru_maxrss_bytes(who=resource.RUSAGE_SELF) -> int:
    r = resource.getrusage(who).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _proc_status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's own peak RSS.

    On Linux, `VmHWM` (the high-water mark of this process's address space). Not
    `ru_maxrss`: Linux carries the parent's high-water mark across fork + exec into the
    child's `ru_maxrss` (checked here: a child of a 1 GB parent reports 1 GB before it
    does anything), which would put the parent's RSS under every measurement as a floor.
    Elsewhere, `ru_maxrss`.
    """
    hwm = _proc_status_bytes("VmHWM")
    return hwm if hwm is not None else ru_maxrss_bytes()


def current_rss_bytes() -> int:
    return _proc_status_bytes("VmRSS") or 0


def meminfo_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------
# The pool (built in a subprocess so that the parent stays small)
# ---------------------------------------------------------------------------------------
def llama_config(args):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads or args.heads, max_position_embeddings=2048,
        tie_word_embeddings=False, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
        dtype=args.dtype,
    )


def model_shapes(config) -> Dict[str, tuple]:
    """Parameter names and shapes from a meta-device model (no weights allocated)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def pool_spec(args) -> dict:
    return {"hidden": args.hidden, "layers": args.layers, "intermediate": args.intermediate,
            "vocab": args.vocab, "heads": args.heads, "kv_heads": args.kv_heads or args.heads,
            "experts": args.experts, "dtype": args.dtype, "seed": SEED,
            "base_std": BASE_STD, "delta_std": DELTA_STD}


def shape_name(args) -> str:
    return (f"llama_h{args.hidden}_l{args.layers}_i{args.intermediate}_v{args.vocab}"
            f"_a{args.heads}_kv{args.kv_heads or args.heads}_e{args.experts}_{args.dtype}")


def size_tag(args, params: int) -> str:
    tag = f"{round(params / 1e6)}M"
    if args.dtype != "float32":
        tag += f"_{args.dtype}"
    if args.experts != 5:
        tag += f"_e{args.experts}"
    if args.stream_shard_size:
        tag += f"_shard{args.stream_shard_size}"
    return tag


def pool_models(pool_dir: str, n_experts: int) -> Dict[str, str]:
    models = {"_pretrained_": os.path.join(pool_dir, "base")}
    for i in range(n_experts):
        models[f"expert_{i}"] = os.path.join(pool_dir, f"expert_{i}")
    return models


def read_pool(pool_dir: str, spec: dict) -> Optional[dict]:
    manifest = os.path.join(pool_dir, "pool.json")
    if not os.path.exists(manifest):
        return None
    with open(manifest) as f:
        info = json.load(f)
    return info if info.get("spec") == spec else None


def build_pool_main(args) -> None:
    """Write base + experts under `args.pool_dir` unless a complete pool with the same spec is there."""
    import torch
    from safetensors.torch import save_file

    pool_dir = args.pool_dir
    spec = pool_spec(args)
    if read_pool(pool_dir, spec) is not None:
        return
    config = llama_config(args)
    shapes = model_shapes(config)
    params = sum(_numel(s) for s in shapes.values())
    if os.path.exists(pool_dir):
        shutil.rmtree(pool_dir)
    os.makedirs(pool_dir)
    dtype = getattr(torch, args.dtype)
    names = list(shapes)
    t0 = time.perf_counter()
    print(f"pool: building base + {args.experts} experts ({params:,} parameters each) in {pool_dir}", flush=True)
    for m, (model_name, folder) in enumerate(pool_models(pool_dir, args.experts).items()):
        os.makedirs(folder)
        config.save_pretrained(folder)
        tensors = {}
        for i, name in enumerate(names):
            shape = shapes[name]
            t = _base_tensor(i, shape)
            if m > 0:  # expert m: the base plus a small dense delta of its own
                g = torch.Generator().manual_seed(SEED * 7919 + m * 100_003 + i)
                t += torch.randn(shape, generator=g) * DELTA_STD
            tensors[name] = t.to(dtype).contiguous()
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        del tensors
        print(f"pool:   {model_name} written ({time.perf_counter() - t0:.1f} s)", flush=True)
    info = {"spec": spec, "parameters": params, "tensors": len(names),
            "models": pool_models(pool_dir, args.experts)}
    with open(os.path.join(pool_dir, "pool.json"), "w") as f:
        json.dump(info, f, indent=2)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _base_tensor(index: int, shape):
    import torch

    if len(shape) == 1:  # RMSNorm weights
        return torch.ones(shape)
    g = torch.Generator().manual_seed(SEED * 7919 + index)
    return torch.randn(shape, generator=g) * BASE_STD


# ---------------------------------------------------------------------------------------
# The child: one merge, in its own process
# ---------------------------------------------------------------------------------------
def _versions() -> dict:
    from importlib.metadata import version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "fusion-bench", "safetensors", "r3h"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = None
    return out


def child_main(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    # Every child imports the same modules, so the import baseline is the same for all.
    from safetensors.torch import save_file
    from fusion_bench.method.linear.task_arithmetic_for_causallm import TaskArithmeticForCausalLM
    from fusion_bench.method.linear.ties_merging_for_causallm import TiesMergingForCausalLM
    from fusion_bench.modelpool.causal_lm.causal_lm import CausalLMPool
    from fusion_bench.method.isotropic_merging import ISO_C_Merge, ISO_CTS_Merge
    from fusion_bench.method.wudi.wudi import WUDIMerging
    from r3h.methods import IsoC, IsoCTS, TaskArithmetic, TiesMerging, WUDI
    from r3h.modelpool import AlignedCausalLMPool
    from transformers import LlamaForCausalLM  # noqa: F401

    with open(os.path.join(args.pool_dir, "pool.json")) as f:
        pool_info = json.load(f)
    models = pool_info["models"]
    dtype = pool_info["spec"]["dtype"]
    run = args.child
    rss_imports = current_rss_bytes()
    stream_kw = {"out_dir": args.save_path}
    if args.stream_shard_size:
        stream_kw["max_shard_size"] = args.stream_shard_size

    def fb_fabric(method):
        # fusion_bench's LightningFabricMixin methods ask for a Fabric; a CPU one, as the program makes
        import lightning

        method._fabric_instance = lightning.Fabric(accelerator="cpu", devices=1)
        return method

    def build():
        if run.startswith("fb_"):
            pool = CausalLMPool(models=dict(models), tokenizer=None, model_kwargs={"torch_dtype": dtype})
            if run == "fb_iso_c":
                return pool, fb_fabric(ISO_C_Merge(scaling_factor=1.0))
            if run == "fb_iso_cts":
                return pool, fb_fabric(ISO_CTS_Merge(scaling_factor=1.0, common_space_fraction=0.8))
            if run == "fb_wudi":
                return pool, fb_fabric(WUDIMerging(iter_num=args.wudi_iterations, exclude_keys=WUDI_EXCLUDE))
            if run == "fb_ta":
                return pool, TaskArithmeticForCausalLM(scaling_factor=1.0, model_save_path=None)
            return pool, TiesMergingForCausalLM(scaling_factor=1.0, threshold=20, remove_keys=[],
                                                merge_func="sum", model_save_path=None)
        pool = AlignedCausalLMPool(models=dict(models), tokenizer=None)
        if run == "r3h_ta":
            return pool, TaskArithmetic(scaling_factor=1.0, progress=False)
        if run == "r3h_ta_stream":
            return pool, TaskArithmetic(scaling_factor=1.0, progress=False, **stream_kw)
        if run == "r3h_iso_c":
            return pool, IsoC(scaling_factor=1.0, progress=False, **stream_kw)
        if run == "r3h_iso_cts":
            return pool, IsoCTS(scaling_factor=1.0, common_space_fraction=0.8, progress=False, **stream_kw)
        if run == "r3h_wudi":
            return pool, WUDI(iterations=args.wudi_iterations, learning_rate=1e-5, norm="squared", scaling_factor=1.0,
                              device="cpu",
                              exclude_keys=[re.escape(k) for k in WUDI_EXCLUDE], progress=False, **stream_kw)
        return pool, TiesMerging(scaling_factor=1.0, density=0.2, progress=False)

    measure_merge(args, run, build, rss_imports, save_model=run in TA_RUNS + NEW_RUNS and run not in STREAM_RUNS,
                  summarize=wudi_seconds if run == "r3h_wudi" else None)


def wudi_seconds(report) -> dict:
    """WUDI's seconds per matrix (its per-tensor report), for the time-per-matrix line."""
    secs = [t["seconds"] for t in (report.get("tensors") or {}).values() if t.get("rule") == "wudi"]
    return {"wudi_matrices": len(secs), "wudi_seconds_per_matrix": sum(secs) / len(secs) if secs else None,
            "wudi_seconds_max": max(secs) if secs else None}


def measure_merge(args, run: str, build, rss_imports: int, save_model: bool, summarize=None) -> None:
    """Time `build()` (model pool + method) and `method.run(pool)`, record this process's
    peak RSS right after the merge and before anything is saved, then (if `save_model`)
    save the merged state dict to `args.save_path` and write the result to `args.result`.
    `summarize(report)` adds fields from r3h's run report."""
    import torch
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    pool, method = build()
    t_pool = time.perf_counter()
    model = method.run(pool)
    t1 = time.perf_counter()
    peak = peak_rss_bytes()  # before anything is saved
    rss_now = current_rss_bytes()

    result = {
        "run": run, "wall_s": t1 - t0, "pool_s": t_pool - t0, "run_s": t1 - t_pool,
        "peak_rss_bytes": peak, "rss_after_imports_bytes": rss_imports,
        "rss_after_merge_bytes": rss_now, "ru_maxrss_bytes": ru_maxrss_bytes(),
        "threads": torch.get_num_threads(), "versions": _versions(),
        "r3h_file": sys.modules["r3h"].__file__,
    }
    report = getattr(method, "last_report", None)
    if report:
        result["r3h_stats"] = report.get("stats")
        if summarize is not None:
            result.update(summarize(report))
    if args.save_path and save_model:
        t2 = time.perf_counter()
        sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, args.save_path, metadata={"format": "pt"})
        result["save_s"] = time.perf_counter() - t2
    with open(args.result, "w") as f:
        json.dump(result, f, indent=2)


# ---------------------------------------------------------------------------------------
# The parent (imports no torch until every child has run)
# ---------------------------------------------------------------------------------------
def child_env(args) -> dict:
    env = dict(os.environ)
    if getattr(args, "r3h_src", None):  # a snapshot of r3h/ shadows the editable install
        env["PYTHONPATH"] = args.r3h_src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


def shape_argv(args) -> List[str]:
    argv = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--intermediate", str(args.intermediate),
            "--vocab", str(args.vocab), "--heads", str(args.heads), "--experts", str(args.experts),
            "--dtype", args.dtype]
    if args.kv_heads:
        argv += ["--kv-heads", str(args.kv_heads)]
    return argv


def run_child(args, run: str, pool_dir: str, work: str, save: bool) -> dict:
    result_file = os.path.join(work, f"{run}.result.json")
    if os.path.exists(result_file):
        os.remove(result_file)
    save_path = None
    if run in STREAM_RUNS:
        save_path = os.path.join(work, f"{run}_out")
        shutil.rmtree(save_path, ignore_errors=True)
    elif save and run in TA_RUNS + NEW_RUNS:
        save_path = os.path.join(work, f"{run}.safetensors")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", run, "--pool-dir", pool_dir,
           "--result", result_file, "--threads", str(args.threads)]
    if save_path:
        cmd += ["--save-path", save_path]
    if args.stream_shard_size:
        cmd += ["--stream-shard-size", args.stream_shard_size]
    cmd += ["--wudi-iterations", str(args.wudi_iterations)]
    res = spawn_child(cmd, run, result_file, os.path.join(work, f"{run}.log"), child_env(args))
    res["save_path"] = save_path
    return res


def failed_run(run: str, code: int, log_file: str) -> dict:
    """The record of a run that failed (exit status or signal), its log's tail printed."""
    with open(log_file) as f:
        tail = f.read()[-3000:]
    why = f"killed by signal {-code} (out of memory?)" if code < 0 else f"exit status {code}"
    print(f"  {run}: FAILED ({why}); log {log_file}:\n{tail}", flush=True)
    return {"run": run, "failed": why, "log": log_file}


def spawn_child(cmd: List[str], run: str, result_file: str, log_file: str, env: dict) -> dict:
    """Run one benchmark child (`cmd`, which writes `result_file`), its output to `log_file`;
    return its result with the process's own peak RSS, CPU time and lifetime, or a `failed`
    record with the log's tail (printed)."""
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, rusage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
    lifetime = time.perf_counter() - t0
    maxrss = rusage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if code != 0 or not os.path.exists(result_file):
        return {**failed_run(run, code, log_file), "process_maxrss_bytes": maxrss}
    with open(result_file) as f:
        res = json.load(f)
    res["process_maxrss_bytes"] = maxrss  # whole child lifetime, saving included
    res["process_cpu_s"] = rusage.ru_utime + rusage.ru_stime  # the child's CPU time (user + system)
    res["process_lifetime_s"] = lifetime
    return res


def max_abs_diff(path_a: str, path_b: str) -> dict:
    """Max |a − b| over all tensors of two safetensors files or model folders (in float64)."""
    from safetensors import safe_open

    def files(p):
        if os.path.isdir(p):
            return sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".safetensors"))
        return [p]

    def index(p):
        out = {}
        for fn in files(p):
            with safe_open(fn, framework="pt") as f:
                for k in f.keys():
                    out[k] = fn
        return out

    ia, ib = index(path_a), index(path_b)
    common = sorted(set(ia) & set(ib))
    worst, worst_name, ref_max = 0.0, None, 0.0
    for k in common:
        with safe_open(ia[k], framework="pt") as fa, safe_open(ib[k], framework="pt") as fb:
            ta, tb = fa.get_tensor(k).double(), fb.get_tensor(k).double()
        if ta.shape != tb.shape:
            return {"error": f"tensor {k}: shapes {tuple(ta.shape)} vs {tuple(tb.shape)}"}
        if ta.numel():
            d = float((ta - tb).abs().max())
            ref_max = max(ref_max, float(tb.abs().max()))
            if d > worst or worst_name is None:
                worst, worst_name = d, k
    return {"max_abs_diff": worst, "worst_tensor": worst_name, "tensors_compared": len(common),
            "only_in_r3h": sorted(set(ia) - set(ib)), "only_in_fusion_bench": sorted(set(ib) - set(ia)),
            "max_abs_value": ref_max}


def summarize(runs: List[dict]) -> dict:
    """Best wall time and the largest peak RSS over the repeats."""
    ok = [r for r in runs if "failed" not in r and "skipped" not in r]
    if not ok:
        last = runs[-1] if runs else {"failed": "not run"}
        return {"failed": last.get("failed") or last.get("skipped"), "skipped": "skipped" in last}
    best = min(ok, key=lambda r: r["wall_s"])
    return {
        "peak_rss_gb": max(r["peak_rss_bytes"] for r in ok) / 1e9,
        "wall_s": best["wall_s"],
        "pool_s": best["pool_s"],
        "run_s": best["run_s"],
        "rss_after_imports_gb": max(r["rss_after_imports_bytes"] for r in ok) / 1e9,
        "process_maxrss_gb": max(r["process_maxrss_bytes"] for r in ok) / 1e9,
        "wall_s_all": [round(r["wall_s"], 3) for r in ok],
        "cpu_s": min(r.get("process_cpu_s", float("nan")) for r in ok),
        "peak_rss_gb_all": [round(r["peak_rss_bytes"] / 1e9, 4) for r in ok],
        "r3h_stats": ok[-1].get("r3h_stats"),
        "repeats": len(ok),
        **{k: ok[-1][k] for k in ("wudi_matrices", "wudi_seconds_per_matrix", "wudi_seconds_max") if k in ok[-1]},
    }


def verdicts(summary: Dict[str, dict]) -> Dict[str, dict]:
    out = {}
    for run in ("r3h_ta", "r3h_ta_stream", "r3h_iso_c", "r3h_iso_cts", "r3h_wudi"):
        s, p = summary.get(run), summary.get(PEER[run])
        if s and p and "failed" not in s and "failed" not in p:
            rr, tr = s["peak_rss_gb"] / p["peak_rss_gb"], s["wall_s"] / p["wall_s"]
            target = RSS_TARGET if run in TA_RUNS else NEW_RSS_TARGET
            out[run] = {"rss_ratio": rr, "time_ratio": tr, "rss_target": target,
                        "rss_pass": rr <= target, "time_pass": tr <= TIME_TARGET}
    return out


def make_table(summary: Dict[str, dict], checks: Dict[str, dict], meta: dict) -> str:
    git = meta.get("git") or {}
    commit = git.get("commit", "?")[:10] + (" + uncommitted changes in r3h/" if git.get("r3h_dirty") else "")
    if git.get("snapshot"):
        commit += f" (a snapshot of its r3h/, `--r3h-commit {git['requested']}`)"
    if git.get("changed_during_run"):
        commit += (f" (WARNING: r3h/ changed during the run, HEAD {git['end']['commit'][:10]} at the end; "
                   f"changed: {', '.join(git.get('changed_files') or ['?'])})")
    lines = [
        f"## Merge benchmark: {meta['tag']} ({meta['parameters']:,} parameters per model, "
        f"base + {meta['experts']} experts, {meta['dtype']}, {meta['threads']} torch threads)",
        "",
        f"r3h at `{commit}`; fusion_bench {meta.get('versions', {}).get('fusion-bench')}, "
        f"torch {meta.get('versions', {}).get('torch')}, transformers {meta.get('versions', {}).get('transformers')}; "
        f"{meta['cpu_count']} CPUs. Command: `{meta['command']}`.",
        "",
        f"Wall = model pool construction + `method.run` in a fresh process, best of {meta['repeats_ta']} "
        f"(task arithmetic) / {meta['repeats_ties']} (TIES). Peak RSS = the child's own high-water mark "
        f"(VmHWM) right after the merge, before any saving; it includes ~{meta['import_rss_gb']:.2f} GB "
        f"of imports, the same in every child. CPU = the child's user + system time over its life "
        f"(saving included), less sensitive than wall time to other work on a shared machine. GB = 1e9 bytes.",
        "",
        "| method | peak RSS (GB) | wall (s) | CPU (s) | RSS vs fb | time vs fb | CPU vs fb | target RSS (0.4x fb; 0.3x for Iso-C, Iso-CTS, WUDI) | target time <= fb |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|:---:|",
    ]
    v = verdicts(summary)
    for run in RUNS:
        if run not in summary:
            continue
        s = summary[run]
        if "failed" in s:
            lines.append(f"| {LABELS[run]} | {'skipped' if s.get('skipped') else 'failed'}: {s['failed']} | | | | | | | |")
            continue
        peer = PEER.get(run)
        p = summary.get(peer) if peer else None
        rss_ratio = time_ratio = cpu_ratio = "–"
        rss_t = time_t = ""
        if p and "failed" not in p:
            rss_ratio = f"{s['peak_rss_gb'] / p['peak_rss_gb']:.2f}x"
            time_ratio = f"{s['wall_s'] / p['wall_s']:.2f}x"
            cpu_ratio = f"{s['cpu_s'] / p['cpu_s']:.2f}x"
            if run in v:
                rss_t = "PASS" if v[run]["rss_pass"] else "FAIL"
                time_t = "PASS" if v[run]["time_pass"] else "FAIL"
            else:
                rss_t = time_t = "n/a (TIES differ)"
        elif peer:
            rss_ratio = time_ratio = cpu_ratio = "no peer"
        lines.append(f"| {LABELS[run]} | {s['peak_rss_gb']:.2f} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | {rss_ratio} | "
                     f"{time_ratio} | {cpu_ratio} | {rss_t} | {time_t} |")
    lines.append("")
    if any(r in summary for r in TA_RUNS):
        lines.append("Wall times of every repeat (s): " + "; ".join(
            f"{r} {summary[r]['wall_s_all']}" for r in RUNS if r in summary and "wall_s_all" in summary[r]) + ".")
        lines.append("")
    wudi = summary.get("r3h_wudi")
    if wudi and wudi.get("wudi_seconds_per_matrix") is not None:
        lines.append(f"WUDI ({meta.get('wudi_iterations')} Adam iterations per matrix, vocabulary matrices excluded "
                     f"on both sides): r3h {wudi['wudi_seconds_per_matrix']:.2f} s per matrix on average "
                     f"(longest {wudi['wudi_seconds_max']:.2f} s) over {wudi['wudi_matrices']} matrices.")
        lines.append("")
    if checks:
        lines.append("Equality checks, r3h vs fusion_bench (task arithmetic at scaling_factor 1.0; Iso-C, Iso-CTS, WUDI "
                     "with the options above; computed in float32 on both sides):")
        lines.append("")
        for name, c in checks.items():
            if "error" in c:
                lines.append(f"- {name}: ERROR {c['error']}")
                continue
            extra = ""
            if c["only_in_r3h"] or c["only_in_fusion_bench"]:
                extra = f"; names only in r3h: {c['only_in_r3h']}, only in fusion_bench: {c['only_in_fusion_bench']}"
            where = f"largest in `{c['worst_tensor']}`" if c["max_abs_diff"] > 0 else "bit-identical"
            lines.append(f"- {name}: max |diff| = {c['max_abs_diff']:.3e} over {c['tensors_compared']} tensors "
                         f"({where}; max |value| {c['max_abs_value']:.3g}){extra}")
        lines.append("")
    if any(r in summary for r in TIES_RUNS):
        lines.append("TIES rows compare time and memory only, not the merged weights: fusion_bench's "
                     "`threshold=20` keeps the top 20 % of |τ| over each expert's whole flattened model "
                     "(merge_func sum, no normalisation), r3h's `density=0.2` keeps the top 20 % of each "
                     "tensor and divides by the agreeing weights (normalize=true); the results differ by design.")
        lines.append("")
    return "\n".join(lines)


def git_state() -> dict:
    """The commit measured, and a fingerprint of r3h/ (its tree plus any uncommitted change)."""
    import hashlib

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=60).stdout.strip()
        except Exception:
            return ""

    dirty = git("status", "--porcelain", "--", "r3h")
    diff = git("diff", "HEAD", "--", "r3h")
    fingerprint = hashlib.sha1((git("rev-parse", "HEAD:r3h") + dirty + diff).encode()).hexdigest()
    return {"commit": git("rev-parse", "HEAD"), "r3h_dirty": bool(dirty), "r3h_fingerprint": fingerprint}


def _git(*a) -> str:
    return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def changed_r3h_files(start: dict, end: dict) -> List[str]:
    try:
        files = set(_git("diff", "--name-only", start["commit"], end["commit"], "--", "r3h").split())
        porcelain = subprocess.run(["git", "status", "--porcelain", "--", "r3h"], cwd=REPO, capture_output=True,
                                   text=True, timeout=60, check=True).stdout
        files |= {line[3:] for line in porcelain.splitlines() if line.strip()}
        return sorted(f for f in files if f)
    except Exception:
        return []


def snapshot_r3h(args, out: str) -> dict:
    """Extract r3h/ (and config/, which its `r3h/config` symlink points to) as of
    `--r3h-commit` and have the children import it (PYTHONPATH), so that edits to the
    working tree during a long run do not mix into the numbers."""
    import io
    import tarfile

    commit = _git("rev-parse", args.r3h_commit)
    dest = os.path.join(out, "r3h_snapshots", commit[:12])
    if not os.path.isdir(os.path.join(dest, "r3h", "config", "method")):
        tmp = dest + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        data = subprocess.run(["git", "archive", "--format=tar", commit, "r3h", "config"], cwd=REPO,
                              capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    args.r3h_src = dest
    print(f"r3h: measuring a snapshot of {commit[:10]} ({dest})", flush=True)
    return {"commit": commit, "requested": args.r3h_commit, "snapshot": dest, "r3h_dirty": False}


def parent_main(args) -> None:
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    pool_dir = os.path.abspath(args.pool_dir or os.path.join(out, "pools", shape_name(args)))
    spec = pool_spec(args)
    pool_info = read_pool(pool_dir, spec)
    if pool_info is None:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--build-pool", "--pool-dir", pool_dir,
                        *shape_argv(args)], check=True, env=child_env(args), cwd=REPO)
        pool_info = read_pool(pool_dir, spec)
        if pool_info is None:
            raise SystemExit(f"building the pool in {pool_dir} failed")
    else:
        print(f"pool: reusing {pool_dir}", flush=True)
    params = pool_info["parameters"]
    tag = size_tag(args, params)
    print(f"pool: {params:,} parameters per model ({params / 1e6:.1f}M), {pool_info['tensors']} tensors, "
          f"{args.dtype}; base + {args.experts} experts", flush=True)
    runs = [r for r in (args.only.split(",") if args.only else RUNS) if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {unknown}; choose from {RUNS}")
    work = os.path.join(out, f"work_{tag}")
    os.makedirs(work, exist_ok=True)
    git = git_state()
    if args.r3h_commit:
        git = snapshot_r3h(args, out)

    raw: Dict[str, List[dict]] = {r: [] for r in runs}
    if "fb_ties" in runs and not args.force_fb_ties:
        need = FB_TIES_MODEL_SIZES * (args.experts + 1) / 6 * params * DTYPE_BYTES[args.dtype] + 0.6e9
        total, avail = meminfo_bytes("MemTotal"), meminfo_bytes("MemAvailable")
        if total is not None and need > total:
            why = f"needs ~{need / 1e9:.1f} GB, the machine has {total / 1e9:.1f} GB (--force-fb-ties runs it anyway)"
            print(f"  fb_ties: skipped: {why}", flush=True)
            raw["fb_ties"].append({"run": "fb_ties", "skipped": why})
            runs.remove("fb_ties")
        elif avail is not None and need > avail:
            print(f"  fb_ties: warning: it may need ~{need / 1e9:.1f} GB, {avail / 1e9:.1f} GB available now; "
                  f"the kernel may kill it (the run is then reported as failed)", flush=True)
    rounds = max(args.repeats, args.ties_repeats)
    for rep in range(rounds):
        for run in runs:
            if rep >= (args.ties_repeats if run in TIES_RUNS else args.repeats):
                continue
            res = run_child(args, run, pool_dir, work, save=(rep == 0 and not args.no_check))
            raw[run].append(res)
            if "failed" not in res:
                print(f"  [round {rep + 1}] {run:14s} wall {res['wall_s']:7.2f} s "
                      f"(pool {res['pool_s']:.2f} s + run {res['run_s']:.2f} s), peak RSS "
                      f"{res['peak_rss_bytes'] / 1e9:.3f} GB (after imports {res['rss_after_imports_bytes'] / 1e9:.3f} GB)",
                      flush=True)
    summary = {r: summarize(raw[r]) for r in raw}

    checks = {}
    for run in ("r3h_ta", "r3h_ta_stream", "r3h_iso_c", "r3h_iso_cts", "r3h_wudi"):
        peer = PEER[run]
        if args.no_check or peer not in runs or not raw[peer] or "failed" in raw[peer][0]:
            continue
        if run in runs and raw[run] and "failed" not in raw[run][0]:
            name = f"{run} vs {peer}"
            checks[name] = c = max_abs_diff(raw[run][0]["save_path"], raw[peer][0]["save_path"])
            print(f"check: {name}: max abs diff {c.get('max_abs_diff', c.get('error'))}", flush=True)
    if not args.keep_outputs:
        for r in (r for rs in raw.values() for r in rs):
            p = r.get("save_path")
            if p and os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif p and os.path.exists(p):
                os.remove(p)

    if not args.r3h_commit:
        end = git_state()
        if end["r3h_fingerprint"] != git["r3h_fingerprint"]:
            git = {**git, "end": end, "changed_during_run": True, "changed_files": changed_r3h_files(git, end)}
    versions = next((r["versions"] for rs in raw.values() for r in rs if "versions" in r), {})
    import_rss = [s["rss_after_imports_gb"] for s in summary.values() if "rss_after_imports_gb" in s]
    meta = {"tag": tag, "parameters": params, "experts": args.experts, "dtype": args.dtype,
            "threads": args.threads, "repeats_ta": args.repeats, "repeats_ties": args.ties_repeats,
            "pool_dir": pool_dir, "spec": spec, "import_rss_gb": max(import_rss) if import_rss else 0.0,
            "cpu_count": os.cpu_count(), "git": git, "versions": versions,
            "stream_shard_size": args.stream_shard_size or "r3h default", "wudi_iterations": args.wudi_iterations,
            "command": " ".join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), os.getcwd())] + sys.argv[1:])}
    table = make_table(summary, checks, meta)
    print()
    print(table)
    md = os.path.join(out, f"merge_{tag}.md")
    with open(md, "w") as f:
        f.write(table + "\n")
    doc = {"meta": meta, "summary": summary, "targets": verdicts(summary), "checks": checks, "raw": raw}
    with open(os.path.join(out, f"merge_{tag}.json"), "w") as f:
        json.dump(doc, f, indent=2, default=str)
    print(f"written: {md} and {md[:-3]}.json")


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=2560,
                    help="default 2560: 148.3M parameters with the other defaults (2048 would give 134.4M)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    ap.add_argument("--experts", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPE_BYTES))
    ap.add_argument("--out", default=DEFAULT_OUT, help="results folder (default benchmarks/results, gitignored)")
    ap.add_argument("--pool-dir", default=None, help="where the pool is cached (default <out>/pools/<shape>)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in every child")
    ap.add_argument("--repeats", type=int, default=1, help="task-arithmetic runs per method (best wall, max RSS)")
    ap.add_argument("--ties-repeats", type=int, default=1, help="TIES runs per method")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(RUNS)}")
    ap.add_argument("--stream-shard-size", default=None,
                    help="max_shard_size for r3h_ta_stream (default: r3h's own default)")
    ap.add_argument("--wudi-iterations", type=int, default=2,
                    help="Adam iterations per matrix for fb_wudi / r3h_wudi (default 2: fusion_bench's WUDI costs "
                         "minutes per iteration on this pool on CPU)")
    ap.add_argument("--r3h-commit", default=None,
                    help="measure r3h/ as of this git revision (e.g. HEAD), extracted to <out>/r3h_snapshots; "
                         "default: the working tree")
    ap.add_argument("--force-fb-ties", action="store_true", help="run fb_ties even if it looks too big for RAM")
    ap.add_argument("--no-check", action="store_true", help="skip saving merged models and the equality check")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the merged models in <out>/work_<size>")
    # internal
    ap.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    ap.add_argument("--build-pool", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--save-path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build_pool:
        build_pool_main(args)
    elif args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
