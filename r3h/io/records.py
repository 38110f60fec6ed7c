"""JSONL records: one JSON object a line, UTF-8. Read, write, append, and resume.

Every JSONL file r3h reads or writes goes through here: benchmark data, generations,
verdicts, scores, lm-eval samples, preference pairs.

**The one resume policy** (:func:`resume_records`: generations, judge verdicts, any per-key
work saved as it goes). The saved record of a key is the *last complete line* whose key
field equals that key (compared as ``str``); it counts when the caller's ``valid(record)``
accepts it (e.g. the same prompt; the same judge, fingerprint and no error), and otherwise
the key is done again. New records are appended batch by batch, flushed after each batch,
so an interruption loses at most one batch and a redone key simply gets a later line: work
already on disk is never rewritten. A *complete* line parses as a JSON object. A last line
that does not parse is a torn write (the run stopped mid-line): it is dropped, and cut off
the file before anything is appended, so it can neither crash a rerun nor be read as a
record. Any other line that does not parse is corruption, not an interruption: ValueError
naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, TypeVar

__all__ = ["dumps_record", "read_records", "write_records", "append_records", "resume_records"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def dumps_record(record: Mapping, default: Optional[Callable[[Any], Any]] = None) -> str:
    """One record as one JSONL line (UTF-8 text, not ASCII-escaped, newline included)."""
    return json.dumps(record, ensure_ascii=False, default=default) + "\n"


def _scan(path: str, strict: bool = False) -> tuple:
    """``(records, good_bytes)``: the complete records of ``path`` and the byte length of the
    file without a torn last line (``strict``: a torn last line raises too)."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    records: List[dict] = []
    good = 0
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        end = good + len(raw) + (0 if last else 1)
        if not raw.strip():
            good = end
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError(f"a JSON {type(rec).__name__}, not an object")
        except ValueError as e:
            if not strict and (last or not any(x.strip() for x in lines[i + 1:])):
                log.warning("%s: dropping a torn last line (%d bytes; an interrupted write)", path, len(raw))
                return records, good
            raise ValueError(f"{path}: line {i + 1} is not a JSON object ({e})") from None
        records.append(rec)
        good = end
    return records, good


def read_records(path: str, *, missing_ok: bool = False, strict: bool = False) -> List[dict]:
    """The records of a JSONL file, in order (blank lines skipped; a torn last line
    dropped, see the module docstring). ``missing_ok``: a missing file is ``[]``.
    ``strict``: every line must parse, the last one too (input data, files written
    atomically: there a torn line is a broken file, not an interrupted run)."""
    path = os.fspath(path)
    if missing_ok and not os.path.exists(path):
        return []
    return _scan(path, strict)[0]


def write_records(path: str, records: Iterable[Mapping], *, default: Optional[Callable[[Any], Any]] = None) -> str:
    """Write ``records`` to ``path`` atomically (a temporary sibling renamed into place, so a
    failure leaves the old file or none, never half a file). Returns the sha256 of the bytes
    written."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    h = hashlib.sha256()
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            line = dumps_record(r, default)
            h.update(line.encode("utf-8"))
            f.write(line)
    os.replace(tmp, path)
    return h.hexdigest()


def _open_for_append(path: str):
    """``path`` opened for appending, after cutting a torn last line off and ending the last
    complete line with a newline."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
        _, good = _scan(path)
        if good < os.path.getsize(path):
            with open(path, "r+b") as f:
                f.truncate(good)
        if good:
            with open(path, "rb") as f:
                f.seek(good - 1)
                needs_newline = f.read(1) != b"\n"
            if needs_newline:
                with open(path, "ab") as f:
                    f.write(b"\n")
    return open(path, "a", encoding="utf-8")


def append_records(path: str, records: Iterable[Mapping], *, default: Optional[Callable[[Any], Any]] = None) -> None:
    """Append ``records`` to ``path`` (created if missing; a torn last line cut off first)."""
    with _open_for_append(os.fspath(path)) as f:
        for r in records:
            f.write(dumps_record(r, default))


def resume_records(path: str, items: Sequence[T], produce: Callable[[List[T]], List[Mapping]], *,
                   key_of: Callable[[T], str], key: str = "id", batch_size: int = 1,
                   valid: Optional[Callable[[T, dict], bool]] = None) -> Dict[str, dict]:
    """Resume per-key work saved at ``path`` under the module's one resume policy.

    ``items``: the work, one per key (``key_of(item)``; keys must be unique). An item
    whose saved record (the last complete line with ``record[key] == key_of(item)``) passes
    ``valid(item, record)`` (default: any) is not done again; the others go to
    ``produce(batch)`` ``batch_size`` at a time, which returns one record per item, in
    order, each with its ``key`` field set; they are appended and flushed per batch.
    Returns ``{key: record}`` for every item.
    """
    path = os.fspath(path)
    keys = [str(key_of(it)) for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: the keys are not unique")
    saved: Dict[str, dict] = {}
    for rec in read_records(path, missing_ok=True):
        if key in rec:
            saved[str(rec[key])] = rec
    done: Dict[str, dict] = {}
    todo: List[T] = []
    for k, it in zip(keys, items):
        rec = saved.get(k)
        if rec is not None and (valid is None or valid(it, rec)):
            done[k] = rec
        else:
            todo.append(it)
    if not todo:
        return done
    batch_size = max(1, int(batch_size))
    with _open_for_append(path) as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            out = list(produce(batch))
            if len(out) != len(batch):
                raise ValueError(f"{path}: {len(out)} records produced for {len(batch)} items")
            for it, rec in zip(batch, out):
                k = str(key_of(it))
                if str(rec.get(key)) != k:
                    raise ValueError(f"{path}: a record produced for {key} {k!r} has {key} {rec.get(key)!r}")
                done[k] = dict(rec)
                f.write(dumps_record(rec))
            f.flush()
    return done
