"""Re-certification of LipSDP multipliers: the exact, verified bound for one fixed choice of T (docs/mathematics.md §7).

For a chain x_1 = φ_1(W_0 x_0), …, y = W_l x_l with every slope of φ_k in [α_k, β_k] (any α_k ≤ β_k), each neuron
obeys the incremental quadratic constraint (Δx − αΔz)(βΔz − Δx) ≥ 0, Δz = W Δx_{k−1} (Fazlyab et al., NeurIPS
2019, Lemma 1). With multipliers T_k = diag(λ_k) ≥ 0 the S-procedure gives ‖Δy‖² ≤ ρ‖Δx_0‖² whenever the
block-tridiagonal matrix M(ρ, T) ⪯ 0 (:func:`lmi_blocks`). Split M into the input block and the hidden block H:

    M = [[A − ρI, Bᵀ], [B, H]],   H ≺ 0  ⇒  ( M ⪯ 0  ⇔  ρ ≥ ρ*(T) = λ_max(A + Bᵀ(−H)⁻¹B) )   (Schur complement)

so ``recertify`` returns √ρ*(T): the best bound this T can give, whatever the solver that proposed T did.

**Rigour.** ρ*(T) is computed in float64, then *verified*: ρ̂ = ρ*(1 + η) (η from 1e-10 up) is accepted once
−M(ρ̂) is proven positive semidefinite: after a diagonal congruence to unit diagonal, its floating-point Cholesky
factorisation succeeds with the shift c covering the rounding of forming M (γ_{p+4}|M| entrywise, p the longest
inner product) and Cholesky's own backward error (2(N+2)u·N; Rump, BIT 46 (2006), "Verification of positive
definiteness"). That proves M(ρ̂, T) ⪯ 0 for the exact matrix, so √ρ̂ is a true bound.

**Exact input reduction.** When n_0 > n_1, W_0 = Rᵀ Qᵀ (thin QR of W_0ᵀ) and the LMI only sees W_0 through
W_0ᵀ(·)W_0, so W_0 is replaced by the square Rᵀ (784-50-10: LMI 834 → 100, same optimum). Rounding is covered
by proving ‖R⁻ᵀW_0‖ ≤ 1 + ε (again by a shifted Cholesky): every W_0 x is then Rᵀu with ‖u‖ ≤ (1 + ε)‖x‖, so the
reduced certificate ρ̂ certifies (1 + ε)²ρ̂ for the original chain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from lipgraph.bound import Bound, certified
from lipgraph.errors import LipgraphError
from lipgraph.estimators import DenseChain
from lipgraph.estimators.budget import BudgetExpired, expired

#: unit roundoff of float64
UNIT_ROUNDOFF = 2.0 ** -53
#: relative inflations of ρ tried when verifying (the first that verifies is kept)
RHO_MARGINS = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
#: relative slack tried when verifying the input reduction ‖R⁻ᵀ W_0‖ ≤ 1 + ε
REDUCTION_SLACK = (1e-12, 1e-9, 1e-6)
METHOD = "recertified"


class InfeasibleMultipliers(LipgraphError):
    """The multipliers do not give a bound: −H is not positive definite (or the bound could not be verified)."""


@dataclass(frozen=True)
class MatrixOps:
    """The few operations :func:`lmi_blocks` needs, so that one formula serves torch (numbers) and cvxpy
    (expressions). ``scale_rows(t, W)`` is diag(t)·W for a vector ``t`` (or t·W for a scalar)."""

    scale_rows: Callable[[Any, Any], Any]
    eye: Callable[[int], Any]
    zeros: Callable[[int, int], Any]
    assemble: Callable[[list[list[Any]]], Any]


TORCH_OPS = MatrixOps(
    scale_rows=lambda t, W: t.reshape(-1, 1) * W,
    eye=lambda n: torch.eye(n, dtype=torch.float64),
    zeros=lambda r, c: torch.zeros(r, c, dtype=torch.float64),
    assemble=lambda rows: torch.cat([torch.cat(row, dim=1) for row in rows], dim=0),
)


def lmi_blocks(weights: Sequence[Any], slopes: Sequence[tuple[float, float]], multipliers: Sequence[Any],
               rho: Any, ops: MatrixOps, absolute: bool = False, input_gram: Any = None) -> Any:
    """M(ρ, T) of LipSDP-Neuron in block-tridiagonal form (docs/mathematics.md §7; Fazlyab et al. 2019, Theorem 2),
    variables (Δx_0, …, Δx_l), multipliers T_k = diag(multipliers[k−1]) for hidden layer k = 1…l:

        blk(k−1,k−1) += −2α_kβ_k W_{k−1}ᵀ T_k W_{k−1},  blk(k,k) += −2T_k,  blk(k−1,k) = (α_k+β_k) W_{k−1}ᵀ T_k,
        blk(0,0) += −ρI (−ρ·``input_gram`` when given: ECLipsE's stages),  blk(l,l) += W_lᵀ W_l.

    ``absolute=True`` builds the same sum with every term replaced by its absolute value (|W|, |α_kβ_k|, …): an
    entrywise bound on the terms, used for the rounding allowance.
    """
    mag = abs if absolute else (lambda v: v)
    l = len(weights) - 1
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    diag: list[Any] = [None] * (l + 1)
    off: dict[tuple[int, int], Any] = {}

    def add(k: int, term: Any) -> None:
        diag[k] = term if diag[k] is None else diag[k] + term

    gram = ops.eye(sizes[0]) if input_gram is None else mag(input_gram)
    add(0, (rho if absolute else -rho) * gram)
    for k in range(1, l + 1):
        W, t, (lo, hi) = mag(weights[k - 1]), multipliers[k - 1], slopes[k - 1]
        TW = ops.scale_rows(t, W)
        if lo * hi != 0:
            add(k - 1, mag(-2.0 * lo * hi) * (W.T @ TW))
        add(k, (2.0 if absolute else -2.0) * ops.scale_rows(t, ops.eye(sizes[k])))
        off[k, k - 1] = mag(lo + hi) * TW
        off[k - 1, k] = off[k, k - 1].T
    W_out = mag(weights[l])
    add(l, W_out.T @ W_out)
    return ops.assemble([[diag[i] if i == j else off.get((i, j), ops.zeros(sizes[i], sizes[j]))
                          for j in range(l + 1)] for i in range(l + 1)])


def verified_psd(A: torch.Tensor, error: torch.Tensor) -> bool:
    """True when every symmetric A* with |A* − A| ≤ ``error`` (entrywise) is provably ⪰ 0.

    With D = diag(A)^{1/2}, Ã = D⁻¹AD⁻¹ has unit diagonal (a congruence: A* ⪰ 0 ⇔ D⁻¹A*D⁻¹ ⪰ 0); its
    floating-point Cholesky factorisation must succeed after the shift c = ‖D⁻¹(error)D⁻¹ + 3u|Ã|‖_F
    + 2(N+2)u·N, which covers the error of A, the rounding of the scaling and the backward error of Cholesky
    (Rump, BIT 46 (2006), "Verification of positive definiteness").
    """
    n = A.shape[0]
    if n == 0:
        return True
    diag = A.diagonal()
    if not bool(torch.isfinite(A).all()) or bool((diag <= 0).any()):
        return False
    d = diag.sqrt()
    scaled = A / d[:, None]
    scaled /= d[None, :]
    frobenius_sq = 0.0
    for i in range(0, n, _ROWS):  # ‖D⁻¹(error)D⁻¹ + 3u|Ã|‖_F by row blocks: no second n × n temporary
        rows = error[i:i + _ROWS] / d[i:i + _ROWS, None] / d[None, :] + 3 * UNIT_ROUNDOFF * scaled[i:i + _ROWS].abs()
        frobenius_sq += float((rows * rows).sum())
    c = 1.01 * (math.sqrt(frobenius_sq) + 2.0 * (n + 2) * UNIT_ROUNDOFF * n)
    scaled.diagonal().sub_(c)
    return int(torch.linalg.cholesky_ex(scaled).info) == 0


#: rows per block when bounding the shift of :func:`verified_psd`
_ROWS = 1024


def _forming_error(absolute: torch.Tensor, inner: int) -> torch.Tensor:
    """Entrywise bound γ_{p+4}|M| on the rounding of forming M from inner products of length p (Higham, §3.1)."""
    return 1.01 * (inner + 4) * UNIT_ROUNDOFF * absolute


@dataclass(frozen=True)
class ReducedInput:
    """The first matrix of the chain after the exact input reduction, and the factor (1 + ε)² it costs."""

    weight: torch.Tensor
    factor: float


def _check_deadline(stoppable: bool) -> None:
    """Between the costly steps of :func:`reduce_input` (minutes each on a 16,384-input conv layer), when it
    prepares an estimator (``stoppable``): past the analysis's deadline, that estimator stops
    (:func:`~.budget.expired`); never inside a certificate."""
    if stoppable and expired():
        raise BudgetExpired


def reduce_input(W0: torch.Tensor, stoppable: bool = False) -> ReducedInput:
    """W_0 (n_1 × n_0, n_0 > n_1) → Rᵀ (n_1 × n_1) from the thin QR of W_0ᵀ, with a proof that
    W_0 W_0ᵀ ⪯ (1 + ε)² RᵀR, i.e. ‖R⁻ᵀ W_0‖ ≤ 1 + ε (module docstring). Unreduced when n_0 ≤ n_1 or no ε verifies
    (W_0 of deficient row rank). ``stoppable``: :class:`~.budget.BudgetExpired` between its steps past the
    analysis's deadline (an estimator's preparation, never a certificate)."""
    n1, n0 = W0.shape
    if n0 <= n1:
        return ReducedInput(W0, 1.0)
    R = torch.linalg.qr(W0.T, mode="r").R  # n1 × n1, W0ᵀ = Q R
    _check_deadline(stoppable)
    gram_R, gram_W = R.T @ R, W0 @ W0.T
    _check_deadline(stoppable)
    abs_R, abs_W = R.abs().T @ R.abs(), W0.abs() @ W0.abs().T
    inner = max(n0, n1)
    for eps in REDUCTION_SLACK:
        _check_deadline(stoppable)
        factor = (1.0 + eps) ** 2
        diff = factor * gram_R - gram_W
        err = _forming_error(factor * abs_R + abs_W, inner)
        if verified_psd(diff, err):
            return ReducedInput(R.T.contiguous(), factor)
    return ReducedInput(W0, 1.0)


def _check_multipliers(chain: DenseChain, multipliers: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    widths = chain.widths[1:-1]
    if len(multipliers) != len(widths):
        raise ValueError(f"{len(widths)} hidden layers need {len(widths)} multiplier vectors, got {len(multipliers)}")
    out = []
    for k, (t, n) in enumerate(zip(multipliers, widths), start=1):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n).clone()
        if t.numel() != n:
            raise ValueError(f"hidden layer {k} has {n} neurons, got {t.numel()} multipliers")
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise InfeasibleMultipliers(f"multipliers of hidden layer {k} must be finite and >= 0")
        out.append(t)
    return out


def schur_rho(weights: Sequence[torch.Tensor], slopes: Sequence[tuple[float, float]],
              multipliers: Sequence[torch.Tensor]) -> float:
    """ρ*(T) = λ_max(A + Bᵀ(−H)⁻¹B) in float64 (unverified); raises :class:`InfeasibleMultipliers` if −H ⊁ 0."""
    return schur_rho_of(lmi_blocks(weights, slopes, multipliers, 0.0, TORCH_OPS), weights[0].shape[1])


def schur_rho_of(M: torch.Tensor, n0: int) -> float:
    """ρ*(T) = λ_max(A + Bᵀ(−H)⁻¹B) of an LMI matrix M at ρ = 0 whose first ``n0`` rows are the input block
    (float64, unverified); raises :class:`InfeasibleMultipliers` if −H ⊁ 0."""
    A, B, H = M[:n0, :n0], M[n0:, :n0], M[n0:, n0:]
    if H.shape[0] == 0:
        return max(float(torch.linalg.eigvalsh(A)[-1]), 0.0)
    L, info = torch.linalg.cholesky_ex(-H)
    if int(info) != 0:
        raise InfeasibleMultipliers("the multipliers are not feasible: the hidden block H of the LipSDP matrix is "
                                    f"not negative definite (Cholesky of −H failed at row {int(info)})")
    C = torch.linalg.solve_triangular(L, B, upper=False)
    S = A + C.T @ C
    return max(float(torch.linalg.eigvalsh((S + S.T) / 2)[-1]), 0.0)


def recertify(chain: DenseChain, multipliers: Sequence[torch.Tensor], method: str = METHOD) -> Bound:
    """Certified √ρ*(T) for fixed multipliers T (one vector ≥ 0 per hidden layer, or one scalar per layer for
    T_k = λ_k I): the smallest ρ with M(ρ, T) ⪯ 0, verified in floating point (module docstring).

    Raises :class:`InfeasibleMultipliers` when −H is not positive definite, i.e. this T proves nothing.
    """
    mults = _check_multipliers(chain, multipliers)
    reduced = chain.reduced_input
    weights = (reduced.weight,) + tuple(chain.weights[1:])
    rho = schur_rho(weights, chain.slopes, mults)
    inner = max(chain.widths)
    scale = float(torch.linalg.matrix_norm(lmi_blocks(weights, chain.slopes, mults, 0.0, TORCH_OPS, absolute=True),
                                           "fro"))
    for margin in RHO_MARGINS:
        rho_hat = rho * (1.0 + margin) + margin * UNIT_ROUNDOFF * scale
        neg_M = -lmi_blocks(weights, chain.slopes, mults, rho_hat, TORCH_OPS)
        absolute = lmi_blocks(weights, chain.slopes, mults, rho_hat, TORCH_OPS, absolute=True)
        if verified_psd(neg_M, _forming_error(absolute, inner)):
            value = math.sqrt(rho_hat * reduced.factor) * (1.0 + 4 * UNIT_ROUNDOFF)
            return certified(value, method)
    raise InfeasibleMultipliers(f"could not verify the bound √ρ = {math.sqrt(rho):.6g} for these multipliers in "
                                "floating point (the hidden block is too close to singular)")


#: weights θ of the fallback multipliers when repairing a candidate that does not verify
REPAIR_MIX = (1e-6, 1e-4, 1e-2, 1e-1)


def best_recertified(chain: DenseChain, candidates: Sequence[Sequence[torch.Tensor]], method: str,
                     fallback: Sequence[torch.Tensor] | None = None) -> Bound:
    """The smallest :func:`recertify` bound over candidate multipliers (each one verified on its own).

    A candidate that fails (a solver's T on the boundary of the feasible set, slightly outside after rounding) is
    repaired by mixing it with ``fallback``, a T known to be feasible: M(ρ, T) is affine in (ρ, T), so the mix
    (1 − θ)T + θT_f is feasible for the mix of the two ρ as soon as T is; for a slightly infeasible T a small θ
    usually suffices. Raises :class:`InfeasibleMultipliers` when no candidate verifies.
    """
    best: Bound | None = None
    failures = []
    for T in candidates:
        mixes = [T] + ([] if fallback is None else
                       [[(1 - theta) * t + theta * f for t, f in zip(T, fallback)] for theta in REPAIR_MIX])
        for mixed in mixes:
            try:
                bound = recertify(chain, mixed, method)
            except InfeasibleMultipliers as err:
                failures.append(str(err))
                continue
            best = bound if best is None or bound.value < best.value else best
            break
    if best is None:
        raise InfeasibleMultipliers(failures[-1] if failures else "no candidate multipliers")
    return best
