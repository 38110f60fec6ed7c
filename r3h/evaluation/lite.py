"""Old import path of 3h_lite, kept for existing code and configs: it lives in
:mod:`r3h.evaluation.benchmarks.lite` (and its likelihood scorer in :mod:`r3h.evaluation.likelihood`)."""

from r3h.evaluation.benchmarks.lite import *  # noqa: F401,F403
from r3h.evaluation.benchmarks.lite import DNA_CATEGORIES, DNA_REFUSAL_CATEGORIES, __all__, first_integer  # noqa: F401
