"""First-order LipSDP-Neuron for large chains (convolutions and dense layers), re-certified (docs/sdp-conv.md).

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

- ``operator-schur`` (default for chains given as operators, hidden layers ≤ :data:`MAX_HIDDEN`): the same exact
  ρ*(T), with every product by a layer a batched operator call and the gradient by back-substitution
  (:mod:`.schur_operator`); what makes the 4,096-neuron conv layers affordable.

The variables are log T (positivity for free), warm-started from ECLipsE-Fast's T (feasible), optimised by
L-BFGS directions with Armijo backtracking; a trial point outside the feasible set (a Cholesky fails, φ never
reaches 0) halves the step.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Sequence

import torch

from lipgraph.bound import Bound
from lipgraph.estimators import ESTIMATORS, ChainEstimator, DenseChain, register_estimator
from lipgraph.estimators.blockcert import block_certificate, schur_rho
from lipgraph.estimators.budget import BudgetExpired, expired
from lipgraph.estimators.operators import OperatorChain, lipsdp_apply, multiplier_gradient, top_eigenpair
from lipgraph.estimators.recertify import InfeasibleMultipliers, best_recertified
from lipgraph.estimators.schur_operator import OperatorSchur

#: LMI side up to which the dense shifted-Cholesky re-certification is used (above: block-tridiagonal)
DENSE_CERTIFICATE = 2500
#: largest hidden layer for the ``schur`` evaluation (Cholesky per step); above it, ``lanczos``
SCHUR_WIDTH = 2500
#: widest hidden layer the conv-chain estimator materialises (10⁴ neurons: 800 MB per float64 layer) and the
#: ``operator-schur`` mode takes (dense n_k × n_k Schur complements)
MAX_HIDDEN = 10_000
#: widest layer optimised with a single torch thread
SINGLE_THREAD_WIDTH = 600
#: default optimiser budget (function evaluations, seconds)
STEPS = 6000
SECONDS = 90.0
#: soft-maximum temperatures β·ρ of the ``schur`` mode, annealed
TEMPERATURES = (1e2, 1e3, 1e4, 1e5, 1e6, 1e7)


def _weights(chain: DenseChain) -> tuple[torch.Tensor, ...]:
    return (chain.reduced_input.weight,) + tuple(chain.weights[1:])


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
    """Quasi-Newton (L-BFGS directions, Armijo backtracking) on x = log T from ``start`` (feasible multipliers),
    one run per soft-maximum temperature β·ρ (``None``: the exact objective), each from the best T so far.
    ``evaluate(log_t, β)`` returns (objective, exact ρ, ∂objective/∂log t) or raises
    :class:`InfeasibleMultipliers`: an infeasible trial point halves the step, like one that does not decrease
    enough. Returns the T of the smallest exact ρ seen (``steps`` evaluations or ``seconds`` at most, or until the
    analysis's budget expires: :func:`~.budget.expired`, checked before each evaluation; expired before any
    evaluation: :class:`~.budget.BudgetExpired`). Unverified."""
    sizes = [t.numel() for t in start]
    x = torch.cat([torch.log(t.clamp(min=float(t.max()) * 1e-12 + 1e-300)).reshape(-1) for t in start])
    best = [math.inf, x.clone()]
    deadline = time.perf_counter() + seconds
    left = [steps]

    def call(point: torch.Tensor, beta: float | None) -> tuple[float, torch.Tensor]:
        if expired() and left[0] == steps:
            raise BudgetExpired
        if left[0] <= 0 or time.perf_counter() > deadline or expired():
            raise TimeoutError
        left[0] -= 1
        value, exact, grads = evaluate(list(torch.split(point, sizes)), beta)
        if exact < best[0]:
            best[0], best[1] = exact, point.clone()
        return value, torch.cat([g.reshape(-1) for g in grads])

    try:
        for temperature in temperatures:
            x = best[1].clone()
            unit = best[0] if math.isfinite(best[0]) and best[0] > 0 else 1.0
            beta = None if temperature is None else temperature / unit
            f, g = call(x, beta)
            _quasi_newton(lambda p: call(p, beta), x, f / unit, g / unit, unit)
    except TimeoutError:
        pass
    return [s.exp() for s in torch.split(best[1], sizes)]


def _quasi_newton(call, x: torch.Tensor, f: float, g: torch.Tensor, unit: float, memory: int = 20) -> None:
    """L-BFGS two-loop directions with Armijo backtracking until the decrease stalls (objective in ``unit``)."""
    history: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    stalls = 0
    while stalls < 3:
        d = -g.clone()
        alphas = []
        for s, y, r in reversed(history):
            a = r * float(s @ d)
            alphas.append(a)
            d -= a * y
        if history:
            s, y, _ = history[-1]
            d *= float(s @ y) / float(y @ y)
        for (s, y, r), a in zip(history, reversed(alphas)):
            d += (a - r * float(y @ d)) * s
        slope = float(g @ d)
        if slope >= 0:
            d, slope, history = -g, -float(g @ g), []
        step = 1.0 if history else min(1.0, 0.1 / max(float(d.abs().max()), 1e-300))
        while True:
            try:
                f_new, g_new = call(x + step * d)
                f_new, g_new = f_new / unit, g_new / unit
                if f_new <= f + 1e-4 * step * slope:
                    break
            except InfeasibleMultipliers:
                pass
            step /= 2
            if step < 1e-14:
                return
        s_k, y_k = step * d, g_new - g
        if float(s_k @ y_k) > 1e-12 * float(s_k.norm() * y_k.norm()):
            history = (history + [(s_k, y_k, 1.0 / float(s_k @ y_k))])[-memory:]
        stalls = stalls + 1 if f - f_new < 1e-10 * abs(f) else 0
        x, f, g = x + s_k, f_new, g_new


def certify_multipliers(chain: DenseChain, candidates: Sequence[Sequence[torch.Tensor]], method: str,
                        fallback: Sequence[torch.Tensor] | None = None) -> Bound:
    """The smallest certified √ρ*(T) over the candidates by the dense shifted Cholesky
    (:func:`~.recertify.recertify`, with repair towards ``fallback``) when the LMI has side ≤
    :data:`DENSE_CERTIFICATE`; above, the block-tridiagonal certificate of the first candidate that verifies
    (minutes each on large chains: callers list the candidates best first; once the analysis's budget has expired,
    none after the first). Raises :class:`InfeasibleMultipliers` when none verifies."""
    widths = chain.widths
    if min(widths[0], widths[1]) + sum(widths[1:-1]) <= DENSE_CERTIFICATE:
        return best_recertified(chain, candidates, method, fallback=fallback)
    failures = []
    for T in candidates:
        try:
            return block_certificate(chain.weights, chain.slopes, T, method, reduced=chain.reduced_input)
        except InfeasibleMultipliers as err:
            failures.append(str(err))
            if expired():
                break
    raise InfeasibleMultipliers(failures[-1] if failures else "no candidate multipliers")


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
    widest = max(chain.widths[1:-1])
    mode = mode or ("schur" if operators is None and widest <= SCHUR_WIDTH else
                    "operator-schur" if widest <= MAX_HIDDEN else "lanczos")
    if mode == "schur":
        return optimise(_schur_objective(weights, chain.slopes), start, steps=steps, seconds=seconds,
                        temperatures=TEMPERATURES)
    ops = operators or OperatorChain.from_dense(DenseChain(weights, chain.slopes))
    if mode == "operator-schur":
        return optimise(OperatorSchur(ops), start, steps=steps, seconds=seconds,
                        temperatures=TEMPERATURES)
    rho0 = float(schur_rho(weights, chain.slopes, list(start))) if max(chain.widths[1:-1]) <= SCHUR_WIDTH else 1.0
    newton = _NewtonRho(ops, rho0, weights[0].device, weights[0].dtype)
    return optimise(newton, start, steps=steps, seconds=seconds)


def lipsdp_first_order(chain: DenseChain, *, steps: int = STEPS, seconds: float = SECONDS,
                       mode: str | None = None) -> Bound:
    """LipSDP-Neuron by the first-order solver, warm-started from ECLipsE-Fast, re-certified (module docstring)."""
    from lipgraph.estimators.eclipse_fast import fast_multipliers

    if len(chain.weights) == 1:
        return best_recertified(chain, [[]], "lipsdp-neuron (first-order)")
    fast = fast_multipliers(chain, stoppable=True)
    T = first_order_multipliers(chain, fast, mode=mode, steps=steps, seconds=seconds)
    return certify_multipliers(chain, [T, fast], "lipsdp-neuron (first-order)", fallback=fast)


#: optimiser budget (seconds) when run by the chain pass
PASS_SECONDS = 60.0


def conv_fast_multipliers(conv) -> list[torch.Tensor]:
    """ECLipsE-Fast's multipliers of a DCP ``ConvChain`` on its whole maps, once per chain (``conv.cached``)."""
    from lipgraph.estimators.eclipse_fast import fast_multipliers

    return conv.cached("eclipse-fast multipliers", lambda: fast_multipliers(conv.to_dense(), stoppable=True))


def conv_eclipse_fast(conv) -> Bound:
    """ECLipsE-Fast of a DCP ``ConvChain`` on its whole maps, re-certified, once per chain: DCP's untiled
    whole-chain bound and lipsdp-conv's fallback share it."""
    return conv.cached("eclipse-fast", lambda: certify_multipliers(conv.to_dense(), [conv_fast_multipliers(conv)],
                                                                   "eclipse-fast"))


def lipsdp_conv(conv, seconds: float = PASS_SECONDS) -> Bound:
    """LipSDP-Neuron on a DCP ``ConvChain`` too large for the dense estimators: the layers are materialised once
    (float64, for the certificate), the multipliers optimised by the Schur recursion on the conv operators
    (``operator-schur``; float32 above :data:`SCHUR_WIDTH` neurons per layer), warm-started from ECLipsE-Fast, and
    certified in float64 (block-tridiagonal above LMI side :data:`DENSE_CERTIFICATE`); never above ECLipsE-Fast
    (:func:`conv_eclipse_fast`, computed once per chain with DCP): its bound when the optimised
    multipliers do not verify (unless the budget's deadline has passed and it is not computed yet)."""
    chain = conv.to_dense()
    if expired():  # the budget's deadline passed while the layers were materialised
        raise BudgetExpired
    fast = conv_fast_multipliers(conv)
    dtype = torch.float32 if max(chain.widths[1:-1]) > SCHUR_WIDTH else torch.float64
    T = first_order_multipliers(chain, fast, operators=OperatorChain.from_conv(conv, dtype=dtype), seconds=seconds)
    try:
        bound = certify_multipliers(chain, [T], "lipsdp-neuron (first-order, conv)", fallback=fast)
    except InfeasibleMultipliers:
        if expired() and "eclipse-fast" not in conv.memo:
            raise  # stopped at the budget's deadline: no second certificate
        return conv_eclipse_fast(conv)
    known = conv.memo.get("eclipse-fast")
    return known if known is not None and known.value < bound.value else bound


def _conv_applies(conv) -> str | None:
    from lipgraph.linalg import dense_is_cheap

    if not hasattr(conv, "shapes"):
        return "takes a conv chain (ConvChain), not a dense one"
    sizes = [math.prod(s) for s in conv.shapes]
    if all(dense_is_cheap(a, b) for a, b in zip(sizes, sizes[1:])):
        return "small enough for the dense estimators (lipsdp-neuron runs there)"
    if max(sizes[1:-1], default=0) > MAX_HIDDEN:
        return f"a hidden layer has {max(sizes[1:-1])} neurons, above {MAX_HIDDEN} (dense float64 certificate)"
    return None


register_estimator(ChainEstimator(
    name="lipsdp-conv", fn=lipsdp_conv, certified=True, applies=_conv_applies, input="conv",
    limits=f"conv chains too large to materialise for the dense estimators, hidden layers ≤ {MAX_HIDDEN}",
    description="LipSDP-Neuron on large conv chains: first-order, matrix-free on conv operators, warm-started "
                "from ECLipsE-Fast, block-tridiagonal certificate"))
ESTIMATORS.methods["lipsdp"] = (*ESTIMATORS.methods["lipsdp"], "lipsdp-conv")
