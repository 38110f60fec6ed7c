"""Benchmark the merge search's cost on the toy pool: R-TSVM trials with and without the SVD cache.

How to run (from the repository root, in the project's virtual environment)::

    python benchmarks/bench_search.py                 # 6 trials per run, ~4 minutes on 2 CPU cores
    python benchmarks/bench_search.py --trials 10 --json /tmp/search.json

The toy pool (`modelpool=tiny_3h`, seed 0: five experts, trained and cached on first use) is
searched twice by the same `r3h.search.MergeSearch` of `r_tsvm` (the space of `search/r_tsvm`
without `outlier_reading` unless ``--readings``; the same sampler seed, so the same proposals),
each trial scored by `taskpool=3h_tiny` on its validation split:

- ``cold``:   ``svd_cache: false`` -- every trial runs all its SVDs;
- ``cached``: a fresh SVD cache folder -- the first trial runs the SVDs and stores them, the
              others load them and run none.

Printed per run: trials per minute (wall clock of the whole search, scoring included), the
mean merge and scoring seconds per trial, the decompositions per trial (`torch.linalg.svd`
and `torch.linalg.eigh` calls counted during the search, divided by the trials: TSVM's exact
Gram routes take an `eigh` of a small Gram matrix where a full SVD would be slower) and each
trial's count from the SVD cache's report (none without a cache). The two runs must propose the same options and get the same validation scores (the
cached factors are bit-identical), else the script exits with status 1. On the toy the scoring
(greedy generation of 181 answers) dominates a trial; the merge column is what the cache
saves, and what grows with the model (one SVD per expert and matrix, two polar SVDs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def run(space, trials: int, out: str, svd_cache, pool):
    """(seconds, trial rows, decompositions counted at torch.linalg.svd and .eigh during the search)."""
    import torch

    from r3h.search import MergeSearch

    s = MergeSearch(methods={"r_tsvm": space}, n_trials=trials, taskpool="3h_tiny", test_split=None,
                    compare_defaults=False, output_dir=out, svd_cache=svd_cache)
    real = {"svd": torch.linalg.svd, "eigh": torch.linalg.eigh}
    calls = [0]

    def counting(fn):
        def counted(*a, **k):
            calls[0] += 1
            return fn(*a, **k)
        return counted

    for name, fn in real.items():
        setattr(torch.linalg, name, counting(fn))
    try:
        t = time.perf_counter()
        s.run(pool)
        wall = time.perf_counter() - t
    finally:
        for name, fn in real.items():
            setattr(torch.linalg, name, fn)
    with open(os.path.join(out, "trials.json")) as f:
        rows = sorted(json.load(f), key=lambda r: r["trial"])
    return wall, rows, calls[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--readings", action="store_true", help="also search outlier_reading (eq8, inverse, share)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from r3h.toy import Tiny3HPool
    from r3h.search import preset_space

    space = preset_space("r_tsvm")
    if not args.readings:
        space.pop("outlier_reading", None)
    pool = Tiny3HPool()
    root = tempfile.mkdtemp(prefix="r3h-bench-search-")
    results = {}
    try:
        for label, cache in (("cold", False), ("cached", os.path.join(root, "svd_cache"))):
            wall, rows, svd_calls = run(space, args.trials, os.path.join(root, label), cache, pool)
            results[label] = {
                "trials": len(rows), "seconds": round(wall, 2), "trials_per_minute": round(60 * len(rows) / wall, 3),
                "merge_seconds_mean": round(sum(r["seconds"]["merge"] for r in rows) / len(rows), 3),
                "score_seconds_mean": round(sum(r["seconds"]["score"] for r in rows) / len(rows), 3),
                "svds_per_trial": [r["svds"] for r in rows], "svd_calls": svd_calls,
                "svd_calls_per_trial": round(svd_calls / len(rows), 2), "options": [r["options"] for r in rows],
                "scores": [round(r["score"], 6) for r in rows]}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"r_tsvm search on tiny_3h (5 experts), {args.trials} trials per run, torch threads "
          f"{torch.get_num_threads()}, os.cpu_count() {os.cpu_count()}")
    print("| run | trials/min | merge s/trial | score s/trial | svd + eigh calls per trial (mean) | per trial, cache report |")
    print("|---|---:|---:|---:|---:|---|")
    for label, r in results.items():
        print(f"| {label} | {r['trials_per_minute']:.2f} | {r['merge_seconds_mean']:.3f} | "
              f"{r['score_seconds_mean']:.2f} | {r['svd_calls_per_trial']:.1f} | {r['svds_per_trial']} |")
    cold, cached = results["cold"], results["cached"]
    print(f"merge speed-up cold / cached: {cold['merge_seconds_mean'] / cached['merge_seconds_mean']:.2f}x; "
          f"search speed-up: {cached['trials_per_minute'] / cold['trials_per_minute']:.2f}x")
    same = cold["options"] == cached["options"] and cold["scores"] == cached["scores"]
    print("same proposals and scores with and without the cache:", "yes" if same else "NO")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
