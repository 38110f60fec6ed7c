"""The reports of a sweep or a search: one writer for both.

`write_report` writes a run's report as JSON (atomically) to the folders it belongs in: the
run's own folder (`search_report.json`, `<out_dir>/r3h_sweep.json`) and the program's log
folder (`r3h.core.paths.write_run_report`). `write_trials` writes a search's trials
(`trials.{json,md}`, Pareto-marked) and their pairwise Pareto fronts
(`pareto_<x>_<y>.{md,png,pdf}`, `r3h.evaluation.figures.write_pareto_plots`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Mapping, Optional, Sequence

from r3h.core.dimensions import AVERAGES
from r3h.core.paths import write_run_report
from r3h.io.plain import write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["write_report", "write_trials", "fmt"]


def write_report(report: Mapping[str, Any], path: Optional[str] = None, algorithm=None,
                 log_name: Optional[str] = None) -> None:
    """`report` as JSON to `path` (when given) and, as `log_name`, to the log folder of the
    program `algorithm` runs in (when both are given and it runs in one)."""
    if algorithm is not None and log_name:
        write_run_report(algorithm, log_name, report)
    if path is not None:
        write_json_atomic(path, report)


def fmt(v) -> str:
    """A searched value as the trials table shows it: floats to 3 significant digits."""
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def write_trials(rows: Sequence[Mapping[str, Any]], out: str) -> Dict[str, Any]:
    """`trials.{json,md}` (every trial, Pareto-marked) and the pairwise fronts
    (`pareto_<x>_<y>.{md,png,pdf}`); the files written."""
    from r3h.evaluation.figures import write_pareto_plots

    write_json_atomic(os.path.join(out, "trials.json"), list(rows))
    lines = ["| trial | method | options | " + " | ".join(AVERAGES) + " | AVG | score | Pareto |",
             "|---:|---|---|" + "---:|" * (len(AVERAGES) + 2) + ":---:|"]
    for r in sorted(rows, key=lambda r: -r["score"]):
        opts = ", ".join(f"{k}={fmt(v)}" for k, v in r["options"].items())
        lines.append(f"| {r['trial']} | {r['method']} | {opts} | " + " | ".join(f"{r[d]:.1f}" for d in AVERAGES)
                     + f" | {r['AVG']:.1f} | {r['score']:.2f} | {'yes' if r['pareto'] else ''} |")
    with open(os.path.join(out, "trials.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    files: Dict[str, Any] = {"trials": os.path.join(out, "trials.md")}
    if len(rows) > 1:
        report = {"members": [r["name"] for r in rows],
                  "averages": {r["name"]: {d: r[d] for d in AVERAGES} for r in rows},
                  "sweep": {r["name"]: {"method": r["method"], **r["options"]} for r in rows}}
        try:
            files["pareto"] = write_pareto_plots(report, out)
        except Exception as e:  # the plots are a convenience; trials.md is the result
            log.warning("search: Pareto plots not written: %s", e)
    return files
