"""Per-layer power-iteration lower bounds (``analyze(layer_lower=True)``): below every certified layer norm, equal
to the exact σ_max of each layer's dense Jacobian, absent for ℓ1/ℓ∞, and shown in the tree and JSON."""
from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

import lipgraph
from lipgraph import UnsoundBoundError
from lipgraph import Kind
from lipgraph.cli import main
from tests.fixtures.zoo import ZOO

ROOT = Path(__file__).resolve().parent.parent
#: power iteration converges at rate (σ₂/σ₁)² per step: 100 steps get these layers within 1e-4 (the first conv has
#: σ₂/σ₁ = 0.9925); a wrong linear part (bias kept, wrong shape or adjoint) would be off by far more
CONVERGED = 1e-3
ZOO_CASES = ["tiny_cnn", "tiny_resnet", "tiny_densenet", "tiny_mobilenet", "tiny_alexnet_like", "shared_weights"]


def _measured(report: lipgraph.Report) -> list[tuple[str, lipgraph.Bound, lipgraph.Bound]]:
    """(where, lower, certified) for every layer and fused chain that carries a power-iteration value."""
    pairs = []
    for node in report.tree.walk():
        if node.layer_lower is not None:
            pairs.append((node.path, node.layer_lower, node.bound))
        if node.fused is not None and node.fused.lower is not None:
            pairs.append((f"{node.path} (fused)", node.fused.lower, node.fused.bound))
    return pairs


@pytest.mark.parametrize("name", ZOO_CASES)
def test_below_every_certified_layer_norm(name: str) -> None:
    model, x = ZOO[name]()
    report = lipgraph.analyze(model, x, lower=False, layer_lower=True)
    pairs = _measured(report)
    assert pairs
    for where, low, certified in pairs:
        assert low.kind is Kind.LOWER and low.method == "power-iteration", where
        assert certified.kind is Kind.CERTIFIED and 0 < low.value <= certified.value, (where, low, certified)
    assert not any("UNSOUND" in note for note in report.notes), report.notes
    layers = [n for n in report.tree.walk() if n.op in ("conv2d", "linear", "batch_norm")]
    assert layers and all(n.layer_lower is not None for n in layers)


def _layers_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.ConvTranspose2d(3, 2, 2, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(200, 4))
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 1.5)
        model[1].weight.uniform_(0.5, 1.5)
    return model.eval(), torch.randn(1, 2, 5, 5)


def _sigma_max(module: nn.Module, x: torch.Tensor) -> float:
    """The exact ℓ2 norm of an affine module: σ_max of its float64 Jacobian."""
    m64 = copy.deepcopy(module).double().eval()
    jac = torch.autograd.functional.jacobian(lambda v: m64(v).flatten(), x.double())
    return torch.linalg.matrix_norm(jac.reshape(jac.shape[0], -1), 2).item()


def test_equals_the_dense_sigma_max_of_each_layer() -> None:
    model, x = _layers_model()
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.setdefault(m, a[0].detach())) for m in model]
    model(x)
    for h in hooks:
        h.remove()
    report = lipgraph.analyze(model, x, lower=False, layer_lower=True)
    expected = {str(i): _sigma_max(model[i], inputs[model[i]]) for i in (0, 1, 3, 6)}
    expected["1 (fused)"] = _sigma_max(model[:2], x)
    found = {where: low.value for where, low, _ in _measured(report)}
    assert set(found) == set(expected), found
    for where, exact in expected.items():
        assert exact * (1 - CONVERGED) <= found[where] <= exact * (1 + 1e-9), (where, found[where], exact)
    for node in report.tree.walk():  # the certified gains of these small layers are exact too
        if node.layer_lower is not None:
            assert node.bound.value == pytest.approx(node.layer_lower.value, rel=CONVERGED)


@pytest.mark.parametrize("p", [1, math.inf], ids=["l1", "linf"])
def test_absent_for_l1_and_linf(p: float) -> None:
    model, x = ZOO["tiny_cnn"]()
    report = lipgraph.analyze(model, x, norm=p, lower=False, layer_lower=True)
    assert not _measured(report)
    assert _json_values(report.to_dict()["tree"]) == {None}
    assert any("ℓ2 only" in note for note in report.notes)


def _json_values(node: dict) -> set:
    """Every ``layer_lower`` and fused ``lower`` value in a JSON tree."""
    found = {node["layer_lower"]} | ({node["fused"]["lower"]} if node["fused"] else set())
    return found.union(*(_json_values(c) for c in node["children"]))


def test_off_by_default_and_in_json_and_tree() -> None:
    model, x = ZOO["tiny_cnn"]()
    plain = lipgraph.analyze(model, x, lower=False)
    assert not _measured(plain) and _json_values(plain.to_dict()["tree"]) == {None}
    report = lipgraph.analyze(model, x, lower=False, layer_lower=True)
    children = {c["path"]: c for c in report.to_dict()["tree"]["children"]}
    assert children["conv1"]["layer_lower"] == report.find("conv1").layer_lower.value
    assert children["bn1"]["fused"]["lower"] == report.find("bn1").fused.lower.value
    assert children["pool1"]["layer_lower"] is None  # max-pooling is not linear
    lines = {line.split()[1]: line for line in _text(report).splitlines() if len(line.split()) > 1}
    assert "(power iteration >= " in lines["conv1"] and "power iteration >= " in lines["bn1"].split("fused")[1]


def _text(report: lipgraph.Report) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    report.print(console=console, ascii_only=True)
    return console.file.getvalue()


def test_a_wrong_layer_rule_is_flagged() -> None:
    """A linear rule claiming half the true norm: the attained power-iteration value exposes it."""
    model, x = ZOO["tiny_mlp"]()

    def half_norm(ctx: lipgraph.OpContext) -> lipgraph.Transfer:
        sigma = torch.linalg.matrix_norm(ctx.arg("weight").detach().double(), 2).item()
        return lipgraph.Transfer(gains=(lipgraph.certified(sigma / 2, "wrong"),), affine=True)

    with pytest.raises(UnsoundBoundError) as caught:
        lipgraph.analyze(model, x, lower=False, layer_lower=True, rules={"linear": half_norm})
    message = str(caught.value)
    assert message.startswith("unsound bound: power iteration attains more than the certified norm of 3 layer(s):")
    assert len(caught.value.layers) == 3 and all(f"  - {layer}: " in message for layer in caught.value.layers)


def test_cli_flag(capsys) -> None:
    code = main(["explain", str(ROOT / "examples" / "mlp.py"), "--layer-lower", "--no-lower", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    tree = json.loads(out)["tree"]
    linear = [c for c in tree["children"] if c["op"] == "linear"]
    assert linear and all(0 < c["layer_lower"] <= c["bound"] for c in linear)
