"""Log-likelihood of a reply given its context, pair by pair (:func:`answer_loglikelihoods`).

The reference scorer of the judge-free columns: 3h_lite's HaluEval-QA-lite scores with it, and
:func:`r3h.evaluation.packed.shared_context_loglikelihoods` (the study's faster path) equals it
pair for pair.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["answer_loglikelihoods"]


def _encode_pair(tokenizer, context: str, continuation: str, add_special_tokens: bool) -> Tuple[List[int], List[int]]:
    """Token ids of ``context`` and of ``continuation`` after it.

    The pair is encoded as one string and split where the context's own encoding ends
    (so the tokenizer sees the continuation in context, as the model would); if that
    prefix does not match, the continuation is encoded on its own.
    """
    ctx_ids = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
    if len(whole) > len(ctx_ids) and whole[: len(ctx_ids)] == ctx_ids:
        return list(ctx_ids), list(whole[len(ctx_ids):])
    return list(ctx_ids), list(tokenizer(continuation, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def answer_loglikelihoods(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str], *,
                          add_special_tokens: bool = False, batch_size: int = 4,
                          max_length: Optional[int] = None) -> List[Dict[str, Any]]:
    """Log-likelihood of each ``continuation`` given its ``context`` (already rendered text).

    Returns per pair ``{"sum": Σ log p(token), "tokens": count, "mean": sum/tokens,
    "truncated": bool}``. Sequences longer than ``max_length`` (default: the model's
    ``max_position_embeddings``) lose tokens from the left of the context. Right-padded
    batches; only the continuation positions are scored.
    """
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations differ in length")
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    encoded = []
    for c, a in zip(contexts, continuations):
        ctx_ids, cont_ids = _encode_pair(tokenizer, c, a, add_special_tokens)
        if not cont_ids:
            raise ValueError(f"the continuation {a!r} encodes to no token")
        ids = ctx_ids + cont_ids
        truncated = bool(max_length and len(ids) > max_length)
        if truncated:
            if len(cont_ids) >= max_length:
                raise ValueError(f"the continuation alone ({len(cont_ids)} tokens) exceeds max_length={max_length}")
            ids = ids[len(ids) - max_length:]
        encoded.append((ids, len(cont_ids), truncated))
    out: List[Dict[str, Any]] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start: start + batch_size]
        width = max(len(ids) for ids, _, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (ids, _, _) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attn[i, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device)).logits
        for i, (ids, n_cont, truncated) in enumerate(batch):
            L = len(ids)
            # token t is predicted by the logits at t-1
            logp = torch.log_softmax(logits[i, L - n_cont - 1: L - 1].float(), dim=-1)
            target = input_ids[i, L - n_cont: L].to(logp.device)
            s = float(logp.gather(-1, target[:, None]).sum())
            out.append({"sum": s, "tokens": n_cont, "mean": s / n_cont, "truncated": truncated})
    return out
