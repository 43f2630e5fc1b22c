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
