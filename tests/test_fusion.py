"""Linear-chain fusion: the fused bound of a chain equals its exact composed norm (small sizes) and is never
below it; AutoLip uses it only where it is tighter than the product."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipgraph


def _bn(c: int, dims: int = 2) -> nn.Module:
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims](c)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)  # signed scales: folding must keep the sign per channel
        bn.running_var.uniform_(0.2, 3)
        bn.running_mean.normal_()
    return bn.eval()


def _exact_norm(model: nn.Module, x: torch.Tensor, p: float = 2) -> float:
    model = model.double().eval()
    jac = torch.autograd.functional.jacobian(model, x.double()).reshape(-1, x.numel())
    if p == 2:
        return torch.linalg.matrix_norm(jac, 2).item()
    return (jac.abs().sum(1) if math.isinf(p) else jac.abs().sum(0)).max().item()


def _fused(report: lipgraph.Report) -> float:
    """The fused chain's bound; a chain whose fused norm equals the product (within rounding) is not shown,
    and then the network's bound is that product."""
    chains = [node.fused for node in report.tree.walk() if node.fused]
    assert len(chains) <= 1, f"expected at most one fused chain, got {chains}"
    return chains[0].bound.value if chains else report.bound.value


CHAINS = {
    "conv-bn": lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _bn(4)),
    "conv-bn-strided": lambda: nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), _bn(4)),
    "grouped-conv-bn": lambda: nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2), _bn(6)),
    "depthwise-conv-bn": lambda: nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), _bn(4)),
    "bn-conv": lambda: nn.Sequential(_bn(3), nn.Conv2d(3, 4, 3, padding=1)),
    "bn-grouped-conv": lambda: nn.Sequential(_bn(4), nn.Conv2d(4, 6, 3, padding=1, groups=2)),
    "convT-bn": lambda: nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), _bn(4)),
    "bn-grouped-convT": lambda: nn.Sequential(_bn(4), nn.ConvTranspose2d(4, 6, 3, padding=1, groups=2)),
    "convT-grouped-bn": lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, padding=1, groups=2), _bn(6)),
    "conv-bn-dropout": lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _bn(4), nn.Dropout()),
    "conv-avgpool": lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(2)),
    "bn-conv-bn": lambda: nn.Sequential(_bn(3), nn.Conv2d(3, 4, 3, padding=1), _bn(4)),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
@pytest.mark.parametrize("p", [2, 1, math.inf], ids=["l2", "l1", "linf"])
def test_fused_conv_chain_is_its_exact_norm(name: str, p: float) -> None:
    torch.manual_seed(0)
    model, x = CHAINS[name]().eval(), torch.randn(1, 3 if name[:2] in ("co", "bn") and "group" not in name
                                                    and "convT-g" not in name else 4, 6, 6)
    report = lipgraph.analyze(model, x, norm=p, lower=False)
    exact = _exact_norm(model, x, p)
    assert report.bound.value >= exact * (1 - 1e-6)
    fused = _fused(report)
    assert fused >= exact * (1 - 1e-6)
    assert fused == pytest.approx(exact, rel=1e-4)  # small sizes: conv norms and folds are exact


@pytest.mark.parametrize("order", ["linear-bn", "bn-linear", "linear-linear"])
def test_fused_dense_chain(order: str) -> None:
    torch.manual_seed(1)
    layers = {"linear-bn": [nn.Linear(5, 4), _bn(4, 1)], "bn-linear": [_bn(5, 1), nn.Linear(5, 4)],
              "linear-linear": [nn.Linear(5, 6), nn.Linear(6, 3)]}[order]
    model, x = nn.Sequential(*layers).eval(), torch.randn(1, 5)
    report = lipgraph.analyze(model, x, lower=False)
    assert _fused(report) == pytest.approx(_exact_norm(model, x), rel=1e-5)  # certified margins are 1e-6
    assert report.bound.value == pytest.approx(_exact_norm(model, x), rel=1e-5)


def test_linear_on_3d_input_does_not_fold_batchnorm1d_on_the_wrong_axis() -> None:
    torch.manual_seed(2)
    model, x = nn.Sequential(nn.Linear(4, 4), _bn(4, 1)).eval(), torch.randn(1, 4, 4)  # BN1d scales dim 1
    report = lipgraph.analyze(model, x, lower=False)
    assert report.bound.value >= _exact_norm(model, x) * (1 - 1e-6)


def test_fusion_never_loosens_and_stops_at_nonlinearities() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _bn(4), nn.ReLU(), nn.Conv2d(4, 2, 3), _bn(2)).eval()
    report = lipgraph.analyze(model, torch.randn(1, 3, 6, 6), lower=False)
    chains = [node.fused.members for node in report.tree.walk() if node.fused]
    assert chains == [["0", "1"], ["3", "4"]], chains
    product = math.prod(c.bound.value for c in report.tree.children)
    assert report.bound.value < product


POOLED = {  # global average pooling, then dense layers: folded as W·mean, with no dense operator
    "pool-flatten-linear": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)),
    "pool-flatten-linear-bn": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5),
                                                    _bn(5, 1)),
    "pool-flatten-linear-linear": lambda: nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                                                        nn.Linear(4, 6), nn.Linear(6, 3)),
    "pool1d-flatten-linear": lambda: nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 5)),
}


@pytest.mark.parametrize("name", sorted(POOLED))
@pytest.mark.parametrize("p", [2, 1, math.inf], ids=["l2", "l1", "linf"])
def test_global_pool_then_linear_folds_to_its_exact_norm(name: str, p: float, monkeypatch) -> None:
    from lipgraph.passes import fuse
    monkeypatch.setattr(fuse, "_dense", lambda *a: pytest.fail("the pooled chain must fold, not materialise"))
    torch.manual_seed(4)
    model = POOLED[name]().eval()
    x = torch.randn(1, 4, 5) if "1d" in name else torch.randn(1, 4, 3, 5)  # 15 positions: ‖W‖₂/√15
    report = lipgraph.analyze(model, x, norm=p, lower=False)
    exact = _exact_norm(model, x, p)
    fused = _fused(report)
    assert fused >= exact * (1 - 1e-12)
    assert fused == pytest.approx(exact, rel=1e-5)  # certified margins are 1e-6
    assert report.bound.value >= exact * (1 - 1e-12)


def test_pool_not_to_one_position_does_not_fold() -> None:
    """AdaptiveAvgPool2d(2) keeps 4 positions per channel: no channel-mean structure; the bound stays sound."""
    torch.manual_seed(5)
    model, x = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).eval(), torch.randn(1, 4, 4, 4)
    report = lipgraph.analyze(model, x, lower=False)
    assert report.bound.value >= _exact_norm(model, x) * (1 - 1e-12)
    assert all("channel means" not in node.fused.bound.method for node in report.tree.walk() if node.fused)
