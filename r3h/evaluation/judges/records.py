"""Verdicts kept as JSONL beside a benchmark's answers, resumable (:func:`judge_jsonl`).

A saved verdict is reused only when it comes from the same judge for the same request
(rubric, prompt, answer, reference, and the judge's prompt template for it) and the judge
gave text; anything else is asked again. Records follow :mod:`r3h.io.records`' one resume
policy (the last complete line for a key wins).
"""

from __future__ import annotations

import hashlib
import json
from typing import List, Mapping, Sequence, Tuple

from r3h.evaluation.judges.base import Judge
from r3h.evaluation.judges.verdicts import JudgeError, JudgeRequest, Verdict
from r3h.io.records import resume_records

__all__ = ["judge_jsonl", "request_fingerprint"]


def request_fingerprint(request: JudgeRequest, judge=None) -> str:
    """The request, and the judge's prompt template for it where the judge has templates (so a
    verdict obtained with another prompt is not reused)."""
    parts = [request.rubric, request.prompt, request.answer, request.reference]
    template_for = getattr(judge, "template_for", None)
    if template_for is not None:
        parts.append(template_for(request).fingerprint)
    blob = json.dumps(parts, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def _verdict_record(key: str, request: JudgeRequest, v: Verdict, judge=None) -> dict:
    return {"key": key, "judge": v.judge, "rubric": v.rubric, "value": v.value, "ok": v.ok,
            "detail": v.detail, "error": v.error, "cached": v.cached, "raw": v.raw,
            "fingerprint": request_fingerprint(request, judge)}


def _from_record(rec: Mapping) -> Verdict:
    return Verdict(rubric=rec["rubric"], value=rec["value"], raw=rec.get("raw", ""), ok=bool(rec["ok"]),
                   detail=rec.get("detail"), cached=bool(rec.get("cached")), error=rec.get("error"),
                   judge=rec.get("judge", ""), id=rec["key"])


def judge_jsonl(judge: Judge, requests: Sequence[Tuple[str, JudgeRequest]], path: str,
                batch_size: int = 64) -> List[Verdict]:
    """Judge ``(key, request)`` pairs, keeping the verdicts as JSONL at ``path``.

    Resumes under :mod:`r3h.io.records`' one policy (the last complete line for a key
    wins): a saved verdict is reused when it comes from the same judge for the same request
    (rubric, prompt, answer and reference); a verdict with ``error`` (the judge gave no
    text) is asked again. New verdicts are appended ``batch_size`` at a time. Returns the
    verdicts in request order, ``id`` = the key.
    """
    keys = [k for k, _ in requests]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: verdict keys are not unique")
    judge_id = getattr(judge, "judge_id", type(judge).__name__)

    def valid(item: Tuple[str, JudgeRequest], rec: dict) -> bool:
        return (rec.get("judge") == judge_id and rec.get("error") is None
                and rec.get("fingerprint") == request_fingerprint(item[1], judge))

    def produce(chunk: List[Tuple[str, JudgeRequest]]) -> List[dict]:
        verdicts = judge.judge([r for _, r in chunk])
        if len(verdicts) != len(chunk):
            raise JudgeError(f"judge {judge_id} returned {len(verdicts)} verdicts for {len(chunk)} requests")
        out = []
        for (key, req), v in zip(chunk, verdicts):
            rec = _verdict_record(key, req, v, judge)
            rec["judge"] = v.judge or judge_id
            out.append(rec)
        return out

    done = resume_records(path, list(requests), produce, key_of=lambda item: item[0], key="key",
                          batch_size=batch_size, valid=valid)
    return [_from_record(done[k]) for k in keys]
