"""The paper's experiment in miniature, in one command:

    python -m r3h.toy [--out outputs/toy_3h] [--methods ties r_tsvm ...] [--no-baselines] [--no-continual]

Trains (once, cached) the toy world's base, five experts, the data-mixture baselines and
the continual stages; merges the five experts with every merging method (default
hyperparameters of `config/method/<name>.yaml`); scores every model with the `3h_tiny`
taskpool; and writes one table (`3h_results.{json,csv,md,tex}`) plus the trade-off bars
and radar plots under `--out`.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Dict

MERGES = ["weight_average", "task_arithmetic", "ties", "dare", "dare_ties", "della", "della_ties", "breadcrumbs",
          "breadcrumbs_ties", "model_stock", "tsvm", "r_tsvm"]


def _config(group: str, name: str):
    from omegaconf import OmegaConf

    import r3h

    return OmegaConf.load(os.path.join(os.path.dirname(r3h.__file__), "config", group, f"{name}.yaml"))


def _method(name: str):
    from hydra.utils import instantiate

    cfg = _config("method", name)
    cfg.progress = False
    return instantiate(cfg)


def main(argv=None) -> Dict[str, dict]:
    ap = argparse.ArgumentParser(prog="python -m r3h.toy", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/toy_3h")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--methods", nargs="*", default=MERGES)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--no-continual", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    unknown = [m for m in args.methods if m not in MERGES]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {MERGES}")

    from hydra.utils import instantiate
    from transformers import AutoModelForCausalLM

    from r3h.evaluation.tables import write_tables
    from r3h.modelpool import Tiny3HPool
    from r3h.toy import build

    out = os.path.abspath(args.out)
    pool_paths = build.build_tiny_3h(args.cache_dir)
    models = {"base": pool_paths["_pretrained_"], **{k: v for k, v in pool_paths.items() if k != "_pretrained_"}}
    if not args.no_baselines:
        models.update(build.build_baselines(args.cache_dir))
    if not args.no_continual:
        models["continual"] = build.build_continual(args.cache_dir)["helpfulness"]

    tp_cfg = _config("taskpool", "3h_tiny")
    tp_cfg.print_table = False

    def score(name, model):
        tp = instantiate(tp_cfg, _recursive_=False)
        tp.output_dir = os.path.join(out, "models", name)
        tp.name = name
        return tp.evaluate(model)

    reports = {}
    for name, folder in models.items():
        reports[name] = score(name, AutoModelForCausalLM.from_pretrained(folder))
    pool = Tiny3HPool(cache_dir=args.cache_dir)
    for m in args.methods:
        reports[m] = score(m, _method(m).run(pool))

    first = next(iter(reports.values()))
    columns = list(first["scores"])
    dims = {c: first["details"][c].get("dimension") for c in columns}
    if None in dims.values():
        from r3h.toy.benchmarks import COLUMNS
        from r3h.toy.world import KINDS

        dims = {c: KINDS[COLUMNS[c]] for c in columns}
    rows = {n: {**r["scores"], **r["averages"]} for n, r in reports.items()}
    paths = write_tables(rows, out, dimensions=dims, caption="The toy 3H world: models, mixtures and merges")
    try:
        from r3h.plots import radar, tradeoff_bars

        tradeoff_bars(rows, os.path.join(out, "tradeoff_bars"))
        radar(rows, os.path.join(out, "radar"))
    except Exception as e:  # plots are a convenience; the table is the result
        logging.getLogger(__name__).warning("plots not written: %s", e)
    with open(paths["md"]) as f:
        print(f.read())
    return rows


if __name__ == "__main__":
    main()
