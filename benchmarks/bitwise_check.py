"""Hashes of merged models, to show that a refactoring leaves every merge bit-identical.

Writes a small Llama pool (a base and three experts; one expert's `k_proj` τ is zero, so
TSVM's zero-expert rule runs) to `--work`, merges it with every method config of
`config/method/` (composed by Hydra as `fusion_bench method=<name>` composes it) and with
a list of TSVM / R-TSVM variants, and writes one SHA-256 per configuration (over every
tensor's name, dtype, shape and bytes, in name order) to `--out` as JSON:

- `method/<name>`: each top-level method config (the ablations and the RESM aliases
  included), its defaults, `device=cpu`, `cpu_threads=1` where the method takes it;
- `tsvm/<solver>`, `r_tsvm/<solver>`: TSVM and R-TSVM with `svd_solver` full, auto,
  randomized; `r_tsvm/relative`: `epsilon_mode=relative`;
- `tsvm/cache-cold`, `tsvm/cache-warm`, `r_tsvm/cache-cold`, `r_tsvm/cache-warm`,
  `r_tsvm/cache-warm-gamma0.9`: with an SVD cache, first in an empty folder, then reusing it
  (the warm runs must also equal the cold ones: checked here);
- `cli/<m>/fabric<k>`: `fusion_bench method=<m>` (tsvm, r_tsvm) on the same pool with
  `method.cpu_threads=1`, on k = 1 and 2 Fabric CPU processes (must be equal: checked).

    python benchmarks/bitwise_check.py --out before.json          # on the old code
    python benchmarks/bitwise_check.py --out after.json --compare before.json

`--compare` prints every configuration whose hash differs and exits 1 if any does. The
hashes depend on this machine's BLAS and thread count: compare only runs of one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"search", "sweep"}  # not merges of one pool


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=40, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)


def write_pool(root: Path) -> dict:
    """base and e0..e2 (τ: low rank + noise + a few large entries; e2's k_proj τ is zero)."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    cfg = llama_config()
    torch.manual_seed(0)
    base = {k: v.detach().clone().float().contiguous() for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    paths = {}
    for name, seed in (("_pretrained_", None), ("e0", 1), ("e1", 2), ("e2", 3)):
        sd = {}
        g = torch.Generator().manual_seed(seed or 0)
        for k, v in base.items():
            if seed is None or (name == "e2" and "k_proj" in k):
                sd[k] = v.clone()
                continue
            tau = 0.02 * torch.randn(v.shape, generator=g)
            if v.dim() == 2:
                m, d = v.shape
                tau += 0.01 * torch.randn(m, 2, generator=g) @ torch.randn(2, d, generator=g)
                idx = torch.randperm(tau.numel(), generator=g)[:3 + seed]
                tau.view(-1)[idx] += 0.2
            sd[k] = (v + tau).contiguous()
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        cfg.to_json_file(str(folder / "config.json"))
        paths[name] = str(folder)
    return paths


def state_hash(sd) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def folder_hash(folder) -> str:
    from r3h.io import Checkpoint

    ck = Checkpoint(str(folder))
    return state_hash({k: ck.get(k) for k in ck.keys()})


def method_names():
    return sorted(p.stem for p in (ROOT / "config" / "method").glob("*.yaml")
                  if not p.stem.startswith("_") and p.stem not in SKIP)


def merge(name: str, paths: dict, **options) -> str:
    from r3h.methods.configs import build_method, load_method_config, option_names
    from r3h.modelpool import AlignedCausalLMPool

    cfg = load_method_config(name)
    cfg.update(progress=False, device="cpu")
    if "cpu_threads" in cfg:
        cfg["cpu_threads"] = 1
    cfg.update(options)
    method = build_method(cfg)
    assert set(options) <= set(option_names(method)), (name, options)
    model = method.run(AlignedCausalLMPool(models=dict(paths), tokenizer=None))
    return state_hash(model.state_dict())


def cli(name: str, devices: int, work: Path, out: Path) -> str:
    """`fusion_bench method=<name> modelpool=bitwise_pool` on `devices` Fabric CPU processes."""
    args = [shutil.which("fusion_bench") or "fusion_bench", f"method={name}", "modelpool=bitwise_pool",
            "method.cpu_threads=1", "method.progress=false", f"merged_model_save_path={out}", "print_config=false"]
    if devices > 1:
        args += ["fabric.accelerator=cpu", f"fabric.devices={devices}", "fabric.strategy=ddp"]
    env = dict(os.environ, FUSION_BENCH_PROJECT_ROOT=str(work), HYDRA_FULL_ERROR="1")
    r = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return folder_hash(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file for the hashes")
    ap.add_argument("--compare", help="an earlier --out to compare with")
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    ap.add_argument("--no-cli", action="store_true", help="skip the fusion_bench / Fabric runs")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="r3h-bitwise-"))
    if work.exists():
        shutil.rmtree(work)
    paths = write_pool(work / "pool")
    hashes = {}
    for name in method_names():
        hashes[f"method/{name}"] = merge(name, paths)
        print(f"method/{name}", hashes[f"method/{name}"][:16], flush=True)
    for m in ("tsvm", "r_tsvm"):
        for solver in ("full", "auto", "randomized"):
            hashes[f"{m}/{solver}"] = merge(m, paths, svd_solver=solver)
        cache = work / f"cache-{m}"
        hashes[f"{m}/cache-cold"] = merge(m, paths, svd_cache=str(cache))
        hashes[f"{m}/cache-warm"] = merge(m, paths, svd_cache=str(cache))
        assert hashes[f"{m}/cache-warm"] == hashes[f"{m}/cache-cold"], f"{m}: warm cache != cold"
    hashes["r_tsvm/relative"] = merge("r_tsvm", paths, epsilon_mode="relative", epsilon=0.5)
    hashes["r_tsvm/gamma0.9"] = merge("r_tsvm", paths, gamma=0.9)
    hashes["r_tsvm/cache-warm-gamma0.9"] = merge("r_tsvm", paths, gamma=0.9, svd_cache=str(work / "cache-r_tsvm"))
    assert hashes["r_tsvm/cache-warm-gamma0.9"] == hashes["r_tsvm/gamma0.9"], "r_tsvm: warm cache (γ 0.9) != cold"
    if not args.no_cli:
        (work / "config" / "modelpool").mkdir(parents=True)
        lines = ["_target_: r3h.modelpool.AlignedCausalLMPool", "models:"]
        lines += [f"  {k}: {v}" for k, v in paths.items()] + ["tokenizer: null"]
        (work / "config" / "modelpool" / "bitwise_pool.yaml").write_text("\n".join(lines) + "\n")
        for m in ("tsvm", "r_tsvm"):
            for k in (1, 2):
                hashes[f"cli/{m}/fabric{k}"] = cli(m, k, work, work / f"out-{m}-{k}")
                print(f"cli/{m}/fabric{k}", hashes[f"cli/{m}/fabric{k}"][:16], flush=True)
            assert hashes[f"cli/{m}/fabric1"] == hashes[f"cli/{m}/fabric2"], f"{m}: 2 processes != 1"
    for k, v in hashes.items():
        if "/" in k and not k.startswith("method/") and not k.startswith("cli/"):
            print(k, v[:16])
    Path(args.out).write_text(json.dumps({"torch_threads": torch.get_num_threads(), "hashes": hashes}, indent=1))
    print(f"{len(hashes)} configurations hashed → {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.compare:
        old = json.loads(Path(args.compare).read_text())["hashes"]
        diff = sorted(k for k in set(old) | set(hashes) if old.get(k) != hashes.get(k))
        for k in diff:
            print(f"DIFFERS: {k}: {old.get(k, '-')[:16]} → {hashes.get(k, '-')[:16]}")
        print(f"{len(set(old) & set(hashes)) - len([k for k in diff if k in old and k in hashes])} identical, "
              f"{len(diff)} differ or missing")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
