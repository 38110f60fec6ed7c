"""The three 3H dimensions (Yang et al., arXiv 2502.06876) and their name in each vocabulary.

One table; every other list of the dimensions reads it. Names on disk and in configs
keep their spelling; the table maps between them:

=========  ============  ============  ============  ========
key        name          label         average       short
=========  ============  ============  ============  ========
helpful    Helpfulness   helpfulness   Helpful_Avg   Helpful
honest     Honesty       honesty       Honest_Avg    Honest
harmless   Harmlessness  harmlessness  Harmless_Avg  Harmless
=========  ============  ============  ============  ========

* ``key``: a benchmark's ``dimension`` (``dimension: helpful`` in configs), the toy world's
  question kinds;
* ``name``: the column group of the results tables, the label of the plots;
* ``label``: a preference pair's ``dimensions`` tag (``dimensions: [helpfulness]``) and a
  reward model's objective;
* ``average``: the column of the dimension's average (paper CSV, results tables, the task
  pool's ``averages``); ``OVERALL`` (``AVG``) is the mean of the three;
* ``short``: the average's key in a 3h_lite report (``run_lite``, ``aggregate_lite``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ["Dimension", "HELPFUL", "HONEST", "HARMLESS", "THREE_H", "OVERALL", "KEYS", "LABELS", "AVERAGES",
           "dimension"]


@dataclass(frozen=True)
class Dimension:
    """One 3H dimension under each of its names (module docstring)."""

    key: str
    name: str
    label: str
    average: str
    short: str


HELPFUL = Dimension("helpful", "Helpfulness", "helpfulness", "Helpful_Avg", "Helpful")
HONEST = Dimension("honest", "Honesty", "honesty", "Honest_Avg", "Honest")
HARMLESS = Dimension("harmless", "Harmlessness", "harmlessness", "Harmless_Avg", "Harmless")

#: The three dimensions, in the paper's order.
THREE_H: Tuple[Dimension, ...] = (HELPFUL, HONEST, HARMLESS)
#: The column of the mean of the three dimension averages.
OVERALL = "AVG"
#: Each vocabulary, in the paper's order.
KEYS: Tuple[str, ...] = tuple(d.key for d in THREE_H)
LABELS: Tuple[str, ...] = tuple(d.label for d in THREE_H)
AVERAGES: Tuple[str, ...] = tuple(d.average for d in THREE_H)

_BY_NAME: Dict[str, Dimension] = {getattr(d, f): d for d in THREE_H
                                  for f in ("key", "name", "label", "average", "short")}


def dimension(name: str) -> Dimension:
    """The dimension that ``name`` denotes in any vocabulary (``helpful``, ``Helpfulness``,
    ``helpfulness``, ``Helpful_Avg`` or ``Helpful``); ``ValueError`` for anything else."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"{name!r} is not a 3H dimension; known: {', '.join(KEYS)}") from None
