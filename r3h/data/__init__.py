"""Preference data for 3H alignment: the datasets of the paper's Table 1 normalised into
TRL's conversational preference format (:mod:`r3h.data.registry`,
:mod:`r3h.data.preference`) and the three data-mixture baselines of Table 2
(:mod:`r3h.data.mixture`). See docs/data.md."""

from r3h.data.mixture import (
    HeuristicMixture,
    HummerSelection,
    Mixture,
    RewardModelSelection,
    SequenceClassifierScorer,
    read_mixture,
    write_mixture,
)
from r3h.data.preference import DIMENSIONS, normalize_record, validate_pairs
from r3h.data.registry import REGISTRY, PreferenceSource, get_source, list_sources, load_preference_data

__all__ = [
    "DIMENSIONS",
    "normalize_record",
    "validate_pairs",
    "REGISTRY",
    "PreferenceSource",
    "get_source",
    "list_sources",
    "load_preference_data",
    "Mixture",
    "HeuristicMixture",
    "RewardModelSelection",
    "HummerSelection",
    "SequenceClassifierScorer",
    "write_mixture",
    "read_mixture",
]
