"""Old import path of the study's columns, kept for existing code and configs: they live in
:mod:`r3h.evaluation.benchmarks.study`."""

from r3h.evaluation.benchmarks.study import PreferenceColumn, RefusalGeneration  # noqa: F401

__all__ = ["PreferenceColumn", "RefusalGeneration"]
