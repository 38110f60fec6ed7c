"""The merge search (`r3h.search.MergeSearch`, `method=search`, `method=search/...`): its
proposals stay inside their ranges, bad ranges and options are refused before any merge,
an interrupted study resumes, TSVM trials after the first run no SVD, and the chosen
member is the validation optimum of the 3H preference, scored on test and returned.

Trials are scored by a 3H taskpool of stand-in benchmarks that read the merge's α from its
model card (no generation), so the optimum is known."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from r3h.evaluation.benchmark import Benchmark, BenchmarkResult
from r3h.search import DIMENSIONS, MergeSearch, parse_space, weighted_score
from r3h.methods import METHODS
from r3h.methods.configs import load_method_config
from tests.core.test_svd_cache import pool_of, write_pool

REPO = Path(__file__).resolve().parents[2]
SEARCH_CONFIGS = REPO / "config" / "method" / "search"


class AlphaDimension(Benchmark):
    """A stand-in benchmark: a merge's score from its α (model card), peaked at `best`:
    100 − 100 |α − best|, minus 1 on the test split (so a test score is told apart)."""

    uses_generator = False

    def __init__(self, column: str, dimension: str, best: float, split: str = "test", stderr=None):
        self.column, self.dimension, self.best, self.split, self.stderr = column, dimension, best, split, stderr

    def run(self, ctx):
        hp = ctx.model.r3h_merge_info["hyperparameters"]
        alpha = float(hp.get("alpha", hp.get("scaling_factor", 0.0)))
        details = {"split": self.split} if self.stderr is None else {"split": self.split, "stderr": self.stderr}
        return BenchmarkResult(self.column, 100 - 100 * abs(alpha - self.best) - (self.split == "test"), details)


BESTS = {"helpful": 0.8, "honest": 0.4, "harmless": 0.6}


def score_at(alpha, split="validation", weights=(1, 1, 1)):
    avgs = {d: 100 - 100 * abs(alpha - BESTS[d.split("_")[0].lower()]) - (split == "test") for d in DIMENSIONS}
    return weighted_score(avgs, dict(zip(DIMENSIONS, weights)))


@pytest.fixture
def taskpool(tiny_lm_path):
    bench = lambda c, d: {"_target_": "tests.tuning.test_search.AlphaDimension", "column": c, "dimension": d,  # noqa: E731
                          "best": BESTS[d]}
    return {"_target_": "r3h.evaluation.taskpool.ThreeHTaskPool", "tokenizer": tiny_lm_path,
            "benchmarks": {f"Probe-{d}": bench(f"Probe-{d}", d) for d in BESTS}}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_pool(tmp_path_factory.mktemp("pool"))


def search(taskpool, out, **kw):
    kw.setdefault("methods", {"tsvm": {"alpha": {"low": 0.0, "high": 1.2}}})
    return MergeSearch(taskpool=taskpool, output_dir=str(out), **kw)


# ---------------------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------------------

SPACE = {
    "ties": {"scaling_factor": {"low": 0.05, "high": 1.0, "log": True}, "density": {"low": 0.1, "high": 0.9,
                                                                                  "step": 0.2},
             "consensus": ["sum", "count"], "weights": {"low": 0.25, "high": 0.75}, "normalize": True},
    "rewarded_soup": {"preference": {"low": 0.0, "high": 1.0}},
    "dare": {"seed": {"low": 1, "high": 9, "int": True}},
}


def test_proposals_stay_inside_their_ranges():
    s = MergeSearch(methods=SPACE, n_trials=1)
    space = parse_space(SPACE)
    experts = ["a", "b", "c"]
    seen = {"ties": 0, "rewarded_soup": 0, "dare": 0}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=10))
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        method, values = s.propose(trial, experts)
        seen[method] += 1
        for option, p in space[method].items():
            v = values[option]
            if p.per_expert:
                assert list(v) == experts
                vals = list(v.values())
                if option == "preference":  # normalised onto the simplex
                    assert abs(sum(vals) - 1) < 1e-9 and all(x >= 0 for x in vals)
                else:
                    assert all(p.low <= x <= p.high for x in vals)
            else:
                assert p.contains(v), (method, option, v)
        if method == "ties":
            assert values["normalize"] is True  # a fixed value
            assert round((values["density"] - 0.1) / 0.2, 9) == int(round((values["density"] - 0.1) / 0.2))
        if method == "dare":
            assert isinstance(values["seed"], int)
        return sum(float(x) for x in trial.params.values() if isinstance(x, (int, float)))

    study.optimize(objective, n_trials=60)
    assert all(n > 0 for n in seen.values()), seen
    # the proposals are Optuna's: every distribution is the declared one
    d = study.trials[-1].distributions
    assert isinstance(d["method"], optuna.distributions.CategoricalDistribution)


@pytest.mark.parametrize("kw, match", [
    ({"methods": {"tsvm": {"alpha": {"low": 1.0, "high": 0.5}}}}, r"methods\.tsvm\.alpha: low \(1\.0\) must be below"),
    ({"methods": {"tsvm": {"alpha": {"low": 0.0, "high": 1.0, "log": True}}}}, r"methods\.tsvm\.alpha: a log range"),
    ({"methods": {"tsvm": {"alpha": {"low": "a", "high": 1.0}}}}, r"methods\.tsvm\.alpha\.low: expected a finite"),
    ({"methods": {"tsvm": {"alpha": {"low": 0.1}}}}, r"methods\.tsvm\.alpha: a range is"),
    ({"methods": {"tsvm": {"alpha": {"choices": []}}}}, r"methods\.tsvm\.alpha: `choices` is empty"),
    ({"methods": {"tsvm": {"alpha": {"low": 0.1, "high": 1, "step": 2}}}}, r"methods\.tsvm\.alpha: step"),
    ({"methods": {"tsvm": {"alfa": {"low": 0.1, "high": 1.0}}}}, r"methods\.tsvm\.alfa: 'alfa' is not an option"),
    ({"methods": {"tsvm": {"svd_cache": "x"}}}, r"methods\.tsvm\.svd_cache: 'svd_cache' is set by the search"),
    ({"methods": {"ties": {"weights": [0.5, 1.0]}}}, r"methods\.ties\.weights: a per-expert option"),
    ({"methods": {"nope": {}}}, r"methods\.nope: method: no config 'nope'"),
    ({"methods": ["nope"]}, r"methods: no search preset for 'nope'"),
    ({"methods": {}}, r"methods: give the methods"),
    ({"objective": "best"}, r"objective: 'best' is not one of weighted, multi"),
    ({"weights": {"funny": 1}}, r"weights: 'funny' is not a 3H dimension"),
    ({"weights": [0, 0, 0]}, r"weights: at least one 3H weight must be positive"),
    ({"n_trials": 0}, r"n_trials: expected an integer >= 1"),
    ({"n_trials": None, "timeout": None}, r"n_trials, timeout: give a budget"),
])
def test_bad_search_options_are_refused_when_built(kw, match):
    kw.setdefault("methods", {"tsvm": {"alpha": {"low": 0.1, "high": 1.0}}})
    with pytest.raises(ValueError, match=match):
        MergeSearch(**kw)


@pytest.mark.parametrize("methods, match", [
    ({"r_tsvm": {"gamma": {"low": 0.2, "high": 1.5}}}, r"methods\.r_tsvm\.gamma: the value 1\.5 of its range is "
                                                       r"refused by r_tsvm: gamma=1\.5 is outside"),
    ({"dare": {"density": {"low": 0.0, "high": 0.5}}}, r"methods\.dare\.density: the value 0\.0 of its range"),
    ({"r_tsvm": {"epsilon_mode": ["absolute", "relatve"]}}, r"methods\.r_tsvm\.epsilon_mode: the value 'relatve'"),
])
def test_bad_range_values_are_refused_before_any_merge(paths, tmp_path, taskpool, count_reads, methods, match):
    s = search(taskpool, tmp_path / "s", methods=methods, n_trials=2)
    with pytest.raises(ValueError, match=match):
        s.run(pool_of(paths))
    assert count_reads["n"] == 0  # no tensor read: nothing merged
    assert not (tmp_path / "s" / "study.sqlite").exists()


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_search_resumes_reuses_the_svd_cache_and_returns_the_test_scored_choice(paths, tmp_path, taskpool):
    out = tmp_path / "s"
    first = search(taskpool, out, n_trials=2)
    model = first.run(pool_of(paths))
    rep = first.last_report
    trials = json.load(open(out / "trials.json"))
    assert [t["trial"] for t in trials] == [0, 1]
    default = load_method_config("tsvm")["alpha"]
    assert trials[0]["defaults"] and trials[0]["options"] == {"alpha": default}  # tsvm's default comes first
    # the SVD cache: the first trial runs the SVDs, no later one does
    assert trials[0]["svds"] > 0 and trials[1]["svds"] == 0
    # resume: the same folder continues the study up to n_trials
    second = search(taskpool, out, n_trials=4)
    model = second.run(pool_of(paths))
    again = json.load(open(out / "trials.json"))
    assert [t["trial"] for t in again] == list(range(4))
    drop = lambda r: {k: v for k, v in r.items() if k != "pareto"}  # noqa: E731 (the front moves with new trials)
    assert [drop(r) for r in again[:2]] == [drop(r) for r in trials[:2]]  # the earlier trials are kept, not rerun
    assert all(t["svds"] == 0 for t in again[2:])
    study = optuna.load_study(study_name="r3h_search", storage=f"sqlite:///{out / 'study.sqlite'}")
    assert len(study.trials) == 4
    # every trial scored on validation at its own α
    for t in again:
        assert 0.0 <= t["options"]["alpha"] <= 1.2
        assert t["score"] == pytest.approx(score_at(t["options"]["alpha"]))
    rep = second.last_report
    best = max(again, key=lambda t: t["score"])
    chosen = rep["chosen"]
    assert chosen["trial"] == best["trial"] and chosen["pareto"]
    # scored on test (the stand-in takes 1 off on test) and returned with that α
    assert chosen["test"]["score"] == pytest.approx(score_at(chosen["options"]["alpha"], "test"))
    assert model.r3h_merge_info["hyperparameters"]["alpha"] == pytest.approx(chosen["options"]["alpha"])
    assert model.r3h_merge_info["search"]["chosen"]["trial"] == chosen["trial"]
    assert rep["defaults"]["tsvm"]["score"] == pytest.approx(score_at(default, "test"))
    # the Pareto front: table and plots
    assert "| Pareto |" in (out / "trials.md").read_text()
    assert (out / "pareto_Helpful_Avg_Honest_Avg.png").stat().st_size > 0
    assert json.load(open(out / "search_report.json"))["chosen"]["trial"] == chosen["trial"]


@pytest.mark.slow
@pytest.mark.parametrize("stderr, min_gain_se, kept", [
    (40.0, 1.0, True),    # every gain of α ∈ [0, 1.2] is within one SE (40/√3 per trial, ×√2): defaults kept
    (40.0, 0.0, False),   # min_gain_se 0: the best member, whatever its margin
    (0.01, 1.0, False),   # a precise taskpool: the best member
    (None, 1.0, False),   # no SE known: counted noiseless, the best member
])
def test_the_defaults_are_kept_when_the_validation_gain_is_within_noise(paths, tmp_path, taskpool, stderr,
                                                                       min_gain_se, kept):
    for b in taskpool["benchmarks"].values():
        b["stderr"] = stderr
    s = search(taskpool, tmp_path / "n", n_trials=4, min_gain_se=min_gain_se, compare_defaults=False)
    model = s.run(pool_of(paths))
    rows = json.load(open(tmp_path / "n" / "trials.json"))
    best = max(rows, key=lambda r: (r["score"], -r["trial"]))
    default = next(r for r in rows if r["defaults"])
    assert best["trial"] != default["trial"] and best["score"] > default["score"]  # the search found a gain
    se_trial = 0.0 if stderr is None else stderr / 3 ** 0.5  # three columns, one per dimension, equal weights
    for r in rows:
        assert r["stderr"] == pytest.approx(se_trial)
    sel = s.last_report["selection"]
    assert sel["defaults_trial"] == default["trial"] and sel["best_trial"] == best["trial"]
    assert sel["gain"] == pytest.approx(best["score"] - default["score"])
    assert sel["threshold"] == pytest.approx(min_gain_se * (2 ** 0.5) * se_trial)
    chosen = s.last_report["chosen"]
    assert chosen["trial"] == (default["trial"] if kept else best["trial"])
    assert sel["rule"] == ("defaults kept: gain within noise" if kept else "best")
    assert model.r3h_merge_info["hyperparameters"]["alpha"] == pytest.approx(chosen["options"]["alpha"])


def test_min_gain_se_is_checked():
    with pytest.raises(ValueError, match=r"min_gain_se: expected a number of standard errors >= 0"):
        MergeSearch(methods={"tsvm": {"alpha": {"low": 0.1, "high": 1.0}}}, min_gain_se=-1)


@pytest.mark.slow
def test_weights_pick_the_member_and_multi_objective_front(paths, tmp_path, taskpool):
    s = search(taskpool, tmp_path / "m", n_trials=5, objective="multi", weights={"helpful": 1, "honest": 0,
                                                                                "harmless": 0},
               compare_defaults=False)
    s.run(pool_of(paths))
    rows = json.load(open(tmp_path / "m" / "trials.json"))
    front = [r for r in rows if r["pareto"]]
    chosen = s.last_report["chosen"]
    # the helpful-only preference picks the front member with the highest Helpful_Avg
    assert chosen["trial"] == max(front, key=lambda r: r["Helpful_Avg"])["trial"]
    for r in rows:  # the front is the set no other trial dominates on the three averages
        dominated = any(all(o[d] >= r[d] for d in DIMENSIONS) and any(o[d] > r[d] for d in DIMENSIONS)
                        for o in rows)
        assert r["pareto"] == (not dominated)
    assert s.last_report["defaults"] == {}


@pytest.mark.slow
def test_every_search_preset_builds():
    from r3h.methods.configs import load_config

    names = sorted(p.stem for p in SEARCH_CONFIGS.glob("*.yaml") if not p.stem.startswith("_"))
    assert names == sorted([*METHODS, "all"])  # one preset per registered method; `_base` is none
    base = OmegaConf.load(SEARCH_CONFIGS / "_base.yaml")
    assert base._target_ == "r3h.search.MergeSearch" and "methods" not in base
    for name in names:
        raw = OmegaConf.load(SEARCH_CONFIGS / f"{name}.yaml")
        assert "/method/search/_base@_here_" in raw.defaults  # the shared options come from _base
        cfg = OmegaConf.create(load_config("method", f"search/{name}"))  # composed as method=search/<name>
        assert cfg._target_ == "r3h.search.MergeSearch"
        assert {k: v for k, v in cfg.items() if k not in raw} == {k: v for k, v in base.items() if k not in raw}
        kwargs = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
        s = MergeSearch(**kwargs)
        if name == "all":
            assert list(s._space) == list(cfg.methods) and sorted(s._space) == sorted(METHODS)
            assert s.n_trials >= 3 * len(METHODS)
        else:
            assert list(s._space) == [name]
            # the method's default lies inside its space (the search starts from it)
            assert s.default_params(name, ["a", "b"]) is not None, name
    top = load_config("method", "search")
    assert top["_target_"] == "r3h.search.MergeSearch" and top["n_trials"] == 30 and top["heartbeat"] == 30
