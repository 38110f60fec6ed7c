"""Old import path of the judged benchmarks, kept so that existing code and configs still work:
they live in :mod:`r3h.evaluation.benchmarks` (``judged``, ``mt_bench``, ``halueval_wild``,
``salad_bench``, ``or_bench``), and :func:`judge_jsonl` with the judges."""

from r3h.evaluation.benchmarks import JUDGED_BENCHMARKS as GENERATIVE_BENCHMARKS
from r3h.evaluation.benchmarks.halueval_wild import *  # noqa: F401,F403
from r3h.evaluation.benchmarks.judged import DatasetFieldError, JudgedBenchmark  # noqa: F401
from r3h.evaluation.benchmarks.mt_bench import *  # noqa: F401,F403
from r3h.evaluation.benchmarks.or_bench import *  # noqa: F401,F403
from r3h.evaluation.benchmarks.salad_bench import *  # noqa: F401,F403
from r3h.evaluation.judges import ReferenceMatchJudge, judge_jsonl  # noqa: F401

__all__ = ["DatasetFieldError", "judge_jsonl", "JudgedBenchmark", "MTBench", "HaluEvalWild", "SaladBench", "ORBench",
           "ReferenceMatchJudge", "GENERATIVE_BENCHMARKS"]
