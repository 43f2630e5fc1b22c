"""Block-tridiagonal certificate of LipSDP multipliers for chains too large for one dense matrix (docs/sdp-conv.md).

Stable interface: :func:`block_certificate` (chain, multipliers) → certified :class:`~lipgraph.bound.Bound` or
:class:`~.recertify.InfeasibleMultipliers`; :func:`schur_rho` (the same recursion, unverified and differentiable,
for optimisers).

**The recursion.** −M(ρ, T) (docs/mathematics.md §7) is block-tridiagonal over (Δx_0, …, Δx_l) with diagonal blocks
D_0 = ρI + 2a_1 W_0ᵀT_1W_0, D_k = 2T_k + 2a_{k+1} W_kᵀT_{k+1}W_k (0 < k < l), D_l = 2T_l − W_lᵀW_l and couplings
E_k = −s_k W_{k−1}ᵀT_k between blocks k−1 and k (a_k = α_kβ_k, s_k = α_k + β_k). Eliminating from the output
(the ECLipsE recursion run backwards): Z_l = D_l, and for k = l … 1, with a Cholesky of Z_k,

    X_{k−1} = E_k Z_k⁻¹ E_kᵀ + δ_k I,   Z_{k−1} = D_{k−1} − X_{k−1},   ρ = λ_max(X_0 − 2a_1 W_0ᵀT_1W_0) (+ margin).

**Why it is sound.** With the X_k fixed floating-point matrices (X_l = 0), −M(ρ) is *exactly* the sum of the
pieces P_k = [[X_{k−1}, E_k], [E_kᵀ, D_k − X_k]] (on blocks k−1, k; k = 1 … l) and P_0 = D_0(ρ) − X_0 (on block
0): every X_k enters once with each sign, so the sum telescopes whatever rounding produced X_k. If every piece is
⪰ 0 then −M(ρ) ⪰ 0, i.e. M(ρ, T) ⪯ 0 and √ρ bounds the chain (Fazlyab et al. 2019, Thm 2). Each piece is proven
⪰ 0 by :func:`~.recertify.verified_psd` (Rump's shifted Cholesky) with an entrywise error bound covering the rounding
of forming D_k, E_k and D_k − X_k from the weights (γ_{p+5}|·|, p the longest inner product). δ_k > 0 (tried from
1e-12 of ‖X‖ upwards) makes each piece strictly definite so that the shifted Cholesky can succeed; it only costs
tightness. A failing Cholesky at any step means *not certified* (:class:`InfeasibleMultipliers`), never a bound.

**Cost** Σ_k (n_{k−1} + n_k)³/3 flops; memory for one piece ≈ 4 · 8 · (n_{k−1} + n_k)² bytes (the piece, its error
matrix, the scaled copy and the Cholesky factor), plus the dense layers W_k (8 n_k n_{k+1} bytes each). Measured on
the shared, loaded 2-core, 24 GB machine (benchmarks/RESULTS.md, section "cnn"): the 4-conv 16-channel 16×16 CNN,
three hidden layers of 4,096 neurons (pieces of 8,192, ~2 GB each), ECLipsE-Fast's multipliers and their block
certificate in 267 s. That is the largest chain certified there; by the memory count above, hidden layers of
~10⁴ neurons (pieces of 2·10⁴: ~13 GB) are the ceiling of a 24 GB machine — not run.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from lipgraph.bound import Bound, certified
from lipgraph.estimators.recertify import (UNIT_ROUNDOFF, InfeasibleMultipliers, ReducedInput, reduce_input,
                                           verified_psd)

#: relative diagonal margins δ tried for each piece (the first that verifies is kept)
PIECE_MARGINS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4)
#: relative inflations of ρ tried for the input piece
RHO_MARGINS = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
METHOD = "block-certified"


def _gamma(inner: int) -> float:
    """γ_{p+5} with a 1 % allowance (Higham, §3.1)."""
    return 1.01 * (inner + 5) * UNIT_ROUNDOFF


def _quadratic(W: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Wᵀ diag(t) W, symmetrised."""
    G = W.T @ (t[:, None] * W)
    return (G + G.T) / 2


def _diag_block(weights: Sequence[torch.Tensor], slopes, mults, k: int, absolute: bool) -> torch.Tensor:
    """D_k for 1 ≤ k ≤ l (module docstring), or its entrywise absolute-value bound."""
    l = len(weights) - 1
    W = weights[k].abs() if absolute else weights[k]
    if k == l:
        gram = W.T @ W
        return torch.diag(2 * mults[k - 1]) + (gram if absolute else -(gram + gram.T) / 2)
    a = slopes[k][0] * slopes[k][1]
    D = torch.diag(2 * mults[k - 1])
    if a != 0:
        D = D + (2 * abs(a) if absolute else 2 * a) * _quadratic(W, mults[k])
    return D


def _coupling(weights, slopes, mults, k: int) -> torch.Tensor:
    """E_k = −s_k W_{k−1}ᵀ T_k (n_{k−1} × n_k)."""
    lo, hi = slopes[k - 1]
    return -(lo + hi) * weights[k - 1].T * mults[k - 1][None, :]


def _verified_piece(top: torch.Tensor, E: torch.Tensor, bottom: torch.Tensor, top_abs: torch.Tensor,
                    E_abs: torch.Tensor, bottom_abs: torch.Tensor, gamma: float) -> bool:
    """[[top, E], [Eᵀ, bottom]] ⪰ 0 for every matrix within γ·[[top_abs, E_abs], [·, bottom_abs]] entrywise."""
    piece = torch.cat([torch.cat([top, E], 1), torch.cat([E.T, bottom], 1)])
    error = torch.cat([torch.cat([top_abs, E_abs], 1), torch.cat([E_abs.T, bottom_abs], 1)]).mul_(gamma)
    return verified_psd(piece, error)


def _prepare(weights: Sequence[torch.Tensor], multipliers: Sequence[torch.Tensor], reduced: ReducedInput | None):
    reduced = reduced or reduce_input(weights[0])
    W = (reduced.weight,) + tuple(weights[1:])
    mults = [torch.as_tensor(t, dtype=torch.float64, device=W[0].device).reshape(-1) for t in multipliers]
    for k, (t, Wk) in enumerate(zip(mults, W), start=1):
        if t.numel() != Wk.shape[0]:
            raise ValueError(f"hidden layer {k} has {Wk.shape[0]} neurons, got {t.numel()} multipliers")
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise InfeasibleMultipliers(f"multipliers of hidden layer {k} must be finite and >= 0")
    return W, mults, reduced.factor


def block_certificate(weights: Sequence[torch.Tensor], slopes: Sequence[tuple[float, float]],
                      multipliers: Sequence[torch.Tensor], method: str = METHOD,
                      reduced: ReducedInput | None = None) -> Bound:
    """Certified √ρ for the multipliers T (one vector ≥ 0 per hidden layer) of the chain W_0, φ_1, …, W_l (dense
    float64 matrices, any device) by the piecewise proof of the module docstring; ``reduced``: the input reduction
    of ``weights[0]`` when the caller has it (``DenseChain.reduced_input``).

    Raises :class:`InfeasibleMultipliers` when a Cholesky fails (T proves nothing) or no margin verifies."""
    W, mults, factor = _prepare(weights, multipliers, reduced)
    l = len(W) - 1
    if l == 0:
        raise ValueError("a chain without hidden layers needs no multipliers: use its operator norm")
    inner = max(max(w.shape) for w in W)
    gamma = _gamma(inner)
    X = X_abs = None  # X_k and |X_k| from the previous step (none for k = l)
    for k in range(l, 0, -1):
        D, D_abs = _diag_block(W, slopes, mults, k, False), _diag_block(W, slopes, mults, k, True)
        Z = D if X is None else D - X
        Z_abs = D_abs if X is None else D_abs + X_abs
        L, info = torch.linalg.cholesky_ex(Z)
        if int(info) != 0:
            raise InfeasibleMultipliers(f"not certified: the Schur complement of hidden layer {k} is not positive "
                                        f"definite (Cholesky failed at row {int(info)})")
        E = _coupling(W, slopes, mults, k)
        F = torch.linalg.solve_triangular(L, E.T, upper=False)
        del L
        Y = F.T @ F
        Y = (Y + Y.T) / 2
        del F
        E_abs = E.abs()
        scale = float(Y.diagonal().abs().max()) if Y.numel() else 0.0
        for delta in PIECE_MARGINS:
            X_next = Y + (delta * scale + 1e-300) * torch.eye(Y.shape[0], dtype=Y.dtype, device=Y.device)
            if _verified_piece(X_next, E, Z, X_next.abs(), E_abs, Z_abs, gamma):
                break
        else:
            raise InfeasibleMultipliers(f"not certified: the piece of hidden layer {k} could not be verified "
                                        "positive semidefinite in floating point")
        X, X_abs = X_next, X_next.abs()
        del D, D_abs, Z, Z_abs, E, E_abs, Y
    lo, hi = slopes[0]
    a = lo * hi
    Q = _quadratic(W[0], mults[0]) if a != 0 else torch.zeros_like(X)
    Q_abs = _quadratic(W[0].abs(), mults[0]) if a != 0 else Q
    G = X - 2 * a * Q
    rho = max(float(torch.linalg.eigvalsh(G)[-1]), 0.0)
    scale = float(torch.linalg.matrix_norm(X_abs + 2 * abs(a) * Q_abs, "fro"))
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    for margin in RHO_MARGINS:
        rho_hat = rho * (1 + margin) + margin * scale + 1e-300
        piece = rho_hat * eye + 2 * a * Q - X
        error = gamma * (rho_hat * eye + 2 * abs(a) * Q_abs + X_abs)
        if verified_psd(piece, error):
            return certified(math.sqrt(rho_hat * factor) * (1 + 4 * UNIT_ROUNDOFF), method)
    raise InfeasibleMultipliers(f"not certified: could not verify ρ = {rho:.6g} on the input block")


def schur_rho(weights: Sequence[torch.Tensor], slopes: Sequence[tuple[float, float]],
              multipliers: Sequence[torch.Tensor], smooth: float | None = None, both: bool = False):
    """ρ*(T) by the recursion of the module docstring with δ = 0, in the weights' dtype and device, differentiable
    in T (autograd). ``smooth`` = β replaces λ_max by the soft maximum (1/β) log Σ exp(β λ_i) (≥ λ_max, smooth).
    Unverified: raises :class:`InfeasibleMultipliers` when a Cholesky fails."""
    l = len(weights) - 1
    X = None
    for k in range(l, 0, -1):
        t = multipliers[k - 1]
        if k == l:
            Z = torch.diag(2 * t) - weights[l].T @ weights[l]
        else:
            Z = torch.diag(2 * t) - X
            a = slopes[k][0] * slopes[k][1]
            if a != 0:
                Z = Z + 2 * a * weights[k].T @ (multipliers[k][:, None] * weights[k])
        L, info = torch.linalg.cholesky_ex((Z + Z.T) / 2)
        if int(info) != 0:
            raise InfeasibleMultipliers(f"hidden layer {k}: Schur complement not positive definite")
        lo, hi = slopes[k - 1]
        F = torch.linalg.solve_triangular(L, (lo + hi) * t[:, None] * weights[k - 1], upper=False)
        X = F.T @ F
    lo, hi = slopes[0]
    G = X - 2 * lo * hi * weights[0].T @ (multipliers[0][:, None] * weights[0]) if lo * hi != 0 else X
    eigs = torch.linalg.eigvalsh((G + G.T) / 2)
    top = eigs[-1]
    soft = top if smooth is None else top.detach() + torch.logsumexp(smooth * (eigs - top.detach()), 0) / smooth
    return (soft, top.detach()) if both else soft
