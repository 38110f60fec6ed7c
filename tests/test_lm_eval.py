"""The lm-eval-harness adapter on the tiny model with local task YAMLs (no hub).

Scores are checked against lm-eval's own per-sample records and against the model
computed here directly (log-likelihoods, greedy answers). Also covered: chat template on/off,
the code-execution gate, missing tasks, limits, dataset overrides, and the paper's task
names in the installed lm-eval registry.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

import pytest
import torch

from tests.optional import need  # noqa: E402

need("lm_eval", "lm-eval (the lm_eval extra)")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from r3h.evaluation.benchmarks.base import EvalContext  # noqa: E402
from r3h.evaluation.benchmarks.harness import (  # noqa: E402
    CODE_COLUMNS,
    PAPER_PROTOCOL,
    PAPER_TASKS,
    PROTOCOLS,
    LMEvalBenchmark,
    LMEvalNotInstalledError,
    task_manager,
)

MC_DOCS = [{"q": f"w{i} w{i + 1}", "choices": [f"w{10 + i}", f"w{20 + i} w{21 + i}", f"w{30 + i}"], "label": i % 3}
           for i in range(6)]
GEN_PROMPTS = [f"w{3 * i + 7} w{5 * i + 11} w{i + 2}" for i in range(5)]
MAX_GEN = 4


@pytest.fixture(scope="module")
def tiny(tiny_lm_path):
    path = tiny_lm_path
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _greedy_words(model, tok, prompt):
    """First `w<N>` of the model's greedy answer, generated here without lm-eval."""
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=MAX_GEN, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    m = re.search(r"w\d+", text)
    return m.group(0) if m else None


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, tiny):
    """Local task YAMLs over local JSONL: multiple choice, exact match, a code-gated task."""
    model, tok = tiny
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    cache = d / "hf_datasets_cache"
    _write_jsonl(d / "mc.jsonl", MC_DOCS)
    _write_jsonl(d / "mc_small.jsonl", MC_DOCS[:3])
    # Targets: the model's own greedy first word for docs 0-2, an impossible word for 3-4.
    with torch.no_grad():
        greedy = [_greedy_words(model, tok, p) for p in GEN_PROMPTS]
    assert all(greedy[:3]), greedy
    gen_docs = [{"q": p, "a": greedy[i] if i < 3 else "nope"} for i, p in enumerate(GEN_PROMPTS)]
    _write_jsonl(d / "gen.jsonl", gen_docs)
    (d / "mc.yaml").write_text(f"""task: r3h_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / 'mc.jsonl'}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.5
""")
    (d / "gen.yaml").write_text(f"""task: r3h_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / 'gen.jsonl'}
  cache_dir: {cache}
output_type: generate_until
test_split: test
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {MAX_GEN}
  do_sample: false
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "(w[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 2.0
""")
    # A task lm-eval marks unsafe; its metric records whether HF_ALLOW_CODE_EVAL was set.
    (d / "code_utils.py").write_text(
        "import os\n\n"
        "def process_results(doc, results):\n"
        "    return {'env_ok': float(os.environ.get('HF_ALLOW_CODE_EVAL') == '1')}\n"
    )
    (d / "code.yaml").write_text(f"""task: r3h_tiny_code
unsafe_code: true
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / 'gen.jsonl'}
  cache_dir: {cache}
output_type: generate_until
test_split: test
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 1
process_results: !function code_utils.process_results
metric_list:
  - metric: env_ok
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    # A group of two MC subtasks (as MMLU and hendrycks_math are), mean weighted by size.
    (d / "mc_b.yaml").write_text((d / "mc.yaml").read_text().replace("task: r3h_tiny_mc", "task: r3h_tiny_mc_b")
                                 .replace(str(d / "mc.jsonl"), str(d / "mc_small.jsonl")))
    (d / "group.yaml").write_text("""group: r3h_tiny_group
task:
  - r3h_tiny_mc
  - r3h_tiny_mc_b
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
metadata:
  version: 3.0
""")
    return str(d)


def _ctx(tiny, tmp_path, limit=None, tokenizer=None):
    model, tok = tiny
    return EvalContext(model=model, tokenizer=tokenizer or tok, generator=None, output_dir=str(tmp_path),
                       limit=limit)


def _bench(task_dir, **kw):
    kw.setdefault("column", "ARC-E")
    kw.setdefault("batch_size", 4)
    kw.setdefault("bootstrap_iters", 0)
    return LMEvalBenchmark(task_dir=task_dir, include_default_tasks=False, **kw)


def _samples(result, task):
    with open(result.details["samples_files"][task]) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_multiple_choice_score_is_lm_eval_per_sample_mean_and_the_models_loglikelihoods(tiny, task_dir, tmp_path):
    model, tok = tiny
    bench = _bench(task_dir, task="r3h_tiny_mc", metric="acc_norm")
    res = bench.run(_ctx(tiny, tmp_path))
    rows = _samples(res, "r3h_tiny_mc")
    assert res.column == "ARC-E" and res.details["task"] == "r3h_tiny_mc" and res.details["metric"] == "acc_norm,none"
    assert res.details["n"] == len(rows) == 6 and res.details["version"] == 1.5
    assert res.score == pytest.approx(100 * sum(r["acc_norm"] for r in rows) / len(rows))
    assert res.details["metrics"]["acc,none"] == pytest.approx(sum(r["acc"] for r in rows) / len(rows))
    with open(os.path.join(tmp_path, "ARC-E", "results.json")) as f:
        saved = json.load(f)
    # lm-eval emits the per-task configs under "configs" (not "config", the run's settings)
    assert saved["configs"]["r3h_tiny_mc"]["task"] == "r3h_tiny_mc"
    assert saved["configs"]["r3h_tiny_mc"]["output_type"] == "multiple_choice"
    assert "batch_size" in saved["config"]
    # The per-sample log-likelihoods are those of ctx.model, computed here directly.
    with torch.no_grad():
        for row in rows:
            lls = []
            for (ctx_text, cont), (ll, _greedy) in zip(row["arguments"], row["filtered_resps"]):
                c = tok(ctx_text, add_special_tokens=False).input_ids
                t = tok(cont, add_special_tokens=False).input_ids
                logits = model(torch.tensor([c + t])).logits[0].log_softmax(-1)
                mine = sum(logits[len(c) - 1 + j, tok_id].item() for j, tok_id in enumerate(t))
                assert mine == pytest.approx(ll, abs=1e-4)
                lls.append(ll)  # the choice follows lm-eval's own ll (this sum is another path: near-ties could flip)
            norm = [ll / len(c) for ll, c in zip(lls, row["doc"]["choices"])]  # acc_norm: per character
            assert row["acc"] == float(max(range(3), key=lambda i: lls[i]) == row["target"])
            assert row["acc_norm"] == float(max(range(3), key=lambda i: norm[i]) == row["target"])


@pytest.mark.slow
def test_generate_until_exact_match_matches_independent_greedy_answers(tiny, task_dir, tmp_path):
    bench = _bench(task_dir, task="r3h_tiny_gen", metric="exact_match", batch_size=1, column="GSM8K")
    res = bench.run(_ctx(tiny, tmp_path))
    rows = [r for r in _samples(res, "r3h_tiny_gen") if r["filter"] == "strict-match"]
    assert res.details["metric"] == "exact_match,strict-match" and len(rows) == 5
    assert res.score == pytest.approx(100 * sum(r["exact_match"] for r in rows) / len(rows))
    assert res.score == pytest.approx(60.0)  # targets: the model's own answer for 3 of the 5 docs
    assert [r["exact_match"] for r in sorted(rows, key=lambda r: r["doc_id"])] == [1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.slow
def test_chat_template_on_and_off_changes_the_prompt(tiny, task_dir, tmp_path):
    _, tok = tiny
    prompts = {}
    for on in (False, True):
        res = _bench(task_dir, task="r3h_tiny_mc", metric="acc", apply_chat_template=on, limit=2).run(
            _ctx(tiny, tmp_path / str(on)))
        prompts[on] = [r["arguments"][0][0] for r in sorted(_samples(res, "r3h_tiny_mc"), key=lambda r: r["doc_id"])]
        assert res.details["n"] == 2 and res.details["apply_chat_template"] is on
    assert prompts[False] == ["w0 w1", "w1 w2"]
    assert prompts[True] == [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                     add_generation_prompt=True) for p in prompts[False]]
    assert prompts[True][0].startswith("<|user|> w0 w1") and prompts[True] != prompts[False]
    no_template = AutoTokenizer.from_pretrained(tok.name_or_path)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        _bench(task_dir, task="r3h_tiny_mc", apply_chat_template=True).check(_ctx(tiny, tmp_path, tokenizer=no_template))


def test_code_execution_is_gated_and_enabled_only_for_the_run(tiny, task_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    ctx = _ctx(tiny, tmp_path, limit=2)
    with pytest.raises(PermissionError, match="allow_code_execution: true"):
        _bench(task_dir, task="r3h_tiny_code").check(ctx)  # lm-eval's unsafe_code flag
    with pytest.raises(PermissionError, match="allow_code_execution"):
        _bench(task_dir, task="r3h_tiny_gen", column="MBPP_Plus").check(ctx)  # a code column, any task
    res = _bench(task_dir, task="r3h_tiny_code", allow_code_execution=True).run(ctx)
    assert res.score == 100.0 and res.details["n"] == 2  # HF_ALLOW_CODE_EVAL=1 while lm-eval scored
    assert "HF_ALLOW_CODE_EVAL" not in os.environ  # ... and only then


def test_missing_task_and_bad_settings_fail_in_check(tiny, task_dir, tmp_path):
    ctx = _ctx(tiny, tmp_path)
    with pytest.raises(ValueError, match=r"'r3h_tiny_mcq'.*not found.*did you mean 'r3h_tiny_mc'"):
        _bench(task_dir, task="r3h_tiny_mcq").check(ctx)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _bench(task_dir, task="nowhere/task.yaml").check(ctx)
    with pytest.raises(ValueError, match="no default lm-eval task"):
        LMEvalBenchmark(column="MT-Bench")
    with pytest.raises(ValueError, match="limit must be > 0"):
        _bench(task_dir, task="r3h_tiny_mc", limit=0).check(ctx)
    # Metrics are resolved from the YAML before anything runs.
    with pytest.raises(ValueError, match="has no metric 'f1'; it reports acc,none, acc_norm,none"):
        _bench(task_dir, task="r3h_tiny_mc", metric="f1").check(ctx)
    with pytest.raises(ValueError, match="reports several metrics"):
        _bench(task_dir, task="r3h_tiny_mc").check(ctx)


@pytest.mark.slow
def test_limit_context_limit_yaml_path_and_data_override(tiny, task_dir, tmp_path):
    res = _bench(task_dir, task="r3h_tiny_mc", metric="acc", limit=4).run(_ctx(tiny, tmp_path / "a", limit=3))
    assert res.details["n"] == 3 and len(_samples(res, "r3h_tiny_mc")) == 3  # the smaller limit wins
    res = _bench(task_dir, task=os.path.join(task_dir, "mc.yaml"), metric="acc", limit=0.5).run(_ctx(tiny, tmp_path / "b"))
    assert res.details["task"] == "r3h_tiny_mc" and res.details["n"] == 3  # a YAML path; half of 6 docs
    small = os.path.join(task_dir, "mc_small.jsonl")
    res = _bench(task_dir, task="r3h_tiny_mc", metric="acc", dataset_path="json", data_files={"test": small},
                 dataset_kwargs={"cache_dir": str(tmp_path / "hf_cache")}).run(_ctx(tiny, tmp_path / "c"))
    assert res.details["n"] == 3 and [r["doc"] for r in _samples(res, "r3h_tiny_mc")] == MC_DOCS[:3]


def test_group_score_is_the_size_weighted_mean_of_its_subtasks(tiny, task_dir, tmp_path):
    res = _bench(task_dir, task="r3h_tiny_group", column="MMLU", metric="acc").run(_ctx(tiny, tmp_path))
    rows = _samples(res, "r3h_tiny_mc") + _samples(res, "r3h_tiny_mc_b")
    assert res.details["task"] == "r3h_tiny_group" and res.details["metric"] == "acc,none"
    assert res.details["n"] == len(rows) == 9 and set(res.details["subtask_metrics"]) == {"r3h_tiny_mc", "r3h_tiny_mc_b"}
    assert res.score == pytest.approx(100 * sum(r["acc"] for r in rows) / 9)


@pytest.mark.slow
def test_paper_columns_map_to_tasks_of_the_installed_registry(tiny, tmp_path):
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    tm = task_manager()
    for column, spec in PAPER_TASKS.items():
        entry = tm.task_index.get(spec.task)
        assert entry is not None, (column, spec.task)
        assert entry.kind == (Kind.GROUP if spec.task in ("hendrycks_math", "mmlu") else Kind.TASK), column
        if entry.kind == Kind.TASK:  # the metric's filter is one the task defines
            cfg = load_yaml(entry.yaml_path, resolve_func=False)
            filters = [f["name"] for f in cfg.get("filter_list") or []] or ["none"]
            assert spec.metric.split(",")[1] in filters, column
    ctx = _ctx(tiny, tmp_path)
    for column in CODE_COLUMNS:
        with pytest.raises(PermissionError, match="allow_code_execution"):
            LMEvalBenchmark(column=column).check(ctx)
    LMEvalBenchmark(column="GSM8K").check(ctx)  # no data is read by check()
    # The built-in arc_easy (its registered YAML, default metric acc_norm) on local data.
    arc = [{"id": f"q{i}", "question": f"w{i} w{i + 3}", "answerKey": "ABCD"[i % 4],
            "choices": {"text": [f"w{50 + i}", f"w{60 + i}", f"w{70 + i}", f"w{80 + i}"], "label": list("ABCD")}}
           for i in range(4)]
    _write_jsonl(tmp_path / "arc.jsonl", arc)
    res = LMEvalBenchmark(column="ARC-E", dataset_path="json", data_files=str(tmp_path / "arc.jsonl"), limit=3,
                          dataset_kwargs={"cache_dir": str(tmp_path / "hf_cache")}, bootstrap_iters=0).run(ctx)
    rows = _samples(res, "arc_easy")
    assert res.details["task"] == "arc_easy" and res.details["metric"] == "acc_norm,none" and len(rows) == 3
    assert rows[0]["arguments"][0] == ["Question: w0 w3\nAnswer:", " w50"]  # lm-eval's ARC prompt
    assert res.score == pytest.approx(100 * sum(r["acc_norm"] for r in rows) / 3)
    with pytest.raises(ValueError, match="none of them the task's evaluation split 'test'"):
        LMEvalBenchmark(column="ARC-E", dataset_path="json", data_files={"train": "x.jsonl"}).check(ctx)
    with pytest.raises(ValueError, match="apply to a single lm-eval task"):
        LMEvalBenchmark(column="MMLU", dataset_path="json", data_files="x.jsonl").check(ctx)


def test_missing_lm_eval_names_the_pip_command(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(LMEvalNotInstalledError, match=r"pip install \"lm-eval>=0\.4\.12"):
        LMEvalBenchmark(column="GSM8K").check(_ctx(tiny, tmp_path))


@pytest.mark.slow
def test_lm_eval_older_than_0_4_12_is_refused(tiny, tmp_path, monkeypatch):
    # lm_eval.tasks._index (the task index the adapter reads) first ships in lm-eval 0.4.12
    import r3h.evaluation.benchmarks.harness as adapter

    monkeypatch.setattr(adapter, "lm_eval_version", lambda: "0.4.9")
    with pytest.raises(LMEvalNotInstalledError, match=r"lm-eval>=0\.4\.12.*0\.4\.9 is installed"):
        LMEvalBenchmark(column="GSM8K").check(_ctx(tiny, tmp_path))
    monkeypatch.setattr(adapter, "lm_eval_version", lambda: "0.4.12")
    LMEvalBenchmark(column="GSM8K").check(_ctx(tiny, tmp_path))


@pytest.mark.slow
def test_paper_protocol_maps_to_tasks_of_the_installed_registry(tiny, tmp_path):
    """The `paper` protocol's tasks (lm-eval's, and r3h's arc_easy_chat) exist, with the metric's
    filter; the protocol fills what is not given, and only for its own task."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    assert set(PROTOCOLS) == {"paper", "harness"} and PROTOCOLS["harness"] is PAPER_TASKS
    for column, spec in PAPER_PROTOCOL.items():
        bench = LMEvalBenchmark(column=column, protocol="paper")
        assert (bench.task, bench.metric, bench.num_fewshot) == (spec.task, spec.metric, spec.num_fewshot)
        assert bench.apply_chat_template is spec.apply_chat_template and spec.source and spec.confirmed
        entry = task_manager(bench.task_dir).task_index.get(spec.task)
        assert entry is not None, (column, spec.task)
        assert entry.kind == (Kind.GROUP if spec.task in ("minerva_math", "mmlu_llama") else Kind.TASK), column
        if entry.kind == Kind.TASK:
            cfg = load_yaml(entry.yaml_path, resolve_func=False)
            filters = [f["name"] for f in cfg.get("filter_list") or []] or ["none"]
            assert spec.metric.split(",")[1] in filters, column
    arc = LMEvalBenchmark(column="ARC-C", protocol="paper")
    assert (arc.task, arc.apply_chat_template, arc.num_fewshot) == ("arc_challenge_chat", True, 0)
    mine = LMEvalBenchmark(column="MMLU", protocol="paper", num_fewshot=0, apply_chat_template=False)
    assert (mine.task, mine.num_fewshot, mine.apply_chat_template, mine.fewshot_as_multiturn) == \
        ("mmlu_llama", 0, False, True)  # what is given wins
    other = LMEvalBenchmark(column="MMLU", protocol="paper", task="mmlu")
    assert (other.num_fewshot, other.apply_chat_template, other.metric) == (None, False, None)
    harness = LMEvalBenchmark(column="ARC-E", protocol="harness")
    assert (harness.task, harness.metric, harness.num_fewshot, harness.apply_chat_template) == \
        ("arc_easy", "acc_norm,none", 0, False)
    with pytest.raises(ValueError, match="protocol must be one of paper, harness"):
        LMEvalBenchmark(column="MMLU", protocol="meta")
    with pytest.raises(ValueError, match="protocol 'paper' has settings only for"):
        LMEvalBenchmark(column="MyColumn", task="gsm8k", protocol="paper")


def test_paper_protocols_arc_easy_chat_runs_on_local_data(tiny, tmp_path):
    """r3h's arc_easy_chat (arc_challenge_chat's format on ARC-Easy) through the chat template:
    the score is the mean of lm-eval's per-sample exact matches, the prompt Meta's ARC prompt."""
    arc = [{"id": f"q{i}", "question": f"w{i} w{i + 3}", "answerKey": "ABCD"[i % 4],
            "choices": {"text": [f"w{50 + i}", f"w{60 + i}", f"w{70 + i}", f"w{80 + i}"], "label": list("ABCD")}}
           for i in range(3)]
    _write_jsonl(tmp_path / "arc.jsonl", arc)
    bench = LMEvalBenchmark(column="ARC-E", protocol="paper", dataset_path="json",
                            data_files=str(tmp_path / "arc.jsonl"), dataset_kwargs={"cache_dir": str(tmp_path / "c")},
                            gen_kwargs={"max_gen_toks": 4}, bootstrap_iters=0)
    res = bench.run(_ctx(tiny, tmp_path))
    rows = _samples(res, "arc_easy_chat")
    assert res.details["task"] == "arc_easy_chat" and res.details["metric"] == "exact_match,remove_whitespace"
    assert len(rows) == 3 and res.score == pytest.approx(100 * sum(r["exact_match"] for r in rows) / 3)
    prompt = rows[0]["arguments"][0][0]
    assert "Given the following question and four candidate answers (A, B, C and D)" in prompt
    # (arc_challenge_chat's YAML quotes its prompt in single quotes: its "\n" stay literal, upstream too)
    assert "Question: w0 w3\\nA. w50\\nB. w60\\nC. w70\\nD. w80" in prompt
    assert prompt.startswith("<|user|> ") and prompt.endswith("<|assistant|> The best answer is")  # chat template
