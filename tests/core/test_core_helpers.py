"""r3h.core.paths (slug, the run's log/output folder) and r3h.io.plain.jsonable: the one
home of helpers that used to be written in several modules."""

from __future__ import annotations

import json
import math
import os
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from r3h.core.paths import run_log_dir, run_output_dir, slug
from r3h.io.plain import jsonable


def test_slug_rule():
    assert slug("ties k=0.2 (run 1)") == "ties_k=0.2_run_1"
    assert slug("a/b\\c") == "a_b_c" and slug("x..y-z_1") == "x..y-z_1"
    assert slug("  (merged)  ") == "merged"  # runs of unsafe characters -> one "_", ends stripped
    assert slug("") == "_" and slug("!!!", "model") == "model"
    assert slug(3) == "3"


@pytest.mark.parametrize("name", ["HaluEval-QA-lite", "HarmBench-lite", "DoNotAnswer-lite", "Arithmetic-lite",
                                  "MMLU", "ARC-E", "HumanEval_Plus", "mmlu_abstract_algebra", "leaderboard_math_hard",
                                  "Llama-3-8B.r_tsvm", "ties/k=0.2"])
def test_slug_keeps_the_names_already_on_disk(name):
    """The folders of the 3h_lite columns and lm-eval tasks (old rule [^A-Za-z0-9_.-]+ -> _) and of
    the taskpool's models (old rule [^A-Za-z0-9._=-]+ -> _, stripped, "model") keep their names."""
    taskpool_old = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_") or "model"
    assert slug(name, "model") == taskpool_old
    if "=" not in name:
        assert slug(name) == re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class _Program:
    def __init__(self, log_dir):
        self._log_dir = log_dir

    @property
    def log_dir(self):
        if isinstance(self._log_dir, Exception):
            raise self._log_dir
        return self._log_dir


class _Owner:
    def __init__(self, program=None):
        self._program = program


def test_run_log_dir(tmp_path):
    assert run_log_dir(object()) is None
    assert run_log_dir(_Owner()) is None
    assert run_log_dir(_Owner(_Program(None))) is None
    assert run_log_dir(_Owner(_Program(RuntimeError("no fabric")))) is None
    assert run_log_dir(_Owner(_Program(str(tmp_path / "logs")))) == str(tmp_path / "logs")
    assert run_log_dir(_Owner(_Program("rel/logs"))) == os.path.abspath("rel/logs")


def test_run_output_dir(tmp_path):
    inside = _Owner(_Program(str(tmp_path / "logs")))
    assert run_output_dir(str(tmp_path / "mine"), inside, "3h") == str(tmp_path / "mine")
    assert run_output_dir("~/x", inside, "3h") == os.path.join(os.path.expanduser("~"), "x")
    assert run_output_dir(None, inside, "3h") == str(tmp_path / "logs")
    assert run_output_dir(None, inside, "analysis", sub="alignment_vectors") == str(tmp_path / "logs" / "alignment_vectors")
    assert run_output_dir(None, _Owner(), "analysis", sub="alignment_vectors") == os.path.abspath("outputs/analysis")
    assert run_output_dir("", _Owner(), "3h") == os.path.abspath("outputs/3h")


def test_jsonable():
    cfg = OmegaConf.create({"a": [1, 2], "b": {"c": (3, 4)}})
    got = jsonable({"cfg": cfg, 1: (1.5, float("nan"), float("inf")), "s": {7}, "f": Fraction(1, 5),
                    "p": Path("/tmp/x"), "t": torch.tensor(2.5), "n": None, "ok": True, "obj": object})
    assert got["cfg"] == {"a": [1, 2], "b": {"c": [3, 4]}}
    assert got["1"] == [1.5, None, None]
    assert got["s"] == [7] and got["f"] == "1/5" and got["p"] == "/tmp/x"
    assert got["t"] == 2.5 and got["n"] is None and got["ok"] is True
    assert got["obj"] == str(object)
    json.dumps(got, allow_nan=False)  # strict JSON
    assert jsonable(torch.tensor(float("nan"))) is None and not math.isnan(jsonable(1.0))


def test_write_json_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    import json
    import math

    from r3h.io.plain import write_json_atomic

    path = tmp_path / "r.json"
    path.write_text("old")
    write_json_atomic(str(path), {"a": 1, "nan": math.nan})
    assert json.loads(path.read_text()) == {"a": 1, "nan": None}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
