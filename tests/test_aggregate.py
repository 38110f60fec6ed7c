"""3H aggregation (`r3h.evaluation.aggregate`) and the paper-format tables (`r3h.evaluation.tables`).

The averages are checked against hand-computed examples and against the paper's own rows
(the shipped `paper_3h_results.csv`), recomputed here from the definition without the
library: every row whose arithmetic is right matches to ±0.01, and the rows whose
arithmetic is off are listed explicitly, column by column.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import pytest

from r3h.evaluation import aggregate as agg_mod
from r3h.evaluation import (
    AVERAGES,
    BENCHMARKS,
    COLUMNS,
    HARMLESS,
    HELPFUL,
    HONEST,
    aggregate_3h,
    benchmark_scores,
    build_table,
    check_paper_averages,
    load_paper_results,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
    write_tables,
)

# The reference copy the shipped CSV was taken from: shared/ beside or above the checkout.
SHARED_CSVS = [Path(__file__).resolve().parents[i] / "shared" / "reference" / "paper_3h_results.csv" for i in (1, 2)]
SHIPPED_CSV = Path(agg_mod.__file__).with_name("paper_3h_results.csv")

PAPER_HEADER = [
    "table", "setting", "method", "Math", "GSM8K", "ARC-E", "ARC-C", "MMLU", "MBPP_Plus",
    "HumanEval_Plus", "MT-Bench", "HaluEval_Wild", "Salad_Bench", "OR-Bench", "Helpful_Avg",
    "Honest_Avg", "Harmless_Avg", "AVG",
]

# The rows of the paper whose printed averages do not follow from their benchmark numbers
# (tol 0.01), with the columns that are off and reported - recomputed (3 decimals).
PAPER_ROWS_OFF = {
    ("Table 3", "3H Mixture Full Training (ArmoRM)"): {"Helpful_Avg": 0.299, "Harmless_Avg": 1.905, "AVG": 0.738},
    ("Table 3", "3H Mixture Training (Hummer)"): {"Helpful_Avg": 0.296, "Harmless_Avg": 2.105, "AVG": 0.797},
    ("Table 3", "DELLA Ties"): {"AVG": -0.090},
    ("Table 4", "Weight Average"): {"AVG": 0.448},
    ("Table 4", "DARE Ties"): {"Helpful_Avg": 0.054, "AVG": 0.220},
    ("Table 4", "DELLA"): {"Harmless_Avg": -3.000, "AVG": -0.999},
    ("Table 5", "Continual DPO Training Stage3"): {"Helpful_Avg": 0.250, "AVG": 0.077},
    ("Table 5", "Weight Average"): {"AVG": -0.014},
    ("Table 5", "TSVM"): {"Harmless_Avg": -0.120, "AVG": -0.197},
    ("Table 10", "Continual DPO Training Stage3"): {"AVG": -0.030},
}
# Of those, the rows whose AVG does not even match the mean of the paper's own printed
# dimension averages (the others' AVG mismatch only propagates a dimension-average one).
PAPER_AVG_INCONSISTENT = {
    ("Table 3", "DELLA Ties"),
    ("Table 4", "Weight Average"),
    ("Table 4", "DARE Ties"),
    ("Table 5", "Weight Average"),
    ("Table 5", "TSVM"),
    ("Table 10", "Continual DPO Training Stage3"),
}


def full_scores(**overrides):
    base = {
        "Math": 10.0, "GSM8K": 50.0, "ARC-E": 80.0, "ARC-C": 70.0, "MMLU": 60.0,
        "MBPP_Plus": 40.0, "HumanEval_Plus": 30.0, "MT-Bench": 7.0,
        "HaluEval_Wild": 50.0, "Salad_Bench": 80.0, "OR-Bench": 40.0,
    }
    base.update(overrides)
    return base


def definition(row):
    """The paper's averages, written out independently of the library."""
    helpful = sum(row[k] for k in ("Math", "GSM8K", "ARC-E", "ARC-C", "MMLU", "MBPP_Plus",
                                   "HumanEval_Plus", "MT-Bench")) / 8
    honest = row["HaluEval_Wild"]
    harmless = (row["Salad_Bench"] + row["OR-Bench"]) / 2
    return {"Helpful_Avg": helpful, "Honest_Avg": honest, "Harmless_Avg": harmless,
            "AVG": (helpful + honest + harmless) / 3}


# --------------------------------------------------------------------------------------
# Constants and aggregate_3h


def test_columns_follow_the_csv():
    assert list(HELPFUL + HONEST + HARMLESS) == list(BENCHMARKS)
    assert ["table", "setting", "method"] + list(COLUMNS) == PAPER_HEADER
    assert len(HELPFUL) == 8 and HONEST == ("HaluEval_Wild",) and HARMLESS == ("Salad_Bench", "OR-Bench")
    assert AVERAGES == ("Helpful_Avg", "Honest_Avg", "Harmless_Avg", "AVG")


def test_aggregate_hand_computed():
    out = aggregate_3h(full_scores())
    # (10 + 50 + 80 + 70 + 60 + 40 + 30 + 7) / 8 = 347 / 8
    assert out["Helpful_Avg"] == pytest.approx(43.375, abs=1e-12)
    assert out["Honest_Avg"] == pytest.approx(50.0, abs=1e-12)
    assert out["Harmless_Avg"] == pytest.approx(60.0, abs=1e-12)  # (80 + 40) / 2
    assert out["AVG"] == pytest.approx((43.375 + 50 + 60) / 3, abs=1e-12)  # 51.125
    assert list(out) == list(COLUMNS)  # benchmarks then averages, CSV order; no "partial"
    assert all(isinstance(v, float) for v in out.values())


def test_aggregate_paper_row_by_hand():
    # Table 3, Llama3-8B-Instruct: MT-Bench enters on its 1-10 scale.
    scores = {"Math": 28.08, "GSM8K": 78.09, "ARC-E": 93.65, "ARC-C": 82.03, "MMLU": 68.2,
              "MBPP_Plus": 58.99, "HumanEval_Plus": 53.05, "MT-Bench": 8.25,
              "HaluEval_Wild": 53.5, "Salad_Bench": 91.16, "OR-Bench": 26.97}
    out = aggregate_3h(scores)
    assert out["Helpful_Avg"] == pytest.approx(470.34 / 8)      # 58.7925 -> 58.79
    assert out["Harmless_Avg"] == pytest.approx(118.13 / 2)     # 59.065  -> 59.07
    assert out["AVG"] == pytest.approx((58.7925 + 53.5 + 59.065) / 3)  # 57.119 -> 57.12
    assert out["MT-Bench"] == 8.25


def test_aggregate_accepts_ints_and_keeps_inputs():
    scores = {k: int(v) for k, v in full_scores().items() if float(v).is_integer()}
    out = aggregate_3h(scores)
    assert out["Math"] == 10.0 and isinstance(out["Math"], float)
    assert scores == {k: int(v) for k, v in full_scores().items()}  # input untouched


def test_missing_benchmark_is_named():
    scores = full_scores()
    del scores["MT-Bench"]
    with pytest.raises(ValueError, match=r"Helpfulness \(Helpful_Avg\) is missing MT-Bench") as err:
        aggregate_3h(scores)
    assert "allow_partial" in str(err.value)


def test_missing_benchmarks_listed_per_dimension():
    scores = full_scores()
    for k in ("HaluEval_Wild", "OR-Bench", "Salad_Bench", "GSM8K"):
        del scores[k]
    with pytest.raises(ValueError) as err:
        aggregate_3h(scores)
    msg = str(err.value)
    assert "Helpfulness (Helpful_Avg) is missing GSM8K" in msg
    assert "Honesty (Honest_Avg) is missing HaluEval_Wild" in msg
    assert "Harmlessness (Harmless_Avg) is missing Salad_Bench, OR-Bench" in msg


def test_none_counts_as_missing():
    with pytest.raises(ValueError, match="missing OR-Bench"):
        aggregate_3h(full_scores(**{"OR-Bench": None}))


def test_unknown_keys_are_rejected():
    scores = full_scores()
    scores["GSM8k"] = scores.pop("GSM8K")
    with pytest.raises(ValueError, match=r"unknown benchmark.*'GSM8k' \(did you mean 'GSM8K'\?\)"):
        aggregate_3h(scores)
    with pytest.raises(ValueError, match="'AVG' is an average, computed here"):
        aggregate_3h(full_scores(AVG=50.0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "n/a"])
def test_non_numbers_are_rejected(bad):
    with pytest.raises(ValueError, match="MMLU"):
        aggregate_3h(full_scores(MMLU=bad))


def test_partial_averages_marked():
    scores = full_scores()
    del scores["OR-Bench"], scores["MT-Bench"]
    out = aggregate_3h(scores, allow_partial=True)
    assert out["Helpful_Avg"] == pytest.approx(340 / 7)
    assert out["Harmless_Avg"] == pytest.approx(80.0)
    assert out["AVG"] == pytest.approx((340 / 7 + 50 + 80) / 3)
    assert out["partial"] == {
        "Helpful_Avg": ("MT-Bench",),
        "Harmless_Avg": ("OR-Bench",),
        "AVG": ("MT-Bench", "OR-Bench"),
    }
    assert "MT-Bench" not in out and "OR-Bench" not in out


def test_partial_with_a_whole_dimension_missing():
    scores = full_scores()
    del scores["HaluEval_Wild"]
    out = aggregate_3h(scores, allow_partial=True)
    assert out["Honest_Avg"] is None
    assert out["AVG"] == pytest.approx((43.375 + 60) / 2)
    assert out["partial"] == {"Honest_Avg": ("HaluEval_Wild",), "AVG": ("HaluEval_Wild",)}
    with pytest.raises(ValueError, match="no benchmark score"):
        aggregate_3h({}, allow_partial=True)


def test_complete_input_with_allow_partial_is_plain():
    assert aggregate_3h(full_scores(), allow_partial=True) == aggregate_3h(full_scores())


# --------------------------------------------------------------------------------------
# The paper's numbers


def test_shipped_csv_is_the_reference_copy():
    assert SHIPPED_CSV.is_file()
    for ref in SHARED_CSVS:
        if ref.is_file():
            assert SHIPPED_CSV.read_bytes() == ref.read_bytes()


def test_load_paper_results():
    rows = load_paper_results()
    assert len(rows) == 76
    assert list(rows[0]) == PAPER_HEADER
    assert rows[0]["table"] == "Table 3" and rows[0]["method"] == "Llama3-8B-Instruct"
    assert rows[0]["MMLU"] == 68.2 and rows[0]["AVG"] == 57.12
    assert all(isinstance(r[c], float) for r in rows for c in COLUMNS)
    counts = {}
    for r in rows:
        counts[r["table"]] = counts.get(r["table"], 0) + 1
    assert counts == {"Table 3": 21, "Table 4": 21, "Table 5": 16, "Table 10": 16, "Table 11": 1, "Table 12": 1}
    assert len({(r["table"], r["method"]) for r in rows}) == 76
    assert [r["method"] for r in load_paper_results(table="Table 11")] == ["R-TSVM"]
    assert len(load_paper_results(setting="llama3_static")) == 22  # Tables 3 and 11
    assert load_paper_results(SHIPPED_CSV) == rows


def test_load_rejects_a_file_without_the_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("method,Math\nx,1\n")
    with pytest.raises(ValueError, match="missing column"):
        load_paper_results(path)


def test_paper_rows_reproduce_except_the_listed_ones():
    rows = load_paper_results()
    ok = 0
    off = {}
    for row in rows:
        want = definition(row)
        diffs = {c: row[c] - want[c] for c in AVERAGES if abs(row[c] - want[c]) > 0.01 + 1e-9}
        if diffs:
            off[(row["table"], row["method"])] = diffs
        else:
            ok += 1
            assert all(abs(row[c] - want[c]) <= 0.0076 for c in AVERAGES)  # printed 2-decimal rounding
    assert ok == 66
    assert set(off) == set(PAPER_ROWS_OFF)
    for key, diffs in off.items():
        assert set(diffs) == set(PAPER_ROWS_OFF[key]), key
        for c, d in diffs.items():
            assert d == pytest.approx(PAPER_ROWS_OFF[key][c], abs=0.001), (key, c)


def test_check_paper_averages_flags_exactly_the_listed_rows():
    rows = load_paper_results()
    checks = check_paper_averages(rows)
    assert len(checks) == len(rows)
    assert [c.index for c in checks] == list(range(len(rows)))
    assert sum(c.ok for c in checks) == 66
    flagged = {c.key: {m.column: m.diff for m in c.mismatches} for c in checks if not c.ok}
    assert set(flagged) == set(PAPER_ROWS_OFF)
    for key, cols in flagged.items():
        assert cols.keys() == PAPER_ROWS_OFF[key].keys(), key
        for c, d in cols.items():
            assert d == pytest.approx(PAPER_ROWS_OFF[key][c], abs=0.001), (key, c)
    for row, check in zip(rows, checks):
        want = definition(row)
        for c in AVERAGES:
            assert check.recomputed[c] == pytest.approx(want[c], abs=1e-9)
        for m in check.mismatches:
            assert m.reported == row[m.column]
            assert m.diff == pytest.approx(m.reported - m.recomputed)
    inconsistent = {c.key for c in checks if abs(c.avg_of_reported - rows[c.index]["AVG"]) > 0.01 + 1e-9}
    assert inconsistent == PAPER_AVG_INCONSISTENT


def test_check_paper_averages_detail():
    (check,) = check_paper_averages(load_paper_results(table="Table 4")[16:17])
    assert check.key == ("Table 4", "DELLA")
    assert [m.column for m in check.mismatches] == ["Harmless_Avg", "AVG"]
    harmless = check.mismatches[0]
    assert harmless.reported == 77.78 and harmless.recomputed == pytest.approx((84.36 + 77.2) / 2)
    d = check.to_dict()
    assert d["ok"] is False and d["mismatches"][0]["column"] == "Harmless_Avg"
    json.dumps(d)


def test_check_tolerance_and_missing_benchmarks():
    row = dict(aggregate_3h(full_scores()))
    row["Helpful_Avg"] += 0.01  # at the tolerance: not a mismatch
    assert check_paper_averages([row])[0].ok
    assert not check_paper_averages([row], tol=0.001)[0].ok
    row["Helpful_Avg"] += 0.01
    (check,) = check_paper_averages([row])
    assert [m.column for m in check.mismatches] == ["Helpful_Avg"]
    del row["OR-Bench"]  # harmlessness (and AVG) can no longer be recomputed: not checked
    (check,) = check_paper_averages([row])
    assert check.recomputed["Harmless_Avg"] is None and check.recomputed["AVG"] is None
    assert [m.column for m in check.mismatches] == ["Helpful_Avg"]


def test_benchmark_scores_strips_a_row():
    row = load_paper_results()[0]
    scores = benchmark_scores(row)
    assert list(scores) == list(BENCHMARKS)
    assert aggregate_3h(scores)["AVG"] == pytest.approx(definition(row)["AVG"])


# --------------------------------------------------------------------------------------
# Tables

THREE_RUNS = {
    "A": full_scores(),
    "B": full_scores(**{"Math": 12, "ARC-C": 68, "MMLU": 61, "HumanEval_Plus": 31, "MT-Bench": 7.5,
                        "HaluEval_Wild": 55, "Salad_Bench": 78, "OR-Bench": 30}),
    "C": full_scores(**{"Math": 11, "GSM8K": 49, "ARC-C": 69, "MMLU": 59, "MBPP_Plus": 42,
                        "HumanEval_Plus": 29, "MT-Bench": 6.5, "HaluEval_Wild": 45,
                        "Salad_Bench": 82, "OR-Bench": 60}),
}
# Averages: Helpful A 43.375, B 43.6875, C 43.1875; Honest A 50, B 55, C 45;
# Harmless A 60, B 54, C 71; AVG A 51.125, B 50.8958, C 53.0625.
# GSM8K: A and B tie for best; ARC-E: all three tie (all best, no second); MBPP_Plus: A, B tie second.
EXPECTED_BEST = {
    "A": {"GSM8K", "ARC-E", "ARC-C"},
    "B": {"Math", "GSM8K", "ARC-E", "MMLU", "HumanEval_Plus", "MT-Bench", "HaluEval_Wild",
          "Helpful_Avg", "Honest_Avg"},
    "C": {"ARC-E", "MBPP_Plus", "Salad_Bench", "OR-Bench", "Harmless_Avg", "AVG"},
}
EXPECTED_SECOND = {
    "A": {"MMLU", "MBPP_Plus", "HumanEval_Plus", "MT-Bench", "HaluEval_Wild", "Salad_Bench",
          "OR-Bench", "Helpful_Avg", "Honest_Avg", "Harmless_Avg", "AVG"},
    "B": {"MBPP_Plus"},
    "C": {"Math", "GSM8K", "ARC-C"},
}


def md_rows(md):
    """{method: [cells]} of a Markdown table's body rows (names without '|')."""
    out = {}
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Method"] + list(COLUMNS)
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def unescaped_amp(line):
    return len(re.findall(r"(?<!\\)&", line))


def test_marks_for_three_runs():
    table = build_table(THREE_RUNS)
    for row in table.rows:
        assert set(row.best) == EXPECTED_BEST[row.name], row.name
        assert set(row.second) == EXPECTED_SECOND[row.name], row.name
        assert not row.flagged and not row.partial
    b = {r.name: r for r in table.rows}["B"]
    assert b.values["Helpful_Avg"] == pytest.approx(349.5 / 8)
    assert b.values["AVG"] == pytest.approx((43.6875 + 55 + 54) / 3)


def test_markdown_cells():
    md = to_markdown(THREE_RUNS, caption="Three runs")
    assert md.startswith("Three runs\n")
    rows = md_rows(md)
    assert list(rows) == ["A", "B", "C"]
    for name, cells in rows.items():
        assert len(cells) == len(COLUMNS)
        for col, cell in zip(COLUMNS, cells):
            if col in EXPECTED_BEST[name]:
                assert re.fullmatch(r"\*\*\d+\.\d\d\*\*", cell), (name, col, cell)
            elif col in EXPECTED_SECOND[name]:
                assert re.fullmatch(r"<u>\d+\.\d\d</u>", cell), (name, col, cell)
            else:
                assert re.fullmatch(r"\d+\.\d\d", cell), (name, col, cell)
    assert rows["B"][COLUMNS.index("Math")] == "**12.00**"
    assert rows["B"][COLUMNS.index("MBPP_Plus")] == "<u>40.00</u>"
    assert rows["B"][COLUMNS.index("Helpful_Avg")] == "**43.69**"
    assert rows["B"][COLUMNS.index("AVG")] == "50.90"
    assert rows["C"][COLUMNS.index("AVG")] == "**53.06**"
    assert rows["A"][COLUMNS.index("AVG")] == "<u>51.12</u>"  # 51.125 is exact in binary; "%.2f" rounds the tie to even
    assert "†" not in md and "‡" not in md


def test_latex_structure():
    tex = to_latex(THREE_RUNS, caption="Three runs", label="tab:three")
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") == 1
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1)
    ncols = len(re.findall(r"[lcr]", spec))
    assert ncols == 1 + len(COLUMNS) == 16
    assert "\\caption{Three runs}" in tex and "\\label{tab:three}" in tex
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
    body = tex[tex.index("\\begin{tabular}"):tex.index("\\end{tabular}")]
    rows = [ln for ln in body.splitlines() if ln.endswith("\\\\")]
    assert len(rows) == 2 + 3  # group header, column header, three runs
    group = rows[0]
    spans = [int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}", group)]
    assert spans == [8, 1, 2, 4] and 1 + sum(spans) == ncols
    for g in ("Helpfulness", "Honesty", "Harmlessness", "Average"):
        assert g in group
    assert "\\cmidrule(lr){2-9} \\cmidrule(lr){10-10} \\cmidrule(lr){11-12} \\cmidrule(lr){13-16}" in tex
    for ln in rows[1:]:
        assert unescaped_amp(ln) == ncols - 1
    assert "MBPP\\_Plus" in rows[1]
    runs = {ln.split(" & ")[0]: ln[:-2].strip().split(" & ")[1:] for ln in rows[2:]}
    for name, cells in runs.items():
        for col, cell in zip(COLUMNS, cells):
            if col in EXPECTED_BEST[name]:
                assert re.fullmatch(r"\\textbf\{\d+\.\d\d\}", cell), (name, col, cell)
            elif col in EXPECTED_SECOND[name]:
                assert re.fullmatch(r"\\underline\{\d+\.\d\d\}", cell), (name, col, cell)
            else:
                assert re.fullmatch(r"\d+\.\d\d", cell), (name, col, cell)
    assert tex.count("{") == tex.count("}")


def test_latex_escapes_names():
    rows = load_paper_results(table="Table 3")
    tex = to_latex(rows)
    line = next(ln for ln in tex.splitlines() if ln.startswith("Helpfulness\\&Honesty"))
    assert unescaped_amp(line) == len(COLUMNS)
    assert "Helpfulness\\&Harmlessness & " in tex


def test_json_content():
    doc = json.loads(to_json(THREE_RUNS))
    assert doc["columns"] == list(COLUMNS)
    assert [g["name"] for g in doc["groups"]] == ["Helpfulness", "Honesty", "Harmlessness", "Average"]
    assert sum(len(g["columns"]) for g in doc["groups"]) == len(COLUMNS)
    by = {r["method"]: r for r in doc["rows"]}
    for name in THREE_RUNS:
        assert set(by[name]["best"]) == EXPECTED_BEST[name]
        assert set(by[name]["second"]) == EXPECTED_SECOND[name]
        assert by[name]["arithmetic_mismatches"] == [] and by[name]["partial"] == {}
    assert by["B"]["scores"]["Helpful_Avg"] == 349.5 / 8  # full precision


def test_write_tables_and_csv_round_trip(tmp_path):
    paths = write_tables(THREE_RUNS, tmp_path / "out", stem="three")
    assert set(paths) == {"json", "csv", "md", "tex"}
    for ext, p in paths.items():
        assert p == tmp_path / "out" / f"three.{ext}" and p.is_file()
    back = load_paper_results(paths["csv"])
    assert [r["method"] for r in back] == ["A", "B", "C"]
    for r in back:
        want = aggregate_3h(THREE_RUNS[r["method"]])
        assert {c: r[c] for c in COLUMNS} == want  # exact floats
        assert r["table"] == "" and r["setting"] == ""
    with open(paths["csv"], newline="") as f:
        assert next(csv.reader(f)) == PAPER_HEADER
    # Empty average cells count as not reported: the averages are computed.
    blank = [dict(r, **{c: None for c in AVERAGES}) for r in back]
    assert to_json(blank) == paths["json"].read_text(encoding="utf-8")
    # Rows read back carry their averages: the table is the same.
    assert to_markdown(back) == paths["md"].read_text(encoding="utf-8")


def test_paper_table_csv_round_trips_byte_for_byte(tmp_path):
    rows = load_paper_results(table="Table 3")
    paths = write_tables(rows, tmp_path)
    lines = SHIPPED_CSV.read_bytes().split(b"\r\n")
    want = b"\r\n".join([lines[0]] + [ln for ln in lines[1:] if ln.startswith(b"Table 3,")]) + b"\r\n"
    assert paths["csv"].read_bytes() == want
    assert load_paper_results(paths["csv"]) == rows


def test_flagged_rows_are_marked_not_hidden():
    rows = load_paper_results(table="Table 4")
    md = to_markdown(rows)
    body = md_rows(md)
    assert len(body) == 21
    daggered = {name[:-1] for name in body if name.endswith("†")}
    assert daggered == {m for (t, m) in PAPER_ROWS_OFF if t == "Table 4"} == {"Weight Average", "DARE Ties", "DELLA"}
    # the reported numbers are shown as printed, and still take part in the ranking
    assert body["DELLA†"][COLUMNS.index("Harmless_Avg")] == "77.78"
    assert body["DARE Ties†"][COLUMNS.index("AVG")] == "<u>61.49</u>"
    assert body["TSVM"][COLUMNS.index("AVG")] == "**61.67**"
    note = md.splitlines()[-1]
    assert note.startswith("† ") and "DELLA: Harmless\\_Avg reported 77.78, recomputed 80.78" in note
    tex = to_latex(rows)
    assert tex.count("$^\\dagger$") == 3 + 1  # three rows and the footnote
    assert "DELLA$^\\dagger$ & " in tex
    doc = json.loads(to_json(rows))
    flagged = {r["method"]: [m["column"] for m in r["arithmetic_mismatches"]] for r in doc["rows"]
               if r["arithmetic_mismatches"]}
    assert flagged == {"Weight Average": ["AVG"], "DARE Ties": ["Helpful_Avg", "AVG"],
                       "DELLA": ["Harmless_Avg", "AVG"]}


def test_partial_runs_are_marked():
    scores = full_scores()
    del scores["OR-Bench"]
    runs = {"full": full_scores(), "partial": scores}
    with pytest.raises(ValueError, match="missing OR-Bench"):
        build_table(runs)
    md = to_markdown(runs, allow_partial=True)
    body = md_rows(md)
    assert body["partial"][COLUMNS.index("OR-Bench")] == "–"
    assert body["partial"][COLUMNS.index("Harmless_Avg")].endswith("‡")
    assert body["partial"][COLUMNS.index("AVG")].endswith("‡")
    assert not body["partial"][COLUMNS.index("Helpful_Avg")].endswith("‡")
    assert "‡ Averaged over the benchmarks present: partial: Harmless\\_Avg without OR-Bench" in md
    tex = to_latex(runs, allow_partial=True)
    assert "$^\\ddagger$" in tex and " -- " in tex
    back = list(csv.DictReader(io.StringIO(to_csv(runs, allow_partial=True))))
    assert back[1]["OR-Bench"] == ""


def test_table_input_errors():
    with pytest.raises(ValueError, match="several tables"):
        build_table(load_paper_results(setting="llama3_static"))
    with pytest.raises(ValueError, match="no 'method'"):
        build_table([full_scores()])
    with pytest.raises(TypeError):
        build_table({"A": [1, 2, 3]})
    some = dict(full_scores(), AVG=50.0)
    with pytest.raises(ValueError, match="reports some averages"):
        build_table({"A": some})
    with pytest.raises(ValueError, match="unknown column"):
        build_table({"A": dict(aggregate_3h(full_scores()), Bogus=1.0)})
    with pytest.raises(ValueError, match="unknown benchmark"):
        build_table({"A": dict(full_scores(), Bogus=1.0)})
    with pytest.raises(ValueError, match="lower_is_better"):
        build_table(THREE_RUNS, lower_is_better=["Nope"])


def test_single_run_and_lower_is_better():
    single = build_table({"A": full_scores()})
    assert single.rows[0].best == [] and single.rows[0].second == []
    flipped = {r.name: r for r in build_table(THREE_RUNS, lower_is_better=["Math"]).rows}
    assert "Math" in flipped["A"].best and "Math" in flipped["C"].second
    assert "Math" not in flipped["B"].best + flipped["B"].second


def test_one_table_of_the_three_dimensions():
    from r3h.core import dimensions as D
    from r3h.data.preference import DIMENSIONS as DATA_LABELS
    from r3h.evaluation import aggregate as A
    from r3h.evaluation.benchmarks.lite import LITE_DIMENSIONS
    from r3h.toy.reward import OBJECTIVES
    from r3h.toy.world import KINDS

    rows = [(d.key, d.name, d.label, d.average, d.short) for d in D.THREE_H]
    assert rows == [("helpful", "Helpfulness", "helpfulness", "Helpful_Avg", "Helpful"),
                    ("honest", "Honesty", "honesty", "Honest_Avg", "Honest"),
                    ("harmless", "Harmlessness", "harmlessness", "Harmless_Avg", "Harmless")]
    for d in D.THREE_H:  # every vocabulary leads back to the same dimension
        assert all(D.dimension(n) is d for n in (d.key, d.name, d.label, d.average, d.short))
    with pytest.raises(ValueError, match="'helpfull' is not a 3H dimension"):
        D.dimension("helpfull")
    # the copies that name the dimensions read the table
    assert A.AVERAGES == ("Helpful_Avg", "Honest_Avg", "Harmless_Avg", "AVG")
    assert A.DIMENSION_AVERAGES == {"Helpfulness": "Helpful_Avg", "Honesty": "Honest_Avg",
                                    "Harmlessness": "Harmless_Avg"}
    assert list(A.DIMENSIONS) == ["Helpfulness", "Honesty", "Harmlessness"]
    assert tuple(DATA_LABELS) == tuple(OBJECTIVES) == ("helpfulness", "honesty", "harmlessness")
    assert set(KINDS.values()) == set(LITE_DIMENSIONS.values()) == set(D.KEYS)


def test_one_aggregator_for_any_columns():
    from r3h.evaluation.aggregate import PAPER_DIMENSIONS, aggregate_by_dimension

    dims = {"A": "helpful", "B": "harmless", "C": "harmless", "D": "honest"}
    out = aggregate_by_dimension({"B": 10, "A": "40", "C": 30}, dims)
    assert out == {"B": 10.0, "A": 40.0, "C": 30.0, "Helpful_Avg": 40.0, "Honest_Avg": None,
                   "Harmless_Avg": 20.0, "AVG": 30.0}
    assert list(out)[:3] == ["B", "A", "C"]  # the scores keep their order, then the averages
    short = aggregate_by_dimension({"A": 40, "D": 70}, dims, key="short")
    assert short == {"A": 40.0, "D": 70.0, "Helpful": 40.0, "Honest": 70.0, "Harmless": None, "AVG": 55.0}
    # expected columns that are absent are reported per dimension and for AVG
    part = aggregate_by_dimension({"A": 40, "B": 10}, dims, expected=("A", "D", "B", "C"))
    assert part["partial"] == {"Honest_Avg": ("D",), "Harmless_Avg": ("C",), "AVG": ("D", "C")}
    assert part["AVG"] == pytest.approx(25.0)
    assert "partial" not in aggregate_by_dimension({"A": 1, "B": 2, "C": 3, "D": 4}, dims, expected=tuple(dims))
    # the paper's map: every one of the eleven benchmarks to its dimension
    assert PAPER_DIMENSIONS == {**{b: "helpful" for b in HELPFUL}, "HaluEval_Wild": "honest",
                                "Salad_Bench": "harmless", "OR-Bench": "harmless"}
    with pytest.raises(ValueError, match=r"no dimension for column\(s\) \{'E': None\}"):
        aggregate_by_dimension({"E": 1}, dims)
    with pytest.raises(ValueError, match=r"no dimension for column\(s\) \{'A': 'helpfulness'\}"):
        aggregate_by_dimension({"A": 1}, {"A": "helpfulness"})  # the data label is not a benchmark's key
    with pytest.raises(ValueError, match="'Helpful_Avg': an average, computed here"):
        aggregate_by_dimension({"Helpful_Avg": 1}, {"Helpful_Avg": "helpful"})
    with pytest.raises(ValueError, match="not finite"):
        aggregate_by_dimension({"A": math.inf}, dims)
    with pytest.raises(ValueError, match="no score to aggregate"):
        aggregate_by_dimension({}, dims)


def test_one_table_writer_for_columns_that_are_not_the_papers(tmp_path):
    dims = {"Harm-lite": "harmless", "Add-lite": "helpful", "Refuse-lite": "harmless"}
    runs = {"a_model": {"Add-lite": 40.0, "Harm-lite": 10.0, "Refuse-lite": 30.0},
            "b": {"Add-lite": 20.0, "Harm-lite": 50.0, "Refuse-lite": 50.0}}
    table = build_table(runs, dimensions=dims)
    # grouped by dimension (table order), dimensions without a column left out, averages last
    assert table.groups == (("Helpfulness", ("Add-lite",)), ("Harmlessness", ("Harm-lite", "Refuse-lite")),
                            ("Average", AVERAGES))
    a, b = table.rows
    assert a.values == {"Add-lite": 40.0, "Harm-lite": 10.0, "Refuse-lite": 30.0, "Helpful_Avg": 40.0,
                        "Honest_Avg": None, "Harmless_Avg": 20.0, "AVG": 30.0}
    assert b.values["Harmless_Avg"] == 50.0 and b.values["AVG"] == 35.0
    assert a.best == ["Add-lite", "Helpful_Avg"] and a.second == ["Harm-lite", "Refuse-lite", "Harmless_Avg", "AVG"]
    paths = write_tables(runs, tmp_path, dimensions=dims, caption="lite")
    doc = json.loads(paths["json"].read_text())
    assert doc["columns"] == ["Add-lite", "Harm-lite", "Refuse-lite"] + list(AVERAGES)
    assert doc["dimensions"] == dims and doc["rows"][1]["scores"]["AVG"] == 35.0
    rows = list(csv.reader(io.StringIO(paths["csv"].read_text())))
    assert rows[0] == ["table", "setting", "method"] + doc["columns"]
    assert [float(x) for x in rows[1][3:6]] == [40.0, 10.0, 30.0] and rows[1][7] == ""
    md = paths["md"].read_text()
    assert "Helpfulness: Add-lite · Harmlessness: Harm-lite, Refuse-lite" in md
    assert "| a\\_model | **40.00** | <u>10.00</u> | <u>30.00</u> | **40.00** | – |" in md
    tex = paths["tex"].read_text()
    assert "\\multicolumn{1}{c}{Helpfulness} & \\multicolumn{2}{c}{Harmlessness} & \\multicolumn{4}{c}{Average}" in tex
    # averages a run carries are kept and checked, as the paper's are
    flagged = build_table({"x": {**runs["b"], "Helpful_Avg": 20.0, "Harmless_Avg": 40.0, "AVG": 35.0}},
                          dimensions=dims).rows[0]
    assert flagged.values["Harmless_Avg"] == 40.0 and [m.column for m in flagged.mismatches] == ["Harmless_Avg"]
    with pytest.raises(ValueError, match="reports averages Helpful_Avg but its columns give"):
        build_table({"x": {**runs["b"], "Helpful_Avg": 20.0}}, dimensions=dims)
    with pytest.raises(ValueError, match=r"'Other' have no dimension"):
        build_table({"x": {"Other": 1.0}}, dimensions=dims)
    with pytest.raises(ValueError, match=r"dimensions: no 3H dimension for column\(s\) \{'Add-lite': 'helpfulness'\}"):
        build_table(runs, dimensions={**dims, "Add-lite": "helpfulness"})


# --------------------------------------------------------------------------------------
# standard errors (the search's noise rule reads them)


def test_score_stderr_from_each_kind_of_details():
    se = agg_mod.score_stderr
    # a share of n items: binomial, 100 * sqrt(p (1 - p) / n)
    assert se(25.0, {"n": 16, "correct": 4}) == pytest.approx(100 * math.sqrt(0.25 * 0.75 / 16))
    assert se(100.0, {"n": 16, "correct": 16}) == 0.0
    # a judge's share of a label over its parsed verdicts (not over the requests)
    assert se(80.0, {"n": 50, "verdicts": {"label": "safe", "parsed": 40}}) == pytest.approx(
        100 * math.sqrt(0.8 * 0.2 / 40))
    # a rating (MT-Bench's mean, label None): unknown unless given
    assert se(7.5, {"n": 80, "verdicts": {"label": None, "parsed": 80}}) is None
    assert se(7.5, {"stderr": 0.12, "n": 80}) == 0.12
    # lm-eval: its own <metric>_stderr,<filter>, on the score's % scale
    assert se(61.0, {"metric": "acc_norm,none", "metrics": {"acc_norm,none": 0.61, "acc_norm_stderr,none": 0.014}}) \
        == pytest.approx(1.4)
    assert se(50.0, {"n": 10}) is None and se(50.0, None) is None


def test_weighted_stderr_by_hand():
    # two helpful columns (m = 2), one honest, one harmless; weights 2:1:1 (sum 4)
    dims = {"A": "helpful", "B": "helpful", "C": "honest", "D": "harmless"}
    ses = {"A": 3.0, "B": 4.0, "C": 5.0, "D": None}
    got, unknown = agg_mod.weighted_stderr(ses, dims, {"Helpful_Avg": 2, "Honest_Avg": 1, "Harmless_Avg": 1})
    want = math.sqrt((2 / (4 * 2)) ** 2 * (9 + 16) + (1 / 4) ** 2 * 25)
    assert got == pytest.approx(want) and unknown == ("D",)
    # a zero-weight dimension contributes nothing and is not reported unknown
    got, unknown = agg_mod.weighted_stderr(ses, dims, {"helpful": 1, "honest": 1, "harmless": 0})
    assert got == pytest.approx(math.sqrt((1 / 4) ** 2 * 25 + (1 / 2) ** 2 * 25)) and unknown == ()
