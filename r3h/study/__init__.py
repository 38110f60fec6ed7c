"""The paper's study on a real language model, offline: ``python -m r3h.study --out DIR``
(docs/study.md). Stages (each cached and resumable): data -> experts (three DPO experts, the
mixture at equal data, the continual model) -> merges (every method of config/method at its
defaults) -> search (tuned on validation) -> scoring (test) -> tables and findings."""

from r3h.study.pipeline import Settings, Study

__all__ = ["Settings", "Study"]
