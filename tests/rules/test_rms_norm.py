"""RMSNorm (rules/normalization.py, rules/intervals.py, rules/local.py) against dense float64 Jacobians.

The global rule on the table of tests/rules/test_rules_dense.py; here: the worst case x = 0 in every norm (so a
bound 10 % smaller is unsound), torch's default ε, the local rule on a small box (sampled Jacobians ≤ the bound, and
the bound within 10 % of them), the interval rule (sampled outputs inside), and the hand-written form's refusal.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipgraph
from tests.test_local import check_intervals

NORMS = pytest.mark.parametrize("p", [2.0, 1.0, math.inf], ids=["l2", "l1", "linf"])


def _rms(n: int, eps: float | None = 1e-2, low: float = -1.5, high: float = 1.5) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.RMSNorm(n, eps=eps)
    with torch.no_grad():
        layer.weight.uniform_(low, high)
    return nn.Sequential(layer).eval()


def _jacobian(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    net = copy.deepcopy(model).double()
    return torch.autograd.functional.jacobian(lambda t: net(t).reshape(-1), z.double()).reshape(z.numel(), -1)


def _operator_norm(J: torch.Tensor, p: float) -> float:
    if p == 2:
        return float(torch.linalg.matrix_norm(J, 2))
    return float(J.abs().sum(1).max() if math.isinf(p) else J.abs().sum(0).max())


@NORMS
def test_global_bound_is_attained_within_its_factor_at_zero(p: float):
    """At x = 0, J = diag(w)/√ε: every ℓp norm is max|w|/√ε, within 10 % of the bound (n = 6)."""
    model = _rms(6)
    bound = lipgraph.analyze(model, torch.randn(1, 6), norm=p, lower=False).bound.value
    at_zero = _operator_norm(_jacobian(model, torch.zeros(1, 6)), p)
    assert at_zero == pytest.approx(float(model[0].weight.detach().abs().max()) / math.sqrt(1e-2), rel=1e-9)
    assert at_zero <= bound * (1 + 1e-9)
    assert bound * 0.9 < at_zero
    if p == 2:
        assert bound == pytest.approx(at_zero, rel=1e-9)


def test_default_eps_is_the_input_dtypes_machine_epsilon():
    model = _rms(3, eps=None)
    bound = lipgraph.analyze(model, torch.randn(1, 3), lower=False).bound.value
    expected = float(model[0].weight.detach().abs().max()) / math.sqrt(torch.finfo(torch.float32).eps)
    assert bound == pytest.approx(expected, rel=1e-9)


@NORMS
def test_local_bound_is_above_sampled_jacobians_and_within_10_percent(p: float):
    model = _rms(6, low=1.0)
    x = torch.randn(1, 6)
    region = lipgraph.Box(x - 0.02, x + 0.02)
    local = lipgraph.analyze(model, x, region=region, norm=p, quiet=True).bound.value
    glob = lipgraph.analyze(model, x, norm=p, lower=False).bound.value
    gen = torch.Generator().manual_seed(1)
    sampled = max(_operator_norm(_jacobian(model, region.sample(x, gen)), p) for _ in range(40))
    assert sampled <= local * (1 + 1e-9)
    assert local * 0.9 < sampled
    assert local <= glob


@pytest.mark.parametrize("radius", [0.05, 0.3, 3.0])
def test_interval_holds_sampled_values(radius: float):
    model = nn.Sequential(nn.Linear(5, 5), _rms(5)[0], nn.Linear(5, 2))
    x = torch.randn(1, 5)
    check_intervals(model, x, lipgraph.Box(x - radius, x + radius), samples=200)


def test_hand_written_rms_norm_is_refused_with_its_reasons():
    """x·rsqrt(mean(x²) + ε)·w is not matched as RMSNorm: its pieces are refused by name."""
    class HandWritten(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-2) * self.w

    with pytest.raises(lipgraph.NotLipschitzError, match=r"(?s)op 'pow'.*x\^2 is not globally Lipschitz.*"
                                                         r"op 'rsqrt'.*1/√x has an unbounded slope near 0"):
        lipgraph.analyze(HandWritten(), torch.randn(1, 4), lower=False)


def test_functional_and_module_spellings_agree():
    model = _rms(4)
    w = model[0].weight.detach()

    class Functional(nn.Module):
        def forward(self, x):
            return F.rms_norm(x, (4,), w, 1e-2)

    x = torch.randn(2, 4)
    for p in (2, 1, "inf"):
        a = lipgraph.analyze(model, x, norm=p, lower=False).bound.value
        b = lipgraph.analyze(Functional(), x, norm=p, lower=False).bound.value
        assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("layer, norm", [(nn.RMSNorm(4, eps=0.0), 2), (nn.RMSNorm(4, eps=0.0), "inf"),
                                         (nn.LayerNorm(4, eps=0.0), 2)])  # LayerNorm has no global ℓ∞ rule
def test_zero_eps_is_refused_as_not_lipschitz(layer, norm):
    """eps = 0: x / √(mean x²) has unbounded slope near 0 (was a RuleError wrapping a ZeroDivisionError)."""
    model = nn.Sequential(nn.Linear(4, 4), layer)
    with pytest.raises(lipgraph.NotLipschitzError, match=r"is not globally Lipschitz: eps = 0: the normalisation"):
        lipgraph.analyze(model, torch.randn(1, 4), norm=norm, lower=False, quiet=True, cache=False)


@pytest.mark.parametrize("norm", [1, 2, "inf"])
@pytest.mark.parametrize("layer", [nn.RMSNorm(4, eps=0.0), nn.LayerNorm(4, eps=0.0)])
def test_zero_eps_on_a_region_holding_a_zero_variance_input_is_refused(layer, norm):
    """Before: RMSNorm gave an 'unbounded' bound said to come from 'ops that have no rule', LayerNorm a RuleError
    wrapping a ZeroDivisionError."""
    with pytest.raises(lipgraph.NotLipschitzError, match="is not Lipschitz on the region: with eps = 0"):
        lipgraph.analyze(layer, torch.zeros(1, 4), norm=norm, lower=False, quiet=True, cache=False,
                         region=lipgraph.Ball(None, 0.1, norm=norm))
