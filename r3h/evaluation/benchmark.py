"""Old import path of the benchmark contract, kept for existing code: it lives in
:mod:`r3h.evaluation.benchmarks.base`."""

from r3h.evaluation.benchmarks.base import Benchmark, BenchmarkResult, EvalContext, combine_limits  # noqa: F401

__all__ = ["Benchmark", "BenchmarkResult", "EvalContext", "combine_limits"]
