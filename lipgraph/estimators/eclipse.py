"""ECLipsE and ECLipsE-Fast (Xu & Sivaranjani, NeurIPS 2024), for every slope interval, re-certified (§7).

Both choose LipSDP multipliers layer by layer instead of solving one large SDP. Eliminating Δx_0, Δx_1, … in
turn from the quadratic form of −M(ρ, T) (normalised to ρ = 1) leaves, before hidden layer k (weights W = W_{k−1},
slopes [α, β], m = (α+β)/2, r = (β−α)/2, a = αβ = m² − r²), a matrix Y_{k−1} ≻ 0 (Y_0 = I) and

    X = Y_{k−1} + 2a WᵀΛ_kW ≻ 0,     Y_k = 2Λ_k − 4m² Λ_k W X⁻¹ WᵀΛ_k ≻ 0,     ρ = λ_max(W_l Y_l⁻¹ W_lᵀ),

and T_k = ρΛ_k are multipliers of the full LMI. The paper treats a = 0 only (ReLU-like slopes [0, β]); its
public package applies the a = 0 formulas to GELU/SiLU too, which gives invalid bounds (docs/mathematics.md §7). Here the
αβ term is kept exactly, and the resulting T always goes through :func:`~.recertify.recertify`.

- **Fast** (closed form, Λ_k = λI): with k_max = λ_max(W Y⁻¹ Wᵀ) and t = λ k_max, the worst direction gives
  λ_min(Y_k) ≥ (2t − 4m²t²/(1 + 2at)) / k_max, maximised at t = 1 / (2r(|m| + r)) (for a = 0: the paper's
  λ = 1/(4m² k_max) in our scaling, T_ours = Λ_paper / 2).
- **ECLipsE** (one small SDP per layer, size n_{k−1} + n_k): maximise s subject to Y_k ⪰ s W_kᵀW_k over diagonal
  Λ_k ≥ 0 — the same block LMI as LipSDP on the two-matrix chain (W_{k−1}, W_k) with input Gram Y_{k−1}: by cvxpy
  for small stages, by the first-order LipSDP solver for large ones (convolutions: layers of thousands of
  neurons), certified on the whole chain by :func:`~.lipsdp_fo.certify_multipliers`.
"""
from __future__ import annotations

import torch

from lipgraph.bound import Bound
from lipgraph.estimators import ChainEstimator, DenseChain, register_estimator
from lipgraph.estimators.budget import BudgetExpired, expired
from lipgraph.estimators.lmi import MAX_LMI, SolverFailed, cvxpy_missing, solve_lmi
from lipgraph.estimators.eclipse_fast import (fast_multipliers, fast_stage, next_stage, normalised_to_multipliers,
                                              reduced_weights)
from lipgraph.estimators.recertify import InfeasibleMultipliers

def eclipse_multipliers(chain: DenseChain, solver: str | None = None, seconds: float = 60.0) -> list[torch.Tensor]:
    """ECLipsE's multipliers: per hidden layer, the small SDP of the module docstring, by cvxpy when its LMI has
    side ≤ ``lmi.MAX_LMI`` and cvxpy is installed, else by the first-order solver (:func:`stage_first_order`);
    a stage whose solve fails, or whose Λ breaks X ≻ 0, or that reaches the budget's deadline
    (:func:`~.budget.expired`: checked before a stage, after cvxpy's import, in the first-order stage's preparation
    and per evaluation of its solver) before its solve, takes Fast's Λ instead (:class:`~.budget.BudgetExpired` at
    the first stage: nothing solved)."""
    weights = reduced_weights(chain)
    Y = torch.eye(weights[0].shape[1], dtype=torch.float64, device=weights[0].device)
    lams = []
    for k, slope in enumerate(chain.slopes):
        try:
            if expired():  # the budget's deadline: the remaining stages take Fast's Λ
                raise BudgetExpired
            if Y.shape[0] + weights[k].shape[0] > MAX_LMI or cvxpy_missing():  # no cvxpy import (seconds) if too big
                lam = stage_first_order(Y, weights[k], weights[k + 1], slope, seconds / len(chain.slopes))
            else:
                if expired():  # the import took long: no interior-point solve (which cannot be stopped) after it
                    raise BudgetExpired
                rho, (lam,) = solve_lmi(weights[k:k + 2], (slope,), per_neuron=True, input_gram=Y, solver=solver)
                lam = lam.clamp(min=0) / rho
            Y_next = next_stage(Y, weights[k], lam, slope)
            if int(torch.linalg.cholesky_ex(Y_next).info) != 0:
                raise InfeasibleMultipliers("stage matrix not positive definite")
        except (SolverFailed, InfeasibleMultipliers, BudgetExpired) as err:
            if isinstance(err, BudgetExpired) and k == 0:
                raise  # nothing solved: ECLipsE-Fast alone, which runs anyway
            lam = fast_stage(Y, weights[k], slope)
            Y_next = next_stage(Y, weights[k], lam, slope)
        lams.append(lam)
        Y = Y_next
    return normalised_to_multipliers(weights, Y, lams)


def stage_first_order(Y: torch.Tensor, W: torch.Tensor, W_next: torch.Tensor, slope: tuple[float, float],
                      seconds: float) -> torch.Tensor:
    """One ECLipsE stage by the first-order LipSDP solver: with Y = LLᵀ (Cholesky), the stage LMI with input
    Gram Y is LipSDP on the two-matrix chain (W L⁻ᵀ, W_next) (substitute x = L⁻ᵀx'); its T divided by its ρ*(T)
    is the stage's Λ (unverified here: the whole chain is certified at the end). :class:`~.budget.BudgetExpired`
    past the analysis's deadline before the solver has a point (its warm start, ECLipsE-Fast of the stage, is
    computed with the deadline checks of ``stoppable``)."""
    from lipgraph.estimators.blockcert import schur_rho
    from lipgraph.estimators.lipsdp_fo import first_order_multipliers

    L = torch.linalg.cholesky(Y)
    stage = DenseChain((torch.linalg.solve_triangular(L, W.T, upper=False).T, W_next), (slope,))
    start = fast_multipliers(stage, stoppable=True)
    (T,) = first_order_multipliers(stage, start, seconds=seconds)
    rho = float(schur_rho((stage.reduced_input.weight, W_next), (slope,), [T]))
    return T / rho


def eclipse_fast(chain: DenseChain) -> Bound:
    """ECLipsE-Fast, re-certified: √ρ*(T_fast), valid for every slope interval."""
    from lipgraph.estimators.lipsdp_fo import certify_multipliers

    return certify_multipliers(chain, [fast_multipliers(chain)], "eclipse-fast")


def eclipse(chain: DenseChain) -> Bound:
    """ECLipsE (per-layer SDPs), re-certified (dense or block-tridiagonal certificate); a T that does not verify
    is repaired towards Fast's T (dense) or replaced by it."""
    from lipgraph.estimators.lipsdp_fo import certify_multipliers

    fast = fast_multipliers(chain, stoppable=True)
    return certify_multipliers(chain, [eclipse_multipliers(chain), fast], "eclipse", fallback=fast)


register_estimator(ChainEstimator(
    name="eclipse-fast", fn=eclipse_fast, certified=True,
    description="ECLipsE-Fast (Xu & Sivaranjani 2024): closed-form layer-wise multipliers, re-certified"))
register_estimator(ChainEstimator(
    name="eclipse", fn=eclipse, certified=True,
    limits=f"cvxpy for stage LMIs ≤ {MAX_LMI}, the first-order solver above or without cvxpy",
    description="ECLipsE (Xu & Sivaranjani 2024): one small SDP per layer (cvxpy, or the first-order solver for "
                "large layers), re-certified"))
