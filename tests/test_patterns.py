"""Subgraph patterns and joint transfers (lipgraph/frontend/patterns.py, rules/pattern_*.py): each compound against
dense Jacobians, shown as one node; look-alikes that must not match keep the generic rules."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipgraph
from lipgraph import ir
from lipgraph.passes.annotate import annotate
from lipgraph.passes.autolip import autolip
from lipgraph.record import record
from tests.test_by_construction import worst_jacobian

NORMS = (2, 1, math.inf)


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def halves_maxmin(z):
    a, b = z.split(z.shape[1] // 2, 1)
    return torch.cat([torch.max(a, b), torch.min(a, b)], dim=1)


def sliced_minmax(z):
    a, b = z[:, :4], z[:, 4:]
    return torch.cat([torch.minimum(a, b), torch.maximum(a, b)], dim=0)


def groupsort2(z):
    r = z.view(1, 4, 2)
    return torch.cat([torch.min(r, 2, keepdim=True)[0], torch.max(r, 2, keepdim=True)[0]], 2).view(1, 8)


def amin_amax(z):
    r = z.view(1, 2, 4)
    return torch.cat([r.amax(2, keepdim=True), r.amin(2, keepdim=True)], 1).flatten(1)


def posneg(z):
    return torch.cat([F.relu(-z), F.relu(z)], 1)


def lp_pool(z):
    return F.lp_pool2d(z, 2, 2)


def lp_pool_by_hand(z):
    return torch.sqrt(F.avg_pool2d(z ** 2, 2)) * 2.0


def lp_pool_overlapping(z):
    return F.avg_pool2d(z * z, 3, 1).sqrt()


COMPOUNDS = [  # (fn, input shape, op key of the compound, its ℓ2 constant)
    (halves_maxmin, (1, 8), "maxmin", 1.0),
    (sliced_minmax, (1, 8), "maxmin", 1.0),
    (groupsort2, (1, 8), "groupsort", 1.0),
    (amin_amax, (1, 8), "groupsort", 1.0),
    (posneg, (1, 6), "posneg", 1.0),
    (lp_pool, (1, 2, 4, 4), "lp_pool2d", 1.0),  # F.lp_pool2d is recorded as one call: the LPPool rule
    (lp_pool_by_hand, (1, 2, 4, 4), "lp_norm_pool", 1.0),
    (lp_pool_overlapping, (1, 1, 5, 5), "lp_norm_pool", 1.0),
]


@pytest.mark.parametrize("fn, shape, key, l2", COMPOUNDS, ids=[c[0].__name__ for c in COMPOUNDS])
def test_compound_against_dense_jacobian_and_shown_as_one_node(fn, shape, key, l2):
    model = nn.Sequential(Fn(fn)).eval()
    x = torch.randn(shape)
    for p in NORMS:
        report = lipgraph.analyze(model, x, norm=p, lower=False, quiet=True)
        truth = worst_jacobian(model, x, p)
        assert truth * (1 - 1e-6) <= report.bound.value <= truth * (1 + 1e-3) + 1e-9, (p, report.bound.value, truth)
        if p == 2:
            assert report.bound.value == pytest.approx(l2)
    ops = [n.op for n in report.tree.walk() if n.op is not None]
    assert key in ops and not {"max", "maximum", "min", "minimum", "relu", "sqrt", "pow"} & set(ops), ops


def overlapping_pieces(z):
    a, b = z[:, :5], z[:, 3:]
    return torch.cat([torch.minimum(a, b), torch.maximum(a, b)], dim=1)


def max_with_constant(z):
    return torch.cat([torch.max(z, torch.zeros(1, 8)), torch.min(z, torch.ones(1, 8))], 1)


def shuffled_concat(z):  # the max twice: (x, x)-like, √2 in ℓ2
    r = z.view(1, 4, 2)
    top = torch.max(r, 2, keepdim=True)[0]
    return torch.cat([top, top], 2).view(1, 8)


def groups_of_one(z):  # min = max = x over groups of 1: (x, x)
    r = z.view(1, 8, 1)
    return torch.cat([torch.min(r, 2, keepdim=True)[0], torch.max(r, 2, keepdim=True)[0]], 2).view(1, 16)


NEAR_MISSES = [(overlapping_pieces, 2.0), (max_with_constant, math.sqrt(2)), (shuffled_concat, math.sqrt(2)),
               (groups_of_one, math.sqrt(2))]


@pytest.mark.parametrize("fn, l2", NEAR_MISSES, ids=[c[0].__name__ for c in NEAR_MISSES])
def test_look_alikes_keep_the_generic_rules(fn, l2):
    model = nn.Sequential(Fn(fn)).eval()
    x = torch.randn(1, 8)
    report = lipgraph.analyze(model, x, lower=False, quiet=True)
    assert report.bound.value == pytest.approx(l2)
    assert report.bound.value >= worst_jacobian(model, x, 2) * (1 - 1e-6)
    assert not {"maxmin", "groupsort"} & {n.op for n in report.tree.walk()}


def test_a_square_without_its_pooling_and_root_stays_refused():
    model = nn.Sequential(Fn(lambda z: F.avg_pool2d(z ** 2, 2))).eval()
    with pytest.raises(lipgraph.NotLipschitzError, match=r"x\^2 is not globally Lipschitz"):  # never a stub
        lipgraph.analyze(model, torch.randn(1, 1, 4, 4), lower=False, quiet=True)


def test_odd_power_pooling_is_not_matched():
    model = nn.Sequential(Fn(lambda z: F.lp_pool1d(z, 3, 2))).eval()
    with pytest.raises(lipgraph.LipgraphError):
        lipgraph.analyze(model, torch.randn(1, 1, 8), lower=False, quiet=True)


# -- joint transfers -------------------------------------------------------------------------------------------
def max_of_halves(z):
    a, b = z.chunk(2, 1)
    return torch.maximum(a, b)


def swap_halves(z):
    a, b = z.chunk(2, 1)
    return torch.cat([b, a], 1)


def duplicate_half(z):
    a, _ = z.chunk(2, 1)
    return torch.cat([a, a], 1)


@pytest.mark.parametrize("fn, expected", [(max_of_halves, {2: 1.0, 1: 1.0, math.inf: 1.0}),
                                          (swap_halves, {2: 1.0, 1: 1.0, math.inf: 1.0}),
                                          (duplicate_half, {2: math.sqrt(2), 1: 2.0, math.inf: 1.0})])
def test_joint_ops_on_disjoint_pieces_of_one_tensor(fn, expected):
    model = nn.Sequential(Fn(fn)).eval()
    x = torch.randn(1, 8)
    for p, value in expected.items():
        report = lipgraph.analyze(model, x, norm=p, lower=False, quiet=True)
        assert report.bound.value == pytest.approx(value)
        assert report.bound.value >= worst_jacobian(model, x, p) * (1 - 1e-6)


# -- registration ----------------------------------------------------------------------------------------------
def double_negation(anchor, view):
    """neg(neg(x)): the identity."""
    if view.key(anchor) != "neg" or view.key(anchor.args[0]) != "neg":
        return None
    return lipgraph.Match(nodes=[anchor.args[0], anchor])


def test_user_pattern_registers_like_a_rule():
    registry = lipgraph.default_registry().copy()
    pattern = lipgraph.Pattern("double_negation", "DoubleNegation", double_negation,
                               lambda ctx: lipgraph.exact(1.0, "identity"))
    registry.register_pattern(pattern)
    model = nn.Sequential(Fn(lambda z: -(-z) * 3.0)).eval()
    lg = ir.build(model, (torch.randn(1, 4),), registry)
    annotate(lg, registry, 2)
    assert [record(n).key for n in lg.ops()] == ["double_negation", "mul"]
    assert autolip(lg, 2).value == pytest.approx(3.0)
    with pytest.raises(lipgraph.RuleError, match="a pattern named 'double_negation' is already registered"):
        registry.register_pattern(pattern)


def test_rules_command_lists_patterns_and_library_rules():
    def rules(*argv: str) -> str:
        return subprocess.run([sys.executable, "-m", "lipgraph", "rules", *argv], capture_output=True, text=True,
                              env={"COLUMNS": "250", "PATH": ""}, check=True).stdout

    out = rules()  # grouped by family: keys and descriptions; `--op` shows a rule's spellings and patterns
    for text in ("maxmin", "lp_norm_pool", "residual_sigma", "lp_pool2d",
                 "deel.torchlip.modules.activation.GroupSort2", "orthogonium.layers.custom_activations.MaxMin"):
        assert text in out, text
    assert "pattern MaxMin" in rules("--op", "maxmin")
    assert "op key:      deel.torchlip.modules.activation.GroupSort2" in rules("--op", "GroupSort2")


def test_patterns_match_the_export_frontends_aten_graph():
    """torch.export decomposes LPPool into pow/avg_pool/sign/abs/relu/mul/pow and MaxMin into aten ops: the same
    patterns match (keys are canonical)."""
    model = nn.Sequential(nn.LPPool2d(2, 2), Fn(halves_maxmin), Fn(posneg)).eval()
    x = torch.randn(1, 4, 4, 4)
    report = lipgraph.analyze(model, x, frontend="export", lower=False, quiet=True)
    assert report.bound.value == pytest.approx(1.0)
    assert {"lp_norm_pool", "maxmin", "posneg"} <= {n.op for n in report.tree.walk()}
