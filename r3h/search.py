"""The merge search, kept importable here: it lives in `r3h.tuning` (`r3h.tuning.search`,
with its space, objective, selection and workers beside it). See docs/search.md."""

from r3h.tuning.objective import DIMENSIONS, weighted_score
from r3h.tuning.search import SEARCH_OWNED, MergeSearch
from r3h.tuning.space import PER_EXPERT, Param, parse_param, parse_space, preset_space

__all__ = ["MergeSearch", "Param", "parse_space", "parse_param", "preset_space", "DIMENSIONS", "weighted_score",
           "SEARCH_OWNED", "PER_EXPERT"]
