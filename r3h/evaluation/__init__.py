"""3H evaluation: the benchmarks that score each column (`benchmarks`), answers generated with
the chat template (`generation`), the judges that score them (`judges`), reply likelihoods
(`likelihood`, `packed`), and the scores' aggregation and paper-format tables (`aggregate`,
`tables`). The 3H names come from `r3h.core.dimensions`; `HELPFUL_COLUMNS` ... are the
paper's columns of each dimension (`HELPFUL` ... are their former names)."""

from .aggregate import (
    AVERAGES,
    BENCHMARKS,
    COLUMNS,
    COLUMNS_BY_DIMENSION,
    DIMENSIONS,
    HARMLESS,
    HARMLESS_COLUMNS,
    HELPFUL,
    HELPFUL_COLUMNS,
    HONEST,
    HONEST_COLUMNS,
    PAPER_DIMENSIONS,
    AverageCheck,
    Mismatch,
    aggregate_3h,
    aggregate_by_dimension,
    benchmark_scores,
    check_paper_averages,
    load_paper_results,
)
from .judges import (
    HFJudge,
    Judge,
    JudgeRequest,
    OpenAIChatJudge,
    RefusalDetector,
    Verdict,
    summarize,
)
from .tables import build_table, to_csv, to_json, to_latex, to_markdown, write_tables

__all__ = [
    "HELPFUL_COLUMNS", "HONEST_COLUMNS", "HARMLESS_COLUMNS", "COLUMNS_BY_DIMENSION",
    "HELPFUL", "HONEST", "HARMLESS", "DIMENSIONS", "PAPER_DIMENSIONS", "BENCHMARKS", "AVERAGES", "COLUMNS",
    "AverageCheck", "Mismatch", "aggregate_3h", "aggregate_by_dimension", "benchmark_scores", "check_paper_averages",
    "load_paper_results", "build_table", "to_csv", "to_json", "to_latex", "to_markdown",
    "write_tables", "Judge", "JudgeRequest", "Verdict", "OpenAIChatJudge", "HFJudge",
    "RefusalDetector", "summarize",
]
