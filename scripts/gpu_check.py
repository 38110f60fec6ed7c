"""Every CUDA path of r3h in one run (issue 20, item 8); `scripts/gpu_check.sh` installs and calls it.

    python scripts/gpu_check.py                      # on a GPU machine: every part, on CUDA
    python scripts/gpu_check.py --device cpu         # the CPU-reachable parts (what runs without a GPU)
    python scripts/gpu_check.py --only env,hf_generation --out /tmp/gpu_check

Parts (each in its own try; one failing does not stop the others):

- ``env``            torch, CUDA, the visible GPUs.
- ``bench_tsvm``     ``benchmarks/bench_tsvm.py --shape llama3-8b --layers 2 --device cuda`` (r3h and
                     fusion_bench, tensor by tensor, the whole model's time projected); on CPU the
                     scaled-down ``llama3-8b-cpu`` shape, one layer, r3h only.
- ``tsvm_devices``   TSVM and R-TSVM on a pool built from SmolLM2-135M-Instruct
                     (``r3h.io.gguf.smollm2_folder()``; three experts = the base plus seeded noise in
                     its first ``--layers`` decoder layers), merged with ``device=cuda`` and with
                     ``device=cpu``: the merged task vectors agree within ``TOLERANCE`` (relative
                     Frobenius norm over the whole model, and the largest per tensor is reported).
                     Without CUDA: ``cpu`` against ``cpu`` with another thread count (the plumbing).
- ``fabric``         TSVM through the ``fusion_bench`` command with Fabric on one device and on
                     every visible GPU (``fabric.strategy=ddp``; on CPU: two processes); the two
                     merges agree within ``TOLERANCE``.
- ``dpo``            ``r3h.training.dpo.train_dpo`` for ``--dpo-steps`` steps on SmolLM2 (CUDA, bf16
                     where supported; on CPU fp32): the loss is finite and the folder complete.
- ``hf_generation``  ``r3h.evaluation.generation.ChatGenerator`` (transformers) greedy answers of
                     SmolLM2 on the device and on CPU: tokens per second and whether the answers agree.
- ``vllm``           the same prompts through vLLM (``backend: vllm``) when vLLM imports and CUDA is
                     there; else skipped, saying why.

It writes ``<out>/summary.json`` and ``<out>/summary.md`` (one row per part: status, seconds,
figures) and prints the table. Exit status 1 when a part failed (a skipped part is no failure).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
PARTS = ("env", "bench_tsvm", "tsvm_devices", "fabric", "dpo", "hf_generation", "vllm")
#: CUDA against CPU, and one Fabric device against several: ‖Δτ‖_F / ‖τ‖_F over the merged model
#: (float32 SVDs of two libraries, cuSOLVER against LAPACK, agree to ~1e-6 relative; 1e-4 leaves
#: room for the polar step and the sums without hiding a wrong tensor, which is O(1))
TOLERANCE = 1e-4
PROMPTS = ["What is 12 + 30?", "Name a colour of the sky.", "How do I boil an egg?", "Say hello in French."]


class Skip(Exception):
    """A part that cannot run here (no CUDA, no vLLM): skipped, with the reason."""


# ---------------------------------------------------------------------------------------
# the SmolLM2 pool
# ---------------------------------------------------------------------------------------

def smollm2_pool(work: Path, layers: int, experts: int = 3) -> Dict[str, str]:
    """{name: folder}: SmolLM2-135M-Instruct as the base and `experts` copies whose first
    `layers` decoder layers carry seeded noise (1% of each tensor's standard deviation); the
    other tensors equal the base's, so their task vectors are zero."""
    import torch
    from safetensors.torch import load_file, save_file

    from r3h.io.gguf import smollm2_folder

    base = smollm2_folder()
    paths = {"_pretrained_": base}
    files = sorted(f for f in os.listdir(base) if f.endswith(".safetensors"))
    for i in range(experts):
        folder = work / f"expert{i}"
        paths[f"expert{i}"] = str(folder)
        if (folder / "config.json").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(1000 + i)
        for f in files:
            sd = load_file(os.path.join(base, f))
            for k, v in sd.items():
                if v.dim() == 2 and any(f"layers.{j}." in k for j in range(layers)):
                    sd[k] = v + 0.01 * v.float().std() * torch.randn(v.shape, generator=g, dtype=v.dtype)
            save_file(sd, str(folder / f), metadata={"format": "pt"})
        for f in os.listdir(base):
            if not f.endswith(".safetensors") and os.path.isfile(os.path.join(base, f)):
                shutil.copy(os.path.join(base, f), folder / f)
    return paths


def pool_of(paths):
    from r3h.modelpool import AlignedCausalLMPool

    return AlignedCausalLMPool(models=dict(paths), tokenizer=paths["_pretrained_"])


def task_vector_gap(a, b, base) -> Dict[str, float]:
    """‖τa − τb‖_F / ‖τb‖_F over every tensor, and the largest per tensor (τ = merged − base)."""
    import torch

    num = den = 0.0
    worst, worst_name = 0.0, None
    for k, vb in b.items():
        tb = vb.double() - base[k].double()
        ta = a[k].double() - base[k].double()
        d, n = float(torch.linalg.norm(ta - tb)) ** 2, float(torch.linalg.norm(tb)) ** 2
        num, den = num + d, den + n
        if n > 0 and (d / n) ** 0.5 > worst:
            worst, worst_name = (d / n) ** 0.5, k
    return {"relative": (num / den) ** 0.5 if den > 0 else 0.0, "worst_tensor": worst, "worst_name": worst_name}


def state_of(model) -> Dict[str, Any]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------
# the parts
# ---------------------------------------------------------------------------------------

def part_env(a) -> Dict[str, Any]:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "device": a.device,
           "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out["cuda_version"] = torch.version.cuda
    return out


def part_bench_tsvm(a) -> Dict[str, Any]:
    out_dir = Path(a.out) / "bench_tsvm"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_tsvm.py"), "--shape", "llama3-8b", "--device", a.device,
           "--out", str(out_dir)]
    cmd += ["--layers", "2"] if a.device.startswith("cuda") else ["--layers", "1", "--no-peer"]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=a.part_timeout)
    (Path(a.out) / "bench_tsvm.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"bench_tsvm.py exited {p.returncode}: {(p.stdout + p.stderr)[-1500:]}")
    tail = [line for line in p.stdout.splitlines() if line.strip()][-8:]
    return {"command": " ".join(cmd[1:]), "seconds": round(time.perf_counter() - t, 1), "last_lines": tail,
            "log": str(Path(a.out) / "bench_tsvm.log")}


def part_tsvm_devices(a) -> Dict[str, Any]:
    import torch

    from r3h.methods import RTSVM, TSVM

    cuda = a.device.startswith("cuda")
    paths = smollm2_pool(Path(a.work) / "pool", a.layers)
    base = state_of(__import__("transformers").AutoModelForCausalLM.from_pretrained(paths["_pretrained_"]))
    out: Dict[str, Any] = {"tolerance": TOLERANCE, "layers_with_noise": a.layers,
                           "compared": f"{a.device} vs cpu" if cuda else "cpu (1 thread) vs cpu (2 threads)"}
    ok = True
    for cls in (TSVM, RTSVM):
        t = time.perf_counter()
        if cuda:
            got = state_of(cls(device=a.device, progress=False).run(pool_of(paths)))
        else:
            got = state_of(cls(device="cpu", cpu_threads=1, progress=False).run(pool_of(paths)))
        t_dev = time.perf_counter() - t
        t = time.perf_counter()
        ref = state_of(cls(device="cpu", cpu_threads=None if cuda else 2, progress=False).run(pool_of(paths)))
        t_cpu = time.perf_counter() - t
        gap = task_vector_gap(got, ref, base)
        ok &= gap["relative"] <= TOLERANCE
        out[cls.__name__] = {**gap, "seconds_device": round(t_dev, 2), "seconds_cpu": round(t_cpu, 2)}
        print(f"gpu_check: tsvm_devices {cls.__name__}: {json.dumps(out[cls.__name__])}", flush=True)
        del got, ref
        if cuda:
            torch.cuda.empty_cache()
    if not ok:
        raise RuntimeError(f"merged task vectors differ by more than {TOLERANCE}: {json.dumps(out)}")
    return out


def _fabric_merge(a, paths, devices: int, accelerator: str, dest: Path) -> float:
    scratch = Path(a.work) / f"fabric_{devices}"
    (scratch / "config" / "modelpool").mkdir(parents=True, exist_ok=True)
    models = "\n".join(f"  {k}: {v}" for k, v in paths.items())
    (scratch / "config" / "modelpool" / "gpu_check_pool.yaml").write_text(
        f"_target_: r3h.modelpool.AlignedCausalLMPool\nmodels:\n{models}\ntokenizer: {paths['_pretrained_']}\n")
    cmd = ["fusion_bench", "method=tsvm", "modelpool=gpu_check_pool", "method.progress=false",
           f"merged_model_save_path={dest}", "print_config=false", f"fabric.accelerator={accelerator}",
           f"fabric.devices={devices}"] + (["fabric.strategy=ddp"] if devices > 1 else [])
    if accelerator == "cpu":
        cmd.append("method.device=cpu")
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(scratch), capture_output=True, text=True, timeout=a.part_timeout)
    (Path(a.out) / f"fabric_{devices}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {(p.stdout + p.stderr)[-1500:]}")
    return time.perf_counter() - t


def part_fabric(a) -> Dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    cuda = a.device.startswith("cuda")
    many = torch.cuda.device_count() if cuda else 2
    accelerator = "cuda" if cuda else "cpu"
    paths = smollm2_pool(Path(a.work) / "pool", a.layers)
    one, all_ = Path(a.work) / "fabric_out_1", Path(a.work) / f"fabric_out_{many}"
    for d in (one, all_):
        shutil.rmtree(d, ignore_errors=True)
    out = {"devices": [1, many], "accelerator": accelerator, "tolerance": TOLERANCE}
    out["seconds_1"] = round(_fabric_merge(a, paths, 1, accelerator, one), 1)
    if many < 2:
        out["note"] = "one GPU visible: the multi-device run is the same as the single one, not repeated"
        return out
    out[f"seconds_{many}"] = round(_fabric_merge(a, paths, many, accelerator, all_), 1)
    base = state_of(AutoModelForCausalLM.from_pretrained(paths["_pretrained_"]))
    gap = task_vector_gap(state_of(AutoModelForCausalLM.from_pretrained(str(all_))),
                          state_of(AutoModelForCausalLM.from_pretrained(str(one))), base)
    out.update(gap)
    if gap["relative"] > TOLERANCE:
        raise RuntimeError(f"1 and {many} devices differ: {gap}")
    return out


def part_dpo(a) -> Dict[str, Any]:
    import math

    from r3h.io.gguf import smollm2_folder
    from r3h.training.dpo import train_dpo

    pairs = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}, I think."}
             for i in range(8)]
    dest = Path(a.work) / "dpo"
    shutil.rmtree(dest, ignore_errors=True)
    t = time.perf_counter()
    rec = train_dpo(smollm2_folder(), pairs, str(dest), cpu=not a.device.startswith("cuda"), max_steps=a.dpo_steps,
                    global_batch_size=2, per_device_batch_size=2, max_length=64, logging_steps=1)
    losses = [h["loss"] for h in rec["log_history"] if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"DPO losses: {losses}")
    if not (dest / "r3h_train.json").is_file():
        raise RuntimeError("the trained folder has no r3h_train.json")
    return {"steps": a.dpo_steps, "losses": losses, "bf16": rec["recipe"].get("bf16"),
            "seconds": round(time.perf_counter() - t, 1)}


def _answers(model_dir: str, device: str, backend: str = "hf"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r3h.evaluation.generation import ChatGenerator

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    gen = ChatGenerator(model, tok, max_new_tokens=32, batch_size=4, backend=backend)
    t = time.perf_counter()
    answers = gen.generate(PROMPTS)
    seconds = time.perf_counter() - t
    tokens = sum(len(tok(x)["input_ids"]) for x in answers)
    return answers, seconds, tokens


def part_hf_generation(a) -> Dict[str, Any]:
    from r3h.io.gguf import smollm2_folder

    folder = smollm2_folder()
    got, s_dev, n_dev = _answers(folder, a.device)
    out = {"device": a.device, "tokens_per_s": round(n_dev / s_dev, 1), "answers": got}
    if a.device.startswith("cuda"):
        ref, s_cpu, n_cpu = _answers(folder, "cpu")
        out.update(cpu_tokens_per_s=round(n_cpu / s_cpu, 1),
                   same_as_cpu=sum(x == y for x, y in zip(got, ref)), of=len(ref))
    if not all(isinstance(x, str) and x for x in got):
        raise RuntimeError(f"empty answers: {got}")
    return out


def part_vllm(a) -> Dict[str, Any]:
    import torch

    from r3h.evaluation.generation import vllm_available
    from r3h.io.gguf import smollm2_folder

    if not vllm_available():
        raise Skip("vLLM is not installed (gpu_check.sh tries `pip install vllm`; it needs CUDA wheels)")
    if not torch.cuda.is_available():
        raise Skip("vLLM needs CUDA")
    folder = smollm2_folder()
    got, s, n = _answers(folder, "cuda", backend="vllm")
    ref, _, _ = _answers(folder, "cuda", backend="hf")
    if not all(isinstance(x, str) and x for x in got):
        raise RuntimeError(f"empty answers: {got}")
    return {"tokens_per_s": round(n / s, 1), "same_as_hf": sum(x == y for x, y in zip(got, ref)), "of": len(ref),
            "answers": got}


RUNNERS: Dict[str, Callable] = {"env": part_env, "bench_tsvm": part_bench_tsvm, "tsvm_devices": part_tsvm_devices,
                                "fabric": part_fabric, "dpo": part_dpo, "hf_generation": part_hf_generation,
                                "vllm": part_vllm}


def summary_md(rows: List[Dict[str, Any]]) -> str:
    lines = ["| part | status | seconds | figures |", "|---|---|---:|---|"]
    for r in rows:
        figs = r.get("reason") or r.get("error") or json.dumps(
            {k: v for k, v in (r.get("result") or {}).items() if k not in ("answers", "last_lines")}, default=str)
        lines.append(f"| {r['part']} | {r['status']} | {r['seconds']:.1f} | {figs[:300]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cuda, cuda:<i>, cpu, or auto (cuda when there is one)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check"), help="figures and summary")
    ap.add_argument("--work", default=None, help="scratch folder for pools and merges (default: a temporary one)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out")
    ap.add_argument("--layers", type=int, default=None,
                    help="decoder layers of SmolLM2 the experts change (default: all 30 on CUDA, 2 on CPU)")
    ap.add_argument("--dpo-steps", type=int, default=3)
    ap.add_argument("--part-timeout", type=float, default=600.0, help="seconds per subprocess")
    a = ap.parse_args(argv)
    import torch

    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {a.device} but torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    if a.layers is None:
        a.layers = 30 if a.device.startswith("cuda") else 2
    parts = [p.strip() for p in a.only.split(",")] if a.only else list(PARTS)
    unknown = [p for p in parts + [s for s in a.skip.split(",") if s] if p not in PARTS]
    if unknown:
        print(f"gpu_check: unknown part {unknown[0]!r}; parts: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    parts = [p for p in parts if p not in a.skip.split(",")]
    os.makedirs(a.out, exist_ok=True)
    tmp = None
    if a.work is None:
        tmp = tempfile.mkdtemp(prefix="r3h-gpu-check-")
        a.work = tmp
    if not a.device.startswith("cuda"):
        print("gpu_check: no CUDA device: the CUDA parts run on CPU where they can (bench_tsvm scaled down, "
              "TSVM cpu vs cpu, Fabric with two CPU processes, DPO and generation on CPU) and vLLM is skipped")
    rows = []
    try:
        for part in parts:
            t = time.perf_counter()
            row: Dict[str, Any] = {"part": part, "device": a.device}
            try:
                row.update(status="pass", result=RUNNERS[part](a))
            except Skip as exc:
                row.update(status="skip", reason=str(exc))
            except Exception as exc:  # one part's failure is reported, the others still run
                row.update(status="FAIL", error=f"{type(exc).__name__}: {exc}"[:2000],
                           traceback=traceback.format_exc()[-4000:])
            row["seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(f"gpu_check: {part}: {row['status']} ({row['seconds']} s)", flush=True)
            with open(os.path.join(a.out, "summary.json"), "w") as f:
                json.dump({"device": a.device, "tolerance": TOLERANCE, "parts": rows}, f, indent=2, default=str)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    md = summary_md(rows)
    Path(a.out, "summary.md").write_text(md)
    print(md)
    print(f"gpu_check: figures in {a.out}")
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
