"""`method=analysis/alignment_vectors`: diagnostics of a pool's alignment vectors.

A fusion_bench algorithm whose `run(modelpool)` returns a report (a JSON-serialisable
summary) instead of a model. It checks the pool with r3h's `plan_merge` (names, shapes,
architecture) before any tensor is read, then streams one tensor name at a time: θ0 and
every expert's τi = θi − θ0 of that tensor are read with the engine's reader, measured
(`r3h.analysis.alignment_vectors`) and released, so memory holds θ0 and n τ of one tensor
(plus one SVD) whatever the model size. The full report and the plots are written
atomically into `out_dir`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import re
import time
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

import r3h
from fusion_bench.method.base_algorithm import BaseAlgorithm
from fusion_bench.mixins.serialization import auto_register_config
from r3h.analysis.alignment_vectors import layer_summaries, summarize, tensor_stats
from r3h.core.engine import MergePlan, iter_tensors, plan_merge
from r3h.core.memory import peak_accelerator_bytes, peak_rss_bytes
from r3h.io.writer import atomic_output_dir
from r3h.core.paths import run_output_dir
from r3h.io.plain import to_container
from r3h.modelpool.sources import BASE, pool_checkpoints, pool_sources

log = logging.getLogger(__name__)

EXPERT_COLUMNS = ("norm", "rel_norm", "l1", "omega_abs", "omega_rel", "kurtosis", "outlier_mass", "outlier_share")
PAIR_COLUMNS = ("cosine", "sign_conflict", "dot", "conflicts", "both_nonzero")


def finite(x):
    """`x` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


@auto_register_config
class AlignmentVectorAnalysis(BaseAlgorithm):
    """Norms, sparsity, heavy tails, pairwise agreement and TSVM interference of τi = θi − θ0.

    Args:
        epsilon: absolute ε of Ω = share of |τ| < ε (R-TSVM's Eq. 9; the paper's 0.1).
        epsilon_relative: ε of the relative rule, Ω = share of |τ| < ε · RMS(τ) (r3h's
            `epsilon_mode: relative`); default 0.1.
        svd: compute TSVM's STI per matrix (one SVD per expert and matrix); default true.
        max_svd_dim: skip the SVD of matrices with a side longer than this (default 16384:
            the vocabulary-sized embeddings and `lm_head` of Llama-3 and Mistral, which
            cost most); `null` = no limit.
        exclude_keys: regexes (full match) of tensor names to skip entirely.
        cpu_threads: threads for the CPU SVDs (default 1: a fixed count gives the same bits on
            every run); `null` = torch's default. The other statistics use torch's threads.
        device: where the statistics are computed: `cpu` (default), `cuda`, `auto`.
        out_dir: where the report goes (the folder is replaced atomically); default
            `<log dir>/alignment_vectors` under fusion_bench, else `outputs/analysis`.
        plots: also write the heatmaps (PNG and PDF); default true.
        progress: show a tqdm bar per tensor.
    Needs a base (`_pretrained_`) and at least one expert; pairs need two.
    """

    def __init__(
        self,
        epsilon: float = 0.1,
        epsilon_relative: float = 0.1,
        svd: bool = True,
        max_svd_dim: Optional[int] = 16384,
        exclude_keys: Optional[List[str]] = None,
        cpu_threads: Optional[int] = 1,
        device: str = "cpu",
        out_dir: Optional[str] = None,
        plots: bool = True,
        progress: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.exclude_keys = list(to_container(exclude_keys) or [])
        self.last_report: Dict[str, Any] = {}
        self.output_dir: Optional[str] = None

    # -- checks (before any file is opened) ------------------------------------------------
    def check_options(self) -> None:
        for opt in ("epsilon", "epsilon_relative"):
            v = getattr(self, opt)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"{opt}={v!r} must be a number > 0")
        if self.max_svd_dim is not None and int(self.max_svd_dim) < 1:
            raise ValueError(f"max_svd_dim={self.max_svd_dim} must be ≥ 1 or null")
        if self.cpu_threads is not None and int(self.cpu_threads) < 1:
            raise ValueError(f"cpu_threads={self.cpu_threads} must be ≥ 1 or null")
        if self.plots and importlib.util.find_spec("matplotlib") is None:
            raise ImportError("plots: true needs matplotlib (pip install matplotlib); or set plots: false")
        for p in self.exclude_keys:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"exclude_keys: {p!r} is not a regular expression ({exc})") from exc

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_out_dir(self) -> str:
        return run_output_dir(self.out_dir, self, "analysis", sub="alignment_vectors")

    def options(self) -> Dict[str, Any]:
        cfg = OmegaConf.to_container(self.config, resolve=True)
        return {k: v for k, v in cfg.items() if not k.startswith("_") and k != "progress"}

    def wants_svd(self, shape) -> bool:
        return bool(self.svd) and len(shape) == 2 and (self.max_svd_dim is None or max(shape) <= int(self.max_svd_dim))

    # -- the run ------------------------------------------------------------------------
    def prepare(self, modelpool) -> MergePlan:
        """Check options, open the checkpoints' headers and check the pool (no tensor read)."""
        self.check_options()
        base, experts = pool_checkpoints(modelpool, need_base=True)
        return plan_merge(base, experts)

    def analyse(self, plan: MergePlan):
        """Stream every tensor; returns (tensor records, pair records, skipped names, stats)."""
        t_start = time.perf_counter()
        experts = [ck.name for ck in plan.experts]
        device = self.torch_device
        ref = plan.reference
        excluded = [n for n in plan.names if any(re.fullmatch(p, n) for p in self.exclude_keys)]
        non_float = [n for n in plan.names if not ref.tensors[n].dtype.is_floating_point]
        empty = [n for n in plan.names if math.prod(ref.tensors[n].shape) == 0]
        skip = set(excluded) | set(non_float) | set(empty)
        names = [n for n in plan.names if n not in skip]
        records, pairs = [], []
        walk = iter_tensors(plan, names, device)
        for name, theta0, experts_t in tqdm(walk, total=len(names), desc="alignment vectors", unit="tensor",
                                            disable=not self.progress):
            taus = [e.sub_(theta0) for e in experts_t]
            svd = self.wants_svd(theta0.shape)
            rec, prs = tensor_stats(name, theta0, taus, experts, float(self.epsilon), float(self.epsilon_relative),
                                    svd=svd, svd_threads=self.cpu_threads)
            if rec["sti_rule"] == "off" and self.svd:
                rec["sti_rule"] = "max_svd_dim"  # asked for, but the matrix is larger than max_svd_dim
            records.append(rec)
            pairs.extend(prs)
            del theta0, taus
        stats = {
            "tensors": len(names),
            "seconds": round(time.perf_counter() - t_start, 3),
            "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3),
            "peak_accelerator_gb": round(peak_accelerator_bytes() / 1e9, 3),
        }
        return records, pairs, {"excluded": excluded, "non_float": non_float, "empty": empty}, stats

    def run(self, modelpool):
        plan = self.prepare(modelpool)
        experts = [ck.name for ck in plan.experts]
        records, pairs, skipped, stats = self.analyse(plan)
        summary = summarize(records, pairs, experts)
        sources = pool_sources(modelpool)
        report = finite({
            "kind": "alignment_vectors",
            "r3h_version": r3h.__version__,
            "options": self.options(),
            "base_model": sources.get(BASE),
            "experts": experts,
            "sources": {k: v for k, v in sources.items() if k != BASE},
            "skipped": skipped,
            "stats": stats,
            "summary": summary,
            "layers": layer_summaries(records, pairs, experts),
            "tensors": records,
            "pairs": pairs,
        })
        out = self.resolve_out_dir()
        with atomic_output_dir(out) as tmp:
            write_report(tmp, report)
            if self.plots:
                from r3h.analysis.heatmaps import analysis_heatmaps

                analysis_heatmaps(report, tmp)
        self.last_report, self.output_dir = report, out
        log.info("alignment-vector diagnostics of %d tensors written to %s", len(records), out)
        return {"kind": "alignment_vectors", "out_dir": out, **report["summary"]}


def write_report(folder: str, report: Dict[str, Any]) -> None:
    """alignment_vectors.json (everything), alignment_vectors.csv (tensor × expert) and
    alignment_pairs.csv (tensor × pair of experts)."""
    with open(os.path.join(folder, "alignment_vectors.json"), "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
    head = ["tensor", "layer", "module", "shape", "numel", "expert", "base_norm", *EXPERT_COLUMNS,
            "tensor_omega_abs", "tensor_omega_rel", "outlier_alpha", "sti_rule", "q", "sti"]
    with open(os.path.join(folder, "alignment_vectors.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for r in report["tensors"]:
            for i, (e, s) in enumerate(r["experts"].items()):
                w.writerow([r["name"], r["layer"], r["module"], "x".join(map(str, r["shape"])), r["numel"], e,
                            r["base_norm"], *[s[c] for c in EXPERT_COLUMNS], r["omega_abs"], r["omega_rel"],
                            r["outlier_alpha"][i], r["sti_rule"], r.get("q"), r.get("sti")])
    with open(os.path.join(folder, "alignment_pairs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tensor", "layer", "a", "b", *PAIR_COLUMNS])
        for p in report["pairs"]:
            w.writerow([p["tensor"], p["layer"], p["a"], p["b"], *[p[c] for c in PAIR_COLUMNS]])
