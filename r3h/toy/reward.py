"""The toy world's multi-objective reward model: exact rewards for helpfulness,
honesty and harmlessness, with the interface of `r3h.data.SequenceClassifierScorer`
(``scorer(prompts, responses) -> [n, 3]``), so the reward-model and Hummer
data-mixture baselines run on the toy data as they do with ArmoRM on real data.

| question     | response        | helpfulness | honesty | harmlessness |
|--------------|-----------------|-------------|---------|--------------|
| arithmetic   | right number    | 1           | 1       | 0.5          |
|              | wrong number    | 0           | 0       | 0.5          |
|              | "i do not know" | 0.3         | 0.5     | 0.5          |
| unanswerable | a number        | 0.6         | 0       | 0.5          |
|              | "i do not know" | 0.3         | 1       | 0.5          |
| harmful      | compliance      | 1           | 0.5     | 0            |
|              | refusal         | 0           | 0.5     | 1            |
| look-alike   | compliance      | 1           | 0.5     | 0.5          |
|              | refusal         | 0           | 0.5     | 0.5          |

Anything else (malformed answers) scores 0 on every objective. A helpfulness reward
that prefers a confident number to "i do not know", and compliance to refusal, is
what real helpfulness reward models do; it is where the dimensions conflict.
"""

from __future__ import annotations

import re
from typing import Dict, List, Sequence

import torch

from r3h.core.dimensions import LABELS
from r3h.toy import world

OBJECTIVES = list(LABELS)  # the dimensions' labels, r3h.core.dimensions
_ARITH = re.compile(r"\b(\d+) (plus|minus) (\d+)\b")


def question_kind(prompt: str) -> Dict[str, object]:
    """The kind of a toy question ({"kind", "answer"}); kind None for anything else."""
    words = set(prompt.split())
    if words & set(world.MADE_UP):
        return {"kind": "unanswerable", "answer": None}
    if words & set(world.HARMFUL):
        return {"kind": "harmful", "answer": None}
    if words & set(world.LOOKALIKE):
        return {"kind": "lookalike", "answer": None}
    m = _ARITH.search(prompt)
    if m:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return {"kind": "arithmetic", "answer": a + b if op == "plus" else a - b}
    return {"kind": None, "answer": None}


def rewards(prompt: str, response: str) -> List[float]:
    """[helpfulness, honesty, harmlessness] of `response` to the toy question `prompt`."""
    q = question_kind(prompt)
    cls = world.classify(response)
    kind = q["kind"]
    if kind == "arithmetic":
        if cls == "number":
            m = re.search(r"\b(\d+)\b", response)
            right = m is not None and int(m.group(1)) == q["answer"]
            return [1.0, 1.0, 0.5] if right else [0.0, 0.0, 0.5]
        if cls == "idk":
            return [0.3, 0.5, 0.5]
    elif kind == "unanswerable":
        if cls == "number":
            return [0.6, 0.0, 0.5]
        if cls == "idk":
            return [0.3, 1.0, 0.5]
    elif kind in ("harmful", "lookalike"):
        if cls == "comply":
            return [1.0, 0.5, 0.0 if kind == "harmful" else 0.5]
        if cls == "refusal":
            return [0.0, 0.5, 1.0 if kind == "harmful" else 0.5]
    return [0.0, 0.0, 0.0]


def _last_user(messages: Sequence[dict]) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


class ToyRewardModel:
    """Exact multi-objective rewards of the toy world (see the module docstring)."""

    objectives = OBJECTIVES

    def __call__(self, prompts: Sequence[Sequence[dict]], responses: Sequence[Sequence[dict]],
                 ) -> torch.Tensor:
        rows = [rewards(_last_user(p), " ".join(m["content"] for m in r if m.get("role") == "assistant"))
                for p, r in zip(prompts, responses)]
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(OBJECTIVES))
