"""Merge search: tune merging methods' options on a 3H taskpool's validation split (Optuna).

`MergeSearch` (config `method=search`, presets `method=search/<method>` and
`method=search/all`) is a fusion_bench algorithm. Each trial picks a method (when several
are searched) and values for the options the user named (`r3h.tuning.space`), merges the
pool (`r3h.tuning.members.MemberRunner` builds the method exactly as `method=<name>` would)
and scores the merge with a 3H taskpool on its `validation` split. The objective is the
user's 3H preference S or the three averages (`r3h.tuning.objective`). At the end the search
writes every trial and the Pareto front of the three averages (`r3h.tuning.report`), picks
the front's member with the highest S unless its gain over the defaults is within noise (the
one-standard-error rule, `r3h.tuning.selection`), scores it on the `test` split and returns
it, so `merged_model_save_path=` saves it.

- **Budget.** `n_trials` completed trials of the study (all its workers together) and/or
  `timeout` seconds.
- **Workers and resume.** Trials live in an Optuna RDB study (`storage`, any SQLAlchemy URL;
  default `sqlite:///<output_dir>/study.sqlite`). Rerunning with the same `output_dir` (or
  `storage`) continues the study up to `n_trials`; several processes started on one storage
  share the budget, and a killed worker's trial is retried (`r3h.tuning.workers`).
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

import contextlib
import logging
import os
import shutil
import socket
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from fusion_bench.method.base_algorithm import BaseAlgorithm
from fusion_bench.mixins.lightning_fabric import LightningFabricMixin
from fusion_bench.mixins.serialization import auto_register_config
from r3h.core.dimensions import AVERAGES
from r3h.io.plain import to_container
from r3h.methods.configs import load_config
from r3h.tuning import selection as _selection
from r3h.tuning.members import MemberRunner
from r3h.tuning.objective import OBJECTIVES, parse_weights, score_stderr, weighted_score
from r3h.tuning.report import write_report, write_trials
from r3h.tuning.space import PER_EXPERT, default_params, number, parse_space, propose
from r3h.tuning.workers import open_storage, run_trials

log = logging.getLogger(__name__)

__all__ = ["MergeSearch", "SEARCH_OWNED"]

#: options the search decides itself
SEARCH_OWNED = ("out_dir", "svd_cache", "progress")


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on `path` (POSIX `flock`): the workers of one output folder score and
    report the chosen member one after the other."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one worker per output folder
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
        n_trials: completed trials of the study to reach, all its workers together (a resumed
            study counts its earlier ones).
        timeout: stop starting trials after this many seconds (null: no limit).
        taskpool: the taskpool that scores trials: a config name under `config/taskpool`
            (e.g. `3h_tiny`) or a config; default: the program's `taskpool=`, else `3h_tiny`.
        split: the split trials are scored on (default `validation`).
        test_split: the split the chosen member is scored on (default `test`; null: none).
        compare_defaults: also score every searched method at its defaults on `test_split`
            (the report's `defaults`).
        output_dir: trials, study, tables and plots; default `<log_dir>/search` of the
            program, else `outputs/search`. Rerun with the same folder to resume.
        storage: the study's Optuna RDB storage, a SQLAlchemy URL (`sqlite:///...`,
            `postgresql://...`); default `sqlite:///<output_dir>/study.sqlite`. Workers started
            on one storage share the study.
        study_name: the study's name in the storage.
        seed: the sampler's seed.
        include_defaults: the first trial of a new study is each method at its defaults
            (where they lie in the space), so the search starts from them.
        svd_cache: tsvm / r_tsvm: the SVD cache folder; default `<output_dir>/svd_cache`;
            false: none (every trial runs its SVDs).
        min_gain_se: the best member replaces the best trial at the defaults only when its
            validation gain in S exceeds this many standard errors of the difference
            (default 1.0; 0: always the best member). See `r3h.tuning.selection`.
        out_dir: stream: write each trial's merge there (one at a time, removed once scored)
            and the chosen one to `<out_dir>/chosen`; return None.
        heartbeat: seconds between a running trial's heartbeats; a trial silent for twice
            this (its worker killed) is marked failed and retried. null: no heartbeat (a
            dead worker's trial stays running).
    """

    def __init__(self, methods=None, objective: str = "weighted", weights=None, n_trials: Optional[int] = 30,
                 timeout: Optional[float] = None, taskpool=None, split: Optional[str] = "validation",
                 test_split: Optional[str] = "test", compare_defaults: bool = True, output_dir: Optional[str] = None,
                 storage: Optional[str] = None, study_name: str = "r3h_search", seed: int = 0,
                 include_defaults: bool = True, svd_cache=None, out_dir: Optional[str] = None,
                 min_gain_se: float = 1.0, heartbeat: Optional[int] = 30, **kwargs):
        super().__init__(**kwargs)
        if not (number("min_gain_se", min_gain_se) >= 0):
            raise ValueError(f"min_gain_se: expected a number of standard errors >= 0, got {min_gain_se!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
        if n_trials is None and timeout is None:
            raise ValueError("n_trials, timeout: give a budget (a number of trials and/or seconds)")
        if n_trials is not None and (isinstance(n_trials, bool) or int(n_trials) != n_trials or n_trials < 1):
            raise ValueError(f"n_trials: expected an integer >= 1, got {n_trials!r}")
        if timeout is not None and not (number("timeout", timeout) > 0):
            raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")
        if heartbeat is not None and (isinstance(heartbeat, bool) or int(heartbeat) != heartbeat or heartbeat < 1):
            raise ValueError(f"heartbeat: expected whole seconds >= 1 or null, got {heartbeat!r}")
        if svd_cache is not None and svd_cache is not False and not isinstance(svd_cache, (str, os.PathLike)):
            raise ValueError(f"svd_cache: a folder, null (<output_dir>/svd_cache) or false; got {svd_cache!r}")
        self._weights = parse_weights(weights)
        self._space = parse_space(methods, owned=SEARCH_OWNED)
        self._runners: Dict[str, MemberRunner] = {}
        for name, params in self._space.items():
            try:
                runner = MemberRunner(name, caller="search")
            except ValueError as exc:
                raise ValueError(f"methods.{name}: {exc}") from None
            runner.check_options([(f"methods.{name}.{option}", [option]) for option in params])
            for option, p in params.items():
                if option in PER_EXPERT and p.kind == "categorical":
                    raise ValueError(f"methods.{name}.{option}: a per-expert option takes a {{low, high}} range "
                                     "(one value per expert) or a fixed value")
            self._runners[name] = runner
        self.last_report: Dict[str, Any] = {}

    @property
    def _cfgs(self) -> Dict[str, Dict[str, Any]]:
        return {name: r.config for name, r in self._runners.items()}

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
        missing = [d for d in AVERAGES if report.get("averages", {}).get(d) is None]
        if missing:
            raise ValueError(f"taskpool: its report has no {missing[0]} (the search needs the three 3H dimension "
                             "averages; select columns of every dimension)")
        return report

    def member_config(self, method: str, values: Mapping[str, Any], cache: Optional[str],
                      out_dir: Optional[str]) -> Dict[str, Any]:
        return self._runners[method].member_config(values, cache, out_dir, quiet=True)

    def _uses_svd(self, method: str) -> bool:
        return self._runners[method].uses_svd_cache and self.svd_cache is not False

    def defaults_of(self, method: str) -> Dict[str, Any]:
        """The method's default value of every searched option (its config's)."""
        return {o: self._runners[method].config.get(o) for o in self._space[method]}

    # -- proposals ---------------------------------------------------------------------
    def propose(self, trial, experts: Sequence[str]) -> Tuple[str, Dict[str, Any]]:
        """(method, option values) for an Optuna trial (`r3h.tuning.space.propose`)."""
        return propose(self._space, trial, experts)

    def default_params(self, method: str, experts: Sequence[str]) -> Optional[Dict[str, Any]]:
        """Optuna params that reproduce `method` at its defaults, or None when a default lies
        outside the space."""
        return default_params(self._space, method, self._runners[method].config, experts)

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
                        MemberRunner.build(cfg, modelpool=modelpool)
                    except (ValueError, TypeError) as exc:
                        raise ValueError(f"methods.{method}.{option}: the value {v!r} of its range is refused by "
                                         f"{method}: {exc}") from None

    # -- the run -----------------------------------------------------------------------
    def _merge(self, method: str, values, modelpool, cache: Optional[str], out_dir: Optional[str]):
        """(model, svds): the merged model (loaded back from `out_dir` when streaming) and the
        SVDs this merge ran (None when the method does none)."""
        runner = self._runners[method]
        m = runner.build(self.member_config(method, values, cache, out_dir), self._fabric_instance)
        model = m.run(modelpool)
        svds = MemberRunner.svds(m, model) if runner.uses_svd_cache else None
        if out_dir is not None and model is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(out_dir)
            model.r3h_tokenizer_dir = out_dir
        return model, svds

    def _open_study(self, out: str):
        import optuna

        directions = ["maximize"] * (3 if self.objective == "multi" else 1)
        sampler = optuna.samplers.TPESampler(seed=int(self.seed))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(self.storage_url(out), self.heartbeat)
        return optuna.create_study(storage=storage, study_name=str(self.study_name), directions=directions,
                                   sampler=sampler, load_if_exists=True)

    def run(self, modelpool):
        from optuna.trial import TrialState

        t0 = time.perf_counter()
        self.check(modelpool)
        experts = list(modelpool.model_names)
        out = self.resolve_output_dir()
        os.makedirs(out, exist_ok=True)
        cache = None
        svd_runners = [r for m, r in self._runners.items() if self._uses_svd(m)]
        if svd_runners:
            cache, _ = svd_runners[0].cache_folder(self.svd_cache or None, default=os.path.join(out, "svd_cache"))
            os.makedirs(cache, exist_ok=True)
        stream = os.path.abspath(os.path.expanduser(str(self.out_dir))) if self.out_dir is not None else None
        study = self._open_study(out)
        self._check_resumed(study, experts)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done == 0 and not study.get_trials(deepcopy=False) and self.include_defaults:
            for method in self._space:
                params = self.default_params(method, experts)
                if params is not None:  # skip_if_exists: another worker may have just enqueued it
                    study.enqueue_trial(params, user_attrs={"defaults": True}, skip_if_exists=True)
        study.set_user_attr("space", {m: {o: vars(p) for o, p in ps.items()} for m, ps in self._space.items()})
        study.set_user_attr("experts", experts)

        worker = f"{socket.gethostname()}:{os.getpid()}"

        def objective(trial):
            method, values = self.propose(trial, experts)
            trial.set_user_attr("method", method)
            trial.set_user_attr("options", values)
            trial.set_user_attr("worker", worker)
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
            avgs = {d: float(report["averages"][d]) for d in AVERAGES}
            trial.set_user_attr("averages", avgs)
            trial.set_user_attr("AVG", float(report["averages"].get("AVG") or sum(avgs.values()) / 3))
            se, unknown = score_stderr(report, self._weights)
            trial.set_user_attr("stderr", se)
            if unknown:
                trial.set_user_attr("stderr_unknown", list(unknown))
            trial.set_user_attr("svds", svds)
            log.info("search trial %d: %s %s -> %s", trial.number, method, values, avgs)
            if self.objective == "multi":
                return tuple(avgs[d] for d in AVERAGES)
            return weighted_score(avgs, self._weights)

        budget = None if self.n_trials is None else int(self.n_trials)
        if len(self._space) == 1 and not any(p.kind != "fixed" for p in next(iter(self._space.values())).values()):
            budget = 1  # nothing to search (e.g. Model Stock): one trial, at the defaults
        run_trials(study, objective, budget, self.timeout)
        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not trials:
            raise RuntimeError("search: no trial completed within the budget (raise n_trials or timeout)")
        with _locked(os.path.join(out, ".report.lock")):
            return self._finish(trials, modelpool, out, cache, stream, t0)

    def _finish(self, trials, modelpool, out: str, cache: Optional[str], stream: Optional[str], t0: float):
        """Select among `trials`, write the trials and the front, score the chosen member on
        `test_split` (and each method at its defaults), write the report; the chosen model."""
        rows = _selection.trial_rows(trials, self._weights)
        chosen, selection = self.select(rows)
        files = write_trials(rows, out)
        test = None
        final_dir = os.path.join(stream, "chosen") if stream else None
        model, _ = self._merge(chosen["method"], chosen["options"], modelpool, cache, final_dir)
        if self.test_split is not None:
            rep = self._score(model, self.test_split, os.path.join(out, "chosen", str(self.test_split)),
                              f"search:{chosen['method']}")
            test = {d: rep["averages"].get(d) for d in (*AVERAGES, "AVG")}
            test["score"] = weighted_score(test, self._weights)
        defaults = {}
        if self.compare_defaults and self.test_split is not None:
            for method in self._space:
                dm, _ = self._merge(method, {}, modelpool, cache, None)
                rep = self._score(dm, self.test_split, os.path.join(out, "defaults", method, str(self.test_split)),
                                  f"{method} (defaults)")
                avgs = {d: rep["averages"].get(d) for d in (*AVERAGES, "AVG")}
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
        write_report(report, os.path.join(out, "search_report.json"))
        log.info("search: chosen trial %d (%s %s): validation %s, %s %s", chosen["trial"], chosen["method"],
                 chosen["options"], {d: round(chosen[d], 2) for d in AVERAGES}, self.test_split, test)
        if stream is not None:
            log.info("search: the chosen merge is in %s", final_dir)
            return None
        info = dict(getattr(model, "r3h_merge_info", None) or {})
        info["search"] = {k: report[k] for k in ("methods", "objective", "weights", "chosen", "selection", "n_trials")}
        model.r3h_merge_info = info
        model.r3h_search_info = report
        return model

    def score_stderr(self, report: Mapping[str, Any]) -> Tuple[float, Tuple[str, ...]]:
        """(SE of the weighted score S of a taskpool report, columns of unknown SE)."""
        return score_stderr(report, self._weights)

    def select(self, rows) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """(chosen row, how it was chosen): `r3h.tuning.selection.select` with `min_gain_se`."""
        return _selection.select(rows, float(self.min_gain_se), str(self.split))

    def _check_resumed(self, study, experts) -> None:
        prev = study.user_attrs.get("experts")
        if prev is not None and list(prev) != list(experts):
            raise ValueError(f"storage: study {self.study_name!r} was run on experts {prev}, this pool has "
                             f"{experts}; use another output_dir or study_name")
