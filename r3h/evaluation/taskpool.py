"""`ThreeHTaskPool`: the fusion_bench task pool that scores a (merged) model on the 3H
benchmarks and writes the paper's table.

fusion_bench's program calls ``taskpool.evaluate(model)`` on the merged model and dumps
the returned dict into ``{log_dir}/program_report.json``. ``evaluate``

1. builds the selected benchmarks (``benchmarks``: column -> config with ``_target_``,
   instantiated on first use; any subset of the eleven columns) and, lazily, only the
   judges they use (``judges``: name -> config);
2. loads the tokenizer (``tokenizer``, else ``model.r3h_tokenizer_dir`` set by r3h's
   merging methods, else ``model.name_or_path``) and a :class:`ChatGenerator` with the
   ``generation`` settings;
3. runs every benchmark's ``check`` -- all of them, before any generation -- so a missing
   API key, an unreachable judge, a dataset without the expected fields or a tokenizer
   without a chat template fails in seconds, not hours in;
4. runs every benchmark (generations and verdicts are saved under ``output_dir`` and a
   rerun with the same ``output_dir`` resumes), aggregates with
   :func:`~r3h.evaluation.aggregate.aggregate_3h` and writes the table (JSON, CSV,
   Markdown, LaTeX) with :func:`~r3h.evaluation.tables.write_tables`;
5. prints the Markdown table and returns ``{"scores", "averages", "partial", "stderr",
   "details", "dimensions", "files"}``, JSON-serialisable: ``stderr`` is each score's standard
   error where its details tell (:func:`~r3h.evaluation.aggregate.score_stderr`, else None),
   ``dimensions`` each column's 3H dimension.

A :class:`~r3h.modelpool.ModelSweep` (e.g. a Rewarded Soup λ grid) is evaluated member by
member, one table row each, in ``output_dir/<member>/``; the returned
``scores``/``averages``/``partial``/``stderr``/``details`` are then keyed by member name (``members``
lists them, ``sweep`` holds the sweep's manifest).

Configs: ``config/taskpool/3h.yaml`` (all eleven columns), ``3h/helpfulness``,
``3h/honesty``, ``3h/harmlessness``, ``3h/judged`` (subsets), ``3h_smoke`` (offline
smoke test with stand-in judges, numbers not meaningful).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping as _MappingABC
from dataclasses import fields as dc_fields
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion_bench.mixins.serialization import auto_register_config
from fusion_bench.taskpool.base_pool import BaseTaskPool
from r3h.core.dimensions import KEYS
from r3h.core.paths import run_output_dir, slug
from r3h.io.plain import jsonable, to_container
from r3h.evaluation.aggregate import (AVERAGES, BENCHMARKS, PAPER_DIMENSIONS, aggregate_3h, aggregate_by_dimension,
                                      score_stderr)
from r3h.evaluation.benchmarks.base import Benchmark, EvalContext
from r3h.evaluation.generation import ChatGenerator, GenerationConfig
from r3h.evaluation.judges import Judge
from r3h.evaluation.tables import write_tables

__all__ = ["ThreeHTaskPool", "LazyJudges"]

log = logging.getLogger(__name__)



def _instantiate(cfg, what: str):
    """An object from a config with ``_target_`` (objects pass through)."""
    if isinstance(cfg, (DictConfig, _MappingABC)):
        cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        if "_target_" not in cfg:
            raise ValueError(f"{what}: the config has no `_target_` (the class to build): {OmegaConf.to_yaml(cfg)}")
        from hydra.utils import instantiate

        try:
            return instantiate(cfg, _convert_="all")
        except Exception as e:
            cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
            message = f"{what}: cannot build {cfg._target_}: {cause}"
            try:
                err = type(cause)(message)
            except Exception:
                err = RuntimeError(message)
            raise err from cause
    return cfg


def _takes(cfg, option: str) -> bool:
    """Whether the class a config builds (``_target_``) takes ``option``."""
    import inspect

    from hydra.utils import get_class

    try:
        return option in inspect.signature(get_class(str(cfg["_target_"]))).parameters
    except Exception:  # an unknown target fails with its own error when it is built
        return False


class LazyJudges(_MappingABC):
    """name -> judge, each built from its config on first access (a judge object given
    instead of a config is used as is). Only the judges a benchmark asks for are built."""

    def __init__(self, configs: Optional[Mapping[str, Any]] = None):
        self._configs = {str(k): v for k, v in (configs or {}).items() if v is not None}
        self._built: Dict[str, Judge] = {}

    def __getitem__(self, name: str) -> Judge:
        if name not in self._built:
            cfg = self._configs[name]  # KeyError for unknown names, as a mapping should
            judge = _instantiate(cfg, f"judges.{name}")
            if not isinstance(judge, Judge):
                raise TypeError(f"judges.{name} built a {type(judge).__name__}, not an r3h.evaluation.judges.Judge")
            self._built[name] = judge
        return self._built[name]

    def __contains__(self, name) -> bool:  # without building the judge
        return name in self._configs

    def __iter__(self) -> Iterator[str]:
        return iter(self._configs)

    def __len__(self) -> int:
        return len(self._configs)

    @property
    def built(self) -> Dict[str, Judge]:
        return dict(self._built)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def _near_paper_column(name: str) -> Optional[str]:
    """The paper column ``name`` misspells (same letters up to case, '-', '_'), if any."""
    if name in BENCHMARKS:
        return None
    return next((b for b in BENCHMARKS if _norm(b) == _norm(name)), None)


@auto_register_config
class ThreeHTaskPool(BaseTaskPool):
    """The 3H evaluation as a fusion_bench task pool.

    Args:
        benchmarks: column (the paper's name, e.g. ``MT-Bench``, ``GSM8K``) -> benchmark
            config with ``_target_`` (a :class:`~r3h.evaluation.benchmarks.Benchmark`), or
            ``null`` to leave a column out. Built on first use. Columns that are not the
            paper's (e.g. ``3h_lite``'s) are averaged per their benchmark's ``dimension``
            (:func:`~r3h.evaluation.aggregate.aggregate_by_dimension`) in a table of their own, never mixed into
            the paper's averages; a paper column spelled differently is an error.
        judges: name -> judge config with ``_target_`` (e.g.
            ``r3h.evaluation.judges.OpenAIChatJudge``); benchmarks name theirs with
            ``judge: <name>``. Only the judges of the selected benchmarks are built.
        columns: evaluate only these columns (default: every configured one).
        generation: :class:`~r3h.evaluation.generation.GenerationConfig` fields
            (``max_new_tokens``, ``temperature``, ``batch_size``, ``use_chat_template``, ...).
        tokenizer: path or hub id; default ``model.r3h_tokenizer_dir``, then
            ``model.name_or_path``.
        output_dir: where generations, verdicts and tables go; default the program's log
            folder, else ``./outputs/3h``. Set it to resume an interrupted evaluation.
        limit: evaluate only the first ``limit`` examples of each benchmark (smoke runs).
        allow_partial: with a subset of the columns, report averages over the columns
            present, marked partial (default); ``false`` requires all eleven.
        name: the model's row name in the table (default: the merging method, from
            ``model.r3h_merge_info``, else the model's name).
        device: move the model there before generating (``cuda``, ``cpu``, ``auto``);
            default: leave it where it is.
        caption: the table's caption.
        print_table: print the Markdown table at the end.
        split: the held-out split to score, for benchmarks that have splits (the toy
            world's ``validation`` / ``test``); passed as each benchmark's ``split``
            option. Default: each benchmark's own (the toy's: ``test``).
        protocol: the lm-eval harness settings of the helpfulness columns, ``paper`` (the
            settings that reach the paper's magnitudes) or ``harness`` (lm-eval's defaults);
            passed as ``protocol`` to each benchmark that takes one and sets none
            (:data:`~r3h.evaluation.benchmarks.harness.PROTOCOLS`). Default: each benchmark's own.
    """

    def __init__(self, benchmarks: Optional[Mapping[str, Any]] = None, judges: Optional[Mapping[str, Any]] = None,
                 columns: Optional[Sequence[str]] = None, generation: Optional[Mapping[str, Any]] = None,
                 tokenizer: Optional[str] = None, output_dir: Optional[str] = None, limit: Optional[int] = None,
                 allow_partial: bool = True, name: Optional[str] = None, device: Optional[str] = None,
                 caption: Optional[str] = None, print_table: bool = True, split: Optional[str] = None,
                 protocol: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        bench_cfg = benchmarks if benchmarks is not None else {}
        if not isinstance(bench_cfg, (Mapping, DictConfig)):
            raise TypeError("benchmarks must map a column name to a benchmark config")
        for c in bench_cfg:  # a paper column spelled differently is a typo, not a new column
            near = _near_paper_column(str(c))
            if near is not None:
                raise ValueError(f"benchmarks: column {str(c)!r} is not the paper's spelling; did you mean {near!r}?")
        selected = [str(c) for c, v in bench_cfg.items() if v is not None]
        if columns is not None:
            columns = [str(c) for c in to_container(columns)]
            missing = [c for c in columns if c not in selected]
            if missing:
                raise ValueError(f"columns: {', '.join(map(repr, missing))} not configured under benchmarks "
                                 f"(configured: {', '.join(selected) or 'none'})")
            selected = [c for c in selected if c in columns]
        if not selected:
            raise ValueError("the 3H taskpool has no benchmark to run: configure `benchmarks`")
        self._selected = selected
        gen = dict(to_container(generation) or {})
        known = {f.name for f in dc_fields(GenerationConfig)}
        bad = sorted(set(gen) - known)
        if bad:
            raise ValueError(f"generation: unknown option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        self._generation = gen
        if limit is not None and int(limit) < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._paper = all(c in BENCHMARKS for c in selected)
        if not allow_partial and self._paper:
            absent = [b for b in BENCHMARKS if b not in selected]
            if absent:
                raise ValueError(f"allow_partial is false but the selection lacks {', '.join(absent)}; "
                                 "select all eleven columns or set allow_partial: true")
        self._benchmarks: Optional[Dict[str, Benchmark]] = None
        self._judges = LazyJudges(to_container(judges) if isinstance(judges, (DictConfig, ListConfig)) else judges)

    # -- pieces ---------------------------------------------------------------------
    @property
    def selected_columns(self) -> List[str]:
        return list(self._selected)

    def build_benchmarks(self) -> Dict[str, Benchmark]:
        """Column -> benchmark, built once (lazily, on first evaluate)."""
        if self._benchmarks is None:
            built = {}
            for col in self._selected:
                cfg = self.benchmarks[col]
                if self.split is not None and isinstance(cfg, (DictConfig, _MappingABC)):
                    cfg = {**to_container(cfg), "split": str(self.split)}
                if self.protocol is not None and isinstance(cfg, (DictConfig, _MappingABC)) \
                        and cfg.get("protocol") is None and _takes(cfg, "protocol"):
                    cfg = {**to_container(cfg), "protocol": str(self.protocol)}
                b = _instantiate(cfg, f"benchmarks.{col}")
                if not isinstance(b, Benchmark):
                    raise TypeError(f"benchmarks.{col} built a {type(b).__name__}, not an "
                                    "r3h.evaluation.benchmarks.Benchmark")
                if getattr(b, "column", None) != col:
                    raise ValueError(f"benchmarks.{col} builds a benchmark for column {getattr(b, 'column', None)!r}")
                built[col] = b
            self._benchmarks = built
        return self._benchmarks

    def resolve_output_dir(self) -> str:
        return run_output_dir(self.output_dir, self, "3h")

    def tokenizer_source(self, model) -> str:
        for src in (self.tokenizer, getattr(model, "r3h_tokenizer_dir", None), getattr(model, "name_or_path", None),
                    getattr(getattr(model, "config", None), "_name_or_path", None)):
            if src:
                return str(src)
        raise ValueError(
            f"the 3H taskpool cannot tell which tokenizer goes with this {type(model).__name__}: it has no "
            "r3h_tokenizer_dir and no name_or_path; set taskpool.tokenizer=<path or hub id>")

    def load_tokenizer(self, model):
        from transformers import AutoTokenizer

        src = self.tokenizer_source(model)
        try:
            return AutoTokenizer.from_pretrained(src)
        except Exception as e:
            raise ValueError(f"the 3H taskpool cannot load the tokenizer from {src!r}: {e}; "
                             "set taskpool.tokenizer=<path or hub id>") from e

    def make_generator(self, model, tokenizer, benchmarks: Mapping[str, Benchmark]):
        cfg = GenerationConfig(**self._generation)
        users = [c for c, b in benchmarks.items() if getattr(b, "uses_generator", True)]
        try:
            return ChatGenerator(model, tokenizer, cfg)
        except ValueError as e:
            if users:
                raise ValueError(f"{e} (needed by {', '.join(users)})") from None
            return None

    def row_name(self, model) -> str:
        if self.name:
            return str(self.name)
        info = getattr(model, "r3h_merge_info", None)
        if isinstance(info, Mapping) and info.get("method"):
            return str(info["method"])
        src = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
        return os.path.basename(str(src).rstrip("/")) if src else "model"

    # -- evaluation -----------------------------------------------------------------
    def _members(self, model) -> List[Tuple[str, Any]]:
        from r3h.modelpool.sweep import ModelSweep

        if isinstance(model, ModelSweep):
            return [(str(k), m) for k, m in model.items()]
        return [(self.row_name(model), model)]

    def evaluate(self, model, *args, **kwargs) -> Dict[str, Any]:
        from r3h.modelpool.sweep import ModelSweep

        sweep = isinstance(model, ModelSweep)
        members = self._members(model)
        benchmarks = self.build_benchmarks()
        if not self._paper:
            bad = {c: getattr(b, "dimension", None) for c, b in benchmarks.items()
                   if getattr(b, "dimension", None) not in KEYS}
            if bad:
                raise ValueError(f"benchmarks {bad} have no 3H dimension (helpful, honest or harmless); columns "
                                 "that are not the paper's are averaged by their benchmark's `dimension`")
        out_root = self.resolve_output_dir()
        contexts: List[Tuple[str, EvalContext]] = []
        for name, m in members:
            if self.device:
                import torch

                dev = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
                m.to(dev)
            tok = self.load_tokenizer(m)
            gen = self.make_generator(m, tok, benchmarks)
            out = os.path.join(out_root, slug(name, "model")) if sweep else out_root
            contexts.append((name, EvalContext(model=m, tokenizer=tok, generator=gen, output_dir=out,
                                               judges=self._judges, limit=self.limit)))
        # every check before any generation
        for name, ctx in contexts:
            for col, b in benchmarks.items():
                try:
                    b.check(ctx)
                except Exception as e:
                    e.add_note(f"(3H taskpool: while checking {col}{' for ' + name if sweep else ''}; nothing "
                               "was generated yet)")
                    raise
        dims = {c: getattr(b, "dimension", None) for c, b in benchmarks.items()}
        rows: Dict[str, Dict[str, float]] = {}
        aggs: Dict[str, Dict[str, Any]] = {}
        details: Dict[str, Dict[str, Any]] = {}
        for name, ctx in contexts:
            was_training = getattr(ctx.model, "training", False)
            if hasattr(ctx.model, "eval"):
                ctx.model.eval()
            scores: Dict[str, float] = {}
            det: Dict[str, Any] = {}
            try:
                for col, b in benchmarks.items():
                    log.info("3H: %s on %s", name, col)
                    result = b.run(ctx)
                    if result.column != col:
                        raise ValueError(f"benchmarks.{col} returned a result for column {result.column!r}")
                    score = float(result.score)
                    if not math.isfinite(score):
                        raise ValueError(f"benchmarks.{col} returned a non-finite score {result.score!r}")
                    scores[col] = score
                    det[col] = result.details
                    log.info("3H: %s %s = %.4g", name, col, score)
            finally:
                if was_training and hasattr(ctx.model, "train"):
                    ctx.model.train()
            rows[name] = scores
            if self._paper:
                aggs[name] = aggregate_3h(scores, allow_partial=self.allow_partial)
            else:
                aggs[name] = aggregate_by_dimension(scores, dims)
            details[name] = det
        caption = self.caption or "3H evaluation" + (f" (first {self.limit} examples per benchmark)"
                                                     if self.limit else "")
        notes = [f"{c}: {b.table_note}" for c, b in benchmarks.items() if getattr(b, "table_note", None)]
        if notes:  # which data was scored where a benchmark offers a choice (e.g. SALAD-Bench's question set)
            caption += " [" + "; ".join(notes) + "]"
        paths = write_tables(rows, out_root, stem="3h_results", caption=caption, allow_partial=self.allow_partial,
                             dimensions=None if self._paper else dims)
        files: Dict[str, Any] = {k: str(p) for k, p in paths.items()}
        with open(paths["md"], encoding="utf-8") as f:
            markdown = f.read()
        if self.print_table:
            print(markdown, flush=True)

        def one(name):
            agg = aggs[name]
            return {
                "scores": {c: agg[c] for c in (BENCHMARKS if self._paper else benchmarks) if c in agg},
                "averages": {c: agg.get(c) for c in AVERAGES},
                "partial": {c: list(v) for c, v in dict(agg.get("partial", {})).items()},
                "stderr": {c: score_stderr(rows[name][c], details[name].get(c)) for c in rows[name]},
                "details": details[name],
            }

        if sweep:
            per = {name: one(name) for name, _ in contexts}
            report = {k: {name: per[name][k] for name in per}
                      for k in ("scores", "averages", "partial", "stderr", "details")}
            report["members"] = list(per)
            report["sweep"] = jsonable(getattr(model, "manifest", {}))
        else:
            report = one(contexts[0][0])
            report["model"] = contexts[0][0]
        files["benchmarks"] = {name: {col: d.get("files") for col, d in details[name].items()
                                      if isinstance(d, Mapping) and d.get("files")} for name in details}
        if not sweep:
            files["benchmarks"] = files["benchmarks"][contexts[0][0]]
        if sweep and len(per) > 1:
            from r3h.evaluation.figures import write_pareto_plots

            files["pareto"] = write_pareto_plots(report, out_root)
        report["dimensions"] = {c: dims.get(c) or PAPER_DIMENSIONS.get(c) for c in benchmarks}
        report["files"] = files
        report["output_dir"] = out_root
        report = jsonable(report)
        report_path = os.path.join(out_root, "3h_report.json")
        report["files"]["report"] = report_path
        with open(report_path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        return report
