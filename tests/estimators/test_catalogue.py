"""The one catalogue of chain estimators (lipgraph.estimators.ESTIMATORS): --method parsing, the listing and the
chain pass read it; a copy scopes an extra estimator to one analysis."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph.api import CHAIN_METHODS, METHODS, chain_estimators
from lipgraph.bound import certified
from lipgraph.errors import InputError
from lipgraph.estimators import CHAIN_ESTIMATORS, ESTIMATORS, ChainEstimator, DenseChain
from lipgraph.ir import build
from lipgraph.passes.seqlip import GRAPH_ESTIMATORS, tighten_chains


def test_one_catalogue_behind_the_old_names() -> None:
    assert CHAIN_ESTIMATORS is ESTIMATORS and CHAIN_METHODS is ESTIMATORS.methods
    assert METHODS == (*ESTIMATORS.methods, "best") and set(GRAPH_ESTIMATORS) == {"dcp", "lipsdp-conv"}
    assert ESTIMATORS["dcp"].input == "conv" and ESTIMATORS["cp"].input == "dense"
    assert ESTIMATORS["cp"].supports(1.0) and not ESTIMATORS["seqlip"].supports(1.0)
    assert "conv chains; ℓ2" in ESTIMATORS["dcp"].scope


def test_resolve_methods_estimators_and_best() -> None:
    assert chain_estimators("seqlip") == ("cp", "seqlip", "seqlip-greedy")
    assert chain_estimators("eclipse-fast") == ("eclipse-fast",)
    assert chain_estimators("best") == tuple(ESTIMATORS) and "dcp" in chain_estimators("best")
    with pytest.raises(InputError, match="unknown method 'nope'; available: autolip, seqlip, .*best, ") as info:
        chain_estimators("nope")
    listed = str(info.value).split("available: ")[1].split(", ")
    assert len(listed) == len(set(listed)) and "cp" in listed  # each name once (cp is a method and an estimator)


def test_registration_is_checked() -> None:
    scoped = ESTIMATORS.copy()
    with pytest.raises(ValueError, match="'cp' is already registered"):
        scoped.register(ChainEstimator("cp", lambda c: certified(1.0, "x"), certified=True))
    with pytest.raises(ValueError, match="input must be one of"):
        ChainEstimator("x", lambda c: certified(1.0, "x"), certified=True, input="sparse")
    scoped.register_method("mine", ("cp",))
    assert "mine" not in ESTIMATORS.methods and scoped.resolve("mine") == ("cp",)


def test_dcp_refuses_a_dense_chain_with_a_reason() -> None:
    chain = DenseChain.of([torch.eye(2), torch.eye(2)], [(0.0, 1.0)])
    assert "ConvChain" in ESTIMATORS["dcp"].applies(chain)


def test_a_scoped_catalogue_reaches_the_chain_pass_only_for_its_call() -> None:
    """An estimator in a copy of the catalogue runs on the chain; the global catalogue does not know it."""
    calls = []

    def spectral_product(chain: DenseChain):
        calls.append(chain.widths)
        return certified(float(torch.linalg.matrix_norm(chain.weights[1] @ chain.weights[0], 2)) * 1.01, "mine")

    scoped = ESTIMATORS.copy()
    scoped.register(ChainEstimator("mine", spectral_product, certified=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    lg = build(model, (torch.zeros(1, 4),), lipgraph.default_registry(), "auto", None)
    from lipgraph.passes.annotate import annotate
    from lipgraph.passes.fuse import fuse

    annotate(lg, lipgraph.default_registry(), 2.0, "error", fusion=True)
    fuse(lg, 2.0)
    (result,) = tighten_chains(lg, 2.0, ("mine",), catalogue=scoped)
    assert calls == [[4, 5, 3]] and result.results["mine"].method == "mine"
    assert "mine" not in ESTIMATORS
    with pytest.raises(ValueError, match="unknown chain estimators"):
        tighten_chains(lg, 2.0, ("mine",))
