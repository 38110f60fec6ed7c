"""The benchmarks of the 3H evaluation: one :class:`Benchmark` per scored column.

The base (:mod:`~r3h.evaluation.benchmarks.base`) owns what every family shares: the item
limit (its own cap combined with the run's ``ctx.limit``), the output folder
(``<output_dir>/<column>/``) and resumable generation under one rule (a saved answer is
reused only for the same prompt and the same generation settings; anything else is
generated again). One module per family:

==================  =========================================================  ===============
module              columns                                                    taskpool
==================  =========================================================  ===============
``judged``          the judged family's base (:class:`JudgedBenchmark`)        --
``mt_bench``        MT-Bench (helpful, judge rating 1-10)                      ``3h``
``halueval_wild``   HaluEval_Wild (honest, judged)                             ``3h``
``salad_bench``     Salad_Bench (harmless, judged)                             ``3h``
``or_bench``        OR-Bench (harmless, judged)                                ``3h``
``harness``         Math, GSM8K, ARC-E, ARC-C, MMLU, MBPP_Plus, HumanEval_Plus  ``3h``
                    (lm-evaluation-harness, :class:`LMEvalBenchmark`)
``lite``            the judge-free sanity columns on wheel data (``*-lite``)     ``3h_lite``
``study``           the real-model study's columns (``*-pref``, ``Refusal-gen``)  ``3h_study``
==================  =========================================================  ===============

The toy world's columns (``3h_tiny``) are :class:`r3h.toy.benchmarks.ToyBenchmark`, the same
base one layer up. Verdicts are saved by the judges' own :func:`r3h.evaluation.judges.judge_jsonl`.
"""

from r3h.evaluation.benchmarks.base import Benchmark, BenchmarkResult, EvalContext, combine_limits
from r3h.evaluation.benchmarks.judged import DatasetFieldError, JudgedBenchmark
from r3h.evaluation.benchmarks.mt_bench import MTBench
from r3h.evaluation.benchmarks.halueval_wild import HaluEvalWild
from r3h.evaluation.benchmarks.salad_bench import SaladBench
from r3h.evaluation.benchmarks.or_bench import ORBench
from r3h.evaluation.benchmarks.harness import LMEvalBenchmark
from r3h.evaluation.benchmarks.lite import ArithmeticLite, DoNotAnswerLite, HaluEvalQALite, HarmBenchLite
from r3h.evaluation.benchmarks.study import PreferenceColumn, RefusalGeneration

#: The judged columns of ``taskpool=3h``: column -> benchmark class.
JUDGED_BENCHMARKS = {cls.column: cls for cls in (MTBench, HaluEvalWild, SaladBench, ORBench)}

__all__ = [
    "Benchmark", "BenchmarkResult", "EvalContext", "combine_limits", "DatasetFieldError", "JudgedBenchmark",
    "MTBench", "HaluEvalWild", "SaladBench", "ORBench", "JUDGED_BENCHMARKS", "LMEvalBenchmark",
    "ArithmeticLite", "HaluEvalQALite", "HarmBenchLite", "DoNotAnswerLite", "PreferenceColumn", "RefusalGeneration",
]
