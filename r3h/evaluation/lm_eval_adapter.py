"""Old import path of the lm-evaluation-harness columns, kept for existing code and configs: they
live in :mod:`r3h.evaluation.benchmarks.harness`."""

from r3h.evaluation.benchmarks.harness import *  # noqa: F401,F403
from r3h.evaluation.benchmarks.harness import __all__  # noqa: F401
