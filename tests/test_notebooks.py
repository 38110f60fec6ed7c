"""The notebooks run top to bottom (their code cells, in one namespace), and their key outputs
are checked against independent computations from the checkpoints and the scores."""

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.docs  # the whole module: the documentation

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
DIMS = ("Helpful_Avg", "Honest_Avg", "Harmless_Avg")


def check_averages(scores):
    for name, s in scores.items():
        assert s["AVG"] == pytest.approx(sum(s[d] for d in DIMS) / 3), name


def check_quickstart(ns):
    from r3h.methods import METHODS

    assert set(ns["merged"]) == set(METHODS) == set(ns["scores"])
    check_averages(ns["scores"])
    # Weight Average is the plain mean of the experts: check it tensor by tensor, and the
    # cosine table against cos(mean τ, τi) computed here.
    experts, keys = ns["experts"], ns["keys"]
    sd = ns["merged"]["weight_average"].state_dict()
    for k in keys:
        mean = torch.stack([e.get(k).float() for e in experts.values()]).mean(0)
        torch.testing.assert_close(sd[k].float(), mean, rtol=1e-5, atol=1e-6)
    taus = ns["taus"]
    mean_tau = torch.stack(list(taus.values())).mean(0)
    for n, t in taus.items():
        cos = float(mean_tau @ t / (mean_tau.norm() * t.norm()))
        assert ns["table"]["weight_average"][n] == pytest.approx(cos, abs=2e-3)


def check_r_tsvm_walkthrough(ns):
    from r3h.io import Checkpoint

    check_averages(ns["scores"])
    report, pool = ns["report"], ns["pool"]
    hp = report["hyperparameters"]
    base = Checkpoint(pool.get_model_path("_pretrained_"))
    experts = [Checkpoint(pool.get_model_path(n)) for n in pool.model_names]
    svd_rows = [r for r in ns["rows"] if r["rule"] == "svd"]
    assert svd_rows and len(svd_rows) == sum(1 for r in report["tensors"].values() if r.get("rule") == "svd")
    # Ω of each SVD matrix, recomputed: the share of |τ| < ε over all experts' entries
    for row in svd_rows[:4]:
        b = base.get(row["name"]).float()
        taus = [e.get(row["name"]).float() - b for e in experts]
        eps = float(hp["epsilon"])
        if hp["epsilon_mode"] == "relative":
            eps *= (sum(float(t.pow(2).sum()) for t in taus) / sum(t.numel() for t in taus)) ** 0.5
        omega = Fraction(sum(int((t.abs() < eps).sum()) for t in taus), sum(t.numel() for t in taus))
        assert row["omega"] == pytest.approx(float(omega))
        assert len(row["alpha"]) == len(experts) and all(0 < k <= row["q"] for k in row["k_i"])
        assert row["q"] == min(b.shape) // len(experts)


def check_pareto_sweep(ns):
    report, front = ns["report"], ns["front"]
    assert len(report["members"]) == len(ns["grid"])
    pts = {m: (report["averages"][m]["Helpful_Avg"], report["averages"][m]["Harmless_Avg"])
           for m in report["members"]}
    for row in front.rows:  # the front by brute force over the members' averages
        x, y = pts[row["name"]]
        dominated = any(a >= x and b >= y and (a > x or b > y) for a, b in pts.values())
        assert row["pareto"] == (not dominated), row["name"]


CHECKS = {"quickstart": check_quickstart, "r_tsvm_walkthrough": check_r_tsvm_walkthrough,
          "pareto_sweep": check_pareto_sweep}


def test_every_notebook_has_checks():
    assert {p.stem for p in NOTEBOOKS} == set(CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    nb = json.loads(path.read_text())
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name}[cell {i}]", "exec"), namespace)
    CHECKS[path.stem](namespace)
