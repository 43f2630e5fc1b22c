"""The SDP solver stack shared by LipSDP and ECLipsE: cvxpy (optional extra ``lipgraph[sdp]``), the LMI sizes and
their limit, and :func:`solve_lmi` (the solver choices are measured in :mod:`lipgraph.estimators.sdp`'s docstring).
"""
from __future__ import annotations

import importlib
import math
import warnings
from typing import Any, Sequence

import torch

from lipgraph.errors import LipgraphError
from lipgraph.estimators import DenseChain
from lipgraph.estimators.recertify import MatrixOps, lmi_blocks, reduce_input

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


def require_cvxpy() -> Any:
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
    cp = require_cvxpy()
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
