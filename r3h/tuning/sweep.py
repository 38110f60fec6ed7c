"""Deployment-time sweeps: one merged model per point of a hyperparameter grid.

`MergeSweep` (config `method=sweep`, presets under `method=sweep/...`) is a fusion_bench
algorithm that runs one merging method once per grid point (`r3h.tuning.members.MemberRunner`)
and returns a `ModelSweep` (one member per point, named `alpha=0.5,gamma=0.25`), which
`taskpool=3h_tiny` / `3h` score member by member into one table. For `tsvm` / `r_tsvm` it
turns the SVD cache (`r3h.core.svd_cache`) on, so the whole grid does one SVD pass; for
`rewarded_soup` with a grid over `preference` alone it runs Rewarded Soup once with the list
of λ (one streaming pass for all members). `r3h.plots.pareto_table` marks the members no
other member beats on two scores and plots them (`r3h.plots.pareto_front`).

See docs/sweeps.md.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from fusion_bench.method.base_algorithm import BaseAlgorithm
from fusion_bench.mixins.lightning_fabric import LightningFabricMixin
from fusion_bench.mixins.serialization import auto_register_config
from r3h.io.plain import to_container
from r3h.methods.configs import META_KEYS
from r3h.modelpool.sweep import ModelSweep
from r3h.tuning.members import MemberRunner
from r3h.tuning.report import write_report

log = logging.getLogger(__name__)

__all__ = ["MergeSweep", "grid_points", "member_name", "format_value"]

#: options a grid point or `options` may not set: the sweep decides them
SWEEP_OWNED = ("out_dir", "svd_cache")


# ---------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------

def format_value(v) -> str:
    """A grid value as it appears in a member name: 0.5, 7, true, a_b for lists,
    helpfulness:0.5_honesty:0.5 for mappings."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, Mapping):
        return "_".join(f"{k}:{format_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "_".join(format_value(x) for x in v)
    return str(v)


def member_name(point: Mapping[str, Any]) -> str:
    """`alpha=0.5,gamma=0.25` for {alpha: 0.5, gamma: 0.25} (path separators become `_`)."""
    name = ",".join(f"{k}={format_value(v)}" for k, v in point.items())
    return re.sub(r"[/\\\x00]", "_", name)


def grid_points(grid) -> List[Dict[str, Any]]:
    """The points of `grid`: a mapping option -> list of values (the Cartesian product, first
    option outermost), or a list of mappings option -> value (the points themselves)."""
    grid = to_container(grid)
    if isinstance(grid, Mapping):
        if not grid:
            raise ValueError("grid: no option to sweep; give e.g. {alpha: [0.5, 1.0]}")
        keys = [str(k) for k in grid]
        values = []
        for k in keys:
            v = grid[k]
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"grid.{k}: expected a list of values, got {v!r}")
            if not v:
                raise ValueError(f"grid.{k}: the list of values is empty")
            values.append(list(v))
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    if isinstance(grid, (list, tuple)):
        if not grid:
            raise ValueError("grid: the list of points is empty")
        points = []
        for i, p in enumerate(grid):
            if not isinstance(p, Mapping) or not p:
                raise ValueError(f"grid[{i}]: expected a mapping option -> value, got {p!r}")
            points.append({str(k): v for k, v in p.items()})
        return points
    raise ValueError(f"grid: expected a mapping option -> list of values or a list of points, got {grid!r}")


# ---------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------

@auto_register_config
class MergeSweep(LightningFabricMixin, BaseAlgorithm):
    """One merged model per grid point of a merging method's options.

    Args:
        method: a method config name (`r_tsvm`, `dare`, `rewarded_soup`, …, as for
            `method=`) or a config with `_target_`.
        grid: option -> list of values (every combination, the first option outermost), or a
            list of points (option -> value). Any option of the method: `alpha`, `gamma`,
            `density`, `weights` (lists or mappings), `seed` (the random sparsifiers),
            `preference` (Rewarded Soup's λ), …
        options: options fixed for every member (e.g. `{epsilon_mode: relative}`).
        svd_cache: tsvm / r_tsvm only: the folder of the SVD factors; `null` (default) = a
            temporary folder removed at the end (one SVD pass for the whole grid), a path =
            kept for later runs, `false` = no cache (every member does its SVDs).
        out_dir: write member <name> to `<out_dir>/<name>` (plus `sweep.json`, the members'
            options, written last, and `r3h_sweep.json`, the sweep's report) and return
            None, so memory holds one model at a time (what 7–8B pools need). Default: the
            members are returned in memory as a `ModelSweep`.
    Members are named `option=value,...` in grid order; each member's model card
    (`r3h_merge.json`) records its full hyperparameters. Bad option names are errors when
    the sweep is built, bad values (every member is checked) before any tensor is read.
    """

    def __init__(self, method=None, grid=None, options: Optional[Mapping[str, Any]] = None, svd_cache=None,
                 out_dir: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        if method is None:
            raise ValueError("method: give the method to sweep (a config name such as r_tsvm, or a config)")
        if grid is None:
            raise ValueError("grid: give the options to sweep, e.g. {alpha: [0.5, 1.0]}")
        self._runner = MemberRunner(method, options, caller="sweep")
        self._points = grid_points(grid)
        if svd_cache is not None and svd_cache is not False and not isinstance(svd_cache, (str, os.PathLike)):
            raise ValueError(f"svd_cache must be a folder, null (a temporary folder) or false; got {svd_cache!r}")
        self._runner.check_options([("options", list(self._options))]
                                   + [(f"grid ({member_name(p)})", list(p)) for p in self._points],
                                   owned=SWEEP_OWNED, own_options=SWEEP_OWNED, known=False)
        self._runner.check_options([("options", list(self._options))] + [("grid", list(p)) for p in self._points])
        self._names = [member_name(p) for p in self._points]
        dup = sorted({n for n in self._names if self._names.count(n) > 1})
        if dup:
            raise ValueError(f"grid: the point {dup[0]!r} appears more than once")
        self.last_report: Dict[str, Any] = {}

    # -- what the sweep will run -------------------------------------------------------
    @property
    def member_names(self) -> List[str]:
        return list(self._names)

    @property
    def points(self) -> List[Dict[str, Any]]:
        return [dict(p) for p in self._points]

    @property
    def manifest(self) -> Dict[str, Dict[str, Any]]:
        """member name -> its grid point (the options it adds to the method config)."""
        return {n: dict(p) for n, p in zip(self._names, self._points)}

    @property
    def _method_cfg(self) -> Dict[str, Any]:
        return self._runner.config

    @property
    def _options(self) -> Dict[str, Any]:
        return self._runner.options

    def uses_svd_cache(self) -> bool:
        return self._runner.uses_svd_cache and self.svd_cache is not False

    def _soup_in_one_pass(self) -> bool:
        return self._runner.declares("multi_preference") and all(list(p) == ["preference"] for p in self._points)

    def member_config(self, i: int, svd_cache: Optional[str] = None) -> Dict[str, Any]:
        out = None
        if self.out_dir is not None:
            out = os.path.join(os.path.expanduser(str(self.out_dir)), self._names[i])
        return self._runner.member_config(self._points[i], svd_cache, out)

    # -- the run ------------------------------------------------------------------------
    def _fabric_or_none(self):
        if self._runner.declares("distributed") or self._fabric_instance is not None:
            return self.fabric
        return None

    def _cache_folder(self, fabric) -> Tuple[Optional[str], bool]:
        """(folder, temporary) for the SVD cache (`MemberRunner.cache_folder`): a temporary
        folder beside `out_dir` unless `svd_cache` names one."""
        parent = None
        if self.out_dir is not None:
            parent = os.path.dirname(os.path.abspath(os.path.expanduser(str(self.out_dir))))
        return self._runner.cache_folder(self.svd_cache, fabric=fabric, parent=parent)

    def run(self, modelpool):
        t_start = time.perf_counter()
        fabric = self._fabric_or_none()
        rank = fabric.global_rank if fabric is not None else 0
        out_dir = os.path.abspath(os.path.expanduser(str(self.out_dir))) if self.out_dir is not None else None
        cache, temporary = self._cache_folder(fabric)
        try:
            members = self._build_members(modelpool, cache, fabric)
            if out_dir is not None and rank == 0:
                os.makedirs(out_dir, exist_ok=True)
                for stale in ("sweep.json", "r3h_sweep.json"):  # a finished-looking folder must be finished
                    if os.path.exists(os.path.join(out_dir, stale)):
                        os.remove(os.path.join(out_dir, stale))
            if self._soup_in_one_pass():
                models = self._run_soup(modelpool, members, out_dir)
            else:
                models = self._run_members(modelpool, members)
            report = self._report(members, cache, temporary, time.perf_counter() - t_start)
            self.last_report = report
            if fabric is not None and fabric.world_size > 1:
                fabric.barrier()
        finally:
            if temporary and cache and rank == 0:
                shutil.rmtree(cache, ignore_errors=True)
        if rank != 0:
            return None
        write_report(report, algorithm=self, log_name="r3h_sweep_report.json")
        if out_dir is not None:
            if not self._soup_in_one_pass():
                write_report(self.manifest, os.path.join(out_dir, "sweep.json"))
            write_report(report, os.path.join(out_dir, "r3h_sweep.json"))
            log.info("sweep of %d members written to %s", len(self._names), out_dir)
            return None
        sweep = ModelSweep(dict(zip(self._names, models)), manifest=self.manifest)
        sweep.r3h_sweep_info = report
        return sweep

    def _build_members(self, modelpool, cache: Optional[str], fabric) -> List[Any]:
        """Instantiate every member and check its options against the pool (no tensor read)."""
        members = []
        for i, name in enumerate(self._names):
            cfg = self.member_config(i, cache)
            if self._soup_in_one_pass():
                cfg.pop("out_dir", None)
            try:
                m = self._runner.build(cfg, fabric, modelpool)
                if hasattr(m, "output_names") and m.output_names() is not None:
                    raise ValueError("this point makes several models (e.g. a list of preference vectors); "
                                     "sweep them through the grid instead")
            except ValueError as exc:
                raise ValueError(f"sweep member '{name}': {exc}") from exc
            members.append(m)
        return members

    def _run_members(self, modelpool, members) -> List[Any]:
        models = []
        for name, m in zip(self._names, members):
            log.info("sweep: member %s", name)
            try:
                model = m.run(modelpool)
            except Exception as exc:
                exc.add_note(f"(while merging sweep member '{name}')")
                raise
            if isinstance(model, ModelSweep):
                raise ValueError(f"sweep member '{name}' returned several models; sweep them through the grid")
            models.append(model)
        return models

    def _run_soup(self, modelpool, members, out_dir) -> List[Any]:
        """Rewarded Soup over a λ grid: one streaming pass gives every member."""
        vectors = [p["preference"] for p in self._points]
        soup = self._runner.build(self._runner.member_config({"preference": vectors}, out_dir=out_dir))
        if out_dir is not None:  # write the members under the sweep's names, with the sweep's manifest
            soup.name_outputs(list(self._names), self.manifest)
        result = soup.run(modelpool)
        for m in members:
            m.last_report = soup.last_report
        if out_dir is not None:
            return []
        return list(result.values())

    def _report(self, members, cache, temporary, seconds) -> Dict[str, Any]:
        per = {}
        for name, point, m in zip(self._names, self._points, members):
            rep = getattr(m, "last_report", None) or {}
            entry = {"options": point, "stats": rep.get("stats")}
            if rep.get("svd_cache"):
                entry["svd_cache"] = {k: v for k, v in rep["svd_cache"].items() if k != "folder"}
            if self.out_dir is not None:
                entry["out_dir"] = os.path.join(os.path.abspath(os.path.expanduser(str(self.out_dir))), name)
            per[name] = entry
        return {
            "method": self._method_cfg["_target_"],
            "method_config": {k: v for k, v in self._method_cfg.items() if k not in META_KEYS},
            "options": self._options,
            "members": per,
            "svd_cache": None if cache is None else {"folder": cache, "temporary": temporary},
            "one_pass": self._soup_in_one_pass(),
            "seconds": round(seconds, 3),
        }


