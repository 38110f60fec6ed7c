"""The contract between the 3H taskpool and each benchmark, and the plumbing they share.

A :class:`Benchmark` scores one model on one column (the paper's, e.g. ``GSM8K``,
``MT-Bench``, or a column of its own, e.g. ``Arithmetic-lite``). ``check`` runs before any
generation and raises a clear error for anything it can see is wrong (missing data fields,
an unreachable judge, a missing API key); ``run`` generates, judges and scores. Scores are
in the paper's units: percentages in [0, 100], MT-Bench on 1-10.

The base owns three rules, written here once for every benchmark family:

* **Limit.** A benchmark scores ``combine_limits(own, ctx.limit)`` items: the smaller of
  its own cap (its ``limit`` or ``n`` option) and the run's smoke-test ``ctx.limit``; ``None`` on
  either side means no cap. An own cap below 1 is a fraction of the task (lm-eval only):
  ``ctx.limit`` then wins when it is set.
* **Folder.** Everything a benchmark writes goes under ``folder(ctx)`` =
  ``<ctx.output_dir>/<folder_name>/`` (``folder_name``: the column's file-safe name,
  :func:`r3h.core.paths.slug`, unless the family names it).
* **Resume.** ``answers`` generates into a JSONL file of that folder through
  :func:`r3h.evaluation.generation.generate_jsonl`: a saved answer is reused only when its
  prompt and its generation settings (every :class:`GenerationConfig` field, with the
  call's temperature) are identical to the ones asked for now; any other saved answer is
  generated again, and its new line supersedes the old. A rerun with the same settings
  thus costs nothing, and a rerun with changed prompts or settings never mixes answers.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from r3h.core.paths import slug
from r3h.evaluation.generation import ChatGenerator, generate_jsonl

__all__ = ["Benchmark", "BenchmarkResult", "EvalContext", "combine_limits"]


@dataclass
class BenchmarkResult:
    column: str  # the column's name
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


def combine_limits(own: Optional[Union[int, float]], ctx_limit: Optional[int]) -> Optional[Union[int, float]]:
    """The number of items to score: the smaller of a benchmark's own cap and the run's
    ``ctx.limit`` (None: no cap). An own cap in (0, 1) is a fraction of the task, which a set
    ``ctx.limit`` replaces."""
    if own is None:
        return None if ctx_limit is None else int(ctx_limit)
    if ctx_limit is None:
        return own
    if own < 1:
        return int(ctx_limit)
    return min(int(own), int(ctx_limit))


class Benchmark(ABC):
    """One column: ``check`` before any generation, ``run`` to score (module docstring)."""

    column: str  # the column's name
    dimension: str  # a 3H dimension's key: "helpful", "honest" or "harmless" (r3h.core.dimensions)
    uses_generator = True  # False: the benchmark never reads ctx.generator (lm-eval renders its own)

    def check(self, ctx: EvalContext) -> None:
        """Raise a clear error before generation for anything visibly wrong."""

    @abstractmethod
    def run(self, ctx: EvalContext) -> BenchmarkResult:
        """Generate, judge and score; save generations and verdicts under ``folder(ctx)``."""

    # -- limit ------------------------------------------------------------------------
    @property
    def own_limit(self) -> Optional[Union[int, float]]:
        """The benchmark's own cap on items: its ``limit`` option, else its ``n`` (None: none)."""
        limit = getattr(self, "limit", None)
        return limit if limit is not None else getattr(self, "n", None)

    def item_limit(self, ctx: Optional[EvalContext]) -> Optional[Union[int, float]]:
        """How many items this run scores: :func:`combine_limits` of ``own_limit`` and ``ctx.limit``."""
        return combine_limits(self.own_limit, getattr(ctx, "limit", None))

    # -- folder -----------------------------------------------------------------------
    @property
    def folder_name(self) -> str:
        return slug(self.column)

    def folder(self, ctx: EvalContext) -> str:
        """``<ctx.output_dir>/<folder_name>``, created."""
        path = os.path.join(ctx.output_dir, self.folder_name)
        os.makedirs(path, exist_ok=True)
        return path

    # -- generation -------------------------------------------------------------------
    @staticmethod
    def generator(ctx: EvalContext, **overrides) -> ChatGenerator:
        """``ctx.generator``, or a copy with ``overrides`` (those not None) in its config."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        base = ctx.generator
        if base is None:
            return ChatGenerator(ctx.model, ctx.tokenizer, **overrides)
        if not overrides:
            return base
        return ChatGenerator(base.model, base.tokenizer, config=dataclasses.replace(base.config, **overrides))

    def answers(self, ctx: EvalContext, records: List[Mapping], filename: str = "generations.jsonl",
                generator: Optional[ChatGenerator] = None, temperature: Optional[float] = None) -> List[dict]:
        """Answer ``records`` (``id``, ``prompt``, other fields kept) into ``folder(ctx)/filename``
        under the one resume rule (module docstring), with ``generator`` (default
        ``ctx.generator``) at ``temperature`` (default its own)."""
        path = os.path.join(self.folder(ctx), filename)
        return generate_jsonl(generator if generator is not None else ctx.generator, records, path,
                              temperature=temperature)
