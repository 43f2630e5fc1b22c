"""SeqLip (Scaman & Virmaux, NeurIPS 2018, §6, eq. 8; docs/mathematics.md §5).

For f = W_K ∘ φ ∘ ⋯ ∘ φ ∘ W_1 with elementwise activations of slope in [α, β] and thin SVDs W_i = U_i Σ_i V_iᵀ:

    L(f) ≤ Π_{i=1}^{K−1} max_{σ ∈ {α, β}^{n_i}} ‖ Σ̃_{i+1} V_{i+1}ᵀ diag(σ) U_i Σ̃_i ‖,
    Σ̃_i = Σ_i for the first and last layer, Σ_i^{1/2} otherwise.

(The Jacobian is W_K D_{K−1} ⋯ D_1 W_1 with D_i = diag(σ_i), σ_i ∈ [α, β]^{n_i}; split each middle Σ_i into
two square roots and bound the norm of the product by the product of the norms of the pair factors. Each pair
term is a convex function of σ, so its maximum over the box is attained at a vertex.) Note the transposes:
the reference implementation uses Σ^{1/2}·V instead of Σ^{1/2}·Vᵀ and falls below the true constant.

The pair maximum is computed here by **partial enumeration**, certified for every budget: the coordinates j with
the largest ‖a_j‖·‖b_j‖ (a_j, b_j: column j of A = Σ̃V ᵀ, row j of B = UΣ̃) are enumerated over {α, β}, the rest
are relaxed with σ_j = m + r·s_j (m, r the midpoint and radius of [α, β], |s_j| ≤ 1):

    max ‖A diag(σ) B‖ ≤ max_{σ_E} ‖A_E diag(σ_E) B_E + m·A_R B_R‖ + r·‖A_R‖·‖B_R‖.

With every coordinate enumerated this is the exact pair maximum (``seqlip``, eq. 8); with none it is the
closed form |m|·‖AB‖ + r‖A‖‖B‖. **Greedy SeqLip** (an estimate) instead climbs from σ = β: the pair norm is
convex in σ, so moving every σ_j to the end of [α, β] that the gradient (uᵀa_j)(b_jᵀv) favours never decreases
it (u, v the top singular pair); it stops at a vertex that is a local maximum, which may be below the true one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lipgraph.bound import FLOAT_MARGIN, Bound, certified, estimate
from lipgraph.estimators import ChainEstimator, DenseChain, register_estimator
from lipgraph.estimators.budget import expired
from lipgraph.linalg.dense import batched_spectral_norm

#: At most this many coordinates per pair are enumerated exactly (2^e small SVDs per pair) ...
MAX_ENUMERATE = 20
#: ... and fewer when 2^e spectral norms of the r₁ × r₀ pair matrix would cost more than this many flops (≈ 0.5 s;
#: each small batched eigensolve counts as ``_OVERHEAD`` flops more).
ENUMERATE_FLOPS = 5e8
_OVERHEAD = 20_000
#: Enumerated patterns per batch of SVDs.
_BATCH = 1 << 12


@dataclass(frozen=True)
class Factors:
    """A (possibly truncated) SVD W ≈ U diag(S) Vᵀ; ``truncated`` means the tail of the spectrum is dropped."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    truncated: bool = False


def svd_factors(W: torch.Tensor) -> Factors:
    """Thin SVD of a matrix in float64 (exact factorisation up to rounding)."""
    return Factors(*DenseChain.of([W], []).svds[0])


def pair_matrices(factors: list[Factors], i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A = Σ̃_{i+1} V_{i+1}ᵀ and B = U_i Σ̃_i for the activation between layers i and i + 1 (0-based)."""
    last = len(factors) - 1
    left, right = factors[i], factors[i + 1]
    s_left = left.S if i == 0 else left.S.sqrt()
    s_right = right.S if i + 1 == last else right.S.sqrt()
    return s_right[:, None] * right.V.T, left.U * s_left[None, :]


def pair_max(A: torch.Tensor, B: torch.Tensor, slope: tuple[float, float], max_enumerate: int = MAX_ENUMERATE,
             ) -> tuple[float, int]:
    """Certified upper bound on max_{σ ∈ [α, β]^n} ‖A diag(σ) B‖₂ and how many coordinates were enumerated
    (n of them: the exact maximum). Below n, the smallest bound over every prefix of the enumeration order
    (each is certified; the cost at most doubles), the prefixes stopping at the analysis's deadline
    (:func:`~.budget.expired`; the empty prefix, one product, always runs)."""
    n = A.shape[1]
    order = torch.argsort(A.norm(dim=0) * B.norm(dim=1), descending=True)
    e = enumerable(n, A.shape[0], B.shape[1], max_enumerate)
    if e == n:
        return _enumerated(A, B, slope, order, e), e
    values = [_enumerated(A, B, slope, order, 0)]
    while len(values) <= e and not expired():
        values.append(_enumerated(A, B, slope, order, len(values)))
    return min(values), len(values) - 1


def _enumerated(A: torch.Tensor, B: torch.Tensor, slope: tuple[float, float], order: torch.Tensor, e: int) -> float:
    """max over σ of the first ``e`` coordinates of ``order`` of ‖A_E diag(σ_E) B_E + m A_R B_R‖ + r‖A_R‖‖B_R‖."""
    lo, hi = slope
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    chosen, rest = order[:e], order[e:]
    A_E, B_E, A_R, B_R = A[:, chosen], B[chosen], A[:, rest], B[rest]
    base = mid * (A_R @ B_R)
    tail = rad * batched_spectral_norm(A_R[None]) * batched_spectral_norm(B_R[None]) if len(rest) else 0.0
    powers = 2 ** torch.arange(e)
    best = 0.0
    for start in range(0, 2 ** e, _BATCH):
        codes = torch.arange(start, min(start + _BATCH, 2 ** e))
        bits = ((codes[:, None] // powers) % 2).to(torch.float64)
        sigma = lo + (hi - lo) * bits  # (batch, e)
        M = base + (A_E[None] * sigma[:, None, :]) @ B_E
        best = max(best, batched_spectral_norm(M))
    return best + tail


def enumerable(n: int, rows: int, cols: int, max_enumerate: int = MAX_ENUMERATE) -> int:
    """How many of n coordinates to enumerate: at most ``max_enumerate``, within ``ENUMERATE_FLOPS``."""
    per_pattern = rows * cols * max(min(rows, cols), 1) + max(min(rows, cols), 1) ** 3 + _OVERHEAD
    return max(0, min(n, max_enumerate, int(math.log2(max(ENUMERATE_FLOPS / per_pattern, 1.0)))))


def _top_pair(M: torch.Tensor, v: torch.Tensor | None, iters: int = 50) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Top singular value and vectors (u, v) of M: SVD when small, else warm-started power iteration."""
    if min(M.shape) <= 256 or v is None:
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        return S[0].item(), U[:, 0], Vh[0]
    for _ in range(iters):
        u = M @ v
        u = u / u.norm()
        w = M.T @ u
        value, v = w.norm().item(), w / w.norm()
    return value, u, v


def pair_greedy(A: torch.Tensor, B: torch.Tensor, slope: tuple[float, float], max_steps: int = 100) -> float:
    """Greedy SeqLip for one pair: gradient-sign ascent over the vertices of [α, β]^n from σ = β (an estimate;
    it is attained at a vertex, so it never exceeds the exact pair maximum)."""
    lo, hi = slope
    sigma = torch.full((A.shape[1],), hi, dtype=torch.float64)
    if A.shape[0] == 0 or B.shape[1] == 0:
        return 0.0
    value, v = 0.0, None
    for _ in range(max_steps):
        value, u, v = _top_pair(A * sigma[None, :] @ B, v)
        grad = (u @ A) * (B @ v)
        nxt = torch.where(grad > 0, hi, torch.where(grad < 0, lo, sigma))
        if torch.equal(nxt, sigma):
            break
        sigma = nxt
    return value


def seqlip_bound(factors: list[Factors], slopes: list[tuple[float, float]],
                 max_enumerate: int = MAX_ENUMERATE) -> Bound:
    """Certified SeqLip bound from exact (untruncated) SVD factors of every layer."""
    if any(f.truncated for f in factors):
        raise ValueError("a certified SeqLip bound needs the full SVD of every layer, not a truncated one")
    if len(factors) == 1:
        return certified(factors[0].S.max().item() if len(factors[0].S) else 0.0, "seqlip", margin=FLOAT_MARGIN)
    value, counts = 1.0, []
    for i, slope in enumerate(slopes):
        pair, enumerated = pair_max(*pair_matrices(factors, i), slope, max_enumerate)
        value *= pair
        counts.append((enumerated, factors[i].U.shape[0]))
    partial = ", ".join(f"{e}/{n}" for e, n in counts)
    method = "seqlip" if all(e == n for e, n in counts) else f"seqlip (enumerated {partial}, rest relaxed)"
    return certified(value, method, margin=FLOAT_MARGIN)


def greedy_bound(factors: list[Factors], slopes: list[tuple[float, float]]) -> Bound:
    """Greedy SeqLip (top-k truncated when the factors are): an estimate, never certified."""
    value = math.prod(pair_greedy(*pair_matrices(factors, i), slope) for i, slope in enumerate(slopes))
    if len(factors) == 1:
        value = factors[0].S.max().item()
    truncated = max((f.S.numel() for f in factors if f.truncated), default=0)
    return estimate(value, f"seqlip-greedy (top-{truncated} singular vectors)" if truncated else "seqlip-greedy")


def seqlip(chain: DenseChain, max_enumerate: int = MAX_ENUMERATE) -> Bound:
    """Certified SeqLip bound of a dense chain (ℓ2)."""
    return seqlip_bound([Factors(*svd) for svd in chain.svds], list(chain.slopes), max_enumerate)


def seqlip_greedy(chain: DenseChain) -> Bound:
    """Greedy SeqLip estimate of a dense chain (ℓ2)."""
    return greedy_bound([Factors(*svd) for svd in chain.svds], list(chain.slopes))


register_estimator(ChainEstimator(
    "seqlip", seqlip, certified=True,
    description="SeqLip eq. 8, exact vertex enumeration per layer pair (partial + relaxation when wide)"))
register_estimator(ChainEstimator(
    "seqlip-greedy", seqlip_greedy, certified=False, limits="larger chains: top-k singular vectors",
    description="greedy SeqLip: local search over activation patterns (an estimate)"))
