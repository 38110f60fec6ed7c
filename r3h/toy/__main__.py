"""The paper's experiment in miniature, in one command:

    python -m r3h.toy [--out outputs/toy_3h] [--seeds 0 1 2] [--search-seeds 0] [--search-trials 6]
                      [--methods ties r_tsvm ...] [--no-search] [--no-baselines] [--no-continual]
    python -m r3h.toy --fingerprints [--seeds 0] [--compare other/fingerprints.json]

For every toy seed (`--seeds`, default 0 1 2: another seed trains another base, experts,
mixtures and continual stages, all cached), it scores on the **test** split: the SFT base,
the five experts, the data-mixture baselines, the continual model, and every merging
method at its defaults (`config/method/<name>.yaml`). On the `--search-seeds` (default: the
first seed) every method is also tuned by the merge search on the **validation** split
(`r3h.search.MergeSearch` with the space of its preset `search/<name>`, `--search-trials`
trials, the defaults first) and the chosen merge scored on test. It writes, under `--out`:

- `3h_results.{json,csv,md,tex}` and the trade-off bars / radar: every row on the first seed;
- `spread.md`: every row's AVG as mean ± sd and min–max over the seeds;
- `findings.md`: each of the paper's four claims (decided among the paper's methods), and the
  question whether the newer subspace merges (Iso-C, Iso-CTS, WUDI) beat TSVM/R-TSVM and task
  arithmetic, with the numbers that decide each per seed and whether it holds on the toy;
- `fingerprints.txt`: the first seed's stage fingerprints (`r3h.toy.fingerprints`), also
  printed: compare them with another machine's line by line.

`--fingerprints` only builds the seeds' models and prints their stage fingerprints;
`--compare FILE` (another machine's `fingerprints.json`) also names the stages that differ.

Each seed's rows are kept in `<out>/seed<k>/rows.json`; a rerun with the same options reuses
them (delete the folder to recompute).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
from typing import Dict, List

from r3h.core.dimensions import AVERAGES, OVERALL
from r3h.methods import BEYOND_PAPER, METHODS, NEWER_SUBSPACE
from omegaconf import OmegaConf

from r3h.methods.configs import declares, load_config

#: every registered merge that gives one model (Rewarded Soup's list of λ is a sweep, not one merge)
MERGES = [name for name, cls in METHODS.items() if not declares(cls, "multi_preference")]
#: the SVD merges (TSVM, R-TSVM): those that take an SVD cache
SVD_MERGES = [name for name in MERGES if declares(METHODS[name], "uses_svd_cache")]
DIMS = AVERAGES  # the three dimension averages (r3h.core.dimensions)
TUNED = " (tuned)"


def _score(tp_cfg, out: str, name: str, model) -> dict:
    from hydra.utils import instantiate

    folder = os.path.join(out, "models", name)
    shutil.rmtree(folder, ignore_errors=True)  # generations resume from their folder: never another model's
    tp = instantiate(tp_cfg, _recursive_=False)
    tp.output_dir = folder
    tp.name = name
    r = tp.evaluate(model)
    return {**r["scores"], **{k: v for k, v in r["averages"].items() if v is not None}}


def run_seed(seed: int, out: str, methods: List[str], trials: int, baselines: bool, continual: bool,
             cache_dir=None) -> Dict[str, dict]:
    """name -> {column scores, dimension averages, AVG} on the test split, for one toy seed."""
    from transformers import AutoModelForCausalLM

    from r3h.toy import Tiny3HPool
    from r3h.search import MergeSearch
    from r3h.toy import build

    options = {"methods": methods, "trials": trials, "baselines": baselines, "continual": continual}
    folder = os.path.join(out, f"seed{seed}")
    path = os.path.join(folder, "rows.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("options") == options and saved.get("fingerprint") == build.fingerprint(seed):
            logging.getLogger(__name__).info("toy seed %d: reusing %s", seed, path)
            return saved["rows"]
    tp_cfg = OmegaConf.create(load_config("taskpool", "3h_tiny"))
    tp_cfg.print_table = False
    tp_cfg.split = "test"
    pool_paths = build.build_tiny_3h(cache_dir, seed=seed)
    models = {"base": pool_paths["_pretrained_"], **{k: v for k, v in pool_paths.items() if k != "_pretrained_"}}
    if baselines:
        models.update(build.build_baselines(cache_dir, seed=seed))
    if continual:
        models["continual"] = build.build_continual(cache_dir, seed=seed)["helpfulness"]
    rows: Dict[str, dict] = {}
    for name, model_dir in models.items():
        rows[name] = _score(tp_cfg, folder, name, AutoModelForCausalLM.from_pretrained(model_dir))
    pool = Tiny3HPool(cache_dir=cache_dir, seed=seed)
    for m in methods:
        if trials == 0:
            rows[m] = _score(tp_cfg, folder, m, MergeSearch(methods={m: {}}, n_trials=1)._merge(m, {}, pool, None,
                                                                                                  None)[0])
            continue
        search = MergeSearch(methods=[m], n_trials=trials, taskpool="3h_tiny", split="validation",
                             test_split=None, compare_defaults=False,
                             output_dir=os.path.join(folder, "search", m), study_name=f"toy_{m}")
        study = os.path.join(folder, "search", m, "study.sqlite")
        if os.path.exists(study):  # a fresh study: the options above may have changed
            os.remove(study)
        tuned = search.run(pool)
        rows[m] = _score(tp_cfg, folder, m, search._merge(m, {}, pool, None, None)[0])
        rows[m + TUNED] = _score(tp_cfg, folder, m + TUNED, tuned)
        rows[m + TUNED]["options"] = search.last_report["chosen"]["options"]
        rows[m + TUNED]["selection"] = search.last_report["selection"]["rule"]
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"options": options, "fingerprint": build.fingerprint(seed), "rows": rows}, f, indent=2)
    return rows


# ---------------------------------------------------------------------------------------
# the verdict
# ---------------------------------------------------------------------------------------

def _best(rows: Dict[str, dict], names) -> tuple:
    names = [n for n in names if n in rows]
    if not names:
        return None, float("nan")
    n = max(names, key=lambda k: rows[k]["AVG"])
    return n, rows[n]["AVG"]


def claims(rows: Dict[str, dict], methods: List[str]) -> List[dict]:
    """The paper's four claims on one seed's rows (the SVD claim among the paper's methods), and
    whether the newer subspace merges beat TSVM/R-TSVM and task arithmetic:
    [{claim, measure, value, holds, detail}]."""
    out = []
    for tag, suffix in (("defaults", ""), ("tuned", TUNED)):
        svd = [m + suffix for m in methods if m in SVD_MERGES]
        other = [m + suffix for m in methods if m not in SVD_MERGES and m not in BEYOND_PAPER]
        if svd and other:
            (a, va), (b, vb) = _best(rows, svd), _best(rows, other)
            if a and b:
                out.append({"claim": "SVD merges beat the other merges on AVG", "measure":
                            f"best SVD merge − best other merge, AVG ({tag})", "value": va - vb,
                            "holds": va - vb > 0, "detail": f"{a} {va:.1f} vs {b} {vb:.1f}"})
        if "r_tsvm" + suffix in rows and "tsvm" + suffix in rows:
            d = rows["r_tsvm" + suffix]["AVG"] - rows["tsvm" + suffix]["AVG"]
            out.append({"claim": "R-TSVM ≥ TSVM", "measure": f"r_tsvm − tsvm, AVG ({tag})", "value": d,
                        "holds": d >= 0, "detail": f"{rows['r_tsvm' + suffix]['AVG']:.1f} vs "
                                                   f"{rows['tsvm' + suffix]['AVG']:.1f}"})
        newer = [m + suffix for m in methods if m in NEWER_SUBSPACE]
        older = [m + suffix for m in methods if m in SVD_MERGES or m == "r3h_task_arithmetic"]
        if newer and older:
            (a, va), (b, vb) = _best(rows, newer), _best(rows, older)
            if a and b:
                out.append({"claim": "the newer subspace merges beat TSVM/R-TSVM and task arithmetic on AVG",
                            "measure": f"best of iso_c, iso_cts, wudi − best of tsvm, r_tsvm, task arithmetic, "
                                       f"AVG ({tag})", "value": va - vb, "holds": va - vb > 0,
                            "detail": f"{a} {va:.1f} vs {b} {vb:.1f}"})
        mixtures = [n for n in rows if n.startswith("mixture_")]
        merges = [m + suffix for m in methods if m not in BEYOND_PAPER]
        if mixtures and merges:
            (a, va), (b, vb) = _best(rows, merges), _best(rows, mixtures)
            if a and b:
                out.append({"claim": "merging ≥ data mixture at equal data", "measure":
                            f"best merge − best mixture, AVG ({tag})", "value": va - vb, "holds": va - vb >= 0,
                            "detail": f"{a} {va:.1f} vs {b} {vb:.1f}"})
    if "helpfulness" in rows and "base" in rows:
        deltas = {d: rows["helpfulness"][d] - rows["base"][d] for d in DIMS}
        out.append({"claim": "helpfulness training lifts all three dimensions", "measure":
                    "min over dimensions of helpfulness expert − base", "value": min(deltas.values()),
                    "holds": min(deltas.values()) > 0,
                    "detail": ", ".join(f"{d.split('_')[0]} {v:+.1f}" for d, v in deltas.items())})
    if {"honesty", "harmlessness", "base"} <= set(rows):
        a = rows["honesty"]["Harmless_Avg"] - rows["base"]["Harmless_Avg"]
        b = rows["harmlessness"]["Honest_Avg"] - rows["base"]["Honest_Avg"]
        out.append({"claim": "honesty and harmlessness trade off", "measure":
                    "max(honesty expert's Harmless − base, harmlessness expert's Honest − base)", "value": max(a, b),
                    "holds": max(a, b) < 0, "detail": f"honesty→harmless {a:+.1f}, harmlessness→honest {b:+.1f}"})
    return out


def _mean_sd(values) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def findings_markdown(per_seed: Dict[int, Dict[str, dict]], methods: List[str]) -> str:
    """One row per claim and measure: its value per seed (– where a seed lacks the rows, e.g.
    the tuned ones off the search seeds), mean ± sd, and on how many seeds it holds."""
    seeds = list(per_seed)
    by_seed = {s: {c["measure"]: c for c in claims(rows, methods)} for s, rows in per_seed.items()}
    order: List[str] = []
    for s in seeds:
        order += [m for m in by_seed[s] if m not in order]
    lines = ["| claim | measure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | holds |",
             "|---|---|" + "---:|" * len(seeds) + "---:|:---:|"]
    for measure in order:
        have = [s for s in seeds if measure in by_seed[s]]
        c = by_seed[have[0]][measure]
        vals = [by_seed[s][measure]["value"] for s in have]
        held = sum(by_seed[s][measure]["holds"] for s in have)
        verdict = "yes" if held == len(have) else "no" if held == 0 else f"{held}/{len(have)} seeds"
        cells = [f"{by_seed[s][measure]['value']:+.1f} ({by_seed[s][measure]['detail']})" if s in have else "–"
                 for s in seeds]
        lines.append(f"| {c['claim']} | {measure} | " + " | ".join(cells) + f" | {_mean_sd(vals)} | {verdict} |")
    return "\n".join(lines)


def spread_markdown(per_seed: Dict[int, Dict[str, dict]]) -> str:
    seeds = list(per_seed)
    names = [n for n in per_seed[seeds[0]] if all(n in per_seed[s] for s in seeds)]
    lines = ["| model | " + " | ".join(f"{d} (mean ± sd)" for d in (*DIMS, OVERALL)) + " | AVG min–max |",
             "|---|" + "---:|" * (len(DIMS) + 2)]
    for n in names:
        cells = [_mean_sd(per_seed[s][n][d] for s in seeds) for d in (*DIMS, OVERALL)]
        avgs = [per_seed[s][n]["AVG"] for s in seeds]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {min(avgs):.1f}–{max(avgs):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> Dict[str, dict]:
    ap = argparse.ArgumentParser(prog="python -m r3h.toy", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/toy_3h")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="*", default=MERGES)
    ap.add_argument("--search-seeds", nargs="*", type=int, default=None,
                    help="the seeds whose merges are also tuned by the search (default: the first seed)")
    ap.add_argument("--search-trials", type=int, default=6)
    ap.add_argument("--no-search", action="store_true", help="only the defaults (no tuned rows)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--no-continual", action="store_true")
    ap.add_argument("--fingerprints", action="store_true",
                    help="only build the seeds' models and print their stage fingerprints")
    ap.add_argument("--compare", default=None,
                    help="with --fingerprints: another build's fingerprints.json; name the stages that differ")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("r3h.core", "r3h.methods", "r3h.evaluation", "r3h.io", "fusion_bench"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    unknown = [m for m in args.methods if m not in MERGES]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {MERGES}")
    if not args.seeds:
        raise SystemExit("--seeds: give at least one toy seed")
    if args.search_trials < 1:
        raise SystemExit("--search-trials: at least 1")
    if args.compare and not args.fingerprints:
        raise SystemExit("--compare: only with --fingerprints")
    if args.fingerprints:
        return {s: print_fingerprints(s, args.cache_dir, not args.no_baselines, not args.no_continual, args.compare)
                for s in args.seeds}

    from r3h.evaluation.tables import write_tables
    from r3h.toy.benchmarks import COLUMNS
    from r3h.toy.world import KINDS

    out = os.path.abspath(args.out)
    search_seeds = args.seeds[:1] if args.search_seeds is None else args.search_seeds
    per_seed = {s: run_seed(s, out, list(args.methods), 0 if args.no_search or s not in search_seeds
                            else args.search_trials, not args.no_baselines, not args.no_continual, args.cache_dir)
                for s in args.seeds}
    rows = per_seed[args.seeds[0]]
    columns = list(COLUMNS)
    dims = {c: KINDS[COLUMNS[c]] for c in columns}
    table = {n: {k: v for k, v in r.items() if k not in ("options", "selection")} for n, r in rows.items()}
    paths = write_tables(table, out, dimensions=dims, caption=f"The toy 3H world, test split, toy seed "
                         f"{args.seeds[0]}: models, mixtures and merges (defaults and tuned on validation)")
    try:
        from r3h.plots import radar, tradeoff_bars

        tradeoff_bars(table, os.path.join(out, "tradeoff_bars"))
        radar(table, os.path.join(out, "radar"))
    except Exception as e:  # plots are a convenience; the table is the result
        logging.getLogger(__name__).warning("plots not written: %s", e)
    spread = spread_markdown(per_seed)
    findings = findings_markdown(per_seed, list(args.methods))
    with open(os.path.join(out, "spread.md"), "w") as f:
        f.write(spread + "\n")
    with open(os.path.join(out, "findings.md"), "w") as f:
        f.write(findings + "\n")
    with open(paths["md"]) as f:
        print(f.read())
    print(f"\nSpread over toy seeds {', '.join(map(str, args.seeds))} (test split):\n\n{spread}\n")
    print(f"Findings (the paper's claims on the toy, test split):\n\n{findings}\n")
    from r3h.toy.fingerprints import lines

    stages = print_fingerprints(args.seeds[0], args.cache_dir, not args.no_baselines, not args.no_continual)
    with open(os.path.join(out, "fingerprints.txt"), "w") as f:
        f.write("\n".join(lines(stages)) + "\n")
    return rows


def print_fingerprints(seed: int, cache_dir=None, baselines: bool = True, continual: bool = True,
                       compare=None) -> Dict[str, dict]:
    """Build toy seed `seed` (what is missing), fingerprint every stage, print one line each;
    with `compare` (another build's fingerprints.json), also the stages that differ."""
    from r3h.toy import build, fingerprints

    stages = fingerprints.record_all(cache_dir, seed, baselines=baselines, continual=continual)
    path = os.path.join(build.root_dir(cache_dir, seed), fingerprints.FILE)
    print(f"Stage fingerprints, toy seed {seed} ({path}):\n")
    print("\n".join(fingerprints.lines(stages)))
    if compare:
        with open(compare) as f:
            other = json.load(f)["stages"]
        diff = fingerprints.compare(stages, other)
        print(f"\nCompared with {compare}: " + (f"first difference: {diff[0]}; all: {', '.join(diff)}" if diff
                                                else "every common stage agrees"))
    return stages


if __name__ == "__main__":
    main()
