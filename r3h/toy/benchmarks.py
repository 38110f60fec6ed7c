"""The toy 3H world's benchmarks for the `3h_tiny` taskpool: exact scores, no judge.

| column       | dimension | score (%)                                                    |
|--------------|-----------|--------------------------------------------------------------|
| Arithmetic   | helpful   | answers with the right number                                |
| Unanswerable | honest    | says "i do not know" to a question naming a made-up quantity |
| Harmful      | harmless  | refuses a request for an object of the marked harmful set    |
| Look-alike   | harmless  | answers the harmless look-alike requests (no over-refusal)   |

Each benchmark greedily answers every question of its kind in one split (`test` by
default, `validation` for tuning; see `r3h.toy.world.SPLITS`; or the first `n` / `ctx.limit`
of a fixed shuffle, by the base's limit rule), saves the answers as resumable JSONL
(`<output_dir>/toy/<kind>.<split>.jsonl`, under the base's resume rule:
`r3h.evaluation.benchmarks.base`), and scores them with `r3h.toy.world.is_correct`. No split's
questions were seen in training (`train`).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Optional

from r3h.evaluation.benchmarks.base import Benchmark, BenchmarkResult, EvalContext
from r3h.toy import world

COLUMNS = {"Arithmetic": "arithmetic", "Unanswerable": "unanswerable", "Harmful": "harmful",
           "Look-alike": "lookalike"}


class ToyBenchmark(Benchmark):
    """One column of the toy 3H world (see the module docstring)."""

    def __init__(self, column: str, n: Optional[int] = None, seed: int = 1234, split: str = "test"):
        if column not in COLUMNS:
            raise ValueError(f"toy benchmark column {column!r} is unknown; known: {', '.join(COLUMNS)}")
        if split not in world.SPLITS:
            raise ValueError(f"split: {split!r} is not a toy split; known: {', '.join(world.SPLITS)}")
        self.split = split
        self.column = column
        self.kind = COLUMNS[column]
        self.dimension = world.KINDS[self.kind]
        self.n = n
        self.seed = seed

    folder_name = "toy"  # the four columns share one folder, a file per kind and split

    def questions(self, ctx: Optional[EvalContext] = None):
        return world.eval_questions(self.kind, self.item_limit(ctx), self.seed, split=self.split)

    def check(self, ctx: EvalContext) -> None:
        vocab = getattr(ctx.tokenizer, "get_vocab", lambda: {})()
        missing = sorted({w for q in self.questions(ctx)[:50] for w in q["prompt"].split()} - set(vocab))
        if missing:
            raise ValueError(f"{self.column}: the tokenizer lacks the toy world's words {missing[:5]}; the 3h_tiny "
                             "taskpool scores models of the toy world (modelpool=tiny_3h)")

    def run(self, ctx: EvalContext) -> BenchmarkResult:
        qs = self.questions(ctx)
        records = [{"id": f"{self.kind}-{i}", "prompt": q["prompt"]} for i, q in enumerate(qs)]
        name = f"{self.kind}.{self.split}.jsonl"
        rows = self.answers(ctx, records, name)
        path = os.path.join(self.folder(ctx), name)
        correct = [world.is_correct(q, r["response"]) for q, r in zip(qs, rows)]
        classes = Counter(world.classify(r["response"]) for r in rows)
        return BenchmarkResult(self.column, 100.0 * sum(correct) / len(correct),
                               {"n": len(correct), "correct": sum(correct), "split": self.split, "classes": dict(sorted(classes.items())),
                                "files": {"generations": path}})
