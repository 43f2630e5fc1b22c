"""First-order LipSDP-Neuron for large chains (convolutions and dense layers), re-certified (algorithms.md §11).

The optimiser only has to find good multipliers T ≥ 0: the bound is √ρ*(T), proven afterwards by
:func:`certify_multipliers` (dense shifted Cholesky, or the block-tridiagonal certificate of :mod:`.blockcert`).

**Eigenvalue form** (LipDiff, Wang et al., ICLR 2024). For fixed T with the hidden block H ≺ 0, ρ*(T) is the root
of φ(ρ) = λ_max(M(ρ, T)): φ is convex and non-increasing in ρ (M = N(T) − ρ·diag(I, 0, …, 0)) with slope
−‖v_0‖² (v the top eigenvector, v_0 its input block), so Newton's method ρ ← ρ + φ(ρ)/‖v_0‖² converges to it, and
by the implicit function theorem ∂ρ*/∂t = (vᵀ ∂M/∂t v)/‖v_0‖² = −2 (v_k − α u_k)(v_k − β u_k)/‖v_0‖²
(u_k = W_{k−1} v_{k−1}). Two ways to evaluate ρ*(T) and its gradient, same optimiser:

- ``lanczos`` (matrix-free): λ_max by restarted Lanczos on M applied as operator products
  (:func:`~.operators.lipsdp_apply`: conv / transposed conv / diagonal T), never materialised; runs where the
  weights are (CPU or CUDA).
- ``schur`` (dense per layer, for layers up to a few thousand neurons): ρ*(T) by the backward Schur recursion
  (:func:`~.blockcert.schur_rho`) with autograd, λ_max of the last n_0 × n_0 block smoothed by a soft maximum whose
  temperature is annealed; exact where λ_max is multiple (the usual case at the optimum), so it converges to the
  interior-point optimum (tests: within 1e-3).

The variables are log T (positivity for free), warm-started from ECLipsE-Fast's T (feasible), optimised by L-BFGS
with a strong Wolfe line search; a trial point outside the feasible set (a Cholesky fails, φ never reaches 0)
gets a huge value, so the line search steps back.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Sequence

import torch

from lipgraph.bound import Bound
from lipgraph.estimators import DenseChain
from lipgraph.estimators.blockcert import block_certificate, schur_rho
from lipgraph.estimators.operators import OperatorChain, lipsdp_apply, multiplier_gradient, top_eigenpair
from lipgraph.estimators.recertify import InfeasibleMultipliers, best_recertified, reduce_input

#: LMI side up to which the dense shifted-Cholesky re-certification is used (above: block-tridiagonal)
DENSE_CERTIFICATE = 2500
#: largest hidden layer for the ``schur`` evaluation (Cholesky per step); above it, ``lanczos``
SCHUR_WIDTH = 2500
#: widest layer optimised with a single torch thread
SINGLE_THREAD_WIDTH = 600
#: default optimiser budget (function evaluations, seconds)
STEPS = 1200
SECONDS = 90.0
#: soft-maximum temperatures β·ρ of the ``schur`` mode, annealed
TEMPERATURES = (1e2, 1e3, 1e4, 1e5, 1e6, 1e7)


def _weights(chain: DenseChain) -> tuple[torch.Tensor, ...]:
    return (reduce_input(chain.weights[0]).weight,) + tuple(chain.weights[1:])


def _schur_objective(weights, slopes):
    def evaluate(log_t: list[torch.Tensor], beta: float | None) -> tuple[float, float, list[torch.Tensor]]:
        t = [s.detach().requires_grad_(True) for s in log_t]
        soft, exact = schur_rho(weights, slopes, [s.exp() for s in t], smooth=beta, both=True)
        grads = torch.autograd.grad(soft, t)
        return float(soft.detach()), float(exact), list(grads)
    return evaluate


class _NewtonRho:
    """ρ*(T) as the root of λ_max(M(ρ, T)) by Newton steps on Lanczos eigenpairs, and ∂ρ*/∂log T (module doc)."""

    def __init__(self, chain: OperatorChain, rho: float, device, dtype) -> None:
        self.chain, self.rho = chain, rho
        n = sum(chain.widths[:-1])
        self.vector = torch.randn(1, n, dtype=dtype, device=device)
        self.n0 = chain.widths[0]

    def __call__(self, log_t: list[torch.Tensor], beta: float | None) -> tuple[float, float, list[torch.Tensor]]:
        t = [s.exp() for s in log_t]
        rho, v = self.rho, self.vector
        scale = max(rho, max(float(x.max()) for x in t))
        for _ in range(40):
            lam, v = top_eigenpair(lambda z: lipsdp_apply(self.chain, t, rho, z), v)
            weight = float(v[:, :self.n0].pow(2).sum())
            if abs(lam) <= 1e-9 * scale:
                break
            if weight < 1e-10:
                raise InfeasibleMultipliers("the hidden block has a non-negative eigenvalue")
            rho = rho + lam / weight
            if rho > 1e12 * scale:
                raise InfeasibleMultipliers("ρ*(T) diverges")
        self.rho, self.vector = rho, v
        grads = multiplier_gradient(self.chain, v)
        return rho, rho, [g / weight * x for g, x in zip(grads, t)]


def optimise(evaluate, start: Sequence[torch.Tensor], *, steps: int = STEPS, seconds: float = SECONDS,
             temperatures: Sequence[float | None] = (None,)) -> list[torch.Tensor]:
    """L-BFGS (strong Wolfe line search) on log T from ``start`` (feasible multipliers), one run per soft-maximum
    temperature β·ρ (``None``: the exact objective), each restarted from the best T so far. ``evaluate(log_t, β)``
    returns (objective, exact ρ, ∂objective/∂log t) or raises :class:`InfeasibleMultipliers` (then the line
    search sees a huge value and steps back). Returns the T of the smallest exact ρ seen. Unverified."""
    log_t = [torch.log(t.clamp(min=float(t.max()) * 1e-12 + 1e-300)).clone() for t in start]
    best: list = [math.inf, [s.clone() for s in log_t]]
    deadline = time.perf_counter() + seconds
    per_stage = max(1, steps // len(temperatures))
    for temperature in temperatures:
        if time.perf_counter() > deadline:
            break
        params = [s.clone().requires_grad_(True) for s in best[1]]
        unit = best[0] if math.isfinite(best[0]) and best[0] > 0 else 1.0  # objective in units of the best ρ
        beta = None if temperature is None else temperature / unit
        opt = torch.optim.LBFGS(params, lr=1, max_iter=per_stage, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-12)

        def closure() -> torch.Tensor:
            if time.perf_counter() > deadline:
                raise TimeoutError
            try:
                value, exact, grads = evaluate([p.detach() for p in params], beta)
            except InfeasibleMultipliers:
                for p in params:
                    p.grad = torch.zeros_like(p)
                return torch.tensor(1e300, dtype=torch.float64)
            if exact < best[0]:
                best[0], best[1] = exact, [p.detach().clone() for p in params]
            for p, g in zip(params, grads):
                p.grad = g / unit
            return torch.tensor(value / unit, dtype=torch.float64)

        try:
            opt.step(closure)
        except TimeoutError:
            break
    return [s.exp() for s in best[1]]


def certify_multipliers(chain: DenseChain, candidates: Sequence[Sequence[torch.Tensor]], method: str,
                        fallback: Sequence[torch.Tensor] | None = None) -> Bound:
    """The smallest certified √ρ*(T) over the candidates: dense shifted Cholesky (:func:`~.recertify.recertify`,
    with repair towards ``fallback``) when the LMI has side ≤ :data:`DENSE_CERTIFICATE`, else the block-tridiagonal
    certificate. Raises :class:`InfeasibleMultipliers` when none verifies."""
    widths = chain.widths
    if min(widths[0], widths[1]) + sum(widths[1:-1]) <= DENSE_CERTIFICATE:
        return best_recertified(chain, candidates, method, fallback=fallback)
    best, failures = None, []
    for T in candidates:
        try:
            bound = block_certificate(chain.weights, chain.slopes, T, method)
        except InfeasibleMultipliers as err:
            failures.append(str(err))
            continue
        best = bound if best is None or bound.value < best.value else best
    if best is None:
        raise InfeasibleMultipliers(failures[-1] if failures else "no candidate multipliers")
    return best


@contextmanager
def _threads_for(width: int):
    """One torch thread for small layers (thread hand-offs cost more than the work: 80× on a loaded 2-core
    machine), the default above :data:`SINGLE_THREAD_WIDTH`."""
    before = torch.get_num_threads()
    if width <= SINGLE_THREAD_WIDTH:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def first_order_multipliers(chain: DenseChain, start: Sequence[torch.Tensor], *, mode: str | None = None,
                            operators: OperatorChain | None = None, steps: int = STEPS,
                            seconds: float = SECONDS) -> list[torch.Tensor]:
    """Optimised LipSDP-Neuron multipliers (unverified) from the feasible ``start``. ``mode``: ``"schur"`` or
    ``"lanczos"`` (default: schur when every hidden layer has ≤ :data:`SCHUR_WIDTH` neurons); ``operators``: the
    chain as operators for the lanczos mode (default: the dense matrices, with the input reduction)."""
    with _threads_for(max(chain.widths)):
        return _first_order(chain, start, mode, operators, steps, seconds)


def _first_order(chain, start, mode, operators, steps, seconds) -> list[torch.Tensor]:
    weights = _weights(chain)
    mode = mode or ("schur" if max(chain.widths[1:-1]) <= SCHUR_WIDTH else "lanczos")
    if mode == "schur":
        return optimise(_schur_objective(weights, chain.slopes), start, steps=steps, seconds=seconds,
                        temperatures=TEMPERATURES)
    ops = operators or OperatorChain.from_dense(DenseChain(weights, chain.slopes))
    rho0 = float(schur_rho(weights, chain.slopes, list(start))) if max(chain.widths[1:-1]) <= SCHUR_WIDTH else 1.0
    newton = _NewtonRho(ops, rho0, weights[0].device, weights[0].dtype)
    return optimise(newton, start, steps=steps, seconds=seconds)


def lipsdp_first_order(chain: DenseChain, *, steps: int = STEPS, seconds: float = SECONDS,
                       mode: str | None = None) -> Bound:
    """LipSDP-Neuron by the first-order solver, warm-started from ECLipsE-Fast, re-certified (module docstring)."""
    from lipgraph.estimators.eclipse import fast_multipliers

    if len(chain.weights) == 1:
        return best_recertified(chain, [[]], "lipsdp-neuron (first-order)")
    fast = fast_multipliers(chain)
    T = first_order_multipliers(chain, fast, mode=mode, steps=steps, seconds=seconds)
    return certify_multipliers(chain, [T, fast], "lipsdp-neuron (first-order)", fallback=fast)

