"""The pipeline (lipgraph/pipeline.py): passes declare what they require and ensure, the runner checks it, a pass
added from this file runs end to end in ``analyze``, the tree pass runs no AutoLip, and the catalogues a caller
passes are scoped to that analysis."""
from __future__ import annotations

import math
from itertools import product

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph.bound import FLOAT_MARGIN, certified
from lipgraph.errors import InputError
from lipgraph.estimators import ESTIMATORS, ChainEstimator, DenseChain
from lipgraph.passes import autolip as autolip_module
from lipgraph.passes import calls as calls_module
from lipgraph.passes.autolip import add_shortcut
from lipgraph.pipeline import (Analysis, AutoLip, Pass, PipelineError, Tree, analysis_passes, graph_passes,
                               run_passes)
from lipgraph.record import META_KEY, NodeRecord, record
from lipgraph.registry import default_registry


def _state(model: nn.Module, x: torch.Tensor, **options) -> Analysis:
    return Analysis(model.eval(), (x,), 2.0, default_registry(), **options)


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), torch.randn(1, 4)


def test_a_pass_whose_requirement_is_missing_fails_naming_it() -> None:
    """Residual blocks read the chains pass's results: without that pass the runner stops before running it."""
    model, x = _mlp()
    residual = next(p for p in analysis_passes(_state(model, x, method="cp")) if p.name == "residual")
    with pytest.raises(PipelineError, match=r"pass 'residual' requires chain, which no pass before it ensures "
                                            r"\(ensured so far: .*transfer"):
        run_passes([*graph_passes(), residual], _state(model, x))


def test_the_bound_pass_needs_the_rules_and_the_tree_needs_the_bound() -> None:
    model, x = _mlp()
    with pytest.raises(PipelineError, match="pass 'bound' requires inputs, transfer"):
        run_passes([AutoLip()], _state(model, x))
    with pytest.raises(PipelineError, match="pass 'tree' requires calls, total"):
        run_passes([*graph_passes(), Tree()], _state(model, x))


def test_unknown_facts_and_unset_graph_facts_are_errors() -> None:
    class Typo(Pass):
        name, requires = "typo", frozenset({"trasnfer"})

        def __call__(self, state: Analysis) -> None:
            pass

    class Liar(Pass):
        name, ensures = "liar", frozenset({"total"})

        def __call__(self, state: Analysis) -> None:
            pass

    model, x = _mlp()
    with pytest.raises(PipelineError, match=r"pass 'typo' names unknown facts \['trasnfer'\]"):
        run_passes([Typo()], _state(model, x))
    with pytest.raises(PipelineError, match="pass 'liar' ensures total but did not set it"):
        run_passes([Liar()], _state(model, x))


def test_the_recipes_list_their_passes_in_order() -> None:
    model, x = _mlp()
    names = lambda passes: [p.name for p in passes]  # noqa: E731
    assert names(analysis_passes(_state(model, x))) == ["trace", "annotate", "fuse", "bound", "module_bounds", "tree"]
    assert names(analysis_passes(_state(model, x, method="seqlip", region=lipgraph.Box(-1, 1)), layer_lower=True)) \
        == ["trace", "intervals", "annotate", "fuse", "crown", "layer_lower", "chains", "residual", "local_chains",
            "bound", "module_bounds", "tree"]


class Vertices(Pass):
    """A new analysis, added from a test file: each chain Linear → elementwise φ (slopes in [0, 1]) → Linear of two
    runs gets the exact sup over the slope box of ‖W2 diag(d) W1‖₂, attained at a vertex d ∈ {0, 1}^n (the norm
    is convex in each d_j); a certified shortcut, as the chain passes write."""

    name, requires, ensures = "vertices", frozenset({"transfer", "fused"}), frozenset({"shortcuts"})

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, state: Analysis) -> None:
        for node in state.graph.ops():
            act = record(node).inputs[0] if record(node).key == "linear" else None
            if act is None or record(act).key != "tanh":
                continue
            first = record(act).inputs[0]
            w2, w1 = (state.graph.target_of(n).weight.detach().double() for n in (node, first))
            value = max(float(torch.linalg.matrix_norm(w2 @ torch.diag(torch.tensor(d, dtype=w1.dtype)) @ w1, 2))
                        for d in product((0.0, 1.0), repeat=w1.shape[0]))
            add_shortcut(node, first, certified(value, "vertices", margin=FLOAT_MARGIN), "vertices")
            self.seen.append(record(node).path)


def test_a_pass_added_from_a_test_file_runs_end_to_end() -> None:
    """y = W2 tanh(W1 x) with W1 = diag(2, 1), W2 = [[0, 0], [0, 1]]: y depends on x_2 only, through tanh, so L = 1,
    while AutoLip multiplies ‖W2‖·‖W1‖ = 2. The added pass's shortcut is taken: the bound is 1, the tree and the
    formulas say where it came from, and the dense Jacobian stays below it."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Tanh(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        model[2].weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    x = torch.randn(1, 2)
    plain = lipgraph.analyze(model, x, lower=False, cache=False, quiet=True)
    added = Vertices()
    report = lipgraph.analyze(model, x, lower=False, cache=False, quiet=True, passes=[added])
    assert added.seen == ["2"]
    assert plain.bound.value == pytest.approx(2.0, rel=1e-5)
    assert report.bound.value == pytest.approx(1.0, rel=1e-5) and report.bound.kind is lipgraph.Kind.CERTIFIED
    assert report.outputs[0][1].method == "autolip+vertices"
    assert "L(2(vertices))" in str(report.formula()) and "L(vertices)" not in str(plain.formula())
    assert report.formulas.evaluate(report.formula()) == pytest.approx(report.bound.value, rel=1e-12)
    for point in torch.randn(8, 1, 2):
        jac = torch.autograd.functional.jacobian(model, point).reshape(2, 2)
        assert torch.linalg.matrix_norm(jac, 2).item() <= report.bound.value


def test_the_tree_pass_runs_no_autolip(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tree and the formulas are built from the records and the module calls' bounds alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(1, 4)
    state = _state(model, x, method="seqlip")
    passes = analysis_passes(state)
    assert [p.name for p in passes[-3:]] == ["bound", "module_bounds", "tree"]
    run_passes(passes[:-1], state)

    def forbidden(*args, **kwargs):
        raise AssertionError("AutoLip ran while building the tree")

    for module in (autolip_module, calls_module):
        monkeypatch.setattr(module, "propagate", forbidden)
        monkeypatch.setattr(module, "combine", forbidden)
    run_passes(passes[-1:], state)
    monkeypatch.undo()
    expected = lipgraph.analyze(model, x, method="seqlip", lower=False, cache=False, quiet=True)
    assert state.tree.to_dict()["bound"] == expected.tree.to_dict()["bound"]
    assert [n.path for n in state.tree.walk()] == [n.path for n in expected.tree.walk()]
    assert [n.bound.value for n in state.tree.walk()] == [n.bound.value for n in expected.tree.walk()]
    # one typed record per node, under one key: nothing else of lipgraph's in node.meta
    ours = {k for n in state.graph.gm.graph.nodes for k in n.meta if "lip" in k}
    assert ours == {META_KEY}
    assert all(isinstance(n.meta[META_KEY], NodeRecord) for n in state.graph.ops())


def test_an_estimator_registered_for_one_analysis_only() -> None:
    """``estimators=`` scopes a catalogue to one call: the method resolves there, runs on the chain, and the global
    catalogue never hears of it."""
    calls = []

    def product_norm(chain: DenseChain):
        calls.append(chain.widths)
        return certified(_sup_vertices(chain), "scoped", margin=FLOAT_MARGIN)

    scoped = ESTIMATORS.copy()
    scoped.register(ChainEstimator("scoped-estimator", product_norm, certified=True))
    model, x = _mlp()
    report = lipgraph.analyze(model, x, method="scoped-estimator", estimators=scoped, lower=False, cache=False,
                              quiet=True)
    (chain,) = report.chains
    assert calls == [[4, 5, 3]] and "scoped-estimator" in chain.results
    assert report.bound.value <= lipgraph.analyze(model, x, lower=False, cache=False, quiet=True).bound.value
    assert "scoped-estimator" not in ESTIMATORS
    with pytest.raises(InputError, match="unknown method 'scoped-estimator'"):
        lipgraph.analyze(model, x, method="scoped-estimator", lower=False, cache=False, quiet=True)


def _sup_vertices(chain: DenseChain) -> float:
    """max over d ∈ {0, 1}^n of ‖W2 diag(d) W1‖₂: the exact sup over the ReLU's slope box (convex in each d_j)."""
    w1, w2 = chain.weights
    return max(float(torch.linalg.matrix_norm(w2 @ torch.diag(torch.tensor(d, dtype=w1.dtype)) @ w1, 2))
               for d in product((0.0, 1.0), repeat=w1.shape[0]))


def test_a_rules_registry_scoped_to_one_analysis() -> None:
    """``rules=`` takes a whole registry (rules and patterns) for one call; the default registry is untouched."""

    class Halve(nn.Module):
        def forward(self, x):
            return x / 2

    scoped = default_registry().copy()
    scoped.register(Halve, lipgraph.scale(0.5))
    model = nn.Sequential(nn.Linear(3, 3), Halve())
    x = torch.randn(1, 3)
    report = lipgraph.analyze(model, x, rules=scoped, lower=False, cache=False, quiet=True)
    assert report.find("1").bound.value == 0.5 and report.find("1").type == "Halve"
    assert default_registry().alias(Halve) is None and scoped.alias(Halve) is not None
    assert math.isclose(report.bound.value, 0.5 * report.find("0").bound.value, rel_tol=1e-12)
