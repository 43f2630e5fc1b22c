"""LipSDP-Neuron and LipSDP-Layer (Fazlyab et al., NeurIPS 2019, Theorem 2), solved with cvxpy, re-certified.

    minimise ρ  subject to  M(ρ, T) ⪯ 0,  T_k = diag(λ_k) ≥ 0 (Neuron) or λ_k I (Layer)      (docs/mathematics.md §7)

The solver's T goes through :func:`~.recertify.recertify` (the reported value is √ρ*(T), verified, whatever the
solver did), together with ECLipsE-Fast's T, which is feasible for the same LMI: LipSDP-Layer is therefore never
above ECLipsE-Fast, and a solver's T that lands just outside the feasible set is repaired towards Fast's.

**Solver** (optional extra ``lipgraph[sdp]``: cvxpy + CVXOPT). Measured on 2 CPU cores, Neuron LMI of a
64-n-n-10 nonnegative net (size N = 64 + 2n), seconds to solve: N = 96: CVXOPT 0.3, SCS(eps 1e-7) 0.4, Clarabel
17.6; N = 192: CVXOPT 3.4, SCS 4.5, Clarabel 555; N = 320: CVXOPT 34, SCS 15. CVXOPT is a primal-dual interior
point method on the m×m Schur system (m = number of multipliers): accurate (re-certified value = exact L to
1e-9 on nonnegative nets) and fastest up to N ≈ 300; SCS (first order, one N×N eigendecomposition per iteration)
scales better above that. Clarabel, cvxpy's default, stores the PSD cone's dense (N(N+1)/2)² scaling block: never.
Without CVXOPT, SCS is used throughout.

**Size.** The LMI has side N = min(n_0, n_1) + Σ hidden widths (exact input reduction). Above ``max_lmi``
LipSDP-Neuron is solved by the first-order solver (:mod:`.lipsdp_fo`, also used without cvxpy); LipSDP-Layer's
chain is split into consecutive sub-chains that fit, each bounded on its own, and L ≤ Π L_part · Π L(φ) over the
activations at the cuts (split mode: certified, looser). A hidden layer whose own stage n_{k−1} + n_k exceeds
the limit cannot be split further: refused with the sizes in the message.
"""
from __future__ import annotations

import math

from lipgraph.bound import Bound, certified
from lipgraph.errors import LipgraphError
from lipgraph.estimators import ChainEstimator, DenseChain, register_estimator
from lipgraph.estimators.eclipse_fast import fast_multipliers
from lipgraph.estimators.lmi import (CVXOPT_MAX, CVXOPT_OPTIONS, INSTALL, SCS_OPTIONS,  # noqa: F401 - re-exported:
                                     SolverFailed, largest_stage)  # these lived here before estimators/lmi.py
from lipgraph.estimators.lmi import MAX_LMI, cvxpy_missing, lmi_size, require_cvxpy, solve_lmi, stage_limit_reason
from lipgraph.estimators.recertify import UNIT_ROUNDOFF, best_recertified, recertify

def sub_chains(chain: DenseChain, max_lmi: int) -> list[tuple[int, int]]:
    """Greedy split into consecutive weight ranges [i, j) whose LMI fits ``max_lmi`` (one range if it all fits)."""
    widths, parts, i = chain.widths, [], 0
    while i < len(chain.weights):
        j = i + 1
        while j < len(chain.weights) and lmi_size(widths[i:j + 2]) <= max_lmi:
            j += 1
        parts.append((i, j))
        i = j
    return parts


def _part(chain: DenseChain, i: int, j: int) -> DenseChain:
    return DenseChain(chain.weights[i:j], chain.slopes[i:j - 1])


def _solve_part(chain: DenseChain, per_neuron: bool, solver: str | None, method: str) -> Bound:
    if len(chain.weights) == 1:
        return recertify(chain, [], method)
    _, T = solve_lmi(chain.weights, chain.slopes, per_neuron=per_neuron, solver=solver)
    fast = fast_multipliers(chain)
    return best_recertified(chain, [T, fast], method, fallback=fast)


def lipsdp(chain: DenseChain, *, per_neuron: bool = True, max_lmi: int = MAX_LMI, solver: str | None = None) -> Bound:
    """LipSDP-Neuron (``per_neuron``) or LipSDP-Layer on a chain, re-certified.

    Neuron: interior point (cvxpy) when the LMI has side ≤ ``max_lmi`` and cvxpy is installed, else the
    first-order solver of :mod:`.lipsdp_fo` on the whole chain (same problem; dense or block-tridiagonal
    certificate). Layer: interior point only, split mode above ``max_lmi``."""
    method = "lipsdp-neuron" if per_neuron else "lipsdp-layer"
    if per_neuron and (lmi_size(chain.widths) > max_lmi or cvxpy_missing()):
        from lipgraph.estimators.lipsdp_fo import lipsdp_first_order

        return lipsdp_first_order(chain)
    reason = stage_limit_reason(chain, max_lmi)
    if reason:
        raise LipgraphError(f"{method}: {reason}")
    require_cvxpy()
    parts = sub_chains(chain, max_lmi)
    bounds = [_solve_part(_part(chain, i, j), per_neuron, solver, method) for i, j in parts]
    if len(bounds) == 1:
        return bounds[0]
    cuts = [chain.slopes[j - 1] for _, j in parts[:-1]]
    value = math.prod(b.value for b in bounds) * math.prod(max(abs(lo), abs(hi)) for lo, hi in cuts)
    value *= 1.0 + 2 * (len(bounds) + len(cuts)) * UNIT_ROUNDOFF
    return certified(value, f"{method} (split into {len(bounds)} sub-chains)")


def _applies(chain: DenseChain) -> str | None:
    return cvxpy_missing() or stage_limit_reason(chain)


register_estimator(ChainEstimator(
    name="lipsdp-neuron", fn=lambda chain: lipsdp(chain, per_neuron=True), certified=True,
    limits=f"cvxpy up to LMI side {MAX_LMI}; the first-order solver above or without cvxpy",
    description="LipSDP-Neuron (Fazlyab et al. 2019): one multiplier per neuron; interior point (cvxpy) on small "
                "chains, first-order (lipsdp_fo) on large ones; re-certified"))
register_estimator(ChainEstimator(
    name="lipsdp-layer", fn=lambda chain: lipsdp(chain, per_neuron=False), certified=True, applies=_applies,
    limits=f"largest stage LMI ≤ {MAX_LMI} (longer chains split); needs cvxpy (extra sdp)",
    description="LipSDP-Layer (Fazlyab et al. 2019): one multiplier per layer, cvxpy, re-certified"))
