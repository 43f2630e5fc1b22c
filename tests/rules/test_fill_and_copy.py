"""``torch.full(size, t)`` with an input-dependent t, and ``dst.copy_(src)`` ("preallocate, then fill"): the output
is the source broadcast to the output's shape (rules/structural.py ``full``, ``copy``), bounded at the dense
Jacobian's norm in ℓ1, ℓ2, ℓ∞."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipgraph
from tests.fixtures.jacobian import jacobian_norm
from tests.rules.test_casts_and_shape_args import Apply

NORMS = (1, 2, math.inf)


def _analyze(model: nn.Module, x: torch.Tensor, p: float = 2, frontend: str = "fx") -> lipgraph.Report:
    return lipgraph.analyze(model, x, norm=p, frontend=frontend, lower=False, cache=False, quiet=True)


FILLS = {  # torch.full with a fill value computed from x, and the same function written differentiably
    "full": (lambda x: torch.full((2, 3), (2 * x).sum()), lambda x: (2 * x).sum().expand(2, 3)),
    "full_like": (lambda x: torch.full_like(x, x[0, 1]), lambda x: x[0, 1].expand(1, 4)),
    "new_full": (lambda x: x.new_full((5,), x.mean()), lambda x: x.mean().expand(5)),
}


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("name", list(FILLS))
def test_a_fill_value_from_the_input_is_broadcast(name: str, p: float) -> None:
    """torch.full reads t as a number, so autograd sees no dependence: the Jacobian is the differentiable twin's,
    which computes the same values."""
    fill, twin = FILLS[name]
    x = torch.randn(1, 4)
    assert torch.equal(fill(x), twin(x))
    report = _analyze(Apply(fill), x, p)
    assert report.bound.value == pytest.approx(jacobian_norm(Apply(twin), x, p), rel=1e-6)


def test_a_fill_value_read_by_export_is_refused_with_the_remedy() -> None:
    with pytest.raises(lipgraph.TraceError, match=r"^%item .* reads the values of an input-dependent tensor as a "
                                                  r"Python number \(float\); lipgraph cannot follow a dependence "
                                                  r"through it\. Keep it a tensor"):
        _analyze(Apply(FILLS["full"][0]), torch.randn(1, 4), frontend="export")


def _overwritten(x: torch.Tensor) -> torch.Tensor:
    y = x * 5  # input-dependent, then overwritten entirely
    y.copy_(3 * x[:, :1])
    return y


COPIES = {  # dst.copy_(src): src broadcast to dst's shape
    "zeros_like": lambda x: torch.zeros_like(x).copy_(2 * x),
    "broadcast": lambda x: x.new_zeros((3, 4)).copy_(x),
    "into_input_dependent": _overwritten,
}


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("name", list(COPIES))
def test_a_copy_is_its_source_broadcast(name: str, p: float, frontend: str) -> None:
    model, x = Apply(COPIES[name]), torch.randn(1, 4)
    report = _analyze(model, x, p, frontend)
    assert report.bound.value == pytest.approx(jacobian_norm(model, x, p), rel=1e-6)


def test_a_copy_into_an_integer_tensor_is_declined() -> None:
    model = Apply(lambda x: torch.zeros(1, 4, dtype=torch.long).copy_(x).float())
    with pytest.raises(lipgraph.UnsupportedOpsError, match=r"a copy to torch.int64 rounds or thresholds the values "
                                                           r"\(a step function\); no rule bounds what uses it"):
        _analyze(model, torch.randn(1, 4))


def _preallocated(make):
    def fill(x: torch.Tensor) -> torch.Tensor:
        out = make(x)
        out.copy_(x)
        return out

    return fill


def test_a_copy_into_a_tensor_made_without_the_input_names_the_remedy() -> None:
    """fx turns torch.zeros(2, 3) into a constant, whose update it cannot follow; made from x, it traces."""
    x = torch.randn(1, 3)
    with pytest.raises(lipgraph.TraceError, match=r"^%copy_ .* writes input-dependent values into the attribute "
                                                  r"_tensor_constant0 in place; its later reads, and what torch.fx "
                                                  r"computed from it while tracing, do not see the update \(a tensor "
                                                  r"made in forward without the input, which torch.fx turns into a "
                                                  r"constant: make it from the input, e.g. torch.zeros_like\(x\) or "
                                                  r"x.new_zeros\(size\), and fx traces the update\); lipgraph cannot"):
        _analyze(Apply(_preallocated(lambda x: torch.zeros(2, 3))), x)
    remedied = _analyze(Apply(_preallocated(lambda x: x.new_zeros((2, 3)))), x)
    assert remedied.bound.value == pytest.approx(math.sqrt(2))


def test_the_lower_bound_of_a_model_computing_in_float32_allows_for_float32_rounding() -> None:
    """torch.zeros(2, 3) stays float32 in the float64 copy of the model: its quotients carry float32 error (the
    lower bound exceeded the exact √2 before)."""
    report = lipgraph.analyze(Apply(lambda x: torch.zeros(2, 3).copy_(x)), torch.randn(1, 3), frontend="export",
                              cache=False, quiet=True)
    assert report.bound.value == pytest.approx(math.sqrt(2))
    assert 0.99 * math.sqrt(2) <= report.lower.value <= report.bound.value
