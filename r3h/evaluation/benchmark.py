"""The contract between the 3H taskpool and each benchmark.

A `Benchmark` scores one model on one of the paper's columns (the names of
`r3h.evaluation.aggregate.BENCHMARKS`, e.g. "GSM8K", "MT-Bench", "OR-Bench").
`check` runs before any generation and raises a clear error for anything it can
see is wrong (missing data fields, an unreachable judge, a missing API key);
`run` generates, judges and scores, saving its generations and verdicts under
`ctx.output_dir` so the number can be traced and an interrupted run resumes.
Scores are in the paper's units: percentages in [0, 100], MT-Bench on 1–10.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class BenchmarkResult:
    column: str  # the paper's column name
    score: float  # % in [0, 100]; MT-Bench 1-10
    details: Dict[str, Any] = field(default_factory=dict)  # n, failures, extra metrics, files


@dataclass
class EvalContext:
    """What a benchmark gets: the model and tokenizer, a chat generator, and a folder."""

    model: Any
    tokenizer: Any
    generator: Any  # r3h.evaluation.generation.ChatGenerator
    output_dir: str
    judges: Dict[str, Any] = field(default_factory=dict)  # rubric or name -> r3h.evaluation.judges.Judge
    limit: Optional[int] = None  # evaluate only the first `limit` examples (smoke runs)


class Benchmark(ABC):
    column: str  # the paper's column name
    dimension: str  # a 3H dimension's key: "helpful", "honest" or "harmless" (r3h.core.dimensions)

    def check(self, ctx: EvalContext) -> None:
        """Raise a clear error before generation for anything visibly wrong."""

    @abstractmethod
    def run(self, ctx: EvalContext) -> BenchmarkResult:
        """Generate, judge and score; save generations and verdicts under ctx.output_dir."""
