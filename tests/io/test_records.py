"""r3h.io.records: JSONL read/write/append and the one resume policy (a record counts when
its line is complete and its key matches; the last such line wins; a torn last line is
dropped and cut off before appending; only the missing keys are produced)."""

from __future__ import annotations

import hashlib
import json

import pytest

from r3h.io.records import append_records, dumps_record, read_records, resume_records, write_records


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_write_read_roundtrip_utf8_and_sha256(tmp_path):
    path = tmp_path / "sub" / "a.jsonl"
    rows = [{"id": "1", "text": "café ☕"}, {"id": "2", "nested": {"x": [1, 2.5, None]}}]
    digest = write_records(str(path), rows)
    raw = path.read_bytes()
    assert digest == hashlib.sha256(raw).hexdigest()
    assert "café ☕" in raw.decode("utf-8")  # UTF-8 text, not \\u escapes
    assert read_records(str(path)) == rows
    assert not (tmp_path / "sub" / "a.jsonl.tmp").exists()
    assert dumps_record({"a": 1}) == '{"a": 1}\n'


def test_missing_file(tmp_path):
    assert read_records(str(tmp_path / "none.jsonl"), missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        read_records(str(tmp_path / "none.jsonl"))


def test_torn_last_line_dropped_but_corrupt_middle_raises(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "1"}\n\n{"id": "2"}\n{"id": "3", "resp', encoding="utf-8")
    assert read_records(str(path)) == [{"id": "1"}, {"id": "2"}]
    with pytest.raises(ValueError, match=r"a\.jsonl: line 4"):
        read_records(str(path), strict=True)
    path.write_text('{"id": "1"}\n{"id": \n{"id": "3"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"a\.jsonl: line 2 is not a JSON object"):
        read_records(str(path))
    path.write_text('{"id": "1"}\n[1, 2]\n{"id": "3"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        read_records(str(path))
    # a last line that parses but lost its newline is complete
    path.write_text('{"id": "1"}\n{"id": "2"}', encoding="utf-8")
    assert read_records(str(path), strict=True) == [{"id": "1"}, {"id": "2"}]


def test_append_cuts_torn_line_and_adds_missing_newline(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "1"}\n{"id": "2", "x', encoding="utf-8")
    append_records(str(path), [{"id": "3"}])
    assert _lines(path) == ['{"id": "1"}', '{"id": "3"}']
    path.write_text('{"id": "1"}', encoding="utf-8")
    append_records(str(path), [{"id": "2"}])
    assert _lines(path) == ['{"id": "1"}', '{"id": "2"}']


class Producer:
    def __init__(self, tag="new"):
        self.calls = []
        self.tag = tag

    def __call__(self, batch):
        self.calls.append([it["id"] for it in batch])
        return [{"id": it["id"], "prompt": it["prompt"], "out": f"{self.tag}:{it['prompt']}"} for it in batch]


ITEMS = [{"id": str(i), "prompt": f"p{i}"} for i in range(5)]


def test_resume_appends_only_the_missing_ones(tmp_path):
    path = tmp_path / "gen.jsonl"
    first = Producer("first")
    done = resume_records(str(path), ITEMS[:3], first, key_of=lambda it: it["id"], batch_size=2)
    assert first.calls == [["0", "1"], ["2"]]
    assert [done[k]["out"] for k in "012"] == ["first:p0", "first:p1", "first:p2"]

    again = Producer("again")
    done = resume_records(str(path), ITEMS, again, key_of=lambda it: it["id"], batch_size=2)
    assert again.calls == [["3", "4"]]  # only the missing ones
    assert [done[str(i)]["out"] for i in range(5)] == ["first:p0", "first:p1", "first:p2", "again:p3", "again:p4"]
    assert [json.loads(x)["id"] for x in _lines(path)] == ["0", "1", "2", "3", "4"]  # nothing rewritten

    nothing = Producer()
    resume_records(str(path), ITEMS, nothing, key_of=lambda it: it["id"])
    assert nothing.calls == []


def test_resume_torn_last_line_is_redone(tmp_path):
    path = tmp_path / "gen.jsonl"
    resume_records(str(path), ITEMS[:3], Producer("first"), key_of=lambda it: it["id"])
    text = path.read_text(encoding="utf-8")
    path.write_text(text[:-7], encoding="utf-8")  # the run stopped in the middle of line 3
    redo = Producer("redo")
    done = resume_records(str(path), ITEMS[:3], redo, key_of=lambda it: it["id"])
    assert redo.calls == [["2"]]
    assert done["2"]["out"] == "redo:p2"
    assert [json.loads(x)["out"] for x in _lines(path)] == ["first:p0", "first:p1", "redo:p2"]


def test_resume_key_mismatch_and_invalid_record_are_redone(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text(dumps_record({"id": "0", "prompt": "p0", "out": "saved"})
                    + dumps_record({"id": "1", "prompt": "OLD", "out": "stale"})
                    + dumps_record({"key": "2", "prompt": "p2", "out": "other key field"}), encoding="utf-8")
    prod = Producer()
    done = resume_records(str(path), ITEMS[:3], prod, key_of=lambda it: it["id"], batch_size=4,
                          valid=lambda it, rec: rec["prompt"] == it["prompt"])
    assert prod.calls == [["1", "2"]]
    assert done["0"]["out"] == "saved" and done["1"]["out"] == "new:p1" and done["2"]["out"] == "new:p2"
    # the last complete line for a key wins on the next read
    again = Producer()
    done = resume_records(str(path), ITEMS[:3], again, key_of=lambda it: it["id"],
                          valid=lambda it, rec: rec["prompt"] == it["prompt"])
    assert again.calls == [] and done["1"]["out"] == "new:p1"


def test_resume_checks(tmp_path):
    path = str(tmp_path / "gen.jsonl")
    with pytest.raises(ValueError, match="keys are not unique"):
        resume_records(path, [ITEMS[0], ITEMS[0]], Producer(), key_of=lambda it: it["id"])
    with pytest.raises(ValueError, match="1 records produced for 2 items"):
        resume_records(path, ITEMS[:2], lambda b: [{"id": "0"}], key_of=lambda it: it["id"], batch_size=2)
    with pytest.raises(ValueError, match="has id '9'"):
        resume_records(path, ITEMS[:1], lambda b: [{"id": "9"}], key_of=lambda it: it["id"])
