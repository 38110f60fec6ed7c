"""SALAD-Bench (harmlessness): harmful questions; score = % of answers a judge finds safe
(:class:`SaladBench`), on a seeded sample of the paper's size."""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Optional

from r3h.evaluation.benchmarks.judged import JudgedBenchmark

__all__ = ['SaladBench', 'PAPER_SALAD_SIZE']


#: The number of SALAD-Bench questions the paper scores (Table 9), SaladBench's default sample
#: size. Which 1,817 of the 21,318 base-set questions is not published: the seeded sample is a
#: stand-in of that size, not the paper's subset.
PAPER_SALAD_SIZE = 1817


class SaladBench(JudgedBenchmark):
    """SALAD-Bench (Li et al., 2024): harmful questions; score = % of answers judged safe
    (the paper's judge is MD-Judge v0.2).

    Data: ``OpenSafetyLab/Salad-Data``; the ``base_set`` has ``qid``, ``question``,
    ``source`` and ``1-category``/``2-category``/``3-category``; the ``attack_enhanced_set``
    ``aid``, ``augq`` (the attack-enhanced question), ``baseq``, ``method``; the
    ``defense_enhanced_set`` ``did``, ``daugq``. The prompt is the first of
    ``question``, ``augq``, ``daugq``, ``prompt``; the id the first of ``aid``, ``did``,
    ``qid``, ``id``; per-category safety rates use ``1-category``.

    Question set: by default a sample of :data:`PAPER_SALAD_SIZE` (1,817, the paper's size,
    Table 9) drawn with ``random.Random(sample_seed)`` (kept in data order); ``sample_size``
    sets another size, ``null`` scores every record of the configuration (21,318 in
    ``base_set``). The paper does not publish which 1,817 questions it scored, so no sample
    reproduces its exact questions: the seeded one is a stand-in of the same size. The set used
    goes into the details (``question_set``, and ``question_ids``: the ids scored, in order)
    and the results table's caption.
    """

    column = "Salad_Bench"
    dimension = "harmless"
    dataset = "SALAD-Bench"
    slug = "salad_bench"
    rubric = "safety"
    label = "safe"
    default_path = "OpenSafetyLab/Salad-Data"
    default_name = "base_set"
    default_split = "train"
    prompt_fields = ("question", "augq", "daugq", "prompt")
    id_fields = ("aid", "did", "qid", "id")
    category_fields = ("1-category", "category")

    def __init__(self, *args, sample_size: Optional[int] = PAPER_SALAD_SIZE, sample_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if sample_size is not None and int(sample_size) < 1:
            raise ValueError(f"{self.dataset}: sample_size must be >= 1, got {sample_size}")
        self.sample_size = None if sample_size is None else int(sample_size)
        self.sample_seed = int(sample_seed)
        self.question_set: Optional[str] = None

    def select(self, rows):
        what = self.name or os.path.basename(self.path)
        if self.sample_size is None:
            self.question_set = f"{what}, all {len(rows):,} questions"
            return rows
        if self.sample_size > len(rows):
            raise ValueError(f"{self.dataset} ({self.source}): sample_size {self.sample_size} is larger than the "
                             f"{len(rows)} records")
        keep = sorted(random.Random(self.sample_seed).sample(range(len(rows)), self.sample_size))
        self.question_set = (f"{what}, seeded sample of {self.sample_size:,} of {len(rows):,} questions "
                             f"(seed {self.sample_seed}; not the paper's unpublished subset)")
        return [rows[i] for i in keep]

    @property
    def table_note(self) -> Optional[str]:
        return self.question_set

    def extra_details(self, items, reqs, verdicts):
        d = super().extra_details(items, reqs, verdicts)
        unsafe = Counter(v.detail or "unspecified" for v in verdicts if v.ok and v.value == "unsafe")
        d["unsafe_categories"] = dict(sorted(unsafe.items()))
        d["question_set"] = self.question_set
        d["question_ids"] = [it["id"] for it in items]
        return d
