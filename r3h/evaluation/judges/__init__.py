"""Judges that score generated answers for the 3H evaluation.

The paper (Yang et al., arXiv 2502.06876, Table 9) scores four benchmarks with a judge
instead of a reference match:

==================  =================  ==========================================
rubric              benchmark          judge in the paper
==================  =================  ==========================================
``mt_bench_score``  MT-Bench           GPT-4-class model, single-answer grading 1-10
``hallucination``   HaluEval-Wild      GPT-4-class model, hallucinated yes/no
``safety``          SALAD-Bench        MD-Judge (a fine-tuned local LM), safe/unsafe
``refusal``         OR-Bench           refusal classification, refused/answered
==================  =================  ==========================================

The layer has one interface, :class:`Judge` (``judge(requests) -> verdicts``), and three
implementations (plus :class:`ReferenceMatchJudge`, the offline stand-in of ``taskpool=3h_smoke``):

* :class:`OpenAIChatJudge` -- any OpenAI-compatible ``/chat/completions`` endpoint (the
  OpenAI API or a local vLLM/TGI server). Standard library only (``urllib``), a thread
  pool capped at ``max_concurrency``, a per-request timeout, bounded retries with
  exponential back-off on 429/5xx/connection errors, and a :meth:`~OpenAIChatJudge.check`
  preflight that fails fast on a missing API key or an unreachable endpoint.
* :class:`HFJudge` -- a local Hugging Face causal LM (e.g. MD-Judge for safety), batched
  greedy generation through the tokenizer's chat template.
* :class:`RefusalDetector` -- a rule-based *heuristic* for the ``refusal`` rubric
  (refusal phrases at the start of the answer); no model, no cost.

Both model judges share the prompt :class:`Template` set (:data:`DEFAULT_TEMPLATES`), the
parsing rules (:func:`parse_verdict`) and an on-disk SQLite cache (:class:`JudgeCache`)
keyed by (judge model, rubric, template fingerprint, prompt, answer, reference): a rerun
asks the judge nothing it has already answered. The cache stores the judge's raw text and
parsing runs on every read, so a parsing fix applies to cached verdicts too.

A judge output that does not follow its rubric's format gives a :class:`Verdict` with
``ok=False`` and ``value=None``. Such failures are counted (:class:`JudgeStats`) and
reported next to the score by :func:`summarize`; they are never scored as a value.

The default templates are written for this package in the style of FastChat's MT-Bench
judge prompts (the ``"[[rating]]"`` output format), OR-Bench's three response classes and
MD-Judge's ``safe``/``unsafe`` first-line format. They are *not* the published prompts
word for word, so absolute numbers may differ from published ones. The published prompts:
FastChat's ``judge_prompts.jsonl`` (:func:`load_fastchat_templates`; the MT-Bench benchmark
loads them by default) and MD-Judge's evaluation templates, ``templates="md-judge-v0.1"``
(SALAD-BENCH's ``[INST] ... [/INST]`` prompt, sent as plain text) or
``templates="md-judge-v0.2"`` (the v0.2 model card's prompt, through the tokenizer's chat
template) (:data:`TEMPLATE_PRESETS`, shipped in ``data/judge_prompts/md_judge.json``).

The package, one module per concern: ``verdicts`` (rubrics, errors, requests, verdicts,
stats, summaries, :func:`parse_verdict`), ``templates`` (:class:`Template`, the built-in
wordings, FastChat and MD-Judge prompts), ``cache`` (:class:`JudgeCache`), ``base``
(:class:`Judge`, :class:`TemplateJudge`), ``openai_chat`` (:class:`OpenAIChatJudge`),
``hf`` (:class:`HFJudge`), ``rules`` (:class:`RefusalDetector`,
:class:`ReferenceMatchJudge`) and ``records`` (:func:`judge_jsonl`: verdicts saved as JSONL
beside a benchmark's answers, resumable). Every public name is importable from
``r3h.evaluation.judges``.
"""

from r3h.evaluation.judges.verdicts import (
    DEFAULT_LABELS,
    LABELS,
    RUBRICS,
    SCORE_RANGE,
    JudgeConfigError,
    JudgeError,
    JudgeRequest,
    JudgeRequestError,
    JudgeStats,
    JudgeSummary,
    JudgeUnavailableError,
    Verdict,
    parse_verdict,
    summarize,
)
from r3h.evaluation.judges.templates import (
    DEFAULT_TEMPLATES,
    TEMPLATE_PRESETS,
    Template,
    fastchat_templates,
    load_fastchat_templates,
    template_preset,
)
from r3h.evaluation.judges.cache import JudgeCache, default_judge_cache_path
from r3h.evaluation.judges.base import Judge, TemplateJudge
from r3h.evaluation.judges.openai_chat import OpenAIChatJudge
from r3h.evaluation.judges.hf import HFJudge
from r3h.evaluation.judges.rules import REFUSAL_PHRASES, REFUSAL_PREFIXES, UNSAFE_WORDS, RefusalDetector, ReferenceMatchJudge
from r3h.evaluation.judges.records import judge_jsonl, request_fingerprint

__all__ = [
    "RUBRICS",
    "LABELS",
    "DEFAULT_LABELS",
    "SCORE_RANGE",
    "JudgeRequest",
    "Verdict",
    "JudgeStats",
    "JudgeSummary",
    "summarize",
    "parse_verdict",
    "Template",
    "DEFAULT_TEMPLATES",
    "load_fastchat_templates",
    "fastchat_templates",
    "TEMPLATE_PRESETS",
    "template_preset",
    "JudgeCache",
    "default_judge_cache_path",
    "Judge",
    "TemplateJudge",
    "OpenAIChatJudge",
    "HFJudge",
    "RefusalDetector",
    "ReferenceMatchJudge",
    "UNSAFE_WORDS",
    "REFUSAL_PREFIXES",
    "REFUSAL_PHRASES",
    "JudgeError",
    "JudgeConfigError",
    "JudgeUnavailableError",
    "JudgeRequestError",
    "judge_jsonl",
    "request_fingerprint",
]
