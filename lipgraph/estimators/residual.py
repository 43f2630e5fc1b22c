"""Whole residual blocks y = P x + W_l φ_l(⋯ φ_1(W_0 x)) bounded jointly (docs/residual.md, docs/sdp-conv.md;
Pauli, Gramlich & Allgöwer 2024) instead of by ‖P‖ + L(branch).

**LipSDP with a shortcut.** The shortcut is one more linear path into the output quadratic form:
‖Δy‖² = ‖PΔx_0 + W_lΔx_l‖², so the LipSDP matrix of the branch (:func:`~.recertify.lmi_blocks`) gains
blk(0,0) += PᵀP, blk(0,l) += PᵀW_l, blk(l,0) += W_lᵀP (blk(l,l) keeps W_lᵀW_l). M(ρ, T) ⪯ 0 ⇒ ‖Δy‖² ≤ ρ‖Δx_0‖²
(the same S-procedure). The hidden block H is the branch's own, so the exact ρ*(T) = λ_max(A + Bᵀ(−H)⁻¹B) and its
floating-point verification are those of :mod:`~.recertify` (shifted Cholesky of −M(ρ̂, T), Rump 2006).

**Never worse than ‖P‖ + L(branch).** For any branch multipliers T with value ρ_b (M_branch(ρ_b, T) ⪯ 0) and
c = 1 + ‖P‖/√ρ_b: the output form is ⪯ blkdiag(c/(c−1)·PᵀP, c·W_lᵀW_l) (Young), so M_res(ρ, cT) ⪯ 0 at
ρ = c·ρ_b + c/(c−1)·‖P‖² = (‖P‖ + √ρ_b)². The scale search below includes that c.

**Combettes–Pesquet with a shortcut** (:func:`residual_cp_value`). For each pair of inputs,
Δy = (P + W_l D_l W_{l−1} ⋯ D_1 W_0)Δx with D_k diagonal secant slopes in [α_k, β_k]; writing D_k = m_kI + r_kS_k
(‖S_k‖ ≤ 1) and unrolling G_k = W_k D_k G_{k−1}, G_0 = W_0:

    ‖P + G_l‖ ≤ ‖P + (Π_k m_k) W_l⋯W_0‖ + Σ_{j=1}^{l} r_j |m_{j+1}⋯m_l| ‖W_l⋯W_j‖ L_{j−1}

with L_{j−1} the CP bound of the prefix W_{j−1}φ⋯W_0 (:func:`~.cp.cp_value`): the CP bound of the branch with its
all-linear term replaced by the shortcut-corrected one, hence ≤ ‖P‖ + CP(branch) (triangle inequality).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import torch

from lipgraph.bound import Bound, certified
from lipgraph.errors import InputError
from lipgraph.estimators import DenseChain
from lipgraph.estimators.cp import cp_value, partial_product_norms
from lipgraph.estimators.eclipse import fast_multipliers
from lipgraph.estimators.recertify import (RHO_MARGINS, TORCH_OPS, UNIT_ROUNDOFF, InfeasibleMultipliers,
                                           MatrixOps, _check_multipliers, _forming_error, lmi_blocks,
                                           schur_rho, schur_rho_of, verified_psd)
from lipgraph.linalg import matrix_norm

#: scales c of the branch multipliers tried around the Young scale (module docstring), then refined
SCALE_STEPS = 24
#: largest LMI side solved by the interior-point solver (per-neuron multipliers)
MAX_SDP = 300


@dataclass(frozen=True)
class ResidualBlock:
    """y = P x + branch(x): ``branch`` a :class:`DenseChain` with at least one activation, ``shortcut`` P
    (n_out × n_0, float64) or None for the identity."""

    branch: DenseChain
    shortcut: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.branch.slopes:
            raise InputError("a residual block's branch needs at least one activation (else it is one linear map)")
        n_out, n_in = self.branch.widths[-1], self.branch.widths[0]
        shape = (n_out, n_in) if self.shortcut is None else tuple(self.shortcut.shape)
        if shape != (n_out, n_in):
            raise InputError(f"shortcut of shape {shape} does not match the branch {n_in} -> {n_out}")
        if self.shortcut is None and n_in != n_out:
            raise InputError(f"an identity shortcut needs equal input and output sizes, got {n_in} -> {n_out}")
        if self.shortcut is not None:
            object.__setattr__(self, "shortcut", self.shortcut.detach().to(torch.float64))

    @property
    def P(self) -> torch.Tensor:
        n = self.branch.widths[0]
        return torch.eye(n, dtype=torch.float64) if self.shortcut is None else self.shortcut

    @cached_property
    def shortcut_norm(self) -> float:
        return 1.0 if self.shortcut is None else matrix_norm(self.shortcut, 2).value

    @property
    def lmi_size(self) -> int:
        return sum(self.branch.widths[:-1])


def coupling(block: ResidualBlock, absolute: bool = False) -> torch.Tensor:
    """The shortcut's terms of the LipSDP matrix: PᵀP at (0,0), PᵀW_l at (0,l) and its transpose (module
    docstring); ``absolute``: the same with |P|, |W_l| (for the rounding allowance)."""
    mag = (lambda t: t.abs()) if absolute else (lambda t: t)
    P, W = mag(block.P), mag(block.branch.weights[-1])
    sizes = block.branch.widths[:-1]
    n0, N = sizes[0], sum(sizes)
    C = torch.zeros(N, N, dtype=torch.float64)
    C[:n0, :n0] = P.T @ P
    C[:n0, N - sizes[-1]:] = P.T @ W
    C[N - sizes[-1]:, :n0] += (P.T @ W).T
    return C


def residual_lmi(block: ResidualBlock, multipliers: Sequence, rho, ops: MatrixOps = TORCH_OPS,
                 absolute: bool = False):
    """M(ρ, T) of the whole block: the branch's LipSDP matrix plus :func:`coupling` (torch or cvxpy ``ops``)."""
    branch = block.branch
    M = lmi_blocks(branch.weights, branch.slopes, multipliers, rho, ops, absolute=absolute)
    C = coupling(block, absolute)
    return M + (C if ops is TORCH_OPS else C.numpy())


def residual_rho(block: ResidualBlock, multipliers: Sequence[torch.Tensor]) -> float:
    """ρ*(T) = λ_max(A + Bᵀ(−H)⁻¹B) of :func:`residual_lmi`, float64, unverified; raises
    :class:`InfeasibleMultipliers` when −H ⊁ 0."""
    return schur_rho_of(residual_lmi(block, multipliers, 0.0), block.branch.widths[0])


def recertify_residual(block: ResidualBlock, multipliers: Sequence[torch.Tensor],
                       method: str = "residual-recertified") -> Bound:
    """Certified √ρ*(T) of the block for fixed multipliers, verified like :func:`~.recertify.recertify`: ρ̂ is
    accepted once −M(ρ̂, T) is proven ⪰ 0 with the forming and Cholesky rounding covered."""
    mults = _check_multipliers(block.branch, multipliers)
    rho = residual_rho(block, mults)
    inner = max(block.branch.widths)
    scale = float(torch.linalg.matrix_norm(residual_lmi(block, mults, 0.0, absolute=True), "fro"))
    for margin in RHO_MARGINS:
        rho_hat = rho * (1.0 + margin) + margin * UNIT_ROUNDOFF * scale
        neg_M = -residual_lmi(block, mults, rho_hat)
        if verified_psd(neg_M, _forming_error(residual_lmi(block, mults, rho_hat, absolute=True), inner + 1)):
            return certified(math.sqrt(rho_hat) * (1.0 + 4 * UNIT_ROUNDOFF), method)
    raise InfeasibleMultipliers(f"could not verify the residual bound √ρ = {math.sqrt(rho):.6g} in floating point")


def _golden(f: Callable[[float], float], lo: float, hi: float, steps: int) -> float:
    """Argmin of a unimodal-ish f on [lo, hi] (log scale) by golden-section search; returns the best point seen."""
    g = (math.sqrt(5) - 1) / 2
    a, b = math.log(lo), math.log(hi)
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(math.exp(d))
    return math.exp(c) if fc <= fd else math.exp(d)


def scaled_multipliers(block: ResidualBlock, direction: Sequence[torch.Tensor],
                       steps: int = SCALE_STEPS) -> list[list[torch.Tensor]]:
    """Candidates c·T for branch multipliers T: the Young scale c* of the module docstring (so the result is never
    above ‖P‖ + √ρ_b(T)) and the scale minimising ρ*(cT) by a golden-section search around it."""
    rho_b = schur_rho(block.branch.weights, block.branch.slopes, list(direction))
    c_star = 1.0 + block.shortcut_norm / math.sqrt(max(rho_b, 1e-300))

    def value(c: float) -> float:
        try:
            return residual_rho(block, [c * t for t in direction])
        except InfeasibleMultipliers:
            return math.inf

    best = _golden(value, c_star / 64, c_star * 64, steps)
    return [[c_star * t for t in direction], [best * t for t in direction]]


def best_residual(block: ResidualBlock, candidates: Sequence[Sequence[torch.Tensor]], method: str) -> Bound:
    """The smallest verified bound over candidate multipliers (those that fail verification are skipped)."""
    bounds, failures = [], []
    for T in candidates:
        try:
            bounds.append(recertify_residual(block, T, method))
        except InfeasibleMultipliers as err:
            failures.append(str(err))
    if not bounds:
        raise InfeasibleMultipliers(failures[-1] if failures else "no candidate multipliers")
    return min(bounds, key=lambda b: b.value)


def residual_fast(block: ResidualBlock) -> Bound:
    """ECLipsE-Fast's branch multipliers, rescaled for the block (:func:`scaled_multipliers`), re-certified."""
    return best_residual(block, scaled_multipliers(block, fast_multipliers(block.branch)), "residual-eclipse-fast")


def residual_lipsdp(block: ResidualBlock, solver: str | None = None) -> Bound:
    """LipSDP-Neuron on the whole block (cvxpy), re-certified, never above :func:`residual_fast`'s candidates."""
    from lipgraph.estimators.lmi import _attempts, _cvxpy_ops, require_cvxpy

    cp = require_cvxpy()
    branch = block.branch
    norms = [float(torch.linalg.matrix_norm(W, 2)) or 1.0 for W in branch.weights]
    scale = max(math.prod(norms), block.shortcut_norm)  # ρ in units of scale² keeps the solver well scaled
    rho = cp.Variable()
    lams = [cp.Variable(W.shape[0], nonneg=True) for W in branch.weights[:-1]]
    M = residual_lmi(block, lams, rho * scale ** 2, _cvxpy_ops(cp)) / scale ** 2
    problem = cp.Problem(cp.Minimize(rho), [(M + M.T) / 2 << 0])
    candidates = scaled_multipliers(block, fast_multipliers(branch))
    for name, options in _attempts(M.shape[0], solver):
        try:
            problem.solve(solver=name, **options)
        except (cp.SolverError, ArithmeticError, ValueError):
            continue
        if all(lam.value is not None for lam in lams):
            T = [torch.as_tensor(lam.value, dtype=torch.float64).clamp(min=0) for lam in lams]
            fast = candidates[-1]
            candidates += [T] + [[(1 - th) * t + th * f for t, f in zip(T, fast)] for th in (1e-6, 1e-4, 1e-2)]
            break
    return best_residual(block, candidates, "residual-lipsdp-neuron")


def residual_cp_value(top: float, norm_of: Callable[[int, int], float], slopes: Sequence[tuple[float, float]]) -> float:
    """The CP bound with a shortcut (module docstring): ``top`` bounds ‖P + (Π m_k) W_l⋯W_0‖, ``norm_of(j, k)``
    bounds ‖W_k⋯W_j‖ (0-based, inclusive) as in :func:`~.cp.cp_value`. Plain arithmetic: torch scalars give a
    differentiable value (``lipschitz_penalty``)."""
    mids = [(lo + hi) / 2 for lo, hi in slopes]
    rads = [(hi - lo) / 2 for lo, hi in slopes]
    l = len(slopes)
    total = top
    for j in range(1, l + 1):
        total = total + rads[j - 1] * abs(math.prod(mids[j:l])) * norm_of(j, l) * cp_value(norm_of, slopes[:j - 1])
    return total


def residual_cp(block: ResidualBlock) -> Bound:
    """Certified CP/LipLT bound of the block with its shortcut (dense matrices)."""
    branch = block.branch
    norm_of = partial_product_norms(branch.weights)
    product = branch.weights[0]
    for W in branch.weights[1:]:
        product = W @ product
    m = math.prod((lo + hi) / 2 for lo, hi in branch.slopes)
    top = matrix_norm(block.P + m * product, 2).value
    value = residual_cp_value(top, norm_of, branch.slopes) * (1 + 4 * len(branch.weights) * UNIT_ROUNDOFF)
    return certified(value, "residual-cp")


#: name -> (estimator, applies): the joint block estimators, cheapest first
RESIDUAL_ESTIMATORS: dict[str, tuple[Callable[[ResidualBlock], Bound], Callable[[ResidualBlock], str | None]]] = {
    "residual-cp": (residual_cp, lambda block: None),
    "residual-eclipse-fast": (residual_fast, lambda block: None),
}


def _lipsdp_applies(block: ResidualBlock) -> str | None:
    from lipgraph.estimators.lmi import cvxpy_missing

    if block.lmi_size > MAX_SDP:
        return f"LMI of size {block.lmi_size} above {MAX_SDP}"
    return cvxpy_missing()


RESIDUAL_ESTIMATORS["residual-lipsdp"] = (residual_lipsdp, _lipsdp_applies)
