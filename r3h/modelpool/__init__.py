"""Model pools: r3h's `AlignedCausalLMPool` (and `ModelSweep`, a sweep's members as a
pool), and helpers that find any fusion_bench pool's checkpoints on disk. The toy's
embedded pool is `r3h.toy.Tiny3HPool`."""

from r3h.modelpool.pool import AlignedCausalLMPool
from r3h.modelpool.sweep import ModelSweep

__all__ = ["AlignedCausalLMPool", "ModelSweep"]
