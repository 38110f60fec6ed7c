"""3H evaluation: benchmark scores, their aggregation and the paper-format tables
(`aggregate`, `tables`), answers generated with the chat template (`generation`), and
the judges that score them (`judges`)."""

from .aggregate import (
    AVERAGES,
    BENCHMARKS,
    COLUMNS,
    DIMENSIONS,
    HARMLESS,
    HELPFUL,
    HONEST,
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
    "HELPFUL", "HONEST", "HARMLESS", "DIMENSIONS", "PAPER_DIMENSIONS", "BENCHMARKS", "AVERAGES", "COLUMNS",
    "AverageCheck", "Mismatch", "aggregate_3h", "aggregate_by_dimension", "benchmark_scores", "check_paper_averages",
    "load_paper_results", "build_table", "to_csv", "to_json", "to_latex", "to_markdown",
    "write_tables", "Judge", "JudgeRequest", "Verdict", "OpenAIChatJudge", "HFJudge",
    "RefusalDetector", "summarize",
]
