"""Whole residual blocks (docs/residual.md): soundness against exact and attained constants, the re-certificate
rejecting infeasible multipliers, and the joint bound never above ‖P‖ + L(branch) by the same chain method."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipgraph.errors import InputError
from lipgraph.estimators import DenseChain
from lipgraph.estimators.cp import cp
from lipgraph.estimators.eclipse import eclipse_fast, fast_multipliers
from lipgraph.estimators.recertify import InfeasibleMultipliers
from lipgraph.estimators.residual import (ResidualBlock, recertify_residual, residual_cp, residual_fast,
                                          residual_lipsdp)
from lipgraph.estimators.lmi import cvxpy_missing
from lipgraph.linalg import materialize, matrix_norm

RELU = (0.0, 1.0)


def _random_block(seed: int, n: int = 6, hidden: tuple[int, ...] = (8,), n_out: int | None = None,
                  slope: tuple[float, float] = RELU, nonnegative: bool = False) -> ResidualBlock:
    g = torch.Generator().manual_seed(seed)
    widths = [n, *hidden, n_out or n]
    draw = (lambda r, c: torch.rand(r, c, generator=g, dtype=torch.float64)) if nonnegative else \
        (lambda r, c: torch.randn(r, c, generator=g, dtype=torch.float64) / math.sqrt(c))
    weights = [draw(b, a) for a, b in zip(widths, widths[1:])]
    shortcut = None if n_out is None else draw(n_out, n)
    return ResidualBlock(DenseChain.of(weights, [slope] * len(hidden)), shortcut)


def _block_fn(block: ResidualBlock, act):
    def f(x: torch.Tensor) -> torch.Tensor:
        h = x
        for W in block.branch.weights[:-1]:
            h = act(W @ h)
        return block.P @ x + block.branch.weights[-1] @ h
    return f


def _attained(block: ResidualBlock, act, points: int = 100, seed: int = 0) -> float:
    """max over random points of the exact Jacobian norm ‖P + W_l D ⋯ W_0‖ (a lower bound of L)."""
    g = torch.Generator().manual_seed(seed)
    f = _block_fn(block, act)
    best = 0.0
    for _ in range(points):
        x = torch.randn(block.branch.widths[0], generator=g, dtype=torch.float64) * 3
        J = torch.autograd.functional.jacobian(f, x)
        best = max(best, float(torch.linalg.matrix_norm(J, 2)))
    return best


ESTIMATORS = [residual_cp, residual_fast]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_out", [None, 5])
def test_joint_bounds_above_attained_jacobians(seed: int, n_out: int | None) -> None:
    """Identity and projection shortcuts, one and two hidden layers, ReLU and a GELU-like interval."""
    for hidden, slope, act in [((8,), RELU, torch.relu), ((7, 5), RELU, torch.relu),
                               ((8,), (-0.13, 1.13), nn.functional.gelu)]:
        block = _random_block(seed, hidden=hidden, n_out=n_out, slope=slope)
        lower = _attained(block, act)
        for estimator in ESTIMATORS:
            assert estimator(block).value >= lower * (1 - 1e-9), (estimator.__name__, hidden, slope)


def test_exact_on_nonnegative_blocks() -> None:
    """Nonnegative weights, ReLU, identity shortcut: L = ‖I + W_1W_0‖ exactly (all-active region, §10); every
    joint bound is above it and the attained norm reaches it."""
    block = _random_block(3, nonnegative=True)
    W0, W1 = block.branch.weights
    exact = float(torch.linalg.matrix_norm(torch.eye(6, dtype=torch.float64) + W1 @ W0, 2))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, generator=g, dtype=torch.float64) + 0.1  # all pre-activations positive
    J = torch.autograd.functional.jacobian(_block_fn(block, torch.relu), x)
    assert float(torch.linalg.matrix_norm(J, 2)) == pytest.approx(exact, rel=1e-12)
    for estimator in ESTIMATORS:
        assert estimator(block).value >= exact * (1 - 1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_out", [None, 5])
def test_never_above_separate_bound_of_the_same_method(seed: int, n_out: int | None) -> None:
    """Joint ≤ ‖P‖ + L(branch) for CP and for ECLipsE-Fast (the Young scale, docs/residual.md)."""
    for hidden in [(8,), (7, 5)]:
        block = _random_block(seed, hidden=hidden, n_out=n_out)
        p = block.shortcut_norm
        assert residual_cp(block).value <= (p + cp(block.branch).value) * (1 + 1e-9)
        assert residual_fast(block).value <= (p + eclipse_fast(block.branch).value) * (1 + 1e-8)


def test_infeasible_multipliers_are_rejected() -> None:
    block = _random_block(0)
    T = fast_multipliers(block.branch)
    assert recertify_residual(block, T).value > 0
    with pytest.raises(InfeasibleMultipliers, match="not negative definite"):
        recertify_residual(block, [torch.zeros_like(t) for t in T])  # −H = −W_1ᵀW_1 is not positive definite
    W1 = block.branch.weights[-1]
    too_small = matrix_norm(W1, 2).value ** 2 / 2 * 0.9  # 2λI − W_1ᵀW_1 indefinite
    with pytest.raises(InfeasibleMultipliers):
        recertify_residual(block, [torch.full((8,), too_small, dtype=torch.float64)])
    with pytest.raises(InfeasibleMultipliers, match="finite and >= 0"):
        recertify_residual(block, [-T[0]])


def test_unsound_network_regression() -> None:
    """The LipSDP-Network counterexample of docs/mathematics.md §7 inside a block: y = x + ReLU(x + b_1) − ReLU(x + b_2)
    (W_0 = [[1], [1]], W_1 = [[1, −1]]). With b = (1, 0) the slope on (−1, 0) is 2; the estimators see no biases,
    so every bound must be ≥ 2."""
    block = ResidualBlock(DenseChain.of([torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0, -1.0]])], [RELU]))
    for estimator in ESTIMATORS:
        assert estimator(block).value >= 2 * (1 - 1e-9)


@pytest.mark.skipif(cvxpy_missing() is not None, reason="needs lipgraph[sdp]")
def test_lipsdp_block_between_attained_and_fast() -> None:
    for seed, n_out in [(0, None), (1, 5)]:
        block = _random_block(seed, n_out=n_out)
        sdp = residual_lipsdp(block).value
        assert _attained(block, torch.relu) <= sdp * (1 + 1e-9)
        assert sdp <= residual_fast(block).value * (1 + 1e-9)


def test_bad_blocks_are_refused_with_clear_messages() -> None:
    chain = DenseChain.of([torch.eye(3), torch.eye(3)], [RELU])
    with pytest.raises(InputError, match=r"shortcut of shape \(2, 3\) does not match the branch 3 -> 3"):
        ResidualBlock(chain, torch.zeros(2, 3))
    with pytest.raises(InputError, match="needs at least one activation"):
        ResidualBlock(DenseChain.of([torch.eye(3)], []))
    with pytest.raises(InputError, match="identity shortcut needs equal input and output sizes, got 3 -> 2"):
        ResidualBlock(DenseChain.of([torch.eye(3), torch.ones(2, 3)], [RELU]))
