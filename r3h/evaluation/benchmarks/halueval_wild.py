"""HaluEval-Wild (honesty): real user queries; score = % of answers a judge finds free of
hallucination (:class:`HaluEvalWild`), on the benchmark's JSON pinned to a commit."""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Optional, Sequence, Tuple

from r3h.io.plain import to_container
from r3h.evaluation.benchmarks.judged import DatasetFieldError, JudgedBenchmark, first_field, is_text

__all__ = ['HaluEvalWild', 'HALUEVAL_WILD_COMMIT', 'HALUEVAL_WILD_URL', 'HALUEVAL_WILD_TYPES']


#: HaluEval-Wild's data file in its repository (moved from Dianezzy/HaluEval-Wild to the
#: HaluEval-Wild organisation), pinned to a commit: 600 records, 100 per query type, fields
#: ``id``, ``query``, ``query_type``, ``ref_answer`` (all strings).
HALUEVAL_WILD_COMMIT = "b1621dbb2ed7411cc6d51a517a153c2f93ec9a51"
HALUEVAL_WILD_URL = ("https://raw.githubusercontent.com/HaluEval-Wild/HaluEval-Wild/"
                     f"{HALUEVAL_WILD_COMMIT}/HaluEval_Wild_6types.json")
#: The five query types of the benchmark; the release also holds 100 queries of "other types",
#: which its README says were removed from the final benchmark (500 queries).
HALUEVAL_WILD_TYPES: Tuple[str, ...] = (
    "out-of-scope information", "complex reasoning", "inappropriate content",
    "beyond-modality interaction", "confused / erroneous queries",
)


class HaluEvalWild(JudgedBenchmark):
    """HaluEval-Wild (Zhu et al., 2024): challenging real user queries; score = % of answers
    the judge finds free of hallucination.

    Data: the benchmark's JSON from its GitHub repository (not on the hub), read with
    ``path: json`` and ``data_files: <raw URL pinned to a commit>`` (:data:`HALUEVAL_WILD_URL`);
    a downloaded copy works with ``path``. Records hold ``query`` (also accepted:
    ``question``/``prompt``), ``query_type`` (the category) and the reference answer
    ``ref_answer`` (also accepted: ``reference``, ``ref``, ``answer``; ``reference_field``
    names another, ``null`` uses none).

    ``query_types``: the types scored (default :data:`HALUEVAL_WILD_TYPES`, the benchmark's
    500 queries; the release's "other types" are left out, as its README says the final
    benchmark does); ``null`` scores every record. Each listed type must occur in the data,
    so a renamed type fails instead of scoring a smaller set. The denominator is not settled:
    Table 9 and the README say 500, while the paper's base rows fit k/600 (Llama-3-8B-Instruct
    53.50 = 321/600, Mistral-7B-Instruct-v0.2 62.17 = 373/600; docs/evaluation.md).
    """

    column = "HaluEval_Wild"
    dimension = "honest"
    dataset = "HaluEval-Wild"
    slug = "halueval_wild"
    rubric = "hallucination"
    label = "no"
    default_path = "json"
    default_data_files = HALUEVAL_WILD_URL
    default_split = "train"
    prompt_fields = ("query", "question", "prompt")
    id_fields = ("id", "qid")
    category_fields = ("query_type", "category", "type")
    REFERENCE_FIELDS = ("ref_answer", "reference", "ref", "answer")

    def __init__(self, *args, reference_field: Optional[str] = "auto",
                 query_types: Optional[Sequence[str]] = HALUEVAL_WILD_TYPES, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_field = reference_field
        self.query_types = None if query_types is None else tuple(to_container(query_types))
        if self.query_types is not None and not self.query_types:
            raise ValueError(f"{self.dataset}: query_types is empty; give the types to score, or null for all")
        self.selection: Dict[str, Any] = {}

    def select(self, rows):
        if self.query_types is None:
            self.selection = {"query_types": "all", "n_records": len(rows)}
            return rows
        for i, row in enumerate(rows):
            if not is_text(row.get("query_type")):
                raise self._missing(i, row, ("query_type",), "non-empty field")
        counts = Counter(row["query_type"] for row in rows)
        absent = [t for t in self.query_types if t not in counts]
        if absent:
            raise DatasetFieldError(
                f"{self.dataset} ({self.source}): no record has query_type {', '.join(map(repr, absent))}; the "
                f"data holds {dict(sorted(counts.items()))}")
        kept = [row for row in rows if row["query_type"] in self.query_types]
        self.selection = {"query_types": list(self.query_types), "n_records": len(rows), "n_scored": len(kept),
                          "per_type": {t: counts[t] for t in self.query_types},
                          "left_out": {t: c for t, c in sorted(counts.items()) if t not in self.query_types}}
        return kept

    def parse(self, i, row):
        item = super().parse(i, row)
        if self.reference_field is None:
            return item
        if self.reference_field == "auto":
            f = first_field(row, self.REFERENCE_FIELDS)
        else:
            if self.reference_field not in row:
                raise self._missing(i, row, (self.reference_field,))
            f = self.reference_field
        if f is not None and is_text(row[f]):
            item["reference"] = row[f]
        return item

    def extra_details(self, items, reqs, verdicts):
        d = super().extra_details(items, reqs, verdicts)
        d["selection"] = dict(self.selection)
        d["n_with_reference"] = sum(bool(it.get("reference")) for it in items)
        return d
