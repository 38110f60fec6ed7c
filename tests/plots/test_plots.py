"""r3h.plots: the Pareto mask against a brute-force definition, every figure written as a
valid PNG and PDF from each accepted input form, the values each figure draws (read back
from the matplotlib artists), and clear errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from r3h import plots
from r3h.evaluation.aggregate import aggregate_3h, load_paper_results
from r3h.evaluation.tables import to_json
from tests.conftest import make_pool

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF-"


def assert_figure(paths, stem):
    assert paths == [str(stem) + ".png", str(stem) + ".pdf"]
    with open(paths[0], "rb") as f:
        png = f.read()
    with open(paths[1], "rb") as f:
        pdf = f.read()
    assert png[:8] == PNG and len(png) > 2000
    assert pdf[:5] == PDF and len(pdf) > 1000 and pdf.rstrip().endswith(b"%%EOF")


@pytest.fixture
def drawn(monkeypatch):
    """The figures r3h.plots saves, in order, as (figure, out_path)."""
    figs = []
    save = plots.save_figure

    def record(fig, out_path):
        figs.append((fig, out_path))
        return save(fig, out_path)

    import r3h.analysis.heatmaps
    import r3h.evaluation.figures

    for module in (r3h.evaluation.figures, r3h.analysis.heatmaps):  # where the figures are drawn
        monkeypatch.setattr(module, "save_figure", record)
    return figs


def bar_heights(fig):
    """Per legend label, the heights of its bars (NaN for a bar left out)."""
    ax = fig.axes[0]
    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}


# ---------------------------------------------------------------------------------------
# Pareto mask
# ---------------------------------------------------------------------------------------

def brute_pareto(values, maximize):
    """Point i is on the front iff no j is ≥ on every column and > on one (after orienting
    minimised columns), written with plain loops."""
    n, k = len(values), len(values[0])
    sign = [1 if (maximize if isinstance(maximize, bool) else maximize[c]) else -1 for c in range(k)]
    v = [[sign[c] * values[i][c] for c in range(k)] for i in range(n)]
    out = []
    for i in range(n):
        dominated = any(all(v[j][c] >= v[i][c] for c in range(k)) and any(v[j][c] > v[i][c] for c in range(k))
                        for j in range(n) if j != i)
        out.append(not dominated)
    return out


@pytest.mark.parametrize("seed,n,k,maximize", [
    (0, 1, 2, True), (1, 12, 2, True), (2, 40, 2, False), (3, 40, 3, True), (4, 60, 3, [True, False, True]),
    (5, 25, 1, True),
])
def test_pareto_mask_is_the_brute_force_front(seed, n, k, maximize):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, size=(n, k)).astype(float)  # small range: ties and duplicates
    got = plots.pareto_mask(values, maximize)
    assert got.dtype == bool and got.tolist() == brute_pareto(values.tolist(), maximize)
    assert got.any()  # a finite set always has a non-dominated point


def test_pareto_mask_cases():
    assert plots.pareto_mask([[1, 1], [1, 1]]).tolist() == [True, True]  # equal points: both stay
    assert plots.pareto_mask([[1, 2], [2, 1], [0, 0], [2, 2]]).tolist() == [False, False, False, True]
    assert plots.pareto_mask([[1, 2], [2, 1], [0, 0]]).tolist() == [True, True, False]
    assert plots.pareto_mask([[1, 2], [2, 1], [0, 0]], maximize=False).tolist() == [False, False, True]
    assert plots.pareto_mask(np.zeros((0, 2))).tolist() == []
    with pytest.raises(ValueError, match="NaN"):
        plots.pareto_mask([[1, float("nan")]])
    with pytest.raises(ValueError, match=r"\[n, k\]"):
        plots.pareto_mask([1, 2, 3])


# ---------------------------------------------------------------------------------------
# 3H figures
# ---------------------------------------------------------------------------------------

def scores(seed):
    rng = np.random.default_rng(seed)
    s = {b: float(rng.uniform(20, 90)) for b in ("Math", "GSM8K", "ARC-E", "ARC-C", "MMLU", "MBPP_Plus",
                                                   "HumanEval_Plus", "HaluEval_Wild", "Salad_Bench", "OR-Bench")}
    s["MT-Bench"] = float(rng.uniform(6, 9))
    return aggregate_3h(s)


@pytest.mark.slow
def test_tradeoff_bars_from_every_input_form(tmp_path, drawn):
    paper = load_paper_results(table="Table 3")
    assert_figure(plots.tradeoff_bars(paper, tmp_path / "paper.png", title="Table 3"), tmp_path / "paper")
    assert bar_heights(drawn[-1][0])["Helpfulness"] == pytest.approx([float(r["Helpful_Avg"]) for r in paper])
    runs = {m: scores(i) for i, m in enumerate(["ties", "tsvm", "r_tsvm"])}
    assert_figure(plots.tradeoff_bars(runs, tmp_path / "runs"), tmp_path / "runs")
    heights = bar_heights(drawn[-1][0])
    for col, label in zip(plots.DIMENSION_COLUMNS, ("Helpfulness", "Honesty", "Harmlessness")):
        assert heights[label] == pytest.approx([runs[m][col] for m in runs])
    assert [t.get_text() for t in drawn[-1][0].axes[0].get_xticklabels()] == list(runs)
    (tmp_path / "table.json").write_text(to_json(runs))
    assert_figure(plots.tradeoff_bars(str(tmp_path / "table.json"), tmp_path / "json", columns=plots.DIMENSION_COLUMNS + ("AVG",)),
                  tmp_path / "json")
    assert_figure(plots.tradeoff_bars(json.loads(to_json(runs))["rows"], tmp_path / "rows"), tmp_path / "rows")
    partial = {"a": {"Helpful_Avg": 50.0, "Honest_Avg": None, "Harmless_Avg": 60.0}, "b": runs["ties"]}
    assert_figure(plots.tradeoff_bars(partial, tmp_path / "partial"), tmp_path / "partial")
    heights = bar_heights(drawn[-1][0])
    assert heights["Helpfulness"] == pytest.approx([50.0, runs["ties"]["Helpful_Avg"]])
    assert np.isnan(heights["Honesty"][0]) and heights["Honesty"][1] == pytest.approx(runs["ties"]["Honest_Avg"])


def test_radar_and_pareto_front(tmp_path, drawn):
    runs = {m: scores(i) for i, m in enumerate(["ties", "tsvm", "r_tsvm", "dare"])}
    assert_figure(plots.radar(runs, tmp_path / "radar"), tmp_path / "radar")
    lines = drawn[-1][0].axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == list(runs)
    for ln, m in zip(lines, runs):  # each polygon closes on its first value
        want = [runs[m][c] for c in plots.DIMENSION_COLUMNS]
        assert list(ln.get_ydata()) == pytest.approx(want + want[:1])
    cols = ["Math", "GSM8K", "MT-Bench", "HaluEval_Wild", "Salad_Bench"]
    assert_figure(plots.radar(load_paper_results(table="Table 3")[:4], tmp_path / "r2", columns=cols, normalize=True),
                  tmp_path / "r2")
    sweep = [{"label": f"λ={l:.2f}", "scores": scores(10 + i)} for i, l in enumerate(np.linspace(0, 1, 6))]
    assert_figure(plots.pareto_front(sweep, tmp_path / "front.pdf", x="Helpful_Avg", y="Harmless_Avg",
                                     title="Rewarded Soup"), tmp_path / "front")
    pts = [(p["scores"]["Helpful_Avg"], p["scores"]["Harmless_Avg"]) for p in sweep]
    on_front = sorted(pt for pt, keep in zip(pts, brute_pareto(pts, True)) if keep)
    ax = drawn[-1][0].axes[0]
    front = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"][0]
    np.testing.assert_allclose(np.column_stack([front.get_xdata(), front.get_ydata()]), on_front)
    crosses = np.asarray(ax.collections[0].get_offsets())  # the dominated points
    np.testing.assert_allclose(sorted(map(tuple, crosses)), sorted(pt for pt in pts if pt not in on_front))
    labels = {t.get_text() for t in ax.texts}
    assert labels == {p["label"] for p, keep in zip(sweep, brute_pareto(pts, True)) if keep}


def test_layer_heatmap(tmp_path, drawn):
    m = np.arange(12, dtype=float).reshape(4, 3)
    m[1, 2] = np.nan
    assert_figure(plots.layer_heatmap(m, [0, 1, 2, 3], ["a", "b", "c"], tmp_path / "h", "test"), tmp_path / "h")
    img = drawn[-1][0].axes[0].get_images()[0].get_array()
    assert img.mask[1, 2] and img.mask.sum() == 1
    np.testing.assert_array_equal(img.filled(np.nan), m)
    assert sorted(t.get_text() for t in drawn[-1][0].axes[0].texts) == sorted(f"{v:.3g}" for v in m[np.isfinite(m)])
    big = np.random.default_rng(0).normal(size=(80, 7))  # many layers: thinned ticks, no annotation
    assert_figure(plots.layer_heatmap(big.tolist(), list(range(80)), list("abcdefg"), tmp_path / "big", "big"),
                  tmp_path / "big")


# ---------------------------------------------------------------------------------------
# heatmaps from reports
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    shapes = {f"model.layers.{i}.{m}.weight": s for i in range(3)
              for m, s in (("self_attn.q_proj", (16, 16)), ("mlp.down_proj", (16, 24)))}
    shapes["model.layers.0.input_layernorm.weight"] = (16,)
    shapes["lm_head.weight"] = (30, 16)
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    experts = {e: {k: v + 0.05 * torch.randn(v.shape, generator=g) ** 3 for k, v in base.items()}
               for e in ("helpful", "honest", "harmless")}
    return make_pool(tmp_path_factory.mktemp("pool"), base, experts)


@pytest.mark.slow
def test_heatmaps_of_an_r_tsvm_report(pool, tmp_path, drawn):
    from r3h.methods.tsvm import RTSVM

    out = tmp_path / "merged"
    RTSVM(progress=False, device="cpu", epsilon=0.5, epsilon_mode="relative", out_dir=str(out)).run(pool)
    figs = plots.analysis_heatmaps(out, tmp_path / "figs")  # the folder holding r3h_merge.json
    assert set(figs) == {"merge_omega", "merge_sti", "merge_kept_rank", "merge_alpha"}
    for name, paths in figs.items():
        assert_figure(paths, tmp_path / "figs" / name)
    report = json.loads((out / "r3h_merge.json").read_text())
    # the Ω heatmap: layer × module, each cell the report's Ω of that layer's matrix
    fig = next(f for f, p in drawn if str(p).endswith("merge_omega"))
    ax = fig.axes[0]
    modules = [t.get_text() for t in ax.get_xticklabels()]
    assert modules == ["mlp.down_proj", "self_attn.q_proj"]
    img = ax.get_images()[0].get_array()
    for layer in range(3):
        for j, mod in enumerate(modules):
            assert img[layer, j] == pytest.approx(report["tensors"][f"model.layers.{layer}.{mod}.weight"]["omega"])
    del report["tensors"]["model.layers.1.mlp.down_proj.weight"]["omega"]  # a TSVM-like record
    for rec in report["tensors"].values():
        rec.pop("omega", None)
    assert set(plots.analysis_heatmaps(report, tmp_path / "tsvm")) == {"merge_sti", "merge_kept_rank", "merge_alpha"}


@pytest.mark.slow
def test_heatmaps_of_the_diagnostics(pool, tmp_path):
    from r3h.analysis import AlignmentVectorAnalysis

    AlignmentVectorAnalysis(out_dir=str(tmp_path / "av"), plots=False, progress=False).run(pool)
    figs = plots.analysis_heatmaps(tmp_path / "av" / "alignment_vectors.json", tmp_path / "figs")
    assert set(figs) == {f"alignment_{m}" for m in plots.DIAGNOSTIC_METRICS} | {"alignment_cosine", "alignment_sign_conflict"}
    for name, paths in figs.items():
        assert_figure(paths, tmp_path / "figs" / name)


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors(tmp_path):
    runs = {m: scores(i) for i, m in enumerate(["ties", "tsvm", "r_tsvm"])}
    for fn in (plots.tradeoff_bars, plots.radar):
        with pytest.raises(ValueError, match="no rows to plot"):
            fn({}, tmp_path / "x")
        with pytest.raises(ValueError, match="no rows to plot"):
            fn([], tmp_path / "x")
    with pytest.raises(ValueError, match="unknown column 'Helpful_avg'"):
        plots.tradeoff_bars(runs, tmp_path / "x", columns=("Helpful_avg",))
    with pytest.raises(ValueError, match="unknown column 'Honesty'"):
        plots.radar(runs, tmp_path / "x", columns=["Helpful_Avg", "Honesty", "AVG"])
    with pytest.raises(ValueError, match="at least 3 columns"):
        plots.radar(runs, tmp_path / "x", columns=["Helpful_Avg", "AVG"])
    with pytest.raises(ValueError, match="row 'b' has no value for 'Honest_Avg'"):
        plots.radar({"a": runs["ties"], "b": {"Helpful_Avg": 1.0, "Harmless_Avg": 2.0}}, tmp_path / "x")
    with pytest.raises(ValueError, match="unknown column 'Helpfulness'"):
        plots.pareto_front([{"label": "a", "scores": runs["ties"]}], tmp_path / "x", x="Helpfulness", y="AVG")
    with pytest.raises(ValueError, match="no rows to plot"):
        plots.pareto_front([], tmp_path / "x", x="Helpful_Avg", y="AVG")
    with pytest.raises(ValueError, match="row 1 has no 'method'"):
        plots.tradeoff_bars([{"method": "a", **runs["ties"]}, runs["tsvm"]], tmp_path / "x")
    with pytest.raises(ValueError, match="'Helpful_Avg' is not a number: 'high'"):
        plots.tradeoff_bars({"a": {"Helpful_Avg": "high"}}, tmp_path / "x", columns=["Helpful_Avg"])
    with pytest.raises(ValueError, match=r"matrix is \(2, 2\) but there are 3 row and 2 column labels"):
        plots.layer_heatmap([[1, 2], [3, 4]], [0, 1, 2], ["a", "b"], tmp_path / "x", "t")
    with pytest.raises(ValueError, match="non-empty"):
        plots.layer_heatmap([], [], [], tmp_path / "x", "t")
    with pytest.raises(ValueError, match="not a report r3h can plot"):
        plots.analysis_heatmaps({"method": "ties"}, tmp_path / "x")
    with pytest.raises(ValueError, match="no per-tensor records"):
        plots.analysis_heatmaps({"tensors": {}}, tmp_path / "x")
    with pytest.raises(ValueError, match="no SVD-merged matrix"):
        plots.analysis_heatmaps({"tensors": {"model.norm.weight": {"rule": "mean"}}}, tmp_path / "x")
    assert not list(tmp_path.glob("x.*"))
