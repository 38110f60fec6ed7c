"""Normalised preference pairs: TRL's conversational preference format plus 3H tags.

A pair is a plain dict::

    {"prompt":   [{"role": "user", "content": "..."}],      # may start with a system message
                                                           # and hold earlier turns
     "chosen":   [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}],
     "dimensions": ["helpfulness", ...],                   # subset of LABELS (r3h.core.dimensions)
     "source": "<dataset name>",
     "id": "<source>/<original id or record index>"}

:func:`normalize_record` turns one raw record of the common layouts into a pair: plain
strings (prompt / chosen / rejected text, optional system prompt), chosen and rejected
given as whole conversations (lists of messages, or Anthropic-HH transcripts
``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) whose common prefix becomes the prompt, and
field-name overrides. :func:`validate_pairs` drops (or rejects) pairs with an empty
prompt, an empty response or identical responses, counting each reason.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from r3h.core.dimensions import LABELS

__all__ = [
    "DIMENSIONS",
    "DEFAULT_FIELDS",
    "INVALID_REASONS",
    "check_dimensions",
    "require_fields",
    "as_messages",
    "parse_transcript",
    "split_conversations",
    "normalize_record",
    "validate_pairs",
    "message_text",
]

#: Former name of r3h.core.dimensions.LABELS, the dimension tags a pair may carry (kept for old imports).
DIMENSIONS = LABELS

#: Where normalize_record looks for each part of a pair (override with `fields`). A
#: `system` or `id` field that a record lacks is simply not used.
DEFAULT_FIELDS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": "system", "id": "id"}

#: The reasons validate_pairs drops a pair for, in the order they are checked.
INVALID_REASONS = ("empty_prompt", "empty_response", "identical")

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
          "model": "assistant", "system": "system"}
_TRANSCRIPT = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def check_dimensions(dimensions: Iterable[str], source: str = "") -> List[str]:
    """`dimensions` as a list, each one of LABELS (a clear error otherwise)."""
    if isinstance(dimensions, str):
        dimensions = [dimensions]
    dims = list(dict.fromkeys(dimensions))
    bad = [d for d in dims if d not in LABELS]
    if bad or not dims:
        what = f"unknown dimension(s) {bad}" if bad else "no dimension"
        raise ValueError(f"{source or 'preference data'}: {what}; a pair serves one or more of {list(LABELS)}")
    return dims


def require_fields(raw: Mapping, names: Sequence[str], source: str, index: int, purpose: str = "") -> None:
    """Raise a ValueError naming the dataset, the record, the missing field and the
    fields the record has, if `raw` lacks any of `names`."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: record {index} is a {type(raw).__name__}, not a record (a mapping of fields)")
    for name in names:
        if name not in raw:
            has = ", ".join(map(str, raw)) or "(none)"
            why = f" ({purpose})" if purpose else ""
            raise ValueError(f"{source}: record {index} has no field {name!r}{why}; the record's fields are: {has}. "
                             f"A differently named field can be mapped with fields={{...}}")


def parse_transcript(text: str) -> Optional[List[dict]]:
    """Messages of an Anthropic-HH style transcript (``"\\n\\nHuman: a\\n\\nAssistant: b"``),
    or None when `text` is not one (it must start with ``Human:`` and hold an
    ``\\n\\nAssistant:`` turn). A trailing empty ``Assistant:`` turn is dropped."""
    if not isinstance(text, str) or not text.lstrip().startswith("Human:") or "\n\nAssistant:" not in text:
        return None
    text = text.lstrip()
    marks = list(_TRANSCRIPT.finditer(text))
    if not marks or marks[0].start() != 0:
        return None
    out = []
    for m, nxt in zip(marks, marks[1:] + [None]):
        content = text[m.end(): nxt.start() if nxt else len(text)]
        out.append({"role": "user" if m.group(1) == "Human" else "assistant", "content": content.strip()})
    if out and out[-1]["role"] == "assistant" and not out[-1]["content"]:
        out.pop()
    return out


def as_messages(value, role: str, source: str = "", index: int = 0, field: str = "") -> List[dict]:
    """`value` as a list of {"role", "content"} messages: a string is one message of
    `role` (or a parsed HH transcript), a list holds messages ({"role", "content"} or
    ShareGPT's {"from", "value"}); None is one empty message (dropped by validation)."""
    if value is None:
        return [{"role": role, "content": ""}]
    if isinstance(value, str):
        return parse_transcript(value) or [{"role": role, "content": value}]
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{source}: record {index}, field {field!r}: expected text or a list of messages, "
                         f"got {type(value).__name__}")
    out = []
    for m in value:
        if isinstance(m, Mapping) and ("role" in m or "from" in m):
            r = str(m.get("role", m.get("from"))).lower()
            if r not in _ROLES:
                raise ValueError(f"{source}: record {index}, field {field!r}: unknown message role {r!r}; "
                                 f"known: {sorted(set(_ROLES))}")
            content = m.get("content", m.get("value"))
            out.append({"role": _ROLES[r], "content": "" if content is None else str(content)})
        else:
            raise ValueError(f"{source}: record {index}, field {field!r}: a message must be a mapping with "
                             f"'role' and 'content', got {m!r:.80}")
    return out


def _is_conversation(messages: Sequence[dict]) -> bool:
    return any(m["role"] != "assistant" for m in messages)


def split_conversations(chosen: List[dict], rejected: List[dict]) -> Tuple[List[dict], List[dict], List[dict]]:
    """(prompt, chosen, rejected) of two whole conversations: the prompt is their longest
    common prefix, cut so that each side keeps at least its last message."""
    k = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        k += 1
    k = max(0, min(k, len(chosen) - 1, len(rejected) - 1))
    return [dict(m) for m in chosen[:k]], chosen[k:], rejected[k:]


def normalize_record(raw: Mapping, fields: Optional[Mapping[str, Optional[str]]] = None, source: str = "",
                     dimensions: Iterable[str] = (), index: int = 0) -> dict:
    """One raw record as a normalised pair (see the module docstring).

    `fields` maps ``prompt``/``chosen``/``rejected``/``system``/``id`` to the record's
    field names (defaults: DEFAULT_FIELDS). When chosen or rejected is a whole
    conversation (it holds a user turn), the prompt is their common prefix and no prompt
    field is needed; otherwise the prompt field is required. A non-empty ``system`` field
    becomes a leading system message. The id is ``"<source>/<id field>"``, or
    ``"<source>/<index>"`` without one.
    """
    f = {**DEFAULT_FIELDS, **(fields or {})}
    dims = check_dimensions(dimensions, source)
    require_fields(raw, [f["chosen"], f["rejected"]], source, index, "the chosen and rejected responses")
    chosen = as_messages(raw[f["chosen"]], "assistant", source, index, f["chosen"])
    rejected = as_messages(raw[f["rejected"]], "assistant", source, index, f["rejected"])
    if _is_conversation(chosen) or _is_conversation(rejected):
        prompt, chosen, rejected = split_conversations(chosen, rejected)
    else:
        if not f.get("prompt"):
            raise ValueError(f"{source}: record {index}: chosen/rejected are bare responses, so a prompt field is "
                             f"needed (fields={{'prompt': '<field>'}})")
        require_fields(raw, [f["prompt"]], source, index, "the prompt")
        prompt = as_messages(raw[f["prompt"]], "user", source, index, f["prompt"])
    system = raw.get(f["system"]) if f.get("system") else None
    if isinstance(system, str) and system.strip() and not (prompt and prompt[0]["role"] == "system"):
        prompt = [{"role": "system", "content": system}] + prompt
    rid = raw.get(f["id"]) if f.get("id") else None
    rid = index if rid is None or (isinstance(rid, str) and not rid.strip()) else rid
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "dimensions": dims, "source": source,
            "id": f"{source}/{rid}"}


def message_text(messages: Sequence[dict]) -> str:
    """The contents of `messages`, joined and stripped (to compare responses)."""
    return "\n".join(str(m.get("content") or "") for m in messages).strip()


def _invalid_reason(pair: Mapping) -> Optional[str]:
    if not any(str(m.get("content") or "").strip() for m in pair.get("prompt") or () if m.get("role") != "system"):
        return "empty_prompt"
    chosen, rejected = message_text(pair.get("chosen") or ()), message_text(pair.get("rejected") or ())
    if not chosen or not rejected:
        return "empty_response"
    if chosen == rejected:
        return "identical"
    return None


_REASON_TEXT = {"empty_prompt": "its prompt is empty", "empty_response": "its chosen or rejected response is empty",
                "identical": "its chosen and rejected responses are identical"}


def validate_pairs(pairs: Iterable[dict], source: str, on_invalid: str = "drop") -> Tuple[List[dict], Dict[str, int]]:
    """(kept pairs, counts) where counts = {"kept", "empty_prompt", "empty_response",
    "identical"}. A pair is invalid when its prompt has no non-empty non-system message,
    when chosen or rejected is empty or whitespace, or when both responses have the same
    text. ``on_invalid="drop"`` drops and counts it; ``"error"`` raises a ValueError
    naming the dataset, the pair's id and the reason."""
    if on_invalid not in ("drop", "error"):
        raise ValueError(f"{source}: on_invalid must be 'drop' or 'error', got {on_invalid!r}")
    counts = {"kept": 0, **{r: 0 for r in INVALID_REASONS}}
    kept = []
    for i, pair in enumerate(pairs):
        reason = _invalid_reason(pair)
        if reason is None:
            kept.append(pair)
            counts["kept"] += 1
        elif on_invalid == "error":
            raise ValueError(f"{source}: record {pair.get('id', i)} is invalid: {_REASON_TEXT[reason]} ({reason}); "
                             f"pass on_invalid='drop' to drop such pairs")
        else:
            counts[reason] += 1
    return kept, counts
