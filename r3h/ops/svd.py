"""The linear algebra of TSVM and R-TSVM for one matrix tensor (pure functions on tensors).

Task Singular Vectors (Gargiulo et al., arXiv 2412.00081) and R-TSVM (Yang et al.,
arXiv 2502.06876, Sec. 5, Algorithm 1, Appendix A.3), as fixed in r3h's design
card. For one m × d tensor (r = min(m, d)) and n experts:

1. τi = θi − θ0 in float32; thin SVD τi = Ui diag(Si) Viᵀ (`top_triplets`).
2. Keep each expert's top q = ⌊r/n⌋ triplets, stacked: Û (m × nq), ŝ, V̂ (d × nq).
3. Orthogonalise each stack by its polar factor (the orthogonal Procrustes solution
   of the paper's Eq. 3–4): Û = P Σ Qᵀ gives U⊥ = P Qᵀ; likewise V⊥ (`polar_factor`).
4. STI = ‖(ÛᵀÛ − I) diag(ŝ) (V̂ᵀV̂ − I)‖_F, the interference before orthogonalisation
   (`interference_from_grams`).

TSVM: Δ = U⊥ diag(ŝ) V⊥ᵀ. R-TSVM reweights expert i's block by αi (outlier mass,
Eq. 6–8) and keeps its first ki columns (sparsity-adaptive rank, Eq. 9–10), after
orthogonalisation: Δ = Σi U⊥⁽ⁱ⁾[:, :ki] diag(αi Si[:ki]) V⊥⁽ⁱ⁾[:, :ki]ᵀ (`combine`).
The rules for αi, Ω and ki are in `r3h.ops.rtsvm`; the per-matrix algorithm that runs
these steps (zero experts, the SVD cache) in `r3h.methods.tsvm.matrix`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import torch

_log = logging.getLogger(__name__)


@contextlib.contextmanager
def cpu_threads(n: Optional[int], device: torch.device) -> Iterator[None]:
    """Run CPU linear algebra with exactly `n` threads (no-op for `None` or a GPU).

    LAPACK's SVD gives bits that depend on its thread count, so a fixed count is what
    makes a merge bit-identical whatever the number of processes. On small 2-core
    machines one thread is also much faster (MKL's threaded SVD measured 5–40× slower);
    parallelism comes from Fabric ranks instead.
    """
    if n is None or torch.device(device).type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)

@dataclass
class StackedFactors:
    """The experts' top-q singular triplets side by side (steps 1–2)."""

    U: torch.Tensor  # m × nq, expert i's block is columns i·q … (i+1)·q − 1
    S: torch.Tensor  # nq
    V: torch.Tensor  # d × nq
    q: int
    n: int

    def block(self, i: int) -> slice:
        return slice(i * self.q, (i + 1) * self.q)

def top_q(r: int, n: int) -> int:
    """q = ⌊r / n⌋ triplets per expert."""
    return r // n

def randomized_svd(
    A: torch.Tensor, k: int, oversample: int = 10, n_iter: int = 4, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k SVD by a randomized range finder with power iterations (Halko et al., 2011).

    The Gaussian test matrix is drawn on CPU from `generator`, so results do not
    depend on the global RNG, the tensor order or the process count.
    Returns U (m × k), S (k), V (d × k).
    """
    m, d = A.shape
    p = min(k + oversample, m, d)
    omega = torch.randn(d, p, generator=generator, dtype=torch.float32).to(A.device)
    Q = torch.linalg.qr(A @ omega).Q
    for _ in range(n_iter):
        Q = torch.linalg.qr(A.T @ Q).Q
        Q = torch.linalg.qr(A @ Q).Q
    Ub, S, Vh = torch.linalg.svd(Q.T @ A, full_matrices=False)
    return (Q @ Ub)[:, :k], S[:k], Vh[:k].T

SOLVERS = ("auto", "full", "randomized")
# κ = σ1/σq (top-q triplets) or sqrt(λmax/λmin) of the stack's Gram (polar factors) above which
# a Gram route hands over to the exact SVD. Rounding the float64 Gram moves σq by about
# ½·r·ε64·κ² relatively (≤ 5e-6 at κ = 1e4, r = 1024) and a singular vector by about
# r·ε64·κ/2 times what float32 LAPACK's own rounding moves it, so below this bound the Gram
# route is at least as accurate as the float32 SVD it replaces.
GRAM_MAX_COND = 1e4
GRAM_CHUNK_ROWS = 4096  # rows per float64 block: the Gram route never holds τ in float64
# Below this κ the small right factor (V diag(1/σ) or (AᵀA)^-1/2, condition κ) is applied by a
# float32 GEMM (relative error ≈ ε32·κ per column, the float32 SVD's own order); above, in float64.
F32_APPLY_MAX_COND = 100.0

@dataclass
class Route:
    """How one decomposition was computed, for the per-tensor report."""

    name: str  # "gram", "svd" (LAPACK / cuSOLVER), or "randomized"
    cond: Optional[float] = None  # the condition estimate the Gram route decided on
    fallback: bool = False  # a Gram route was tried and handed over to the exact SVD

    def describe(self) -> str:
        if self.fallback:
            return f"svd (fallback: κ={self.cond:.3g} > {GRAM_MAX_COND:g})"
        return self.name if self.cond is None else f"{self.name} (κ={self.cond:.3g})"

def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"svd_solver must be one of {', '.join(SOLVERS)}; got {solver!r}")

def uses_gram(solver: str) -> bool:
    """Whether `solver` takes the Gram routes (before the condition check): `auto` does for
    every shape (faster than LAPACK's SVD on CPU for the top-q triplets of every Llama matrix
    and for tall stacks' polar factors: `python benchmarks/bench_tsvm.py --routes`); `full`
    and `randomized` never."""
    return solver == "auto"

def _gram(A: torch.Tensor) -> torch.Tensor:
    """AᵀA in float64, accumulated over blocks of rows (A itself stays float32)."""
    d = A.shape[1]
    G = torch.zeros(d, d, dtype=torch.float64, device=A.device)
    for i in range(0, A.shape[0], GRAM_CHUNK_ROWS):
        blk = A[i : i + GRAM_CHUNK_ROWS].to(torch.float64)
        G.addmm_(blk.T, blk)
    return G

def _apply_right(A: torch.Tensor, M: torch.Tensor, cond: float, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A @ M (M float64, small, of condition `cond`), as float32, into `out` (may be A itself:
    rows are independent). A float32 GEMM where cond ≤ F32_APPLY_MAX_COND, else float64 by
    blocks of rows."""
    if cond <= F32_APPLY_MAX_COND:
        M32 = M.to(torch.float32)
        if out is None:
            return A @ M32
        for i in range(0, A.shape[0], GRAM_CHUNK_ROWS):
            out[i : i + GRAM_CHUNK_ROWS] = A[i : i + GRAM_CHUNK_ROWS] @ M32
        return out
    if out is None:
        out = torch.empty(A.shape[0], M.shape[1], dtype=torch.float32, device=A.device)
    for i in range(0, A.shape[0], GRAM_CHUNK_ROWS):
        out[i : i + GRAM_CHUNK_ROWS] = A[i : i + GRAM_CHUNK_ROWS].to(torch.float64) @ M
    return out

def gram_top_q(tau: torch.Tensor, q: int) -> Tuple[Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]], float]:
    """Top-q singular triplets from the smaller Gram matrix, in float64.

    For τ (m × d) with m ≥ d: G = τᵀτ = V diag(σ²) Vᵀ (eigh), Vq = its top-q eigenvectors,
    σ = sqrt(λ), Uq = τ Vq diag(1/σ); for m < d the same on τᵀ. Exact in exact arithmetic.
    Returns ((U, S, V), κ) with κ = σ1/σq, or (None, κ) when κ > GRAM_MAX_COND (σq ≈ 0: the
    triplets are not determined by the Gram; the caller takes the exact SVD).
    """
    wide = tau.shape[0] < tau.shape[1]
    A = tau.T if wide else tau
    w, W = torch.linalg.eigh(_gram(A))
    w, W = w[-q:].flip(0), W[:, -q:].flip(1)
    top, low = float(w[0]), float(w[-1])
    cond = math.inf if low <= 0 or top <= 0 else math.sqrt(top / low)
    if not cond <= GRAM_MAX_COND:
        return None, cond
    S = w.sqrt()
    U = _apply_right(A, W / S, cond)  # A Vq diag(1/σ)
    V = W.to(torch.float32)
    S = S.to(torch.float32)
    return ((V, S, U) if wide else (U, S, V)), cond

def top_triplets(
    tau: torch.Tensor,
    q: int,
    solver: str = "auto",
    generator: Optional[torch.Generator] = None,
    oversample: int = 10,
    n_iter: int = 4,
) -> Tuple[Tuple[torch.Tensor, torch.Tensor, torch.Tensor], Route]:
    """Step 1 for one expert: its top-q triplets U (m × q), S (q), V (d × q), and the route.

    `full`: LAPACK's thin SVD, sliced (the first q′ ≤ q columns are those a run with q′
    gives, bit for bit: what lets the SVD cache serve a smaller q). `auto`: the
    float64 Gram route (`gram_top_q`), falling back to the exact SVD where κ is too large.
    `randomized`: `randomized_svd`.
    """
    check_solver(solver)
    if solver == "randomized":
        return randomized_svd(tau, q, oversample, n_iter, generator), Route("randomized")
    cond = None
    if uses_gram(solver):
        got, cond = gram_top_q(tau, q)
        if got is not None:
            return got, Route("gram", cond)
    U, S, Vh = thin_svd(tau)
    return (U[:, :q].clone(), S[:q].clone(), Vh[:q].T.clone()), Route("svd", cond, fallback=cond is not None)

# A float32 SVD whose random probes miss by more than this (relative) is computed again in
# float64: float32 LAPACK is right to ~1e-6 here, a failed one by 1e-2 or more.
SVD_CHECK_TOL = 1e-3


def svd_error(x: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> float:
    """How far (U, S, Vh) is from a thin SVD of x, from three random probes (O(m·d), no
    product of the factors): ‖x z − U (S ⊙ Vh z)‖ / (σ1 ‖z‖), and how far U and Vᵀ are from
    keeping a vector's norm (orthonormal columns), the largest of the three. The probes are
    drawn from a fixed seed on CPU, so a rerun checks the same vectors."""
    g = torch.Generator().manual_seed(0)
    r = S.shape[0]
    if r == 0 or x.numel() == 0:
        return 0.0
    z = torch.randn(x.shape[1], generator=g, dtype=torch.float64).to(x.device, x.dtype)
    v = torch.randn(r, generator=g, dtype=torch.float64).to(x.device, x.dtype)
    scale = float(S.max()) * float(z.norm())
    errs = [float((x @ z - U @ (S * (Vh @ z))).norm()) / scale if scale > 0 else 0.0]
    for W in (U, Vh.T):
        errs.append(abs(float((W @ v).norm()) / float(v.norm()) - 1.0))
    return max(errs)


def thin_svd(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(x, full_matrices=False)``, checked (`svd_error`) and computed again in
    float64 (cast back) when LAPACK fails. It can fail two ways: float32 gesdd raises on nearly
    orthonormal input, whose singular values are all ≈ 1 (seen in Iso-CTS's orthogonalisation on
    real DPO experts); and oneMKL's threaded float32 gesdd can return, without an error, a U
    whose columns are not orthonormal (seen with 2 threads on Iso-CTS's stacked 2560 × 768
    basis of `benchmarks/bench_merge.py`'s 148M pool: ‖UᵀU − I‖ = 1.0; one thread was right).
    The check reads the factors only, so a correct SVD is returned bit for bit."""
    try:
        U, S, Vh = torch.linalg.svd(x, full_matrices=False)
        err = svd_error(x, U, S, Vh)
        if err <= SVD_CHECK_TOL:
            return U, S, Vh
        failure = f"its factors miss by {err:.2g} (random probes)"
    except torch.linalg.LinAlgError as e:
        failure = f"LAPACK raised: {e}"
    if x.dtype == torch.float64:
        raise torch.linalg.LinAlgError(f"SVD of a {tuple(x.shape)} float64 matrix failed: {failure}")
    _log.warning("float32 SVD of a %s matrix failed (%s); computed again in float64", tuple(x.shape), failure)
    U, S, Vh = torch.linalg.svd(x.double(), full_matrices=False)
    err = svd_error(x.double(), U, S, Vh)
    if err > SVD_CHECK_TOL:
        raise torch.linalg.LinAlgError(f"SVD of a {tuple(x.shape)} matrix failed in float32 ({failure}) "
                                       f"and in float64 (its factors miss by {err:.2g})")
    return U.to(x.dtype), S.to(x.dtype), Vh.to(x.dtype)


def polar(A: torch.Tensor) -> torch.Tensor:
    """Step 3: the orthogonal polar factor P Qᵀ of A = P Σ Qᵀ (nearest matrix with
    orthonormal columns: the orthogonal Procrustes solution)."""
    P, _, Qh = thin_svd(A)
    return P @ Qh

def polar_factor(A: torch.Tensor, solver: str = "auto", inplace: bool = False) -> Tuple[torch.Tensor, torch.Tensor, Route]:
    """Step 3 with the route choice: (A⊥, AᵀA in float64, route).

    Gram route (`auto`): AᵀA = W diag(λ) Wᵀ (eigh, float64), A⊥ = A W diag(λ^-1/2) Wᵀ
    = A (AᵀA)^-1/2, applied by blocks of rows (`inplace`: written over A). Where
    κ = sqrt(λmax/λmin) > GRAM_MAX_COND (nearly dependent columns) it falls back to `polar`.
    The Gram is returned for the interference (STI) either way.
    """
    check_solver(solver)
    G = _gram(A)
    cond = None
    if uses_gram(solver):
        lam, W = torch.linalg.eigh(G)
        top, low = float(lam[-1]), float(lam[0])
        cond = math.inf if low <= 0 or top <= 0 else math.sqrt(top / low)
        if cond <= GRAM_MAX_COND:
            M = (W * lam.rsqrt()) @ W.T
            return _apply_right(A, M, cond, out=A if inplace else None), G, Route("gram", cond)
    return polar(A), G, Route("svd", cond, fallback=cond is not None)

def interference_from_grams(GU: torch.Tensor, GV: torch.Tensor, S: torch.Tensor) -> float:
    """STI from the Gram matrices ÛᵀÛ, V̂ᵀV̂ (the differences from I taken in their own
    precision, float64 for the Gram routes; the product in float32)."""
    eye = torch.eye(GU.shape[0], dtype=GU.dtype, device=GU.device)
    A = (GU - eye).to(torch.float32) * S.to(torch.float32)
    return float(torch.linalg.matrix_norm(A @ (GV - eye.to(GV.dtype)).to(torch.float32)))

def combine(
    U_orth: torch.Tensor,
    V_orth: torch.Tensor,
    S: torch.Tensor,
    q: int,
    n: int,
    weights: Optional[Sequence[float]] = None,
    ranks: Optional[Sequence[int]] = None,
    base: Optional[torch.Tensor] = None,
    alpha: float = 1.0,
    inplace: bool = False,
) -> torch.Tensor:
    """Δ from the polar factors U⊥ (m × nq), V⊥ (d × nq) of the stacks and ŝ (nq): expert
    i's block keeps its first ki columns, scaled by αi. The polar factors do not depend on
    α, γ, ε or the weights, so the SVD cache can keep them. With `base`: θ0 + α Δ in one
    GEMM (no Δ is held); `inplace` scales U⊥ in place (it is not needed afterwards)."""
    scale = S.clone()
    keep = torch.ones_like(scale, dtype=torch.bool)
    for i in range(n):
        b = slice(i * q, (i + 1) * q)
        if weights is not None:
            scale[b] *= float(weights[i])
        if ranks is not None:
            keep[i * q + int(ranks[i]) : (i + 1) * q] = False
    if not bool(keep.all()):
        U_orth, V_orth, scale = U_orth[:, keep], V_orth[:, keep], scale[keep]
        inplace = True  # U_orth is a fresh copy now
    Us = U_orth.mul_(scale) if inplace else U_orth * scale
    if base is None:
        return Us @ V_orth.T
    return torch.addmm(base, Us, V_orth.T, alpha=alpha)
