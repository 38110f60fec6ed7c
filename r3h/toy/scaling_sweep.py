"""The sweep that chose every method's default scaling (docs/methods.md):

    python -m r3h.toy.scaling_sweep [--out outputs/scaling_sweep] [--seed 0] [--methods ties ...]

Each method with a global scaling (`scaling_factor` of the task-vector methods, `alpha` of
TSVM / R-TSVM) merges the toy pool's five experts at every value of `VALUES`
(`r3h.sweeps.MergeSweep`, one SVD pass for TSVM / R-TSVM) and each merge is scored by the
`3h_tiny` taskpool on its **validation** split. Prints one Markdown table (AVG, and the
three dimension averages) and writes it to `<out>/scaling_sweep.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Dict

from r3h.core.dimensions import AVERAGES, OVERALL

#: method -> its scaling option
SCALED = {"r3h_task_arithmetic": "scaling_factor", "ties": "scaling_factor", "dare": "scaling_factor",
          "dare_ties": "scaling_factor", "della": "scaling_factor", "della_ties": "scaling_factor",
          "breadcrumbs": "scaling_factor", "breadcrumbs_ties": "scaling_factor", "tsvm": "alpha", "r_tsvm": "alpha",
          "iso_c": "scaling_factor", "iso_cts": "scaling_factor", "wudi": "scaling_factor"}
VALUES = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
DIMS = AVERAGES  # the three dimension averages (r3h.core.dimensions)


def sweep(methods, values, out: str, seed: int = 0, cache_dir=None) -> Dict[str, Dict[float, dict]]:
    """method -> value -> validation averages of the merge of the five toy experts."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from r3h.toy import Tiny3HPool
    from r3h.methods.configs import load_config, load_method_config
    from r3h.sweeps import MergeSweep

    pool = Tiny3HPool(cache_dir=cache_dir, seed=seed)
    tp_cfg = OmegaConf.create(load_config("taskpool", "3h_tiny"))
    tp_cfg.split = "validation"
    tp_cfg.print_table = False
    results: Dict[str, Dict[float, dict]] = {}
    for m in methods:
        option = SCALED[m]
        cfg = load_method_config(m)
        cfg["progress"] = False
        models = MergeSweep(method=cfg, grid={option: list(values)}).run(pool)
        tp = instantiate(tp_cfg, _recursive_=False)
        tp.output_dir = os.path.join(out, m)
        report = tp.evaluate(models)
        results[m] = {}
        for v, name in zip(values, report["members"]):
            a = report["averages"][name]
            results[m][v] = {k: a[k] for k in (*DIMS, OVERALL)}
    return results


def to_markdown(results: Dict[str, Dict[float, dict]], values) -> str:
    """AVG per method (rows) and value (columns): the method's configured default in bold,
    the best AVG marked `*`."""
    from r3h.methods.configs import load_method_config

    lines = ["| method (option) | " + " | ".join(str(v) for v in values) + " | default |",
             "|---|" + "---:|" * len(values) + "---:|"]
    for m, row in results.items():
        default = float(load_method_config(m)[SCALED[m]])
        top = max(r["AVG"] for r in row.values())
        cells = []
        for v in values:
            c = f"{row[v]['AVG']:.1f}" + ("*" if row[v]["AVG"] == top else "")
            cells.append(f"**{c}**" if float(v) == default else c)
        lines.append(f"| {m} ({SCALED[m]}) | " + " | ".join(cells) + f" | {default:g} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m r3h.toy.scaling_sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/scaling_sweep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--methods", nargs="*", default=list(SCALED))
    ap.add_argument("--values", nargs="*", type=float, default=VALUES)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    unknown = [m for m in args.methods if m not in SCALED]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(SCALED)}")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    results = sweep(args.methods, args.values, out, args.seed, args.cache_dir)
    md = to_markdown(results, args.values)
    with open(os.path.join(out, "scaling_sweep.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "scaling_sweep.json"), "w") as f:
        json.dump({m: {str(v): r for v, r in row.items()} for m, row in results.items()}, f, indent=2)
    print(md)
    return results


if __name__ == "__main__":
    main()
