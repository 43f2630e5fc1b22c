"""LipSDP-Neuron and LipSDP-Layer (Fazlyab et al., NeurIPS 2019, Theorem 2), solved with cvxpy, re-certified.

    minimise ρ  subject to  M(ρ, T) ⪯ 0,  T_k = diag(λ_k) ≥ 0 (Neuron) or λ_k I (Layer)      (algorithms.md §7)

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

import importlib
import math
import warnings
from typing import Any, Sequence

import torch

from lipgraph.bound import Bound, certified
from lipgraph.errors import LipgraphError
from lipgraph.estimators import ChainEstimator, DenseChain, register_estimator
from lipgraph.estimators.eclipse import fast_multipliers
from lipgraph.estimators.recertify import (UNIT_ROUNDOFF, MatrixOps, best_recertified, lmi_blocks, recertify,
                                           reduce_input)

INSTALL = "pip install 'lipgraph[sdp]'"
#: largest LMI side solved in one piece (CVXOPT: 10–35 s at this size on 2 cores; SCS on a trained 64-128-128-10
#: net, N = 320: 195 s); larger chains are split
MAX_LMI = 300
#: CVXOPT up to this LMI side, SCS (eps 1e-7: its T is re-certified anyway) above
CVXOPT_MAX = 300
SCS_OPTIONS = {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iters": 10000}
CVXOPT_OPTIONS = {"abstol": 1e-8, "reltol": 1e-8, "feastol": 1e-8}


class SolverFailed(LipgraphError):
    """The SDP solver returned no usable multipliers."""


def cvxpy_missing() -> str | None:
    """None when cvxpy can be imported, else the reason (with the install command)."""
    try:
        importlib.import_module("cvxpy")
    except ImportError:
        return f"needs the optional SDP solver stack (cvxpy): {INSTALL}"
    return None


def _cvxpy() -> Any:
    reason = cvxpy_missing()
    if reason:
        raise LipgraphError(f"LipSDP/ECLipsE {reason}")
    import cvxpy

    return cvxpy


def lmi_size(widths: Sequence[int]) -> int:
    """Side of the LipSDP matrix of a chain of widths n_0 … n_K after the input reduction."""
    return min(widths[0], widths[1]) + sum(widths[1:-1])


def largest_stage(chain: DenseChain) -> tuple[int, int]:
    """(k, size) of the largest single-hidden-layer LMI n_{k−1} + n_k (n_0 reduced): the smallest piece that any
    split of the chain, and every ECLipsE stage, must solve."""
    widths = chain.widths
    stages = [(k, (min(widths[0], widths[1]) if k == 1 else widths[k - 1]) + widths[k])
              for k in range(1, len(widths) - 1)]
    return max(stages, key=lambda s: s[1], default=(0, 0))


def stage_limit_reason(chain: DenseChain, max_lmi: int = MAX_LMI) -> str | None:
    """Why no SDP can be solved on this chain (its largest stage is above ``max_lmi``), or None."""
    k, size = largest_stage(chain)
    if size <= max_lmi:
        return None
    w = chain.widths
    return (f"chain too large for an SDP: hidden layer {k} alone needs an LMI of size {size} "
            f"({w[k - 1]} + {w[k]} neurons; whole chain {lmi_size(w)}, widths {w}), above the limit {max_lmi} "
            f"(interior-point cost grows like N⁴: ~35 s at N = 320 on 2 cores); use eclipse-fast, or dcp for "
            "convolutions")


def _attempts(size: int, solver: str | None) -> list[tuple[str, dict]]:
    """Solvers to try in order: CVXOPT at tight then default tolerances (tight ones sometimes stall), then SCS;
    SCS first above :data:`CVXOPT_MAX`."""
    import cvxpy as cp

    cvxopt = [("CVXOPT", CVXOPT_OPTIONS), ("CVXOPT", {})]
    scs = [("SCS", SCS_OPTIONS)]
    if solver is not None:
        return [(name, opts) for name, opts in cvxopt + scs if name == solver.upper()] or [(solver.upper(), {})]
    order = cvxopt + scs if size <= CVXOPT_MAX else scs + cvxopt[:1]
    return [(name, opts) for name, opts in order if name in cp.installed_solvers()]


def _cvxpy_ops(cp: Any) -> MatrixOps:
    import numpy as np

    def scale_rows(t: Any, W: Any) -> Any:
        return cp.diag(t) @ W if t.size > 1 else cp.multiply(t, W)  # a scalar (or 1-vector) multiplier

    return MatrixOps(scale_rows=scale_rows, eye=np.eye, zeros=lambda r, c: np.zeros((r, c)), assemble=cp.bmat)


def solve_lmi(weights: Sequence[torch.Tensor], slopes: Sequence[tuple[float, float]], *, per_neuron: bool,
              input_gram: torch.Tensor | None = None, solver: str | None = None) -> tuple[float, list[torch.Tensor]]:
    """Minimise ρ s.t. M(ρ, T) ⪯ 0 (``input_gram`` Y replaces I in the ρ block) with cvxpy: (ρ, [λ_k]).

    Unverified: pass the multipliers to :func:`~.recertify.recertify`. The solver sees the weights scaled to
    unit norm, W̃_k = W_k / c_k (the bound is homogeneous: ρ = C²ρ̃ and T_k = (C/C_k)² T̃_k, C_k = c_0⋯c_{k−1},
    C = C_{l+1}) and Y scaled to unit norm (ρ scales inversely), and the exact input reduction when Y = I.
    """
    cp = _cvxpy()
    if input_gram is None:
        weights = (reduce_input(weights[0]).weight,) + tuple(weights[1:])
    norms = [float(torch.linalg.matrix_norm(W, 2)) or 1.0 for W in weights]
    scaled = [(W / c).numpy() for W, c in zip(weights, norms)]
    rho = cp.Variable()
    lams = [cp.Variable(W.shape[0], nonneg=True) if per_neuron else cp.Variable(nonneg=True) for W in scaled[:-1]]
    gram_scale = 1.0 if input_gram is None else float(torch.linalg.matrix_norm(input_gram, 2)) or 1.0
    gram = None if input_gram is None else (input_gram / gram_scale).numpy()
    M = lmi_blocks(scaled, slopes, lams, rho, _cvxpy_ops(cp), input_gram=gram)
    problem = cp.Problem(cp.Minimize(rho), [(M + M.T) / 2 << 0])
    errors = []
    for name, options in _attempts(M.shape[0], solver):
        try:
            with warnings.catch_warnings():  # "may be inaccurate": harmless, the result is re-certified
                warnings.simplefilter("ignore")
                problem.solve(solver=name, **options)
        except (cp.SolverError, ArithmeticError, ValueError) as err:
            errors.append(f"{name}: {err}")
            continue
        if rho.value is not None and all(lam.value is not None for lam in lams) and math.isfinite(rho.value):
            break
        errors.append(f"{name}: status {problem.status}")
    else:
        raise SolverFailed("the SDP solver returned no multipliers (" + "; ".join(errors or ["no solver"]) + ")")
    C = [1.0]
    for c in norms:
        C.append(C[-1] * c)
    widths = [W.shape[0] for W in weights[:-1]]
    mults = [torch.as_tensor(lam.value, dtype=torch.float64).reshape(-1).expand(n).clone().clamp(min=0)
             * (C[-1] / C[k]) ** 2 for k, (lam, n) in enumerate(zip(lams, widths), start=1)]
    return float(rho.value) * C[-1] ** 2 / gram_scale, mults


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
    _cvxpy()
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
    description="LipSDP-Neuron (Fazlyab et al. 2019): one multiplier per neuron; cvxpy up to LMI side "
                f"{MAX_LMI}, the first-order solver above (or without cvxpy); re-certified"))
register_estimator(ChainEstimator(
    name="lipsdp-layer", fn=lambda chain: lipsdp(chain, per_neuron=False), certified=True, applies=_applies,
    description="LipSDP-Layer (Fazlyab et al. 2019): one multiplier per layer, cvxpy, re-certified"))
