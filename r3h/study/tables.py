"""The study's outputs: ``results.json`` (models, findings, settings), ``table.md``,
``findings.md`` and the Pareto plots of the three dimension averages (docs/study.md)."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict
from typing import Any, Dict, List

from r3h.core.dimensions import AVERAGES, OVERALL, THREE_H
from r3h.io.plain import write_json_atomic
from r3h.evaluation.intervals import averages, bootstrap_averages

log = logging.getLogger("r3h.study")

DIMS = AVERAGES + (OVERALL,)  # the three dimension averages and AVG (r3h.core.dimensions)
_KEY_OF_AVERAGE = {d.average: d.key for d in THREE_H}
GROUP_ORDER = {"reference": 0, "default": 1, "tuned": 2}
#: the reference rows in the table: the base, the experts, then the two data-side baselines
REFERENCE_ORDER = ("base", "helpfulness", "honesty", "harmlessness", "mixture", "continual")


def model_entry(row: dict, reps: int, seed: int = 0) -> Dict[str, Any]:
    """One model of results.json: columns and the four averages, each {score, ci_low, ci_high, n}."""
    dims = row["dimensions"]
    avgs = averages({c: v["score"] for c, v in row["columns"].items()}, dims)
    cis = bootstrap_averages(row["outcomes"], dims, reps=reps, seed=seed)
    out: Dict[str, Any] = {"group": row["group"], "columns": row["columns"]}
    for k in DIMS:
        if k in avgs:
            n = sum(v["n"] for c, v in row["columns"].items()
                    if k == OVERALL or dims[c] == _KEY_OF_AVERAGE[k])
            out[k] = {"score": float(avgs[k]), "ci_low": cis[k][0], "ci_high": cis[k][1], "n": n}
    for k in ("method", "options", "selection", "seconds", "merge_seconds", "weights_digest", "same_weights_as"):
        if k in row:
            out[k] = row[k]
    return out


def _cell(v: Dict[str, Any]) -> str:
    return f"{v['score']:.1f} [{v['ci_low']:.1f}, {v['ci_high']:.1f}]"


def markdown_table(models: Dict[str, Dict[str, Any]]) -> str:
    cols: List[str] = []
    for m in models.values():
        cols += [c for c in m["columns"] if c not in cols]
    lines = ["| model | group | " + " | ".join(cols + list(DIMS)) + " |", "|---|---|" + "---:|" * (len(cols) + 4)]
    for name, m in models.items():
        cells = [f"{m['columns'][c]['score']:.1f}" if c in m["columns"] else "" for c in cols]
        cells += [_cell(m[k]) if k in m else "" for k in DIMS]
        twin = f" (same weights as {m['same_weights_as']})" if m.get("same_weights_as") else ""
        lines.append(f"| {name}{twin} | {m['group']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_findings(findings: List[Dict[str, Any]]) -> str:
    lines = ["| claim | measure | a | b | diff (a − b) | 95% CI | verdict | by seed |", "|---|---|---|---|---:|---|---|---|"]
    for f in findings:
        seeds = ", ".join(f"{s}: {d:+.1f}" for s, d in (f.get("by_seed") or {}).items())
        lines.append(f"| {f['claim']} | {f['measure']} | {f['a']} | {f['b']} | {f['diff']:+.1f} | "
                     f"[{f['ci_low']:+.1f}, {f['ci_high']:+.1f}] | **{f['verdict']}** | {seeds} |")
    return "\n".join(lines)


def markdown_diagnostics(diagnostics: Dict[str, Dict[str, Any]]) -> str:
    """The TSVM-family merges' per-matrix diagnostics (r3h.analysis.merge_report), one row each."""
    lines = ["| merge | SVD matrices | αi rule (matrices) | Ω mean [min, max] | Ω = 1 | k / r mean | αmax / αmin |",
             "|---|---:|---|---|---:|---:|---:|"]
    for name, d in diagnostics.items():
        om, kr = d.get("omega"), d.get("k_over_r")
        rules = ", ".join(f"{k}: {v}" for k, v in sorted((d.get("alpha_rule") or {}).items()))
        lines.append(f"| {name} | {d.get('svd_matrices', 0)} | {rules} | "
                     + (f"{om['mean']:.3f} [{om['min']:.3f}, {om['max']:.3f}] | {100 * om['share_at_1']:.0f}% | "
                        if om else "n/a | n/a | ")
                     + (f"{kr['mean']:.2f} | " if kr else "n/a | ")
                     + (f"{d['alpha_max_over_min']:.3f} |" if "alpha_max_over_min" in d else "n/a |"))
    return "\n".join(lines)


def write_results(study, total_seconds: float) -> Dict[str, Any]:
    """Gather every seed's rows, decide the findings and write the outputs; returns results.json's dict."""
    import torch

    from r3h.study.findings import claims

    s = study.s
    per_seed: Dict[int, Dict[str, dict]] = {}
    for seed in s.seeds:
        folder = os.path.join(study.out, f"seed{seed}", "rows")
        rows = {}
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                with open(os.path.join(folder, name)) as f:
                    r = json.load(f)
                rows[r["name"]] = r
        per_seed[seed] = dict(sorted(rows.items(), key=lambda kv: (
            GROUP_ORDER.get(kv[1]["group"], 9),
            REFERENCE_ORDER.index(kv[0]) if kv[0] in REFERENCE_ORDER else len(REFERENCE_ORDER), kv[0])))
    first = per_seed[s.seeds[0]]
    ids = {c: v for r in first.values() for c, v in r["ids"].items()}
    for name, r in first.items():  # the paired bootstrap needs the same items in the same order
        bad = [c for c, v in r["ids"].items() if v != ids[c]]
        if bad:
            raise ValueError(f"{name}: columns {bad} were scored on other items than the other rows")
    for r in first.values():
        r["averages"] = averages({c: v["score"] for c, v in r["columns"].items()}, r["dimensions"])
    dims = next(iter(first.values()))["dimensions"]
    findings = claims(first, dims, reps=s.bootstrap)
    for seed, rows in per_seed.items():
        for r in rows.values():
            r.setdefault("averages", averages({c: v["score"] for c, v in r["columns"].items()}, r["dimensions"]))
    for f in findings:
        f["by_seed"] = {seed: float(rows[f["a"]]["averages"][f["measure"]] - rows[f["b"]]["averages"][f["measure"]])
                        for seed, rows in per_seed.items() if f["a"] in rows and f["b"] in rows}
    models = {name: model_entry(r, s.bootstrap) for name, r in first.items()}
    spread = {name: {seed: float(rows[name]["averages"]["AVG"]) for seed, rows in per_seed.items() if name in rows}
              for name in first}
    diag_path = os.path.join(study.out, f"seed{s.seeds[0]}", "diagnostics.json")
    diagnostics = {}
    if os.path.exists(diag_path):
        with open(diag_path) as f:
            diagnostics = json.load(f)
    results = {
        "models": models,
        "findings": findings,
        "diagnostics": diagnostics,
        "spread": {"AVG_by_seed": spread, "seeds": list(s.seeds),
                   "note": "merges tuned by the search only on the first seed"},
        "settings": {**asdict(s), "times_s": {"stages": study.stage_seconds(), "total_this_run": total_seconds},
                     "torch": torch.__version__, "torch_threads": s.threads, "machine": platform.machine(),
                     "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
                     "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
    }
    write_json_atomic(os.path.join(study.out, "results.json"), results)
    table, found = markdown_table(models), markdown_findings(findings)
    with open(os.path.join(study.out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(study.out, "findings.md"), "w") as f:
        f.write(found + "\n")
    diag = markdown_diagnostics(diagnostics) if diagnostics else ""
    if diag:
        with open(os.path.join(study.out, "diagnostics.md"), "w") as f:
            f.write(diag + "\n")
    try:
        from r3h.evaluation.figures import PARETO_PAIRS
        from r3h.plots import pareto_front

        points = [{"label": n, "scores": {k: m[k]["score"] for k in DIMS}} for n, m in models.items()]
        for x, y in PARETO_PAIRS:
            pareto_front(points, os.path.join(study.out, f"pareto_{x}_{y}"), x=x, y=y, annotate=True)
    except Exception as e:  # the plots are a convenience; results.json is the result
        log.warning("study: Pareto plots not written: %s", e)
    print(table + "\n\nFindings (test split, paired bootstrap 95% CI):\n\n" + found
          + ("\n\nTSVM-family merges, per matrix:\n\n" + diag if diag else ""), flush=True)
    return results
