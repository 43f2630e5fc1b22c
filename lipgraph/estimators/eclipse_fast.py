"""ECLipsE-Fast's closed-form multipliers (Xu & Sivaranjani, NeurIPS 2024), the stage recursion they share with full
ECLipsE, and the normalisation ρ = λ_max(W_l Y_l⁻¹ W_lᵀ) (the mathematics is in :mod:`lipgraph.estimators.eclipse`).

Kept apart from the estimators so that the first-order LipSDP solver (:mod:`~.lipsdp_fo`) can warm-start from
these multipliers while full ECLipsE uses that solver for its large stages, without an import cycle.
"""
from __future__ import annotations

import torch

from lipgraph.estimators import DenseChain
from lipgraph.estimators.budget import BudgetExpired, expired
from lipgraph.estimators.recertify import InfeasibleMultipliers

#: t is capped so that 1 + 2at ≥ 1 − 0.99 (a < 0) and r ≥ 1e-3·|m| (a linear activation would give t = ∞)
SAFETY = 0.99
MIN_SPREAD = 1e-3
#: relative slack that makes ECLipsE's last stage strictly feasible
STRICT = 1e-6


def inverse_quadratic(Y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """W Y⁻¹ Wᵀ by a Cholesky factorisation of Y ≻ 0."""
    L, info = torch.linalg.cholesky_ex(Y)
    if int(info) != 0:
        raise InfeasibleMultipliers("ECLipsE: the stage matrix lost positive definiteness")
    Z = torch.linalg.solve_triangular(L, W.T, upper=False)
    G = Z.T @ Z
    return (G + G.T) / 2


def next_stage(Y: torch.Tensor, W: torch.Tensor, lam: torch.Tensor, slope: tuple[float, float]) -> torch.Tensor:
    """Y_k = 2Λ − 4m²ΛW X⁻¹WᵀΛ with X = Y_{k−1} + 2a WᵀΛW (module docstring)."""
    lo, hi = slope
    m, a = (lo + hi) / 2, lo * hi
    X = Y + 2 * a * (W.T * lam) @ W
    return torch.diag(2 * lam) - 4 * m * m * lam[:, None] * inverse_quadratic(X, W) * lam[None, :]


def fast_spread(slope: tuple[float, float]) -> float:
    """t = λ·k_max of ECLipsE-Fast for slopes [α, β]: 1/(2r(|m| + r)), with the caps of :data:`SAFETY`."""
    lo, hi = slope
    m, r, a = abs(lo + hi) / 2, (hi - lo) / 2, lo * hi
    if m == 0 and r == 0:
        return 1.0
    r = max(r, MIN_SPREAD * m)
    t = 1.0 / (2 * r * (m + r))
    return min(t, SAFETY / (-2 * a)) if a < 0 else t


def top_eig(G: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(G)[-1]) if G.numel() else 0.0


def normalised_to_multipliers(weights: tuple[torch.Tensor, ...], Y: torch.Tensor,
                               lams: list[torch.Tensor]) -> list[torch.Tensor]:
    """T_k = (1 + δ)ρΛ_k with ρ = λ_max(W_l Y_l⁻¹ W_lᵀ), the last stage's requirement Y_l ⪰ W_lᵀW_l / ρ. At
    δ = 0 that requirement is tight, so the hidden block H of M is singular and nothing can be verified; δ =
    :data:`STRICT` makes it strict, at a cost of at most a factor √(1 + δ) on the bound."""
    rho = max(top_eig(inverse_quadratic(Y, weights[-1])), torch.finfo(torch.float64).tiny)
    return [(1 + STRICT) * rho * lam for lam in lams]


def reduced_weights(chain: DenseChain, stoppable: bool = False) -> tuple[torch.Tensor, ...]:
    reduced = chain.reduced_input_by_deadline() if stoppable else chain.reduced_input
    return (reduced.weight,) + tuple(chain.weights[1:])


def fast_multipliers(chain: DenseChain, stoppable: bool = False) -> list[torch.Tensor]:
    """ECLipsE-Fast's multipliers T_k = ρλ_k I (closed form, module docstring). ``stoppable`` (the start of a
    costlier estimator, not a fallback of a finished solve): :class:`~.budget.BudgetExpired` in the input reduction
    or at a stage past the analysis's deadline (never within ECLipsE-Fast itself, a cheap estimator:
    :func:`~.budget.expired`)."""
    weights = reduced_weights(chain, stoppable)
    Y = torch.eye(weights[0].shape[1], dtype=torch.float64, device=weights[0].device)
    lams = []
    for W, slope in zip(weights, chain.slopes):
        if stoppable and expired():
            raise BudgetExpired
        lams.append(fast_stage(Y, W, slope))
        Y = next_stage(Y, W, lams[-1], slope)
    return normalised_to_multipliers(weights, Y, lams)


def fast_stage(Y: torch.Tensor, W: torch.Tensor, slope: tuple[float, float]) -> torch.Tensor:
    """Λ = λI with λ = t / λ_max(W Y⁻¹ Wᵀ)."""
    k_max = top_eig(inverse_quadratic(Y, W))
    return torch.full((W.shape[0],), fast_spread(slope) / k_max if k_max > 0 else 1.0, dtype=torch.float64,
                      device=W.device)
