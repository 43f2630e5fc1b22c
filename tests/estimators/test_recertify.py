"""Re-certification and ECLipsE-Fast: no SDP solver needed. Oracles: bisection on λ_max(M(ρ, T)) (independent of
the Schur complement), exact norms of linear / nonnegative networks, and lipgraph's proven lower bound."""
from __future__ import annotations

import math

import pytest
import torch

from lipgraph.errors import LipgraphError
from lipgraph.estimators import CHAIN_ESTIMATORS, DenseChain
from lipgraph.estimators.eclipse import fast_multipliers
from lipgraph.estimators.recertify import (TORCH_OPS, InfeasibleMultipliers, lmi_blocks, recertify, reduce_input,
                                           verified_psd)
from tests.estimators.nets import chain_of, lower, mlp, product_norm

GELU, SILU = (-0.1290, 1.1290), (-0.0999, 1.0999)


def bisection_rho(chain: DenseChain, T: list[torch.Tensor]) -> float | None:
    """Smallest ρ with λ_max(M(ρ, T)) ≤ 0 on the unreduced matrix; None when no ρ works (H not ≺ 0)."""
    def feasible(rho: float) -> bool:
        return float(torch.linalg.eigvalsh(lmi_blocks(chain.weights, chain.slopes, T, rho, TORCH_OPS))[-1]) <= 0

    hi = 1.0
    while not feasible(hi):
        hi *= 4
        if hi > 1e12:
            return None
    lo = 0.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi


@pytest.mark.parametrize("seed", range(6))
def test_recertify_matches_bisection_or_reports_infeasible(seed):
    gen = torch.Generator().manual_seed(seed)
    widths = (9, 5, 6, 3)  # n_0 > n_1: the input reduction is exercised
    slopes = [(0.0, 1.0), GELU][seed % 2], [SILU, (0.1, 1.0)][seed % 2]
    chain = DenseChain.of([torch.randn(b, a, generator=gen) for a, b in zip(widths, widths[1:])], slopes)
    # around a feasible T (ECLipsE-Fast's), some scaled in ways that may or may not stay feasible
    T = [t * (0.3 + 1.5 * torch.rand(t.shape, generator=gen, dtype=torch.float64)) for t in fast_multipliers(chain)]
    oracle = bisection_rho(chain, T)
    if oracle is None:
        with pytest.raises(InfeasibleMultipliers):
            recertify(chain, T)
        return
    bound = recertify(chain, T)
    assert bound.kind.value == "certified"
    assert math.sqrt(oracle) * (1 - 1e-9) <= bound.value <= math.sqrt(oracle) * (1 + 1e-6)


def test_infeasible_and_invalid_multipliers_are_refused():
    chain = DenseChain.of([[[1.0], [1.0]], [[1.0, -1.0]]], [(0.0, 1.0)])
    with pytest.raises(InfeasibleMultipliers, match="not feasible"):
        recertify(chain, [torch.tensor([0.1, 0.1])])  # −2T + W_1ᵀW_1 is indefinite
    with pytest.raises(InfeasibleMultipliers, match=">= 0"):
        recertify(chain, [torch.tensor([-1.0, 5.0])])
    with pytest.raises(ValueError, match="multiplier"):
        recertify(chain, [torch.ones(3)])
    assert issubclass(InfeasibleMultipliers, LipgraphError)


def test_verified_psd_needs_a_margin_over_rounding():
    A = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # PSD but singular: not provable
    assert not verified_psd(A, torch.zeros_like(A))
    assert verified_psd(A + 1e-9 * torch.eye(2, dtype=torch.float64), torch.zeros_like(A))
    assert not verified_psd(A + 1e-9 * torch.eye(2, dtype=torch.float64), torch.full_like(A, 1e-8))


def test_input_reduction_is_exact():
    gen = torch.Generator().manual_seed(3)
    W0 = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    reduced = reduce_input(W0)
    assert reduced.weight.shape == (4, 4) and 1.0 <= reduced.factor < 1 + 1e-8
    torch.testing.assert_close(reduced.weight @ reduced.weight.T, W0 @ W0.T)
    singular = torch.cat([W0[:3], W0[:1]])  # rank 3 < 4 rows: no reduction can be proven
    assert reduce_input(singular).weight is singular


def test_regression_two_relus_fast():
    """f(x) = ReLU(x) − ReLU(x) in disguise (W0 = [[1],[1]], W1 = [[1, −1]]): L = 1; LipSDP-Network gives 2e-5."""
    chain = DenseChain.of([[[1.0], [1.0]], [[1.0, -1.0]]], [(0.0, 1.0)])
    assert CHAIN_ESTIMATORS["eclipse-fast"].fn(chain).value >= 1.0


def paper_fast(chain: DenseChain) -> float:
    """ECLipsE-Fast exactly as published for slopes [0, 1] (docs/mathematics.md §7): valid there."""
    m = 0.5
    X = torch.eye(chain.weights[0].shape[1], dtype=torch.float64)
    for W in chain.weights[:-1]:
        K = W @ torch.linalg.solve(X, W.T)
        lam = 1 / (2 * m * m * float(torch.linalg.eigvalsh(K)[-1]))
        X = lam * torch.eye(W.shape[0], dtype=torch.float64) - lam * lam * m * m * K
    W = chain.weights[-1]
    return math.sqrt(float(torch.linalg.eigvals(W.T @ W @ torch.linalg.inv(X)).real.max()))


@pytest.mark.parametrize("seed", range(3))
def test_fast_on_relu_is_at_most_the_published_formula(seed):
    model = mlp((12, 10, 10, 10, 3), "relu", seed)
    chain = chain_of(model, 12)
    fast = CHAIN_ESTIMATORS["eclipse-fast"].fn(chain).value
    assert lower(model, (12,)) <= fast <= paper_fast(chain) * (1 + 1e-6)


@pytest.mark.parametrize("act,slope", [("gelu", GELU), ("silu", SILU)])
def test_fast_on_gelu_silu_is_a_bound(act, slope):
    """The public package's formulas ignore αβ ≠ 0; re-certified, Fast must dominate the linear network with slope β
    (one member of the slope class) and the attained lower bound."""
    model = mlp((10, 12, 12, 12, 4), act, seed=4)
    chain = chain_of(model, 10)
    assert chain.slopes == (slope,) * 3
    fast = CHAIN_ESTIMATORS["eclipse-fast"].fn(chain).value
    linear_beta = slope[1] ** 3 * product_norm(chain.weights)
    assert fast >= linear_beta
    assert fast >= lower(model, (10,))


def test_fast_on_nonnegative_mlp_is_above_exact():
    model = mlp((8, 7, 6, 3), "relu", seed=2, nonnegative=True)
    chain = chain_of(model, 8)
    exact = product_norm(chain.weights)
    assert exact <= CHAIN_ESTIMATORS["eclipse-fast"].fn(chain).value


def test_linear_chain_fast_is_exact_enough():
    """Slopes [1, 1] (a linear network): the bound must be ≥ ‖ΠW‖ and, for one hidden layer, close to it."""
    gen = torch.Generator().manual_seed(5)
    chain = DenseChain.of([torch.randn(6, 5, generator=gen), torch.randn(4, 6, generator=gen)], [(1.0, 1.0)])
    exact = product_norm(chain.weights)
    fast = CHAIN_ESTIMATORS["eclipse-fast"].fn(chain).value
    assert exact <= fast <= exact * 1.01
