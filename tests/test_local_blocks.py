"""Blocks that are not globally Lipschitz get certified local bounds on the image box [0, 1]^d, above the Jacobian
norm at sampled points of the box (issue #15)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import lipgraph
from lipgraph.errors import NotLipschitzError
from tests.fixtures.local_blocks import blocks

BLOCKS = blocks()


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_is_bounded_on_the_box_and_above_sampled_jacobians(name):
    model, shape = BLOCKS[name]
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    region = lipgraph.Box(0.0, 1.0)
    report = lipgraph.analyze(model, x, region=region)
    assert report.kind is lipgraph.Kind.CERTIFIED and math.isfinite(report.bound.value)
    try:  # ConvNeXt is globally Lipschitz (LayerNorm: max|γ|/√ε); the others are not
        assert report.bound.value <= lipgraph.analyze(model, x, lower=False).bound.value
    except NotLipschitzError:
        assert name != "convnext-block"
    assert report.lower.value <= report.bound.value
    net = copy.deepcopy(model).double()
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        z = region.sample(x, gen)
        J = torch.autograd.functional.jacobian(lambda t: net(t).reshape(-1), z).reshape(-1, z.numel())
        assert torch.linalg.matrix_norm(J, 2).item() <= report.bound.value


def test_torchvision_stochastic_depth_is_the_identity_in_eval():
    ops = pytest.importorskip("torchvision.ops")
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), ops.StochasticDepth(0.2, "row")).eval()
    x = torch.rand(1, 4)
    plain = lipgraph.analyze(block[0], x, lower=False).bound.value
    assert lipgraph.analyze(block, x, lower=False).bound.value == pytest.approx(plain)
    assert lipgraph.analyze(block, x, region=lipgraph.Box(0, 1), lower=False).bound.value <= plain * (1 + 1e-9)


def test_stochastic_depth_rule_with_a_stand_in_for_torchvision(monkeypatch):
    """The rule module's registration path, with a module standing in for torchvision.ops (not installed in CI)."""
    import sys
    import types

    from lipgraph import registry as registry_module
    from lipgraph.rules import stochastic_depth as rule_module

    def stochastic_depth(input, p, mode, training=True):  # noqa: A002 - torchvision's signature
        return input if not training or p == 0 else input * torch.bernoulli(torch.full_like(input, 1 - p)) / (1 - p)

    registry = registry_module.default_registry().copy()  # built before the stand-in exists
    fake = types.ModuleType("torchvision.ops")
    fake.stochastic_depth = stochastic_depth
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.ops", fake)
    rule_module.register(registry)
    monkeypatch.setattr(registry_module, "_DEFAULT", registry)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return x + stochastic_depth(self.fc(x), 0.2, "row", self.training)

    block, x = Block().eval(), torch.rand(1, 4)
    plain = 1 + lipgraph.analyze(block.fc, x, lower=False).bound.value
    assert lipgraph.analyze(block, x, lower=False).bound.value <= plain * (1 + 1e-9)
    assert lipgraph.analyze(block, x, region=lipgraph.Box(0, 1), lower=False).bound.value <= plain * (1 + 1e-9)
    assert lipgraph.analyze(block.train(), x, lower=False).bound.value <= plain * (1 + 1e-9)  # analysed in eval
