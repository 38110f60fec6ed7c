"""The toy 3H world: a synthetic chat task where helpfulness (arithmetic), honesty
("i do not know" for questions with no answer) and harmlessness (refusing marked
harmful requests, not their look-alikes) are measured exactly (`world`), and the
tiny models trained on it, cached (`build`), with their pool `Tiny3HPool` (`pool`).
Importing it registers the toy datasets in r3h's data registry (`data`)."""

from r3h.toy.data import register_toy_datasets

__all__ = ["Tiny3HPool", "register_toy_datasets"]

register_toy_datasets()


def __getattr__(name):
    # `Tiny3HPool` (config target `r3h.toy.Tiny3HPool`) is imported on first use: the world
    # and its datasets load without fusion_bench's and transformers' start-up
    if name == "Tiny3HPool":
        from r3h.toy.pool import Tiny3HPool

        return Tiny3HPool
    raise AttributeError(f"module 'r3h.toy' has no attribute {name!r}")
