"""The paper's lm-eval-harness columns (Math, GSM8K, ARC-E, ARC-C, MMLU, MBPP_Plus,
HumanEval_Plus), scored on the in-memory merged model.

`LMEvalBenchmark` wraps the model and tokenizer of an `EvalContext` in lm-eval's
``HFLM(pretrained=model, tokenizer=tokenizer)`` (nothing is saved or reloaded) and runs
``lm_eval.simple_evaluate`` on one lm-eval task or group. The chosen metric, times 100,
becomes the column's score. lm-eval's per-sample records (``log_samples``) are written to
``ctx.output_dir/<column>/samples_<task>.jsonl`` (one file per leaf task). Each line holds
the prompt (``arguments``), the raw and filtered responses, the target and the per-sample
metric values, and carries a ``filter`` field, so the score can be recomputed from the
lines of the metric's filter. The lm-eval summary (metrics, versions, n-shot, sample counts)
goes to ``results.json`` next to them.

lm-eval is an optional dependency: 0.4.12 or newer (tested with 0.4.13)::

    pip install "lm-eval>=0.4.12"        # or: pip install -e ".[lm_eval]"

The adapter reads lm-eval's task index (``lm_eval.tasks._index``, ``lm_eval.tasks._yaml_loader``),
which first ships in 0.4.12 (0.4.9 and 0.4.11 have neither module); an older lm-eval is refused
with the install command. The per-task configs lm-eval used are taken from the ``configs`` key of
its results (``EvalResults`` in ``lm_eval/evaluator_utils.py``; ``config`` is the run's own
settings: model, batch size, seeds) and saved in ``results.json``.

lm-eval 0.4.13 does not itself require torch (torch, transformers and accelerate are its
``hf`` extra, which r3h requires anyway), so it installs without changing torch; to be sure,
install it with the torch in use pinned (``pip install "lm-eval>=0.4.12" torch==2.13.0``).

Paper column -> lm-eval 0.4.13 task and metric (``PAPER_TASKS``; all names checked
against the installed task registry by ``tests/test_lm_eval.py``):

==============  ==================  ============================  ===============================
column          task                metric (``metric,filter``)    notes
==============  ==================  ============================  ===============================
Math            ``hendrycks_math``  ``exact_match,none``          group of the 7 MATH subjects,
                                                                  0-shot (see below)
GSM8K           ``gsm8k``           ``exact_match,strict-match``  5-shot; the other filter is
                                                                  ``flexible-extract``
ARC-E           ``arc_easy``        ``acc_norm,none``             0-shot; ``acc,none`` also there
ARC-C           ``arc_challenge``   ``acc_norm,none``             0-shot; ``acc,none`` also there
MMLU            ``mmlu``            ``acc,none``                  group of the 57 subjects,
                                                                  weighted by size, 0-shot
MBPP_Plus       ``mbpp_plus``       ``pass_at_1,none``            3-shot; executes model code
HumanEval_Plus  ``humaneval_plus``  ``pass@1,create_test``        0-shot; executes model code
==============  ==================  ============================  ===============================

For Math, lm-eval's ``minerva_math`` (4-shot, ``exact_match`` / ``math_verify``) is the
other choice. It needs ``lm-eval[math]``, whose ``antlr4-python3-runtime==4.11`` conflicts
with the antlr4 4.9 that hydra-core/omegaconf (and so fusion_bench) pin; ``check`` says so.

The paper (Yang et al., arXiv 2502.06876) does not say which lm-eval variant, shot count
or metric it used. These are lm-eval's own defaults for each dataset, and every one can be
changed (``task``, ``num_fewshot``, ``metric``, ``apply_chat_template``). Scores taken with
other settings are not comparable with the paper's numbers.

Code execution. MBPP_Plus and HumanEval_Plus, and every task lm-eval marks
``unsafe_code``, run the code the model writes on this machine. They only run with
``allow_code_execution: true``, which sets ``HF_ALLOW_CODE_EVAL=1`` for that run only
(restored afterwards) and passes ``confirm_run_unsafe_code`` to lm-eval. Run them in a
sandbox. lm-eval's code tasks also load the ``code_eval`` metric from the Hugging Face hub
through ``evaluate`` when they are built, so they need the hub (or its cache).

Offline data. lm-eval reads each task's data with ``datasets.load_dataset``. ``dataset_path``,
``dataset_name``, ``data_files`` and ``dataset_kwargs`` override it for a single task (for example
``dataset_path: json`` with ``data_files: {train: /data/gsm8k_train.jsonl, test:
/data/gsm8k_test.jsonl}``; without a training split lm-eval takes few-shot examples from the
test split, with a warning). ``task_dir``
adds a folder of your own task YAMLs, searched together with lm-eval's built-in tasks
(``include_default_tasks: false`` searches only the folder). A task can also be given as
the path of a YAML file.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from r3h.core.paths import slug
from r3h.io.plain import to_container
from r3h.io.records import write_records

from r3h.evaluation.benchmarks.base import Benchmark, BenchmarkResult, EvalContext

__all__ = [
    "LMEvalBenchmark",
    "LMEvalNotInstalledError",
    "PaperTask",
    "PAPER_TASKS",
    "PAPER_PROTOCOL",
    "PROTOCOLS",
    "CODE_COLUMNS",
    "LM_EVAL_VERSION",
    "MIN_LM_EVAL_VERSION",
    "INSTALL_COMMAND",
    "lm_eval_version",
    "task_manager",
]

#: The lm-eval release this adapter is written and tested against.
LM_EVAL_VERSION = "0.4.13"
#: The oldest lm-eval with the task index the adapter reads (lm_eval.tasks._index, new in 0.4.12).
MIN_LM_EVAL_VERSION = "0.4.12"
INSTALL_COMMAND = f'pip install "lm-eval>={MIN_LM_EVAL_VERSION}"  (or: pip install -e ".[lm_eval]")'


@dataclass(frozen=True)
class PaperTask:
    """One column's lm-eval settings: task, result key, shots (None: the task's), chat template,
    few-shot examples as chat turns, a folder of r3h's own task YAMLs (``task_dir``, relative to
    ``r3h/evaluation/data``), and the evidence for them (``source``, ``confirmed``)."""

    task: str  # lm-eval task or group name
    metric: str  # "metric,filter" key of lm-eval's results
    note: str = ""
    num_fewshot: Optional[int] = None
    apply_chat_template: bool = False
    fewshot_as_multiturn: Optional[bool] = None
    task_dir: Optional[str] = None
    source: str = ""
    confirmed: str = ""


_LLAMA3_CARD = "Meta's Llama 3 model card (github.com/meta-llama/llama3 MODEL_CARD.md, instruction-tuned table)"
_LLAMA31_CARD = ("Meta's Llama 3.1 model card, instruction-tuned table, quoted in huggingface.co/meta-llama/"
                 "Llama-3.1-405B/discussions/11")
_LM_EVAL_LLAMA = "lm-eval 0.4.13 lm_eval/tasks/llama3/README.md (\"Evals reproducing those provided by the LLAMA team\")"

#: The ``harness`` protocol: lm-eval's own default per dataset (log-likelihood multiple choice, no
#: chat template), r3h's settings before issue 18. Also the defaults without a protocol.
PAPER_TASKS: Dict[str, PaperTask] = {
    "Math": PaperTask("hendrycks_math", "exact_match,none", "MATH, 7 subjects, 0-shot", num_fewshot=0),
    "GSM8K": PaperTask("gsm8k", "exact_match,strict-match", "5-shot, '#### <answer>' extraction", num_fewshot=5),
    "ARC-E": PaperTask("arc_easy", "acc_norm,none", "0-shot", num_fewshot=0),
    "ARC-C": PaperTask("arc_challenge", "acc_norm,none", "0-shot", num_fewshot=0),
    "MMLU": PaperTask("mmlu", "acc,none", "57 subjects weighted by size, 0-shot", num_fewshot=0),
    "MBPP_Plus": PaperTask("mbpp_plus", "pass_at_1,none", "3-shot, executes code", num_fewshot=3),
    "HumanEval_Plus": PaperTask("humaneval_plus", "pass@1,create_test", "0-shot, executes code", num_fewshot=0),
}

#: The ``paper`` protocol: the settings that give the magnitudes of the paper's base rows
#: (Llama-3-8B-Instruct: Math 28.08, GSM8K 78.09, ARC-E 93.65, ARC-C 82.03, MMLU 68.2), i.e. the
#: instruction-tuned evaluations Meta reports, run through lm-eval's variants of them with the chat
#: template. The paper does not state its settings: ``confirmed`` says what the evidence reaches.
PAPER_PROTOCOL: Dict[str, PaperTask] = {
    "Math": PaperTask(
        "minerva_math", "exact_match,none", "MATH, 7 subjects, 4-shot chain of thought", num_fewshot=4,
        apply_chat_template=True, fewshot_as_multiturn=True,
        source=f"{_LLAMA3_CARD}: MATH (4-shot, CoT) 30.0 for Llama 3 8B Instruct",
        confirmed="magnitude only (paper 28.08 vs 30.0); needs lm-eval[math] (antlr4 4.11), which clashes with "
                  "omegaconf's antlr4 4.9: run this column in an environment of its own"),
    "GSM8K": PaperTask(
        "gsm8k_cot_llama", "exact_match,strict-match", "8-shot chain of thought, Meta's prompt", num_fewshot=8,
        apply_chat_template=True, fewshot_as_multiturn=True,
        source=f"{_LLAMA3_CARD}: GSM-8K (8-shot, CoT) 79.6; {_LM_EVAL_LLAMA}",
        confirmed="magnitude only (paper 78.09 vs 79.6)"),
    "ARC-E": PaperTask(
        "arc_easy_chat", "exact_match,remove_whitespace", "0-shot, generative letter answer, Meta's ARC prompt",
        num_fewshot=0, apply_chat_template=True, task_dir="lm_eval_tasks",
        source="lm-eval's arc_challenge_chat format on ARC-Easy (r3h/evaluation/data/lm_eval_tasks/arc_easy_chat.yaml)",
        confirmed="no: no public ARC-Easy figure in this format was found; chosen to match ARC-C"),
    "ARC-C": PaperTask(
        "arc_challenge_chat", "exact_match,remove_whitespace", "0-shot, generative letter answer, Meta's ARC prompt",
        num_fewshot=0, apply_chat_template=True,
        source=f"{_LLAMA31_CARD}: ARC-C (0-shot, acc) 82.4 for Llama 3 8B Instruct; {_LM_EVAL_LLAMA}",
        confirmed="magnitude only (paper 82.03 vs 82.4; log-likelihood acc_norm gives about 57)"),
    "MMLU": PaperTask(
        "mmlu_llama", "exact_match,strict_match", "57 subjects, 5-shot, generative letter answer", num_fewshot=5,
        apply_chat_template=True, fewshot_as_multiturn=True,
        source=f"{_LLAMA3_CARD}: MMLU (5-shot) 68.4; {_LM_EVAL_LLAMA}",
        confirmed="magnitude only (paper 68.2 vs 68.4)"),
    "MBPP_Plus": PaperTask(
        "mbpp_plus_instruct", "pass_at_1,extract_code", "0-shot instruction prompt, executes code", num_fewshot=0,
        apply_chat_template=True, source="lm-eval 0.4.13 mbpp_plus_instruct (EvalPlus' MBPP+ data)",
        confirmed="no: no public MBPP+ figure for these models with these settings was found"),
    "HumanEval_Plus": PaperTask(
        "humaneval_plus", "pass@1,create_test", "0-shot completion, executes code", num_fewshot=0,
        source="lm-eval 0.4.13 humaneval_plus (lm-eval has no instruction variant of HumanEval+)",
        confirmed="no: the harness setting, kept (no public HumanEval+ figure with stated settings was found)"),
}

#: Harness protocols, for ``LMEvalBenchmark(protocol=...)`` / ``taskpool.protocol``: column -> settings.
PROTOCOLS: Dict[str, Dict[str, PaperTask]] = {"paper": PAPER_PROTOCOL, "harness": PAPER_TASKS}
#: Columns whose benchmark executes model-written code, whatever task they are given.
CODE_COLUMNS: Tuple[str, ...] = ("MBPP_Plus", "HumanEval_Plus")
#: Default metric of other known tasks, where lm-eval reports several.
_TASK_METRICS: Dict[str, str] = {
    **{p.task: p.metric for protocol in PROTOCOLS.values() for p in protocol.values()},
    "minerva_math": "exact_match,none",
    "mbpp": "pass_at_1,none",
    "humaneval": "pass@1,create_test",
}


class LMEvalNotInstalledError(ImportError):
    """lm-eval (the `lm_eval` package) is not installed."""


def lm_eval_version() -> Optional[str]:
    """The installed lm-eval version, or None when it is not installed."""
    try:
        import importlib.metadata as md

        return md.version("lm_eval")
    except Exception:
        return None


def _version_tuple(version: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as e:
        raise LMEvalNotInstalledError(
            f"the lm-eval columns need lm-eval-harness, which is not installed ({e}); install it with: "
            f"{INSTALL_COMMAND}"
        ) from e
    version = lm_eval_version()
    if version is not None and _version_tuple(version) < _version_tuple(MIN_LM_EVAL_VERSION):
        raise LMEvalNotInstalledError(
            f"the lm-eval columns need lm-eval>={MIN_LM_EVAL_VERSION} (its task index, lm_eval.tasks._index); "
            f"lm-eval {version} is installed. Upgrade it with: {INSTALL_COMMAND}"
        )
    return lm_eval


# --------------------------------------------------------------------------------------
# Task registry

_TM_CACHE: Dict[tuple, Any] = {}


def _yaml_signature(folder: Optional[str]) -> tuple:
    if folder is None:
        return ()
    root = Path(folder)
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in root.glob("**/*.yaml")))


def task_manager(task_dir: Optional[str] = None, include_defaults: bool = True):
    """An lm-eval `TaskManager` over the built-in tasks and/or `task_dir`, cached per process.

    Indexing lm-eval's built-in tasks takes seconds, so managers are reused. The cache
    key includes the paths and modification times of the YAMLs in `task_dir`, so an
    edited folder is indexed again.
    """
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    folder = None if task_dir is None else str(Path(task_dir).expanduser().resolve())
    if folder is not None and not os.path.isdir(folder):
        raise FileNotFoundError(f"task_dir {task_dir!r} is not a folder")
    if folder is None and not include_defaults:
        raise ValueError("include_default_tasks: false needs a task_dir")
    key = (folder, bool(include_defaults), _yaml_signature(folder))
    if key not in _TM_CACHE:
        _TM_CACHE[key] = TaskManager(include_path=folder, include_defaults=include_defaults)
    return _TM_CACHE[key]


def _is_yaml_path(task: str) -> bool:
    return task.endswith((".yaml", ".yml"))


@contextlib.contextmanager
def _code_eval_env(enabled: bool) -> Iterator[None]:
    """HF_ALLOW_CODE_EVAL=1 inside the block when `enabled`, its old value after."""
    if not enabled:
        yield
        return
    old = os.environ.get("HF_ALLOW_CODE_EVAL")
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_ALLOW_CODE_EVAL", None)
        else:
            os.environ["HF_ALLOW_CODE_EVAL"] = old


# --------------------------------------------------------------------------------------


class LMEvalBenchmark(Benchmark):
    """One paper column scored by lm-eval-harness on the in-memory model of an `EvalContext`.

    Args:
        column: the paper's column name (``r3h.evaluation.aggregate.BENCHMARKS``), e.g. "GSM8K".
        task: lm-eval task or group name, or the path of a task YAML; default
            ``PAPER_TASKS[column].task``.
        num_fewshot: few-shot examples; None keeps the task's default (lm-eval never
            overrides a task whose YAML sets 0, such as humaneval).
        apply_chat_template: render prompts with the tokenizer's chat template.
        allow_code_execution: required for code tasks (MBPP_Plus, HumanEval_Plus, any task
            lm-eval marks ``unsafe_code``); sets HF_ALLOW_CODE_EVAL=1 for this run only.
        metric: lm-eval result key ``"metric,filter"`` (e.g. "exact_match,strict-match",
            "acc_norm,none", "pass@1,create_test") or a bare metric name when it has one
            filter (e.g. "acc_norm"); default: ``PAPER_TASKS``' metric for known tasks, else
            the task's only metric. The score is that value times 100.
        batch_size: HFLM batch size (an int, or "auto").
        limit: evaluate only the first `limit` documents of each task (a float < 1 is a
            fraction); combined with ``ctx.limit`` by the base's rule (the smaller wins; a
            set ``ctx.limit`` replaces a fraction).
        dataset_path, dataset_name, data_files: override where a single task reads its
            data (``datasets.load_dataset(dataset_path, dataset_name, data_files=...)``). A
            plain file or list in `data_files` is the task's evaluation split (test, else
            validation); as ``{split: file}`` it may also give the training split, which
            few-shot tasks draw their examples from; splits it lacks are unset.
        dataset_kwargs: merged into the task's ``dataset_kwargs`` (e.g. ``cache_dir``,
            ``revision``) for a single task.
        task_dir: folder of extra task YAMLs (lm-eval's ``--include_path``).
        include_default_tasks: also search lm-eval's built-in tasks (default true).
        gen_kwargs: generation settings merged into the task's ``generation_kwargs``.
        system_instruction, fewshot_as_multiturn: passed to ``lm_eval.simple_evaluate``.
        model_kwargs: extra ``HFLM`` arguments (e.g. ``max_length``, ``add_bos_token``).
        bootstrap_iters: lm-eval's bootstrap iterations for standard errors.
        dimension: the 3H dimension ("helpful" for every lm-eval column of the paper).
        protocol: ``paper`` (:data:`PAPER_PROTOCOL`: the settings that reach the paper's
            magnitudes, Meta's instruction-tuned evaluations with the chat template) or
            ``harness`` (:data:`PAPER_TASKS`: lm-eval's defaults); it fills the task, shots,
            chat template, few-shot turns, metric and task folder that are not given (for its
            own task only). None: lm-eval's defaults, as ``harness``.
    """

    uses_generator = False  # lm-eval renders and generates itself; ctx.generator is unused

    def __init__(
        self,
        column: str,
        task: Optional[str] = None,
        num_fewshot: Optional[int] = None,
        apply_chat_template: Optional[bool] = None,
        allow_code_execution: bool = False,
        metric: Optional[str] = None,
        batch_size: Union[int, str] = 8,
        limit: Optional[Union[int, float]] = None,
        dataset_path: Optional[str] = None,
        dataset_name: Optional[str] = None,
        data_files: Optional[Union[str, Sequence[str], Mapping[str, Any]]] = None,
        dataset_kwargs: Optional[Mapping[str, Any]] = None,
        task_dir: Optional[str] = None,
        include_default_tasks: bool = True,
        gen_kwargs: Optional[Mapping[str, Any]] = None,
        system_instruction: Optional[str] = None,
        fewshot_as_multiturn: Optional[bool] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        bootstrap_iters: int = 100000,
        dimension: str = "helpful",
        protocol: Optional[str] = None,
    ):
        if not column:
            raise ValueError("column must name the paper's column, e.g. 'GSM8K'")
        self.column = str(column)
        preset = None
        if protocol is not None:
            if protocol not in PROTOCOLS:
                raise ValueError(f"{self.column}: protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
            if self.column not in PROTOCOLS[protocol]:
                raise ValueError(f"{self.column}: protocol {protocol!r} has settings only for "
                                 f"{', '.join(PROTOCOLS[protocol])}; give `task` and no protocol")
            preset = PROTOCOLS[protocol][self.column]
        self.protocol = protocol
        if task is None:
            if self.column not in PAPER_TASKS:
                raise ValueError(
                    f"column {self.column!r} has no default lm-eval task; give `task` "
                    f"(default tasks exist for {', '.join(PAPER_TASKS)})"
                )
            task = (preset or PAPER_TASKS[self.column]).task
        if preset is not None and str(task) != preset.task:
            preset = None  # another task: the protocol's settings are for its own task only
        if preset is not None:  # the protocol fills what was not given
            num_fewshot = preset.num_fewshot if num_fewshot is None else num_fewshot
            apply_chat_template = preset.apply_chat_template if apply_chat_template is None else apply_chat_template
            fewshot_as_multiturn = (preset.fewshot_as_multiturn if fewshot_as_multiturn is None
                                    else fewshot_as_multiturn)
            metric = preset.metric if metric is None else metric
            if task_dir is None and preset.task_dir is not None:
                from importlib import resources

                task_dir = str(resources.files("r3h.evaluation").joinpath("data", preset.task_dir))
        self.task = str(task)
        self.num_fewshot = None if num_fewshot is None else int(num_fewshot)
        self.apply_chat_template = bool(apply_chat_template)
        self.allow_code_execution = bool(allow_code_execution)
        self.metric = metric
        self.batch_size = batch_size
        self.limit = limit
        self.dataset_path = dataset_path
        self.dataset_name = dataset_name
        self.data_files = to_container(data_files)
        self.dataset_kwargs = None if dataset_kwargs is None else dict(to_container(dataset_kwargs))
        self.task_dir = task_dir
        self.include_default_tasks = bool(include_default_tasks)
        self.gen_kwargs = None if gen_kwargs is None else dict(to_container(gen_kwargs))
        self.system_instruction = system_instruction
        self.fewshot_as_multiturn = fewshot_as_multiturn
        self.model_kwargs = dict(to_container(model_kwargs or {}))
        self.bootstrap_iters = int(bootstrap_iters)
        self.dimension = dimension

    # ---------------------------------------------------------------- checks

    def _overrides(self) -> Dict[str, Any]:
        out = {}
        for key in ("dataset_path", "dataset_name", "data_files", "dataset_kwargs"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def _manager(self):
        return task_manager(self.task_dir, self.include_default_tasks)

    def _entry(self, tm):
        """The index entry of `self.task`; ValueError naming close matches when there is none."""
        from lm_eval.tasks._index import TaskIndex

        if _is_yaml_path(self.task):
            path = Path(self.task).expanduser()
            if self.task_dir is not None and not path.is_absolute():
                path = Path(self.task_dir).expanduser() / path
            if not path.is_file():
                raise FileNotFoundError(f"task YAML {str(path)!r} (column {self.column}) does not exist")
            return TaskIndex.entry_from_path(path)
        entry = tm.task_index.get(self.task)
        if entry is None:
            where = [f"lm-eval {lm_eval_version()}'s task registry"] if self.include_default_tasks else []
            if self.task_dir is not None:
                where.append(f"the task YAMLs under {self.task_dir}")
            close = difflib.get_close_matches(self.task, tm.all_tasks, n=5, cutoff=0.6)
            raise ValueError(
                f"lm-eval task {self.task!r} (column {self.column}) not found in " + " or ".join(where)
                + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "")
                + " Give an lm-eval task or group name, a task YAML path, or a task_dir holding its YAML."
            )
        return entry

    def _needs_code_execution(self, tm, entry) -> bool:
        if self.column in CODE_COLUMNS:
            return True
        from lm_eval.tasks._index import Kind
        from lm_eval.tasks._yaml_loader import load_yaml

        seen = set()

        def unsafe(e) -> bool:
            if e is None or e.name in seen:
                return False
            seen.add(e.name)
            if e.kind == Kind.TAG:
                return any(unsafe(tm.task_index.get(t)) for t in e.tags)
            cfg = e.cfg
            if cfg is None and e.yaml_path is not None:
                cfg = load_yaml(e.yaml_path, resolve_func=False)
            cfg = cfg or {}
            if cfg.get("unsafe_code"):
                return True
            if e.kind == Kind.GROUP:
                for child in cfg.get("task") or []:
                    name = child if isinstance(child, str) else (child.get("task") or child.get("group"))
                    if isinstance(child, dict) and child.get("unsafe_code"):
                        return True
                    if isinstance(name, str) and unsafe(tm.task_index.get(name)):
                        return True
            return False

        return unsafe(entry)

    def check(self, ctx: EvalContext) -> None:
        """Clear errors before any evaluation: lm-eval missing, unknown task, code
        execution not allowed, no chat template, dataset overrides on a group, bad limit."""
        _require_lm_eval()
        from lm_eval.tasks._index import Kind

        tm = self._manager()
        entry = self._entry(tm)
        if self._overrides() and entry.kind in (Kind.GROUP, Kind.TAG):
            raise ValueError(
                f"{', '.join(self._overrides())} override(s) apply to a single lm-eval task, but "
                f"{self.task!r} (column {self.column}) is a {entry.kind.name.lower()}; point task_dir "
                "at local YAMLs for its subtasks instead"
            )
        if self._overrides() and entry.yaml_path is not None:  # split mapping errors, before any run
            from lm_eval.tasks._yaml_loader import load_yaml

            self._apply_overrides(dict(load_yaml(entry.yaml_path, resolve_func=False)))
        if self._needs_code_execution(tm, entry) and not self.allow_code_execution:
            raise PermissionError(
                f"column {self.column} (lm-eval task {self.task!r}) executes the code the model generates "
                "on this machine; enable it explicitly with allow_code_execution: true (it sets "
                "HF_ALLOW_CODE_EVAL=1 for this run only and confirms lm-eval's unsafe-code check), "
                "preferably inside a sandbox"
            )
        if self.task.startswith("minerva_math"):
            _check_minerva_math_deps()
        if self.apply_chat_template and not getattr(ctx.tokenizer, "chat_template", None):
            raise ValueError(
                f"apply_chat_template is true for column {self.column}, but the tokenizer "
                f"({getattr(ctx.tokenizer, 'name_or_path', '?')}) has no chat template; give the pool a "
                "tokenizer that has one, or set apply_chat_template: false"
            )
        if self.limit is not None and not self.limit > 0:
            raise ValueError(f"limit must be > 0 (a count, or a fraction < 1); got {self.limit!r}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"num_fewshot must be ≥ 0 or null; got {self.num_fewshot}")
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric.strip()):
            raise ValueError(f"metric must be an lm-eval metric name such as 'acc_norm,none'; got {self.metric!r}")
        declared = _declared_metrics(entry) if entry.kind in (Kind.TASK, Kind.PY_TASK) else None
        if declared:  # a plain YAML task: the metric can be resolved now, before any evaluation
            self._metric_key(entry.name, dict.fromkeys(declared))

    # ---------------------------------------------------------------- run

    def _task_spec(self, tm, entry):
        """What to hand lm-eval: the name (or YAML path), or the full config with overrides."""
        overrides = self._overrides()
        if not overrides:
            return str(entry.yaml_path) if _is_yaml_path(self.task) else self.task
        from lm_eval.tasks._yaml_loader import load_yaml

        # A dict spec is not merged with the registered YAML by lm-eval: merge it here.
        cfg = dict(load_yaml(entry.yaml_path, resolve_func=True)) if entry.yaml_path else dict(entry.cfg or {})
        return self._apply_overrides(cfg)

    def _apply_overrides(self, cfg: Dict[str, Any]) -> Dict[str, Any]:
        """`cfg` with the dataset overrides. A plain file (or list) in `data_files` becomes the
        task's evaluation split (test, else validation); splits the task names but
        `data_files` lacks are unset, so lm-eval does not look for them (few-shot examples
        then come from the splits given: give the training split too for few-shot tasks)."""
        overrides = self._overrides()
        for key in ("dataset_path", "dataset_name"):
            if key in overrides:
                cfg[key] = overrides[key]
        if "dataset_kwargs" in overrides:
            cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), **overrides["dataset_kwargs"]}
        if "data_files" in overrides:
            files = overrides["data_files"]
            eval_split = cfg.get("test_split") or cfg.get("validation_split")
            if not isinstance(files, Mapping):
                if eval_split is None:
                    raise ValueError(f"lm-eval task {cfg.get('task')!r} names no test or validation split; "
                                     "give data_files as {split: file}")
                files = {eval_split: files}
            files = dict(files)
            for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
                if cfg.get(key) is not None and cfg[key] not in files:
                    cfg[key] = None
            if cfg.get("test_split") is None and cfg.get("validation_split") is None:
                raise ValueError(
                    f"data_files for lm-eval task {cfg.get('task')!r} (column {self.column}) has splits "
                    f"{sorted(files)}, none of them the task's evaluation split {eval_split!r}"
                )
            cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), "data_files": files}
        return cfg

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        self.check(ctx)
        lm_eval = _require_lm_eval()
        from lm_eval.models.huggingface import HFLM
        from lm_eval.utils import handle_non_serializable

        tm = self._manager()
        entry = self._entry(tm)
        name = entry.name
        limit = self.item_limit(ctx)
        kwargs: Dict[str, Any] = dict(
            num_fewshot=self.num_fewshot,
            limit=limit,
            log_samples=True,
            task_manager=tm,
            apply_chat_template=self.apply_chat_template,
            system_instruction=self.system_instruction,
            gen_kwargs=self.gen_kwargs,
            bootstrap_iters=self.bootstrap_iters,
            confirm_run_unsafe_code=self.allow_code_execution,
        )
        if self.fewshot_as_multiturn is not None:
            kwargs["fewshot_as_multiturn"] = bool(self.fewshot_as_multiturn)
        # The built-in code tasks test HF_ALLOW_CODE_EVAL as soon as they are built, so the
        # variable covers building the task as well as scoring it.
        with _code_eval_env(self.allow_code_execution):
            lm = HFLM(pretrained=ctx.model, tokenizer=ctx.tokenizer, batch_size=self.batch_size,
                      **self.model_kwargs)
            try:
                spec = self._task_spec(tm, entry)  # with overrides, this imports the task's code
                res = lm_eval.simple_evaluate(model=lm, tasks=[spec], **kwargs)
            except Exception as e:
                if self.allow_code_execution and "code_eval" in str(e):
                    raise RuntimeError(
                        f"column {self.column}: lm-eval's code tasks load the `code_eval` metric of the "
                        "`evaluate` library from the Hugging Face hub when they are built, and it could not be "
                        f"loaded ({e}); run with hub access once (it is cached), or point task_dir at a task "
                        "YAML whose metric does not need it"
                    ) from e
                raise
        if res is None:  # not rank 0 of a distributed run
            raise RuntimeError("lm-eval returned no results (not the main process of a distributed run)")

        folder = self.folder(ctx)
        samples = res.get("samples") or {}
        sample_files = {}
        for sub, records in samples.items():
            path = os.path.join(folder, f"samples_{slug(sub)}.jsonl")
            write_records(path, records, default=handle_non_serializable)
            sample_files[sub] = path

        is_group = name in (res.get("groups") or {})
        table = (res["groups"] if is_group else res["results"]).get(name)
        if table is None:
            raise RuntimeError(f"lm-eval returned no results for {name!r}; it reported {sorted(res['results'])}")
        key = self._metric_key(name, table)
        value = table[key]
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise RuntimeError(f"lm-eval's {key!r} for {name!r} is not a finite number: {value!r}")
        leaves = list(samples) or [t for t in res["results"] if t != name]
        n_samples = res.get("n-samples") or {}
        n = sum(int(n_samples[t]["effective"]) for t in leaves if t in n_samples)

        # "configs": lm-eval's per-task configs; "config": the run's settings (model, batch size, seeds)
        summary = {k: res.get(k) for k in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot",
                                           "n-samples", "higher_is_better", "config") if k in res}
        summary.update(column=self.column, task=name, metric=key, score=100.0 * float(value),
                       lm_eval_version=lm_eval_version(), apply_chat_template=self.apply_chat_template,
                       limit=limit, samples_files=sample_files)
        results_path = os.path.join(folder, "results.json")
        with open(results_path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=handle_non_serializable, ensure_ascii=False)

        details: Dict[str, Any] = {
            "task": name,
            "metric": key,
            "metrics": _plain_numbers(table),
            "n": n,
            "version": (res.get("versions") or {}).get(name),
            "lm_eval_version": lm_eval_version(),
            "n_shot": (res.get("n-shot") or {}),
            "num_fewshot": self.num_fewshot,
            "apply_chat_template": self.apply_chat_template,
            "limit": limit,
            "samples_files": sample_files,
            "results_file": results_path,
            "dimension": self.dimension,
        }
        if is_group:
            details["subtask_metrics"] = {t: _plain_numbers(res["results"][t]) for t in leaves if t in res["results"]}
        return BenchmarkResult(column=self.column, score=100.0 * float(value), details=details)

    def _metric_key(self, name: str, table: Mapping[str, Any]) -> str:
        keys = [k for k in table if "," in k and "_stderr," not in k]
        wanted = self.metric or _TASK_METRICS.get(name)
        if wanted is None:
            if len(keys) == 1:
                return keys[0]
            raise ValueError(
                f"lm-eval task {name!r} (column {self.column}) reports several metrics ({', '.join(keys)}); "
                "choose one with `metric`"
            )
        if wanted in table:
            return wanted
        if "," not in wanted:
            hits = [k for k in keys if k.split(",", 1)[0] == wanted]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ValueError(
                    f"metric {wanted!r} of lm-eval task {name!r} has several filters ({', '.join(hits)}); "
                    "give `metric` as 'metric,filter'"
                )
        raise ValueError(
            f"lm-eval task {name!r} (column {self.column}) has no metric {wanted!r}; it reports {', '.join(keys)}"
        )

    def __repr__(self) -> str:
        return (f"LMEvalBenchmark(column={self.column!r}, task={self.task!r}, metric={self.metric!r}, "
                f"num_fewshot={self.num_fewshot}, apply_chat_template={self.apply_chat_template})")


def _declared_metrics(entry) -> Optional[List[str]]:
    """The "metric,filter" keys a YAML task will report, when its YAML alone tells (plain
    metric names, no process_results); None when it does not."""
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else dict(entry.cfg or {})
    except Exception:
        return None
    metrics = cfg.get("metric_list")
    if "class" in cfg or cfg.get("process_results") is not None or not isinstance(metrics, list):
        return None
    names = [m.get("metric") if isinstance(m, dict) else None for m in metrics]
    if not names or not all(isinstance(n, str) and re.fullmatch(r"[\w@.-]+", n) for n in names):
        return None  # a !function metric: its reported names are known only after running
    filters = [f.get("name") for f in cfg.get("filter_list") or [] if isinstance(f, dict)] or ["none"]
    if not all(isinstance(f, str) for f in filters):
        return None
    return [f"{n},{f}" for n in names for f in filters]


def _check_minerva_math_deps() -> None:
    import importlib.metadata as md
    import importlib.util

    try:
        antlr = md.version("antlr4-python3-runtime")
    except md.PackageNotFoundError:
        antlr = None
    if importlib.util.find_spec("math_verify") is None or not (antlr or "").startswith("4.11"):
        raise ImportError(
            "lm-eval's minerva_math tasks need sympy, math_verify and antlr4-python3-runtime==4.11 "
            f"(pip install 'lm-eval[math]'); found antlr4-python3-runtime {antlr}. hydra-core/omegaconf "
            "(required by fusion_bench) pin antlr4 4.9: in this environment score Math with the harness protocol "
            "(benchmarks.Math.protocol=harness, i.e. hendrycks_math 0-shot, not the paper's magnitude), or run the "
            "Math column in an environment of its own with lm-eval[math]"
        )


def _plain_numbers(table: Mapping[str, Any]) -> Dict[str, Any]:
    """lm-eval's metric dict with numpy scalars as Python numbers (JSON-ready)."""
    return {k: (v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v) for k, v in table.items()}
