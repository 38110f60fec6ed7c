"""Merge search: tune merging methods' options on a 3H taskpool's validation split (Optuna).

`MergeSearch` (config `method=search`, presets `method=search/<method>` and
`method=search/all`) is a fusion_bench algorithm. Each trial picks a method (when several
are searched) and values for the options the user named, merges the pool
(`r3h.methods.configs` builds the method exactly as `method=<name>` would) and
scores the merge with a 3H taskpool on its `validation` split. The objective is either the
user's 3H preference, S = Σ w_d · d_avg / Σ w_d over d ∈ {Helpful_Avg, Honest_Avg,
Harmless_Avg} (`objective: weighted`, default), or the three averages themselves
(`objective: multi`, Optuna's multi-objective TPE). At the end the search writes every
trial and the Pareto front of the three averages (table, and the pairwise fronts as plots
with `r3h.plots.pareto_table`), picks the front's member with the highest S, scores it on
the `test` split and returns it, so `merged_model_save_path=` saves it.

- **Selection against noise.** A small validation split cannot tell a one-question gain
  from chance. The best member replaces the best trial at the defaults only when its gain
  in S exceeds `min_gain_se` standard errors of the difference,
  S_best − S_def > z · √(SE_best² + SE_def²) (default z = 1: the one-standard-error rule,
  Breiman et al. 1984; Hastie et al., ESL §7.10); else the search returns the defaults and
  says so (`selection` in the report). SE(S) comes from each benchmark's standard error
  (`r3h.evaluation.aggregate.score_stderr`: binomial for shares of n items).

- **Space.** `methods: {<method>: {<option>: <range>}}`, a range being `{low, high}` (with
  `log: true`, `step`, `int: true`), `{choices: [...]}` or a list (categorical), a plain
  value (fixed), or `null` (removed: lets a command line drop an option of a preset).
  `weights` and `preference` ranges are per expert (`weights.<expert>`); a preference is
  normalised onto the simplex. A method named without a space (`methods: [ties, dare]`)
  gets the space of its preset `config/method/search/<method>.yaml`.
- **Budget.** `n_trials` completed trials and/or `timeout` seconds.
- **Resume.** Trials live in an SQLite study (`<output_dir>/study.sqlite`); rerunning with
  the same `output_dir` (or `storage`) continues the study up to `n_trials`.
- **SVD cost.** tsvm / r_tsvm trials share one SVD cache (`<output_dir>/svd_cache`,
  `r3h.core.svd_cache`): after the first trial no trial runs an SVD (the report counts
  them per trial).
- **Big pools.** With `out_dir`, each trial's merge is written to disk and scored from
  there, one at a time, then removed; the chosen merge is written to `<out_dir>/chosen` and
  the search returns None. A judged taskpool asks its judge nothing twice across trials:
  verdicts live in the judge cache (`$R3H_CACHE/judges.sqlite`).

See docs/search.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from fusion_bench.method.base_algorithm import BaseAlgorithm
from fusion_bench.mixins.lightning_fabric import LightningFabricMixin
from fusion_bench.mixins.serialization import auto_register_config
from r3h.io.plain import to_container, write_json_atomic
from r3h.evaluation.aggregate import weighted_stderr
from r3h.methods.configs import build_method, declares, load_config, load_method_config, method_class, option_names

log = logging.getLogger(__name__)

__all__ = ["MergeSearch", "Param", "parse_space", "preset_space", "DIMENSIONS", "weighted_score"]

#: the three objectives of the multi-objective search, and the keys of the 3H weights
DIMENSIONS = ("Helpful_Avg", "Honest_Avg", "Harmless_Avg")
#: options the search decides itself
SEARCH_OWNED = ("out_dir", "svd_cache", "progress")
PER_EXPERT = ("weights", "preference")
OBJECTIVES = ("weighted", "multi")


# ---------------------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------------------

@dataclass
class Param:
    """One searched (or fixed) option of one method."""

    option: str
    kind: str  # float | int | categorical | fixed
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: List[Any] = field(default_factory=list)
    value: Any = None

    @property
    def per_expert(self) -> bool:
        return self.option in PER_EXPERT and self.kind in ("float", "int")

    def contains(self, v) -> bool:
        if self.kind == "categorical":
            return v in self.choices
        if self.kind == "fixed":
            return v == self.value
        return isinstance(v, (int, float)) and self.low <= float(v) <= self.high

    def ends(self) -> List[Any]:
        """The values whose acceptance by the method is checked before any merge."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "fixed":
            return [self.value]
        return [self.low, self.high]


def _number(where: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def parse_param(where: str, option: str, spec) -> Optional[Param]:
    """A `Param` from its range spec (see the module docstring); None for `null`."""
    spec = to_container(spec)
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        spec = {"choices": list(spec)}
    if not isinstance(spec, Mapping):
        return Param(option, "fixed", value=spec)
    if "value" in spec and len(spec) == 1:
        return Param(option, "fixed", value=spec["value"])
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise ValueError(f"{where}: a categorical range takes only `choices`, not {extra[0]!r}")
        choices = list(spec["choices"] or [])
        if not choices:
            raise ValueError(f"{where}: `choices` is empty")
        bad = [c for c in choices if not (c is None or isinstance(c, (str, int, float, bool)))]
        if bad:
            raise ValueError(f"{where}: choices must be plain values (Optuna stores them), got {bad[0]!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"{where}: `choices` repeats a value: {choices}")
        return Param(option, "categorical", choices=choices)
    extra = sorted(set(spec) - {"low", "high", "log", "step", "int"})
    if extra or "low" not in spec or "high" not in spec:
        raise ValueError(f"{where}: a range is {{low, high}} (optional log, step, int), {{choices: [...]}} or a "
                         f"value; got {spec!r}")
    low, high = _number(f"{where}.low", spec["low"]), _number(f"{where}.high", spec["high"])
    if not low < high:
        raise ValueError(f"{where}: low ({spec['low']!r}) must be below high ({spec['high']!r})")
    is_log, step = bool(spec.get("log", False)), spec.get("step")
    if is_log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, got {spec['low']!r}")
    if step is not None:
        step = _number(f"{where}.step", step)
        if step <= 0 or step > high - low:
            raise ValueError(f"{where}: step must be in (0, high - low], got {spec['step']!r}")
        if is_log:
            raise ValueError(f"{where}: `step` and `log` cannot be combined (Optuna)")
    kind = "int" if spec.get("int", False) else "float"
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ValueError(f"{where}: an int range needs integer ends, got {spec['low']!r}, {spec['high']!r}")
    return Param(option, kind, low=low, high=high, log=is_log, step=step)


def preset_space(method: str) -> Dict[str, Any]:
    """The space of `config/method/search/<method>.yaml` (its `methods.<method>`)."""
    try:
        cfg = load_config("method/search", method)
    except ValueError as exc:
        raise ValueError(f"methods: no search preset for {method!r} ({exc}); give its space explicitly, "
                         f"e.g. methods: {{{method}: {{scaling_factor: {{low: 0.1, high: 1.0}}}}}}") from None
    space = cfg.get("methods") or {}
    if not isinstance(space, Mapping) or method not in space:
        raise ValueError(f"method/search/{method}.yaml: `methods` has no space for {method!r}")
    return dict(space[method] or {})


def parse_space(methods) -> Dict[str, Dict[str, Param]]:
    """method name -> option -> Param, from `methods` (a mapping name -> space, or a list of
    names taking their presets' spaces). Only the spelling is checked here; `MergeSearch`
    checks the options against each method's class."""
    methods = to_container(methods)
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, (list, tuple)):
        if not methods or not all(isinstance(m, str) for m in methods):
            raise ValueError(f"methods: expected method names or a mapping method -> space, got {methods!r}")
        methods = {m: preset_space(m) for m in methods}
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("methods: give the methods to search, e.g. {r_tsvm: {alpha: {low: 0.5, high: 2.0}}}")
    out = {}
    for name, space in methods.items():
        space = to_container(space)
        if space is None:
            space = {}
        if not isinstance(space, Mapping):
            raise ValueError(f"methods.{name}: expected a mapping option -> range, got {space!r}")
        params = {}
        for option, spec in space.items():
            where = f"methods.{name}.{option}"
            if option in SEARCH_OWNED:
                raise ValueError(f"{where}: '{option}' is set by the search itself")
            p = parse_param(where, str(option), spec)
            if p is not None:
                params[str(option)] = p
        out[str(name)] = params
    return out


def weighted_score(averages: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """S = Σ w_d · averages[d] / Σ w_d over the three dimensions."""
    total = sum(weights.values())
    return sum(w * float(averages[d]) for d, w in weights.items()) / total


def _weights(weights) -> Dict[str, float]:
    w = to_container(weights)
    if w is None:
        return {d: 1.0 for d in DIMENSIONS}
    if isinstance(w, (list, tuple)):
        if len(w) != 3:
            raise ValueError(f"weights: three 3H weights (helpful, honest, harmless), got {w!r}")
        w = dict(zip(DIMENSIONS, w))
    if not isinstance(w, Mapping):
        raise ValueError(f"weights: a mapping {{{', '.join(DIMENSIONS)}}} or three numbers, got {w!r}")
    alias = {"helpful": "Helpful_Avg", "honest": "Honest_Avg", "harmless": "Harmless_Avg",
             "helpfulness": "Helpful_Avg", "honesty": "Honest_Avg", "harmlessness": "Harmless_Avg"}
    out = {}
    for k, v in w.items():
        key = alias.get(str(k).lower(), str(k))
        if key not in DIMENSIONS:
            raise ValueError(f"weights: {k!r} is not a 3H dimension ({', '.join(DIMENSIONS)})")
        v = _number(f"weights.{k}", v)
        if v < 0:
            raise ValueError(f"weights.{k}: must be >= 0, got {v}")
        out[key] = v
    out = {d: out.get(d, 0.0) for d in DIMENSIONS}
    if sum(out.values()) <= 0:
        raise ValueError("weights: at least one 3H weight must be positive")
    return out


# ---------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------

@auto_register_config
class MergeSearch(LightningFabricMixin, BaseAlgorithm):
    """Tune merging methods' options on a 3H taskpool's validation split (see the module
    docstring).

    Args:
        methods: method name -> space (option -> range), or a list of method names taking
            the spaces of their presets `search/<method>`.
        objective: `weighted` (the 3H preference `weights`, default) or `multi` (the three
            dimension averages, multi-objective).
        weights: 3H weights {Helpful_Avg, Honest_Avg, Harmless_Avg} (or helpful / honest /
            harmless, or three numbers); equal by default. They choose the returned member.
        n_trials: completed trials to reach (a resumed study counts its earlier ones).
        timeout: stop starting trials after this many seconds (null: no limit).
        taskpool: the taskpool that scores trials: a config name under `config/taskpool`
            (e.g. `3h_tiny`) or a config; default: the program's `taskpool=`, else `3h_tiny`.
        split: the split trials are scored on (default `validation`).
        test_split: the split the chosen member is scored on (default `test`; null: none).
        compare_defaults: also score every searched method at its defaults on `test_split`
            (the report's `defaults`).
        output_dir: trials, study, tables and plots; default `<log_dir>/search` of the
            program, else `outputs/search`. Rerun with the same folder to resume.
        storage: an Optuna storage URL; default `sqlite:///<output_dir>/study.sqlite`.
        study_name: the study's name in the storage.
        seed: the sampler's seed.
        include_defaults: the first trial of a new study is each method at its defaults
            (where they lie in the space), so the search starts from them.
        svd_cache: tsvm / r_tsvm: the SVD cache folder; default `<output_dir>/svd_cache`;
            false: none (every trial runs its SVDs).
        min_gain_se: the best member replaces the best trial at the defaults only when its
            validation gain in S exceeds this many standard errors of the difference
            (default 1.0; 0: always the best member). See the module docstring.
        out_dir: stream: write each trial's merge there (one at a time, removed once scored)
            and the chosen one to `<out_dir>/chosen`; return None.
    """

    def __init__(self, methods=None, objective: str = "weighted", weights=None, n_trials: Optional[int] = 30,
                 timeout: Optional[float] = None, taskpool=None, split: Optional[str] = "validation",
                 test_split: Optional[str] = "test", compare_defaults: bool = True, output_dir: Optional[str] = None,
                 storage: Optional[str] = None, study_name: str = "r3h_search", seed: int = 0,
                 include_defaults: bool = True, svd_cache=None, out_dir: Optional[str] = None,
                 min_gain_se: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not (_number("min_gain_se", min_gain_se) >= 0):
            raise ValueError(f"min_gain_se: expected a number of standard errors >= 0, got {min_gain_se!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
        if n_trials is None and timeout is None:
            raise ValueError("n_trials, timeout: give a budget (a number of trials and/or seconds)")
        if n_trials is not None and (isinstance(n_trials, bool) or int(n_trials) != n_trials or n_trials < 1):
            raise ValueError(f"n_trials: expected an integer >= 1, got {n_trials!r}")
        if timeout is not None and not (_number("timeout", timeout) > 0):
            raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")
        if svd_cache is not None and svd_cache is not False and not isinstance(svd_cache, (str, os.PathLike)):
            raise ValueError(f"svd_cache: a folder, null (<output_dir>/svd_cache) or false; got {svd_cache!r}")
        self._weights = _weights(weights)
        self._space = parse_space(methods)
        self._cfgs: Dict[str, Dict[str, Any]] = {}
        self._classes = {}
        for name, params in self._space.items():
            try:
                cfg = load_method_config(name)
            except ValueError as exc:
                raise ValueError(f"methods.{name}: {exc}") from None
            if str(cfg["_target_"]).endswith(".MergeSearch"):
                raise ValueError(f"methods.{name}: a search cannot search a search")
            cls = method_class(cfg)
            probe = build_method(cfg, **({"progress": False} if "progress" in cfg else {}))
            known = option_names(probe)
            for option in params:
                if option not in known:
                    raise ValueError(f"methods.{name}.{option}: '{option}' is not an option of {cfg['_target_']} "
                                     f"(options: {', '.join(known)})")
            for option, p in params.items():
                if option in PER_EXPERT and p.kind == "fixed":
                    continue
                if option in PER_EXPERT and p.kind == "categorical":
                    raise ValueError(f"methods.{name}.{option}: a per-expert option takes a {{low, high}} range "
                                     "(one value per expert) or a fixed value")
            self._cfgs[name] = cfg
            self._classes[name] = cls
        self.last_report: Dict[str, Any] = {}

    # -- paths -------------------------------------------------------------------------
    def resolve_output_dir(self) -> str:
        if self.output_dir:
            return os.path.abspath(os.path.expanduser(str(self.output_dir)))
        program = getattr(self, "_program", None)
        log_dir = getattr(program, "log_dir", None) if program is not None else None
        return os.path.abspath(os.path.join(log_dir, "search") if log_dir else os.path.join("outputs", "search"))

    def storage_url(self, out: str) -> str:
        return str(self.storage) if self.storage else f"sqlite:///{os.path.join(out, 'study.sqlite')}"

    # -- configs -----------------------------------------------------------------------
    def taskpool_config(self, split: Optional[str]):
        """The trials' taskpool config, with `split` (when not None)."""
        tp = to_container(self.taskpool)
        if tp is None:
            program = getattr(self, "_program", None)
            tp = to_container(getattr(program, "_taskpool", None)) if program is not None else None
        if tp is None:
            tp = "3h_tiny"
        if isinstance(tp, str):
            tp = load_config("taskpool", tp)
        if not isinstance(tp, Mapping) or not tp.get("_target_"):
            raise ValueError(f"taskpool: a taskpool config name or a config with _target_, got {tp!r}")
        tp = dict(tp)
        if split is not None:
            tp["split"] = split
        tp["print_table"] = False
        return tp

    def _score(self, model, split: Optional[str], out: str, name: str) -> Dict[str, Any]:
        from hydra.utils import instantiate

        cfg = self.taskpool_config(split)
        shutil.rmtree(out, ignore_errors=True)  # generations resume from their folder: never another model's
        cfg["output_dir"] = out
        cfg["name"] = name
        tp = instantiate(OmegaConf.create(cfg), _recursive_=False)
        report = tp.evaluate(model)
        missing = [d for d in DIMENSIONS if report.get("averages", {}).get(d) is None]
        if missing:
            raise ValueError(f"taskpool: its report has no {missing[0]} (the search needs the three 3H dimension "
                             "averages; select columns of every dimension)")
        return report

    def member_config(self, method: str, values: Mapping[str, Any], cache: Optional[str],
                      out_dir: Optional[str]) -> Dict[str, Any]:
        cfg = {**self._cfgs[method], **values}
        if "progress" in cfg:
            cfg["progress"] = False
        if cache is not None and self._uses_svd(method):
            cfg["svd_cache"] = cache
        if out_dir is not None:
            cfg["out_dir"] = out_dir
        return cfg

    def _uses_svd(self, method: str) -> bool:
        return declares(self._classes[method], "uses_svd_cache") and self.svd_cache is not False

    def defaults_of(self, method: str) -> Dict[str, Any]:
        """The method's default value of every searched option (its config's)."""
        return {o: self._cfgs[method].get(o) for o in self._space[method]}

    # -- proposals ---------------------------------------------------------------------
    def propose(self, trial, experts: Sequence[str]) -> Tuple[str, Dict[str, Any]]:
        """(method, option values) for an Optuna trial."""
        names = list(self._space)
        method = trial.suggest_categorical("method", names) if len(names) > 1 else names[0]
        prefix = f"{method}." if len(names) > 1 else ""
        values: Dict[str, Any] = {}
        for option, p in self._space[method].items():
            key = prefix + option
            if p.kind == "fixed":
                values[option] = p.value
            elif p.kind == "categorical":
                values[option] = trial.suggest_categorical(key, p.choices)
            elif p.per_expert:
                per = {e: self._suggest(trial, f"{key}.{e}", p) for e in experts}
                if option == "preference":
                    total = sum(per.values())
                    per = {e: (v / total if total > 0 else 1.0 / len(per)) for e, v in per.items()}
                values[option] = per
            else:
                values[option] = self._suggest(trial, key, p)
        return method, values

    @staticmethod
    def _suggest(trial, key: str, p: Param):
        if p.kind == "int":
            return trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        return trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)

    def default_params(self, method: str, experts: Sequence[str]) -> Optional[Dict[str, Any]]:
        """Optuna params that reproduce `method` at its defaults, or None when a default lies
        outside the space."""
        names = list(self._space)
        prefix = f"{method}." if len(names) > 1 else ""
        params: Dict[str, Any] = {"method": method} if len(names) > 1 else {}
        for option, p in self._space[method].items():
            d = self._cfgs[method].get(option)
            if p.kind == "fixed":
                continue
            if p.per_expert:
                value = 1.0 if option == "weights" else (p.low + p.high) / 2
                if d is not None or not p.contains(value):
                    return None
                params.update({f"{prefix}{option}.{e}": value for e in experts})
            elif p.contains(d):
                params[prefix + option] = d
            else:
                return None
        return params

    # -- checks before any merge -------------------------------------------------------
    def check(self, modelpool) -> None:
        """Every value at the ends of every range (and every choice) is accepted by its
        method on this pool: bad ranges fail here, naming the option, before any merge."""
        from hydra.utils import instantiate

        for split in (self.split, self.test_split):  # the taskpool and its split, before any merge
            tp = instantiate(OmegaConf.create(self.taskpool_config(split)), _recursive_=False)
            if hasattr(tp, "build_benchmarks"):
                try:
                    tp.build_benchmarks()
                except Exception as exc:
                    raise ValueError(f"taskpool (split {split!r}): {exc}") from None
        experts = list(modelpool.model_names)
        for method, params in self._space.items():
            for option, p in params.items():
                for v in p.ends():
                    value = v
                    if p.per_expert:  # one expert at v, the others at the top of the range
                        value = {e: (v if i == 0 else p.high) for i, e in enumerate(experts)}
                        if option == "preference":
                            total = sum(value.values())
                            value = {e: x / total for e, x in value.items()}
                    cfg = self.member_config(method, {option: value}, None, None)
                    try:
                        m = build_method(cfg)
                        if hasattr(m, "prepare"):
                            m.prepare(modelpool)
                    except (ValueError, TypeError) as exc:
                        raise ValueError(f"methods.{method}.{option}: the value {v!r} of its range is refused by "
                                         f"{method}: {exc}") from None

    # -- the run -----------------------------------------------------------------------
    def _merge(self, method: str, values, modelpool, cache: Optional[str], out_dir: Optional[str]):
        """(model, svds): the merged model (loaded back from `out_dir` when streaming) and the
        SVDs this merge ran (None when the method does none)."""
        cfg = self.member_config(method, values, cache, out_dir)
        m = build_method(cfg)
        fabric = self._fabric_instance
        if fabric is not None and hasattr(m, "_fabric_instance"):
            m._fabric_instance = fabric
        model = m.run(modelpool)
        report = getattr(m, "last_report", None) or {}
        svds = None
        cache_rep = report.get("svd_cache") if isinstance(report, Mapping) else None
        if isinstance(cache_rep, Mapping) and "svds" in cache_rep:
            svds = int(cache_rep["svds"])
        elif self._uses_svd(method) or self._is_svd_method(method):
            info = getattr(model, "r3h_merge_info", None) or {}
            svds = (info.get("svd_cache") or {}).get("svds")
        if out_dir is not None and model is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(out_dir)
            model.r3h_tokenizer_dir = out_dir
        return model, svds

    def _is_svd_method(self, method: str) -> bool:
        return declares(self._classes[method], "uses_svd_cache")

    def run(self, modelpool):
        import optuna
        from optuna.trial import TrialState

        t0 = time.perf_counter()
        self.check(modelpool)
        experts = list(modelpool.model_names)
        out = self.resolve_output_dir()
        os.makedirs(out, exist_ok=True)
        cache = None
        if any(self._uses_svd(m) for m in self._space):
            cache = os.path.abspath(os.path.expanduser(str(self.svd_cache))) if self.svd_cache else \
                os.path.join(out, "svd_cache")
            os.makedirs(cache, exist_ok=True)
        stream = os.path.abspath(os.path.expanduser(str(self.out_dir))) if self.out_dir is not None else None
        directions = ["maximize"] * (3 if self.objective == "multi" else 1)
        sampler = optuna.samplers.TPESampler(seed=int(self.seed))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(storage=self.storage_url(out), study_name=str(self.study_name),
                                    directions=directions, sampler=sampler, load_if_exists=True)
        self._check_resumed(study, experts)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            if t.state == TrialState.RUNNING:  # interrupted: it never finished
                study.tell(t.number, state=TrialState.FAIL)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done == 0 and not study.get_trials(deepcopy=False) and self.include_defaults:
            for method in self._space:
                params = self.default_params(method, experts)
                if params is not None:
                    study.enqueue_trial(params, user_attrs={"defaults": True})
        study.set_user_attr("space", {m: {o: vars(p) for o, p in ps.items()} for m, ps in self._space.items()})
        study.set_user_attr("experts", experts)

        def objective(trial):
            method, values = self.propose(trial, experts)
            trial.set_user_attr("method", method)
            trial.set_user_attr("options", values)
            folder = os.path.join(stream, f"trial_{trial.number:04d}") if stream else None
            t_merge = time.perf_counter()
            model, svds = self._merge(method, values, modelpool, cache, folder)
            t_score = time.perf_counter()
            report = self._score(model, self.split, os.path.join(out, "trials", f"{trial.number:04d}"),
                                 f"trial_{trial.number:04d}")
            trial.set_user_attr("seconds", {"merge": round(t_score - t_merge, 3),
                                            "score": round(time.perf_counter() - t_score, 3)})
            del model
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            avgs = {d: float(report["averages"][d]) for d in DIMENSIONS}
            trial.set_user_attr("averages", avgs)
            trial.set_user_attr("AVG", float(report["averages"].get("AVG") or sum(avgs.values()) / 3))
            se, unknown = self.score_stderr(report)
            trial.set_user_attr("stderr", se)
            if unknown:
                trial.set_user_attr("stderr_unknown", list(unknown))
            trial.set_user_attr("svds", svds)
            log.info("search trial %d: %s %s -> %s", trial.number, method, values, avgs)
            if self.objective == "multi":
                return tuple(avgs[d] for d in DIMENSIONS)
            return weighted_score(avgs, self._weights)

        remaining = None if self.n_trials is None else max(0, int(self.n_trials) - done)
        if len(self._space) == 1 and not any(p.kind != "fixed" for p in next(iter(self._space.values())).values()):
            remaining = max(0, 1 - done)  # nothing to search (e.g. Model Stock): one trial, at the defaults
        if remaining is None or remaining > 0:
            study.optimize(objective, n_trials=remaining, timeout=self.timeout, catch=())
        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not trials:
            raise RuntimeError("search: no trial completed within the budget (raise n_trials or timeout)")
        rows = self._rows(trials)
        chosen, selection = self.select(rows)
        files = self._write_front(rows, out)

        result = None
        test = None
        final_dir = os.path.join(stream, "chosen") if stream else None
        model, _ = self._merge(chosen["method"], chosen["options"], modelpool, cache, final_dir)
        if self.test_split is not None:
            rep = self._score(model, self.test_split, os.path.join(out, "chosen", str(self.test_split)),
                              f"search:{chosen['method']}")
            test = {d: rep["averages"].get(d) for d in (*DIMENSIONS, "AVG")}
            test["score"] = weighted_score(test, self._weights)
        defaults = {}
        if self.compare_defaults and self.test_split is not None:
            for method in self._space:
                dm, _ = self._merge(method, {}, modelpool, cache, None)
                rep = self._score(dm, self.test_split, os.path.join(out, "defaults", method, str(self.test_split)),
                                  f"{method} (defaults)")
                avgs = {d: rep["averages"].get(d) for d in (*DIMENSIONS, "AVG")}
                avgs["score"] = weighted_score(avgs, self._weights)
                defaults[method] = avgs
                del dm
        report = {
            "methods": list(self._space), "objective": self.objective, "weights": self._weights,
            "split": self.split, "test_split": self.test_split, "n_trials": len(trials),
            "storage": self.storage_url(out), "study_name": self.study_name, "output_dir": out,
            "chosen": {**chosen, "test": test}, "selection": selection, "defaults": defaults,
            "svds_per_trial": {r["trial"]: r["svds"] for r in rows if r["svds"] is not None},
            "files": files, "seconds": round(time.perf_counter() - t0, 3),
        }
        self.last_report = report
        write_json_atomic(os.path.join(out, "search_report.json"), report)
        log.info("search: chosen trial %d (%s %s): validation %s, %s %s", chosen["trial"], chosen["method"],
                 chosen["options"], {d: round(chosen[d], 2) for d in DIMENSIONS}, self.test_split, test)
        if stream is not None:
            log.info("search: the chosen merge is in %s", final_dir)
            return None
        info = dict(getattr(model, "r3h_merge_info", None) or {})
        info["search"] = {k: report[k] for k in ("methods", "objective", "weights", "chosen", "selection", "n_trials")}
        model.r3h_merge_info = info
        model.r3h_search_info = report
        result = model
        return result

    def score_stderr(self, report: Mapping[str, Any]) -> Tuple[float, Tuple[str, ...]]:
        """(SE of the weighted score S of a taskpool report, columns of unknown SE)."""
        stderrs, dims = report.get("stderr"), report.get("dimensions")
        if not isinstance(stderrs, Mapping) or not isinstance(dims, Mapping):
            return 0.0, tuple(report.get("scores", {}) or ())
        return weighted_stderr(stderrs, dims, self._weights)

    def select(self, rows: Sequence[Mapping[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """(chosen row, how it was chosen): the Pareto member of highest S, unless its gain
        over the best trial at the defaults is within `min_gain_se` standard errors of the
        difference; then that defaults trial."""
        best = max((r for r in rows if r["pareto"]), key=lambda r: (r["score"], -r["trial"]))
        selection: Dict[str, Any] = {"rule": "best", "min_gain_se": float(self.min_gain_se),
                                     "best_trial": best["trial"], "defaults_trial": None}
        refs = [r for r in rows if r["defaults"]]
        if not refs:
            return dict(best), selection
        ref = max(refs, key=lambda r: (r["score"], -r["trial"]))
        gain = best["score"] - ref["score"]
        se = math.sqrt(float(best.get("stderr") or 0.0) ** 2 + float(ref.get("stderr") or 0.0) ** 2)
        selection.update(defaults_trial=ref["trial"], gain=gain, stderr=se,
                         threshold=float(self.min_gain_se) * se)
        if best["trial"] != ref["trial"] and self.min_gain_se > 0 and gain <= float(self.min_gain_se) * se:
            selection["rule"] = "defaults kept: gain within noise"
            log.info("search: trial %d beats the defaults (trial %d) by %.2f on %s, within %.1f SE (%.2f): "
                     "the defaults are kept", best["trial"], ref["trial"], gain, self.split, self.min_gain_se, se)
            return dict(ref), selection
        selection["rule"] = "best" if best["trial"] != ref["trial"] else "best (the defaults)"
        return dict(best), selection

    def _check_resumed(self, study, experts) -> None:
        prev = study.user_attrs.get("experts")
        if prev is not None and list(prev) != list(experts):
            raise ValueError(f"storage: study {self.study_name!r} was run on experts {prev}, this pool has "
                             f"{experts}; use another output_dir or study_name")

    def _rows(self, trials) -> List[Dict[str, Any]]:
        import numpy as np

        from r3h.plots import pareto_mask

        rows = []
        for t in trials:
            avgs = t.user_attrs["averages"]
            rows.append({"trial": t.number, "name": f"trial_{t.number:04d}", "method": t.user_attrs["method"],
                         "options": t.user_attrs["options"], **{d: float(avgs[d]) for d in DIMENSIONS},
                         "AVG": float(t.user_attrs.get("AVG", sum(avgs.values()) / 3)),
                         "score": weighted_score(avgs, self._weights), "svds": t.user_attrs.get("svds"),
                         "stderr": t.user_attrs.get("stderr"),
                         "seconds": t.user_attrs.get("seconds"),
                         "defaults": bool(t.user_attrs.get("defaults", False))})
        mask = pareto_mask(np.array([[r[d] for d in DIMENSIONS] for r in rows]), True)
        for r, m in zip(rows, mask):
            r["pareto"] = bool(m)
        return rows

    def _write_front(self, rows, out: str) -> Dict[str, Any]:
        """`trials.{json,md}` (every trial, Pareto-marked) and the pairwise fronts
        (`pareto_<x>_<y>.{md,png,pdf}`, `r3h.evaluation.figures.write_pareto_plots`)."""
        from r3h.evaluation.figures import write_pareto_plots

        write_json_atomic(os.path.join(out, "trials.json"), rows)
        lines = ["| trial | method | options | " + " | ".join(DIMENSIONS) + " | AVG | score | Pareto |",
                 "|---:|---|---|" + "---:|" * (len(DIMENSIONS) + 2) + ":---:|"]
        for r in sorted(rows, key=lambda r: -r["score"]):
            opts = ", ".join(f"{k}={_fmt(v)}" for k, v in r["options"].items())
            lines.append(f"| {r['trial']} | {r['method']} | {opts} | " + " | ".join(f"{r[d]:.1f}" for d in DIMENSIONS)
                         + f" | {r['AVG']:.1f} | {r['score']:.2f} | {'yes' if r['pareto'] else ''} |")
        with open(os.path.join(out, "trials.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        files: Dict[str, Any] = {"trials": os.path.join(out, "trials.md")}
        if len(rows) > 1:
            report = {"members": [r["name"] for r in rows],
                      "averages": {r["name"]: {d: r[d] for d in DIMENSIONS} for r in rows},
                      "sweep": {r["name"]: {"method": r["method"], **r["options"]} for r in rows}}
            try:
                files["pareto"] = write_pareto_plots(report, out)
            except Exception as e:  # the plots are a convenience; trials.md is the result
                log.warning("search: Pareto plots not written: %s", e)
        return files


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)
