"""LipSDP-Neuron / -Layer and ECLipsE through cvxpy (the ``sdp`` extra), all re-certified."""
from __future__ import annotations

import sys

import pytest
import torch

from lipgraph.errors import LipgraphError
from lipgraph.estimators import CHAIN_ESTIMATORS, DenseChain
from lipgraph.estimators.sdp import lipsdp, lmi_size
from tests.estimators.nets import chain_of, lower, mlp, product_norm

pytest.importorskip("cvxpy")

OURS = ("lipsdp-neuron", "lipsdp-layer", "eclipse", "eclipse-fast")
GELU, SILU = (-0.1290, 1.1290), (-0.0999, 1.0999)


def bounds(chain: DenseChain) -> dict[str, float]:
    out = {}
    for name in OURS:
        b = CHAIN_ESTIMATORS[name].fn(chain)
        assert b.kind.value == "certified", name
        out[name] = b.value
    return out


def test_regression_every_certified_estimator_is_at_least_one():
    """W0 = [[1],[1]], W1 = [[1, −1]]: true L = 1 (LipSDP-Network, unsound, gives 2e-5)."""
    chain = DenseChain.of([[[1.0], [1.0]], [[1.0, -1.0]]], [(0.0, 1.0)])
    checked = []
    for name, est in CHAIN_ESTIMATORS.items():
        if est.certified and est.applies(chain) is None:
            assert est.fn(chain).value >= 1.0, name
            checked.append(name)
    assert set(OURS) <= set(checked)


@pytest.mark.parametrize("seed,widths", [(0, (8, 6, 5, 3)), (1, (12, 9, 9, 9, 4)), (2, (20, 6, 8, 2))])
def test_nonnegative_mlp_neuron_is_exact(seed, widths):
    """Nonnegative weights, ReLU, no bias: L = ‖ΠW‖ exactly (Perron–Frobenius, §10)."""
    chain = chain_of(mlp(widths, "relu", seed, nonnegative=True), widths[0])
    exact = product_norm(chain.weights)
    values = bounds(chain)
    assert values["lipsdp-neuron"] == pytest.approx(exact, rel=1e-5)
    for name, value in values.items():
        assert value >= exact * (1 - 1e-9), name


@pytest.mark.parametrize("seed", range(2))
def test_ordering_on_relu_mlps(seed):
    model = mlp((10, 12, 12, 12, 3), "relu", seed)
    v = bounds(chain_of(model, 10))
    tol = 1 + 1e-7
    assert v["lipsdp-neuron"] <= v["lipsdp-layer"] * tol
    assert v["lipsdp-layer"] <= v["eclipse-fast"] * tol
    assert v["lipsdp-neuron"] <= v["eclipse"] * tol
    assert min(v.values()) >= lower(model, (10,))


@pytest.mark.parametrize("act,slope", [("gelu", GELU), ("silu", SILU)])
def test_gelu_silu_bounds_dominate_linear_beta_network(act, slope):
    model = mlp((10, 12, 12, 4), act, seed=3)
    chain = chain_of(model, 10)
    assert chain.slopes == (slope, slope)
    linear_beta = slope[1] ** 2 * product_norm(chain.weights)  # φ(x) = βx has every slope in [α, β]
    low = lower(model, (10,))
    for name, value in bounds(chain).items():
        assert value >= linear_beta, name
        assert value >= low, name


def test_split_mode_is_a_looser_certified_bound():
    model = mlp((6, 8, 8, 8, 8, 2), "relu", seed=5)
    chain = chain_of(model, 6)
    whole = lipsdp(chain, per_neuron=False)
    split = lipsdp(chain, per_neuron=False, max_lmi=20)
    assert lmi_size(chain.widths) > 20 and "split into" in split.method
    assert whole.value <= split.value * (1 + 1e-7)
    assert split.value >= lower(model, (6,))


def test_neuron_above_the_limit_runs_the_first_order_solver():
    model = mlp((6, 8, 8, 8, 8, 2), "relu", seed=5)
    chain = chain_of(model, 6)
    big = lipsdp(chain, max_lmi=20)
    assert "first-order" in big.method
    assert lower(model, (6,)) <= big.value <= lipsdp(chain).value * (1 + 1e-3)


def test_too_large_chain_is_refused_with_its_size():
    gen = torch.Generator().manual_seed(0)
    chain = DenseChain.of([torch.randn(300, 10, generator=gen), torch.randn(300, 300, generator=gen),
                           torch.randn(2, 300, generator=gen)], [(0.0, 1.0)] * 2)
    reason = CHAIN_ESTIMATORS["lipsdp-layer"].applies(chain)
    assert reason is not None and "600" in reason and "limit" in reason
    assert CHAIN_ESTIMATORS["lipsdp-neuron"].applies(chain) is None  # first-order above the limit
    assert CHAIN_ESTIMATORS["eclipse"].applies(chain) is None
    with pytest.raises(LipgraphError, match="600"):
        lipsdp(chain, per_neuron=False)


def test_missing_cvxpy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    chain = DenseChain.of([[[1.0], [1.0]], [[1.0, -1.0]]], [(0.0, 1.0)])
    assert "lipgraph[sdp]" in CHAIN_ESTIMATORS["lipsdp-layer"].applies(chain)
    with pytest.raises(LipgraphError, match=r"lipgraph\[sdp\]"):
        lipsdp(chain, per_neuron=False)
    assert "first-order" in lipsdp(chain).method and lipsdp(chain).value >= 1.0
    assert CHAIN_ESTIMATORS["eclipse-fast"].fn(chain).value >= 1.0  # needs no solver
