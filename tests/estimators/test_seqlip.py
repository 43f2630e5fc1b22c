"""SeqLip and CP/LipLT on dense chains (docs/mathematics.md §5–§6) against brute-force oracles and lower bounds."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lipgraph.bound import Kind
from lipgraph.estimators import CHAIN_ESTIMATORS, DenseChain
from lipgraph.estimators.cp import cp
from lipgraph.estimators.seqlip import pair_matrices, pair_max, seqlip, seqlip_greedy, svd_factors
from lipgraph.linalg import matrix_norm

#: (activation module, the slope interval lipgraph's rule gives it)
ACTIVATIONS = {
    "relu": (nn.ReLU, (0.0, 1.0)),
    "leaky": (lambda: nn.LeakyReLU(0.2), (0.2, 1.0)),
    "tanh": (nn.Tanh, (0.0, 1.0)),
}


def _chain(seed: int, widths: list[int], slope: tuple[float, float]) -> DenseChain:
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(b, a, generator=g, dtype=torch.float64) / math.sqrt(a) for a, b in zip(widths, widths[1:])]
    return DenseChain.of(weights, [slope] * (len(weights) - 1))


def _autolip(chain: DenseChain) -> float:
    return math.prod(matrix_norm(W, 2).value for W in chain.weights) * math.prod(
        max(abs(lo), abs(hi)) for lo, hi in chain.slopes)


def _vertex_max(chain: DenseChain) -> float:
    """max over every activation pattern σ_i ∈ {α, β}^{n_i} of ‖W_K D_{K−1} ⋯ D_1 W_1‖: the first (convex)
    SeqLip inequality, brute force; an upper bound on L that SeqLip's per-pair product must dominate."""
    J = chain.weights[0][None]  # (patterns so far, n_i, n_0)
    for W, (lo, hi), n in zip(chain.weights[1:], chain.slopes, chain.widths[1:-1]):
        sigma = torch.tensor(list(itertools.product((lo, hi), repeat=n)), dtype=torch.float64)
        J = W @ (sigma[None, :, :, None] * J[:, None]).reshape(-1, n, J.shape[-1])
    return torch.linalg.matrix_norm(J, 2).max().item()


def _attained(chain: DenseChain, act: type, samples: int = 256, seed: int = 0) -> float:
    """Largest ‖J_f(x)‖₂ over random inputs of the real network: a lower bound on L."""
    layers: list[nn.Module] = []
    for i, W in enumerate(chain.weights):
        lin = nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.normal_(generator=torch.Generator().manual_seed(seed + i))
        layers += [lin, act()] if i < len(chain.weights) - 1 else [lin]
    net = nn.Sequential(*layers)
    xs = torch.randn(samples, chain.widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    jac = torch.func.vmap(torch.func.jacrev(net))(xs)
    return torch.linalg.matrix_norm(jac, 2).max().item()


def test_estimators_are_registered_with_their_kinds() -> None:
    assert CHAIN_ESTIMATORS["seqlip"].certified and CHAIN_ESTIMATORS["cp"].certified
    assert not CHAIN_ESTIMATORS["seqlip-greedy"].certified


@pytest.mark.parametrize("seed", range(10))
def test_one_hidden_layer_seqlip_is_the_exact_constant(seed: int) -> None:
    """hidden ≤ input and W₁ of full row rank: every pattern is realisable, L = max_σ ‖W₂ diag(σ) W₁‖
    (docs/mathematics.md §10), and SeqLip eq. 8 with K = 2 is exactly that maximum."""
    chain = _chain(seed, [7, 5, 3], (0.0, 1.0))
    assert torch.linalg.matrix_rank(chain.weights[0]) == 5
    exact = _vertex_max(chain)
    bound = seqlip(chain)
    assert bound.kind is Kind.CERTIFIED and bound.method == "seqlip"
    assert bound.value == pytest.approx(exact, rel=3e-6)  # certified margin 1e-6
    assert bound.value >= exact
    assert _attained(chain, nn.ReLU, samples=2048, seed=seed) <= bound.value


CASES = [(seed, widths, act) for seed in range(70)
         for widths, act in [([6, 5, 4, 3], "relu"), ([4, 6, 3, 5, 2], "leaky"), ([5, 4, 4], "tanh")]]


@pytest.mark.parametrize("seed,widths,act", CASES[::1])
def test_random_chains_lower_le_seqlip_le_autolip(seed: int, widths: list[int], act: str) -> None:
    """210 random chains: lower ≤ first SeqLip inequality ≤ SeqLip ≤ AutoLip; lower ≤ CP ≤ AutoLip."""
    module, slope = ACTIVATIONS[act]
    chain = _chain(seed, widths, slope)
    autolip = _autolip(chain)
    lower = _attained(chain, module, seed=seed)
    s, c, g = seqlip(chain), cp(chain), seqlip_greedy(chain)
    assert s.kind is Kind.CERTIFIED and c.kind is Kind.CERTIFIED and g.kind is Kind.ESTIMATE
    assert lower <= _vertex_max(chain) * (1 + 1e-9) <= s.value * (1 + 1e-9)
    assert s.value <= autolip * (1 + 1e-6)
    assert lower <= c.value <= autolip * (1 + 1e-6)
    assert g.value <= s.value * (1 + 1e-9)  # greedy stops at a vertex: never above the exact pair maxima


def test_greedy_can_fall_below_the_exact_value_and_is_labelled_an_estimate() -> None:
    gaps = []
    for seed in range(40):
        chain = _chain(seed, [6, 6, 4], (0.0, 1.0))
        exact, greedy = seqlip(chain), seqlip_greedy(chain)
        assert greedy.kind is Kind.ESTIMATE and "greedy" in greedy.method
        if greedy.value < exact.value * (1 - 1e-3):
            gaps.append((seed, greedy.value, exact.value))
    assert gaps, "expected a chain where greedy SeqLip stops below the exact vertex maximum"


@pytest.mark.parametrize("seed", range(5))
def test_partial_enumeration_is_certified_for_every_budget(seed: int) -> None:
    """Enumerating only e of n coordinates and relaxing the rest never goes below the exact pair maximum,
    and equals it once every coordinate is enumerated."""
    chain = _chain(seed, [8, 9, 5], (0.1, 1.0))
    A, B = pair_matrices([svd_factors(W) for W in chain.weights], 0)
    exact, n = pair_max(A, B, (0.1, 1.0), max_enumerate=9)
    assert n == 9
    previous = math.inf
    for e in range(10):
        value, used = pair_max(A, B, (0.1, 1.0), max_enumerate=e)
        assert used == e and value >= exact * (1 - 1e-12)
        assert value <= previous * (1 + 1e-12)  # the minimum over every prefix: never looser with more
        previous = value
    assert value == pytest.approx(exact, rel=1e-12)


def test_reference_transposition_bug_would_be_caught() -> None:
    """Σ^{1/2}·V in place of Σ^{1/2}·Vᵀ (the reference code) falls below the true vertex maximum on some
    chains; the correct pair matrices never do (checked above on 210 chains)."""
    below = 0
    for seed in range(60):
        chain = _chain(seed, [5, 5, 5, 5], (0.0, 1.0))
        f = [svd_factors(W) for W in chain.weights]
        wrong = 1.0
        for i in range(2):
            s_left = f[i].S if i == 0 else f[i].S.sqrt()
            s_right = f[i + 1].S if i + 1 == 2 else f[i + 1].S.sqrt()
            A, B = s_right[:, None] * f[i + 1].V, f[i].U * s_left[None, :]  # V, not Vᵀ
            wrong *= pair_max(A, B, (0.0, 1.0))[0]
        below += wrong < _vertex_max(chain) * (1 - 1e-6)
    assert below > 0


def test_cp_closed_form_for_one_hidden_relu_layer() -> None:
    """(‖W₁W₀‖ + ‖W₁‖‖W₀‖)/2 for ReLU (docs/mathematics.md §6), in every ℓp norm."""
    chain = _chain(3, [6, 5, 4], (0.0, 1.0))
    W0, W1 = chain.weights
    for p in (1, 2, math.inf):
        expected = (matrix_norm(W1 @ W0, p).value + matrix_norm(W1, p).value * matrix_norm(W0, p).value) / 2
        assert cp(chain, p).value == pytest.approx(expected, rel=1e-9)


def test_linear_chain_cp_and_seqlip_are_the_product_norm() -> None:
    """Activations of slope exactly 1 (an interval [1, 1]) make the chain linear: both give ‖W₂W₁‖."""
    chain = _chain(4, [6, 5, 4], (1.0, 1.0))
    exact = torch.linalg.matrix_norm(chain.weights[1] @ chain.weights[0], 2).item()
    assert cp(chain).value == pytest.approx(exact, rel=3e-6)
    assert seqlip(chain).value == pytest.approx(exact, rel=3e-6)
