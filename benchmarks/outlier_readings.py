"""R-TSVM's outlier weights on Adam-like task vectors: the figures of docs/r_tsvm.md.

How to run (from the repository root, in the project's virtual environment)::

    python benchmarks/outlier_readings.py            # ~10 s on 2 CPU cores
    python benchmarks/outlier_readings.py --json /tmp/outliers.json
    python benchmarks/outlier_readings.py --toy      # also the toy pool's experts (trains it once if not cached)

Everything is seeded and single-threaded; the task vectors are one 576 × 576 matrix per
expert (SmolLM2-135M's hidden size), made here:

- `adam_uniform`: sign(g) · lr · (1 + 0.01 u), u ~ U(−1, 1): the near-uniform magnitudes per
  row of a short Adam run (lr = 5e-5);
- `adam_10`, `adam_1`: what `torch.optim.Adam` (lr = 5e-5) moves a zero matrix by in 10 steps
  (or 1) of gradients G = (A B / 2 + N) · diag-rows(s): a rank-8 part, Gaussian noise and a
  per-row scale s ~ U(0.1, 3.1), fresh noise every step;
- for scale: dense `gaussian`, `laplace` and `student_t3` entries.

It prints (1) each kind's outlier share s = T / Σ|τ| (Eq. 6–7, `r3h.ops.rtsvm.outlier_mass`;
for `adam_1` also with the one-pass σ = sqrt(mean τ² − μ²) that r3h used before, which
cancels in float32); (2) the weights αi (`outlier_norm: mean`) of every `outlier_reading`,
with the guard off (`outlier_min_share: 0`) and at its default, for three experts: two
`adam_10` experts and one `adam_10` expert with 20 entries raised to 3 × its largest |τ| (a
handful of outliers, as in issue 10's DPO experts); (3) the same for three experts of
growing tail weight (gaussian, laplace, student_t3, rescaled so that Σ|τ| is 4 : 1 : 1),
where the readings disagree without any collapse. `--toy` adds (4): over every matrix of the toy
pool `tiny_3h` (five DPO experts trained with Adam, cached under $R3H_CACHE), each expert's
outlier shares, how often the default guard fires, and the mean `eq8` weights without it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import json

import torch

from r3h.analysis import matrices
from r3h.ops import rtsvm
from r3h.methods import RTSVM

SIZE = 576
LR = 5e-5
DEFAULT_MIN_SHARE = inspect.signature(RTSVM.__init__).parameters["outlier_min_share"].default


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def adam_uniform(seed: int) -> torch.Tensor:
    g = gen(seed)
    sign = torch.where(torch.rand(SIZE, SIZE, generator=g) < 0.5, -1.0, 1.0)
    return sign * LR * (1 + 0.01 * (2 * torch.rand(SIZE, SIZE, generator=g) - 1))


def adam_steps(seed: int, steps: int) -> torch.Tensor:
    g = gen(seed)
    w = torch.nn.Parameter(torch.zeros(SIZE, SIZE))
    opt = torch.optim.Adam([w], lr=LR)
    a, b = torch.randn(SIZE, 8, generator=g), torch.randn(8, SIZE, generator=g)
    rows = 0.1 + 3 * torch.rand(SIZE, 1, generator=g)
    for _ in range(steps):
        w.grad = (a @ b / 2 + torch.randn(SIZE, SIZE, generator=g)) * rows
        opt.step()
    return w.detach().clone()


def dense(kind: str, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(SIZE, SIZE, generator=gen(seed))
    if kind == "laplace":
        return torch.distributions.Laplace(0.0, 1.0).sample((SIZE, SIZE))
    return torch.distributions.StudentT(3.0).sample((SIZE, SIZE))


def share(tau: torch.Tensor) -> float:
    return rtsvm.outlier_mass(tau) / float(tau.abs().sum(dtype=torch.float64))


def one_pass_share(tau: torch.Tensor) -> float:
    """The outlier share with σ = sqrt(mean τ² − μ²) in float32 (r3h before issue 10)."""
    a = tau.abs()
    mu = a.mean(dim=1, keepdim=True)
    sigma = (tau.pow(2).mean(dim=1, keepdim=True) - mu.pow(2)).clamp_min(0).sqrt()
    return float((a * (a >= mu + 3 * sigma)).sum()) / float(a.sum(dtype=torch.float64))


def with_handful(tau: torch.Tensor, seed: int, count: int = 20) -> torch.Tensor:
    tau = tau.clone()
    idx = torch.randperm(tau.numel(), generator=gen(seed))[:count]
    tau.view(-1)[idx] = 3 * float(tau.abs().max()) * torch.sign(tau.view(-1)[idx])
    return tau


def weights_table(taus, min_shares):
    rows = []
    for reading in rtsvm.OUTLIER_READINGS:
        for ms in min_shares:
            ow = matrices.outlier_weights(taus, "mean", reading, ms)
            rows.append({"outlier_reading": reading, "outlier_min_share": ms, "alpha": ow.weights,
                         "alpha_rule": ow.rule, "outlier_share": ow.shares})
    return rows


def print_weights(title, rows):
    print(f"\n{title}")
    print(f"  shares s_i = T_i / sum|tau_i|: {', '.join(f'{s:.4f}' for s in rows[0]['outlier_share'])}")
    print(f"  {'outlier_reading':<16}{'min_share':>10}  {'alpha (outlier_norm: mean)':<30}alpha_rule")
    for r in rows:
        alpha = "[" + ", ".join(f"{a:.2f}" for a in r["alpha"]) + "]"
        print(f"  {r['outlier_reading']:<16}{r['outlier_min_share']:>10g}  {alpha:<30}{r['alpha_rule']}")


def toy_pool():
    from r3h.io import Checkpoint
    from r3h.toy.build import build_tiny_3h

    paths = build_tiny_3h()
    names = [k for k in paths if k != "_pretrained_"]
    base, experts = Checkpoint(paths["_pretrained_"]), {n: Checkpoint(paths[n]) for n in names}
    rules, shares, eq8 = {}, [], []
    for key in base.keys():
        b = base.get(key).float()
        if b.dim() != 2:
            continue
        taus = [experts[n].get(key).float() - b for n in names]
        guarded = matrices.outlier_weights(taus, "mean", "eq8", DEFAULT_MIN_SHARE)
        rules[guarded.rule] = rules.get(guarded.rule, 0) + 1
        shares.append([s or 0.0 for s in guarded.shares])
        eq8.append(matrices.outlier_weights(taus, "mean", "eq8", 0.0).weights)
    s, w = torch.tensor(shares), torch.tensor(eq8)
    res = {"experts": names, "matrices": len(shares), "rules_at_default_guard": rules,
           "share_min": s.min(0).values.tolist(), "share_median": s.median(0).values.tolist(),
           "share_max": s.max(0).values.tolist(), "eq8_mean_alpha_without_guard": w.mean(0).tolist()}
    print(f"\ntoy pool tiny_3h ({os.path.dirname(paths['_pretrained_'])}): {len(shares)} matrices; "
          f"alpha_rule at outlier_min_share {DEFAULT_MIN_SHARE:g}: {rules}")
    print(f"  {'expert':<26}{'share min':>10}{'median':>9}{'max':>9}{'eq8 alpha, no guard (mean)':>29}")
    for i, n in enumerate(names):
        print(f"  {n:<26}{res['share_min'][i]:>10.4f}{res['share_median'][i]:>9.4f}{res['share_max'][i]:>9.4f}"
              f"{res['eq8_mean_alpha_without_guard'][i]:>29.2f}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--toy", action="store_true", help="also measure the toy pool tiny_3h's experts")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {"size": SIZE, "lr": LR, "default_outlier_min_share": DEFAULT_MIN_SHARE}

    kinds = {"adam_uniform": adam_uniform(1), "adam_1": adam_steps(2, 1), "adam_10": adam_steps(3, 10),
             "gaussian": dense("gaussian", 4), "laplace": dense("laplace", 5), "student_t3": dense("t3", 6)}
    out["share"] = {k: share(t) for k, t in kinds.items()}
    out["share_one_pass_adam_1"] = one_pass_share(kinds["adam_1"])
    print(f"outlier share s = T / sum|tau| of one {SIZE} x {SIZE} task vector (torch threads: 1)")
    for k, s in out["share"].items():
        print(f"  {k:<14}{s:.4f}")
    print(f"  adam_1, one-pass sigma: {out['share_one_pass_adam_1']:.4f}")

    collapse = [adam_steps(10, 10), adam_steps(11, 10), with_handful(adam_steps(12, 10), 13)]
    out["collapse"] = weights_table(collapse, [0.0, DEFAULT_MIN_SHARE])
    print_weights("three Adam experts (10 steps), the third with 20 outliers:", out["collapse"])

    tails = [dense(k, 20 + i) for i, k in enumerate(("gaussian", "laplace", "t3"))]
    tails = [t * (scale / float(t.abs().mean())) for t, scale in zip(tails, (4.0, 1.0, 1.0))]
    out["tails"] = weights_table(tails, [0.0, DEFAULT_MIN_SHARE])
    print_weights("three experts of growing tail weight (gaussian, laplace, student_t3), "
                  "sum|tau| in ratio 4 : 1 : 1:", out["tails"])
    if args.toy:
        out["toy"] = toy_pool()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
