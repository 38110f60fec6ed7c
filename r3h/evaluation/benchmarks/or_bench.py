"""OR-Bench (harmlessness): seemingly toxic prompts a calibrated model answers; score = %
answered (or % refused), judged with OR-Bench's own prompt (:class:`ORBench`)."""

from __future__ import annotations

from collections import Counter
from typing import Optional

from r3h.evaluation.benchmarks.judged import JudgedBenchmark
from r3h.evaluation.judges import RefusalDetector

__all__ = ['ORBench', 'OR_BENCH_PROMPT', 'OR_BENCH_METRICS']


#: The OR-Bench judge prompt r3h uses by default: OR-Bench's own response checker
#: (``justincui03/or-bench`` ``response_checker/check_response.py``, pinned in
#: ``r3h/evaluation/data/judge_prompts/or_bench.json``), a :data:`TEMPLATE_PRESETS` name.
OR_BENCH_PROMPT = "or-bench"
#: OR-Bench's score: ``answer_rate`` (% of prompts not refused; the paper's direction, higher is
#: better) or ``refusal_rate`` (% refused, OR-Bench's own over-refusal figure, lower is better).
OR_BENCH_METRICS = {"answer_rate": "answered", "refusal_rate": "refused"}


class ORBench(JudgedBenchmark):
    """OR-Bench (Cui et al., 2024); the paper uses the hard-1k subset (1,319 seemingly toxic
    prompts a well-calibrated model should answer) and counts it as harmlessness, higher is
    better. Score (``metric``):

    * ``answer_rate`` (default) = % of prompts answered (not refused): the paper's direction
      (its base rows, Llama-3-8B-Instruct 26.97 and Mistral-7B-Instruct-v0.2 74.68, fit the
      answer rate of OR-Bench's own figures, not the refusal rate; docs/evaluation.md);
    * ``refusal_rate`` = % refused, the over-refusal rate OR-Bench itself reports (lower is
      better: do not average it into ``Harmless_Avg``).

    Both rates and the judge's three classes are in the details.

    Data: ``bench-llm/or-bench`` (``or-bench-hard-1k``; also ``or-bench-toxic``,
    ``or-bench-80k``), fields ``prompt`` and ``category``. The judge is the one named by
    ``judge`` (the config's: GPT-4o, Table 9) or registered for the ``refusal`` rubric, prompted
    with ``judge_prompt`` (default :data:`OR_BENCH_PROMPT`, OR-Bench's ``check_response.py``
    prompt and its parsing of the last ``[[class]]``; ``null``: the judge's own templates); with
    neither judge, the rule-based :class:`~r3h.evaluation.judges.RefusalDetector` (a heuristic;
    reported as ``judge_fallback: true``).
    """

    column = "OR-Bench"
    dimension = "harmless"
    dataset = "OR-Bench"
    slug = "or_bench"
    rubric = "refusal"
    label = "answered"
    default_path = "bench-llm/or-bench"
    default_name = "or-bench-hard-1k"
    default_split = "train"
    prompt_fields = ("prompt", "question")
    id_fields = ("id",)
    category_fields = ("category",)

    def __init__(self, *args, metric: str = "answer_rate", judge_prompt: Optional[str] = OR_BENCH_PROMPT,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if metric not in OR_BENCH_METRICS:
            raise ValueError(f"{self.dataset}: metric must be one of {', '.join(OR_BENCH_METRICS)}; got {metric!r}")
        self.metric = metric
        self.label = OR_BENCH_METRICS[metric]
        if judge_prompt is not None:
            from r3h.evaluation.judges import TEMPLATE_PRESETS

            if TEMPLATE_PRESETS.get(judge_prompt, {}).get("rubric") != "refusal":
                refusal = [k for k, p in TEMPLATE_PRESETS.items() if p.get("rubric") == "refusal"]
                raise ValueError(f"{self.dataset}: judge_prompt {judge_prompt!r} is not a refusal prompt preset; "
                                 f"presets: {', '.join(refusal)}, or null for the judge's own")
        self.judge_prompt = judge_prompt

    def judge_templates(self):
        if self.judge_prompt is None:
            return None
        from r3h.evaluation.judges import template_preset

        return template_preset(self.judge_prompt)

    @property
    def table_note(self) -> Optional[str]:
        return ("answer rate, % not refused (higher is better)" if self.metric == "answer_rate"
                else "refusal rate, % refused (OR-Bench's over-refusal figure, lower is better)")

    def fallback_judge(self):
        return RefusalDetector()

    def extra_details(self, items, reqs, verdicts):
        d = super().extra_details(items, reqs, verdicts)
        ok = [v for v in verdicts if v.ok]
        refused = sum(v.value == "refused" for v in ok)
        d["metric"] = self.metric
        d["higher_is_better"] = self.metric == "answer_rate"
        d["refusal_rate"] = 100.0 * refused / len(ok) if ok else None
        d["answer_rate"] = 100.0 * (len(ok) - refused) / len(ok) if ok else None
        classes = ("direct_answer", "direct_refusal", "indirect_refusal")
        d["classes"] = dict(sorted(Counter(v.detail if v.detail in classes else v.value for v in ok).items()))
        template_for = getattr(self._judge_used, "template_for", None)
        d["judge_prompt"] = (template_for(reqs[0][1]).fingerprint if template_for is not None and reqs
                             else None)
        return d
