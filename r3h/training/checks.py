"""Checks run before training starts."""

from __future__ import annotations

from r3h.core.engine import plan_merge
from r3h.io.checkpoint import Checkpoint


def check_same_base(model: str, reference: str) -> None:
    """Raise a clear error when `model` and `reference` are not the same architecture
    with the same tensors and shapes (e.g. a checkpoint of a different base model),
    reading only configs and safetensors headers."""
    ref = Checkpoint(reference, f"reference {reference}")
    pol = Checkpoint(model, f"model {model}")
    try:
        plan = plan_merge(ref, [pol])
    except ValueError as e:
        raise ValueError(f"model {model!r} and its DPO reference {reference!r} are not the same base: {e}") from None
    if plan.grown:
        name = next(iter(plan.grown))
        raise ValueError(f"model '{model}' has a larger vocabulary than the reference '{reference}' "
                         f"(tensor '{name}'): DPO needs the same tokenizer for both")
