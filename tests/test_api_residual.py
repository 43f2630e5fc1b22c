"""The Python API on residual architectures: what-if from the formulas (checked against a new analysis of the
network with the layer really constrained), subtrees, bounds per stage / block, parts of a model
(``capture_input``, ``analyze_slice``) and two checkpoints compared."""
from __future__ import annotations

import copy
import io
import math
import re

import pytest
import torch
from rich.console import Console
from torch import nn

import lipgraph
from lipgraph.bound import Kind
from tests.fixtures.zoo import ZOO


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, torch.Tensor, lipgraph.Report]:
    model, x = ZOO["tiny_resnet"]()
    return model, x, lipgraph.analyze(model, x, lower=False)


def _rescaled(model: nn.Module, path: str, factor: float) -> nn.Module:
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_submodule(path).weight.mul_(factor)
    return other


# -- what-if -----------------------------------------------------------------------------------------------------
def test_what_if_on_a_chain_layer_equals_a_new_analysis() -> None:
    """Spectral normalisation of one layer of an MLP: the what-if bound is the bound of the normalised network."""
    model, x = ZOO["tiny_mlp"]()
    report = lipgraph.analyze(model, x, lower=False)
    what_if = report.with_constant("2", 1.0)
    real = lipgraph.analyze(_rescaled(model, "2", 1 / report.find("2").bound.value), x, lower=False)
    assert what_if.bound.value == pytest.approx(real.bound.value, rel=1e-6)
    assert what_if.bound.value == pytest.approx(report.bound.value / report.find("2").bound.value, rel=1e-12)
    assert what_if.find("2").bound.method == "what-if" and what_if.find("0").bound is report.find("0").bound
    assert what_if.lower is None and what_if.ratio is None and "what-if: L(2) = 1" in what_if.notes[-1]
    assert report.find("2").bound.value != 1.0  # the original report is untouched


def test_what_if_on_a_fused_run_equals_a_new_analysis(resnet) -> None:
    """``layer1.conv1+bn1`` (conv and BN bounded as one operator) set to 1: the same as scaling the conv so that the
    fused operator has norm 1."""
    model, x, report = resnet
    fused = report.find("layer1.bn1").fused.bound.value
    what_if = report.with_constant("layer1.conv1+bn1", 1.0)
    real = lipgraph.analyze(_rescaled(model, "layer1.conv1", 1 / fused), x, lower=False)
    assert what_if.bound.value == pytest.approx(real.bound.value, rel=1e-6)
    assert what_if.find("layer1.bn1").fused.bound.value == 1.0
    assert what_if.find("layer1").bound.value == pytest.approx(real.find("layer1").bound.value, rel=1e-6)
    assert what_if.find("layer2").bound is report.find("layer2").bound  # untouched branches keep their bound


def test_what_if_on_a_fused_member_falls_back_to_the_product(resnet) -> None:
    """The fused norm of the old weights says nothing about a changed conv: the run becomes L(conv1)·L(bn1), still a
    valid bound (at least the fused norm of the new weights)."""
    model, x, report = resnet
    what_if = report.with_constant("layer1.conv1", 1.0)
    bn1 = report.find("layer1.bn1").bound.value
    assert what_if.find("layer1.bn1").fused.bound.value == pytest.approx(bn1, rel=1e-12)
    real = lipgraph.analyze(_rescaled(model, "layer1.conv1", 1 / report.find("layer1.conv1").bound.value), x,
                            lower=False)
    assert what_if.bound.value >= real.bound.value * (1 - 1e-9)


def test_what_if_on_a_block_and_several_constants(resnet) -> None:
    _, _, report = resnet
    f = report.formulas
    block = report.with_constant("layer2", 1.0)
    assert block.bound.value == pytest.approx(report.bound.value / report.find("layer2").bound.value, rel=1e-12)
    both = report.with_constants({"layer2": 1.0, "fc": 0.5})
    assert both.bound.value == pytest.approx(block.bound.value * 0.5 / report.find("fc").bound.value, rel=1e-12)
    assert report.with_constant("layer2", 1.0).with_constant("fc", 0.5).bound.value == pytest.approx(
        both.bound.value, rel=1e-12)
    assert f.overrides == {}  # the original formulas are not changed


def test_what_if_refuses_unknown_names_and_modules_not_in_the_formula() -> None:
    report = lipgraph.analyze(*ZOO["tiny_densenet"](), lower=False)
    with pytest.raises(KeyError, match="no constant named 'nope'"):
        report.with_constant("nope", 1.0)
    # a fused run crosses from transition into the root's layers: the model's formula does not use L(transition)
    assert "transition.2+transition.3+adaptive_avg_pool2d+view+classifier" in report.formula_text("")
    with pytest.raises(lipgraph.InputError, match="transition: not one symbol of the model's formula"):
        report.with_constant("transition", 1.0)


# -- parts of the tree -------------------------------------------------------------------------------------------
def test_subtree_bounds_and_attribution(resnet) -> None:
    _, _, report = resnet
    stage = report.subtree("layer2")
    assert stage.bound is report.find("layer2").bound and stage.tree is report.find("layer2")
    assert stage.formula_text() == "(L(downsample) + L(conv2+bn2)·L(relu)·L(conv1+bn1))·L(relu)"
    assert {a.name for a in stage.attribution()} <= {a.name for a in report.attribution()}
    no_shortcut = stage.with_constant("layer2.downsample", 0.0)
    assert no_shortcut.bound.value == pytest.approx(
        stage.bound.value - report.find("layer2.downsample").bound.value, rel=1e-12)
    assert no_shortcut.outputs == [("layer2", no_shortcut.bound)]
    out = io.StringIO()
    stage.print(console=Console(file=out, width=120, color_system=None))
    assert out.getvalue().startswith("layer2 (BasicBlock)  L ≤ 2.588")
    assert report.bounds(types=["BasicBlock"]) == {"layer1": report.find("layer1").bound,
                                                  "layer2": report.find("layer2").bound}
    assert list(report.bounds(depth=1)) == [c.path for c in report.tree.children]
    assert set(report.bounds(depth=2)) == {n.path for c in report.tree.children for n in c.children}


# -- parts of the model ------------------------------------------------------------------------------------------
def test_capture_input_is_what_the_submodule_receives(resnet) -> None:
    model, x, _ = resnet
    seen = []
    handle = model.layer2.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    model(x)
    handle.remove()
    assert torch.equal(lipgraph.capture_input(model, "layer2", x), seen[0])
    with pytest.raises(lipgraph.InputError, match="no submodule 'layer9'"):
        lipgraph.capture_input(model, "layer9", x)


def test_analyze_a_submodule_and_a_slice_at_their_input_size(resnet) -> None:
    model, x, report = resnet
    block = lipgraph.analyze(model.layer2, lipgraph.capture_input(model, "layer2", x), lower=False)
    assert block.bound.value == pytest.approx(report.find("layer2").bound.value, rel=1e-12)
    part = lipgraph.analyze_slice(model, x, "layer2", lower=False)
    assert part.bound.value == pytest.approx(report.find("layer2").bound.value, rel=1e-12)
    modules = {path for path, _ in model.named_modules() if path}
    assert [n.path for n in part.tree.walk() if n.path in modules] == [
        n.path for n in report.find("layer2").walk() if n.path in modules]
    stages = lipgraph.analyze_slice(model, x, "layer1", "layer2", lower=False)
    assert stages.model == "_TinyResNet[layer1:layer2]" and stages.input_shape == [[1, 4, 8, 8]]
    assert stages.bound.value == pytest.approx(
        report.find("layer1").bound.value * report.find("layer2").bound.value, rel=1e-12)
    assert stages.formula_text() == "L(layer2)·L(layer1)"
    assert model.training is False and all(not m.training for m in model.modules())


def test_analyze_slice_refuses_what_is_not_a_sequence(resnet) -> None:
    model, x, _ = resnet
    with pytest.raises(lipgraph.InputError, match="avgpool → fc is not a sequence in this model"):
        lipgraph.analyze_slice(model, x, "avgpool", "fc")  # torch.flatten runs between them
    with pytest.raises(lipgraph.InputError, match="not a sibling"):
        lipgraph.analyze_slice(model, x, "layer1", "layer2.conv1")
    with pytest.raises(lipgraph.InputError, match="comes before"):
        lipgraph.analyze_slice(model, x, "layer2", "layer1")


def test_nested_slice_keeps_the_model_paths() -> None:
    model, x = ZOO["tiny_densenet"]()
    report = lipgraph.analyze(model, x, lower=False)
    part = lipgraph.analyze_slice(model, x, "block.0", "block.1", lower=False)
    assert [c.path for c in part.tree.children] == ["block.0", "block.1"]
    assert part.bound.value == pytest.approx(report.find("block").bound.value, rel=1e-12)


# -- two checkpoints ---------------------------------------------------------------------------------------------
def test_compare_two_checkpoints(resnet) -> None:
    model, x, report = resnet
    other = lipgraph.analyze(_rescaled(model, "fc", 2.0), x, lower=False)
    comparison = report.compare(other)
    assert comparison.ratio == pytest.approx(2.0, rel=1e-9)
    assert comparison.find("fc").ratio == pytest.approx(2.0, rel=1e-9)
    assert all(r.ratio == pytest.approx(1.0, rel=1e-12) for r in comparison.rows if r.path not in ("", "fc"))
    assert [r.path for r in comparison.largest(1)] == ["fc"] and comparison.only_after == []
    assert comparison.to_dict()["rows"][0] == {"path": "", "type": "_TinyResNet", "before": report.bound.value,
                                               "after": other.bound.value, "ratio": comparison.ratio}
    out = io.StringIO()
    comparison.print(console=Console(file=out, width=100, color_system=None), depth=1, ascii_only=True)
    text = out.getvalue()
    assert text.isascii() and "| fc " in text.replace("|   fc", "| fc") and "layer1.conv1" not in text
    assert re.search(r"fc .*\| *= 0\.7185 \| *= 1\.437 \| *2 \|", text), text


def test_compare_with_a_different_model_lists_what_is_missing(resnet) -> None:
    _, _, report = resnet
    mlp = lipgraph.analyze(*ZOO["tiny_mlp"](), lower=False)
    comparison = report.compare(mlp)
    assert comparison.find("layer1").after is None and comparison.find("layer1").ratio is None
    assert comparison.only_after == ["0", "1", "2", "3", "4"]


def test_a_kind_stays_honest_under_what_if() -> None:
    """A what-if of a certified report is certified for the hypothetical network; an unbounded op set to a finite
    constant makes the bound finite."""
    model, x = ZOO["tiny_mlp"]()
    report = lipgraph.analyze(model, x, lower=False, rules={"relu": lambda ctx: lipgraph.unbounded("no rule")})
    assert report.kind is Kind.UNBOUNDED
    fixed = report.with_constants({"1": 1.0, "3": 1.0})
    assert fixed.kind is Kind.CERTIFIED and math.isfinite(fixed.bound.value)
    assert fixed.bound.value == pytest.approx(lipgraph.analyze(model, x, lower=False).bound.value, rel=1e-12)
