"""Log-likelihoods of several replies to one prompt, packed so shared tokens are run once.

For a list of ``(context, [reply_1, ..., reply_r])`` the function returns, per reply,
``log p(reply | context) = Σ_t log p(y_t | context, y_<t)`` as
:func:`r3h.evaluation.likelihood.answer_loglikelihoods` does, with three savings:

* the context is run once for all its replies (each reply attends to the context and to
  itself, never to a sibling reply);
* the token prefix that every context shares (the chat template's system turn) is run once per
  packed sequence, not once per item;
* the vocabulary projection is applied only at the positions that predict reply tokens.

Items are packed into sequences of at most ``pack_tokens`` tokens with a block attention mask
(a 4-D boolean mask, ``True`` = may attend) and explicit position ids, so every token sees
exactly the tokens, at exactly the positions, it would see alone: the result equals the
unpacked computation up to floating-point summation order (tests/test_packed.py). An item that
does not fit in ``max_length`` with the shared prefix is scored unpacked, with the same left
truncation as ``answer_loglikelihoods``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["shared_context_loglikelihoods"]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every sequence shares, leaving each at least one own token."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(max(n, 0)):
        if any(s[i] != first[i] for s in seqs):
            return i
    return max(n, 0)


def _pack_mask(owner: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """(L, L) boolean mask: query q may see key k <= q when k is in the shared prefix (owner -1),
    or k belongs to q's item and is its context (part 0) or q's own reply (same part >= 1).
    Padding (owner -2) sees only itself."""
    L = owner.numel()
    q_owner, k_owner = owner[:, None], owner[None, :]
    q_part, k_part = part[:, None], part[None, :]
    allowed = (k_owner == -1) | ((q_owner == k_owner) & ((k_part == 0) | (k_part == q_part)))
    allowed &= torch.ones(L, L, dtype=torch.bool).tril()
    allowed &= (q_owner != -2)
    allowed |= torch.eye(L, dtype=torch.bool)
    return allowed


def _autocast(dtype: Optional[str], device: torch.device):
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    if dtype != "bfloat16":
        raise ValueError(f"autocast: {dtype!r} is not supported (None or 'bfloat16')")
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def shared_context_loglikelihoods(model, tokenizer, items: Sequence[Tuple[str, Sequence[str]]], *,
                                  add_special_tokens: bool = False, pack_tokens: int = 384, batch_size: int = 4,
                                  max_length: Optional[int] = None,
                                  autocast: Optional[str] = None) -> List[List[Dict[str, Any]]]:
    """Per item, per reply: ``{"sum", "tokens", "mean", "truncated"}`` (as ``answer_loglikelihoods``).

    ``items``: ``(context, replies)`` with ``context`` already rendered (the chat template applied).
    ``pack_tokens``: the longest packed sequence; ``batch_size``: packed sequences per forward pass.
    ``autocast``: ``"bfloat16"`` runs the transformer body under ``torch.autocast`` (matrix products
    in bf16, the residual stream and norms in the model's dtype); the vocabulary projection and the
    log-softmax stay in float32. ``None``: the model's own dtype throughout.
    """
    from .likelihood import _encode_pair, answer_loglikelihoods

    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = []  # per item: (context ids, [reply ids])
    for i, (context, replies) in enumerate(items):
        if not replies:
            raise ValueError(f"item {i}: no reply to score")
        ctx_ids, conts = None, []
        for a in replies:
            c_ids, a_ids = _encode_pair(tokenizer, context, a, add_special_tokens)
            if not a_ids:
                raise ValueError(f"item {i}: the reply {a!r} encodes to no token")
            ctx_ids = c_ids
            conts.append(a_ids)
        encoded.append((ctx_ids, conts))
    P = _common_prefix([c for c, _ in encoded])
    prefix = encoded[0][0][:P] if encoded else []
    out: List[Optional[List[Dict[str, Any]]]] = [None] * len(encoded)

    # items too long for a pack (or for the model) are scored alone, as answer_loglikelihoods does
    width = max(int(pack_tokens), 1)
    alone = [i for i, (c, conts) in enumerate(encoded)
             if len(c) + sum(map(len, conts)) > width
             or (max_length and len(c) + max(map(len, conts)) > max_length)]
    for i in alone:
        context, replies = items[i]
        out[i] = answer_loglikelihoods(model, tokenizer, [context] * len(replies), list(replies),
                                       add_special_tokens=add_special_tokens, batch_size=len(replies),
                                       max_length=max_length)
    skip = set(alone)

    # greedy packing in the given order: prefix, then (own context, reply_1, ..., reply_r) per item
    packs: List[List[int]] = []
    used = width + 1
    for i, (c, conts) in enumerate(encoded):
        if i in skip:
            continue
        need = len(c) - P + sum(map(len, conts))
        if used + need > width:
            packs.append([])
            used = P
        packs[-1].append(i)
        used += need

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    for start in range(0, len(packs), max(int(batch_size), 1)):
        batch = packs[start: start + max(int(batch_size), 1)]
        seqs, targets = [], []  # targets: (row, predicting position, token id, item, reply)
        for row, pack in enumerate(batch):
            ids, owner, part, pos = list(prefix), [-1] * P, [0] * P, list(range(P))
            for i in pack:
                c, conts = encoded[i]
                rest = c[P:]
                ctx_start = len(ids)
                ids += rest
                owner += [i] * len(rest)
                part += [0] * len(rest)
                pos += list(range(P, len(c)))
                last_ctx = ctx_start + len(rest) - 1
                for r, a in enumerate(conts):
                    s = len(ids)
                    ids += a
                    owner += [i] * len(a)
                    part += [r + 1] * len(a)
                    pos += list(range(len(c), len(c) + len(a)))
                    for t, tok in enumerate(a):
                        targets.append((row, last_ctx if t == 0 else s + t - 1, tok, i, r))
            seqs.append((ids, owner, part, pos))
        L = max(len(s[0]) for s in seqs)
        input_ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        position_ids = torch.zeros((len(seqs), L), dtype=torch.long)
        mask = torch.zeros((len(seqs), 1, L, L), dtype=torch.bool)
        for row, (ids, owner, part, pos) in enumerate(seqs):
            n = len(ids)
            input_ids[row, :n] = torch.tensor(ids)
            position_ids[row, :n] = torch.tensor(pos)
            o = torch.full((L,), -2, dtype=torch.long)
            p = torch.zeros(L, dtype=torch.long)
            o[:n], p[:n] = torch.tensor(owner), torch.tensor(part)
            mask[row, 0] = _pack_mask(o, p)
        with _autocast(autocast, device):
            hidden = body(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                          position_ids=position_ids.to(device), use_cache=False).last_hidden_state
        if autocast is not None:
            hidden = hidden.to(head.weight.dtype)
        rows = torch.tensor([t[0] for t in targets])
        where = torch.tensor([t[1] for t in targets])
        tok = torch.tensor([t[2] for t in targets])
        logits = head(hidden[rows.to(device), where.to(device)]).float()
        logp = (torch.log_softmax(logits, dim=-1).gather(-1, tok.to(device)[:, None])[:, 0]).cpu()
        sums: Dict[Tuple[int, int], float] = {}
        for (_, _, _, i, r), v in zip(targets, logp.tolist()):
            sums[(i, r)] = sums.get((i, r), 0.0) + v
        for pack in batch:
            for i in pack:
                conts = encoded[i][1]
                out[i] = [{"sum": sums[(i, r)], "tokens": len(a), "mean": sums[(i, r)] / len(a), "truncated": False}
                          for r, a in enumerate(conts)]
    return out  # type: ignore[return-value]
