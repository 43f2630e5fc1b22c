"""Attribution: the elasticity ∂log L/∂log L_i of the bound in each constant, from the formulas.

Closed forms: every layer of a pure chain has elasticity 1; in a residual block 1 + L(branch) each branch layer
has the branch's share L(branch)/L. Finite differences on random DAGs (tests/property/netgen.py) check it two
ways: against the formulas themselves (a constant scaled by 1 ± h), and against the analysis run again on the
network with one layer's weights scaled by 1 ± h — every constant containing that layer (its own norm, a fused
run, a chain) scales by 1 ± h, so the layer's elasticity is the sum of theirs.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest
import torch
from torch import nn

import lipgraph
from tests.fixtures.zoo import ZOO
from tests.property.netgen import RandomDraw, build, describe, draw_spec, norm_value



def _spec(seed: int) -> dict:
    return draw_spec(RandomDraw(random.Random(seed)), max_blocks=6)


#: random networks with at least one merge (residual, concatenation, maximum of two branches), and a few more
SEEDS = [s for s in range(400) if any(m in describe(_spec(s)) for m in ("residual[", "concat[", "maximum["))][:14]
SEEDS += [s for s in range(3) if s not in SEEDS]
SCALED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm1d, nn.BatchNorm2d)  # L is 1-homogeneous in weight


def by_name(report: lipgraph.Report) -> dict[str, float]:
    return {a.name: a.elasticity for a in report.attribution()}


def layer_elasticities(report: lipgraph.Report) -> dict[str, float]:
    """Per layer path: the sum of the elasticities of every constant that contains it."""
    total: dict[str, float] = defaultdict(float)
    for a in report.attribution():
        for path in set(a.paths):
            total[path] += a.elasticity
    return total


@pytest.mark.parametrize("name", ["tiny_mlp", "tiny_vgg", "tiny_alexnet_like", "tiny_cnn"])
def test_every_constant_of_a_pure_chain_has_elasticity_one(name: str) -> None:
    e = by_name(lipgraph.analyze(*ZOO[name](), lower=False))
    assert e and all(v == pytest.approx(1.0, rel=1e-12) for v in e.values()), e


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.act, self.fc2 = nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


def test_residual_block_layers_have_the_branch_share() -> None:
    """L = 1 + a·t·b: each branch constant has elasticity ab/(1 + ab), and they sum to 3·ab/(1 + ab) (Euler: Σ e_i
    is the mean path length, weighted by each path's share)."""
    report = lipgraph.analyze(Residual().eval(), torch.randn(1, 6), lower=False)
    a, b = report.find("fc1").bound.value, report.find("fc2").bound.value
    share = a * b / (1 + a * b)
    e = by_name(report)
    assert e == pytest.approx({"fc1": share, "act": share, "fc2": share}, rel=1e-12)
    assert sum(e.values()) == pytest.approx(3 * share, rel=1e-12)


def test_downsample_block_splits_between_its_two_paths() -> None:
    """layer2 of the fixture ResNet: (L(downsample) + B)·L(relu), the ReLU shared with the branch."""
    report = lipgraph.analyze(*ZOO["tiny_resnet"](), lower=False).subtree("layer2")
    f = report.formulas
    ds = report.find("layer2.downsample").bound.value
    branch = report.bound.value - ds  # L(relu) = 1
    e = by_name(report)
    assert e["layer2.downsample.0+1"] == pytest.approx(ds / (ds + branch), rel=1e-12)
    for run in ("layer2.conv1+bn1", "layer2.conv2+bn2"):
        assert e[run] == pytest.approx(branch / (ds + branch), rel=1e-12)
    assert e["layer2.relu"] == pytest.approx(1 + branch / (ds + branch), rel=1e-12)  # used on both sides of +
    assert f.evaluate(report.tree.expr) == pytest.approx(report.bound.value, rel=1e-12)


def _finite_difference(value, h: float) -> tuple[float, float]:
    """One-sided log-derivatives (forward, backward) of ``value(scale)`` at scale 1."""
    base = math.log(value(1.0))
    return (math.log(value(1 + h)) - base) / math.log1p(h), (base - math.log(value(1 - h))) / -math.log1p(-h)


def _assert_subgradient(e: float, forward: float, backward: float, where: str) -> None:
    """Smooth points: e equals the derivative. At a kink (a max of two tied branches), e is one of the one-sided
    derivatives, so it lies between them."""
    lo, hi = sorted((forward, backward))
    assert lo - 2e-3 - 2e-3 * abs(lo) <= e <= hi + 2e-3 + 2e-3 * abs(hi), (where, e, forward, backward)


def _random_report(seed: int) -> tuple[dict, nn.Module, torch.Tensor, lipgraph.Report] | None:
    spec = _spec(seed)
    model, x = build(spec)
    report = lipgraph.analyze(model, x, norm=norm_value(spec), lower=False)
    if not 0 < report.bound.value < math.inf:
        return None
    return spec, model, x, report


@pytest.mark.parametrize("seed", SEEDS)
def test_elasticities_match_finite_differences_of_the_formulas(seed: int) -> None:
    found = _random_report(seed)
    if found is None:
        pytest.skip("bound is 0 or unbounded")
    report = found[3]
    f, root = report.formulas, report.tree.expr
    for s, e in f.elasticities(root).items():
        forward, backward = _finite_difference(lambda c: f.with_overrides({s: f.value(s) * c}).evaluate(root), 1e-6)
        _assert_subgradient(e, forward, backward, f.names[s])


@pytest.mark.parametrize("seed", SEEDS)
def test_layer_elasticities_match_reanalysis_with_scaled_weights(seed: int) -> None:
    found = _random_report(seed)
    if found is None:
        pytest.skip("bound is 0 or unbounded")
    spec, model, x, report = found
    expected = layer_elasticities(report)
    checked = 0
    for path, module in model.named_modules():
        if not isinstance(module, SCALED):
            continue
        weight = module.weight.detach().clone()

        def bound(scale: float) -> float:
            with torch.no_grad():
                module.weight.copy_(weight * scale)
            return lipgraph.analyze(model, x, norm=norm_value(spec), lower=False).bound.value

        try:
            forward, backward = _finite_difference(bound, 1e-3)
        finally:
            with torch.no_grad():
                module.weight.copy_(weight)
        _assert_subgradient(expected.get(path, 0.0), forward, backward, path)
        checked += 1
    assert checked or not any(isinstance(m, SCALED) for m in model.modules())
