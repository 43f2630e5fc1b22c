"""Casts (``x.float()``, ``x.to(dtype)``, ``x.cpu()``) and arguments that give only a shape or dtype
(``x.view_as(y)``, ``torch.zeros_like(y)``, ``y.new_zeros(…)``): bounded at the dense Jacobian's norm, in both
frontends; casts to integer or bool dtypes are declined with their reason."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lipgraph
from tests.fixtures.jacobian import jacobian_norm


class Apply(nn.Module):
    """x ↦ fn(x)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Twice(nn.Module):
    """f(x[:, :4]·3, y) with y = 2x input-dependent: f uses y's metadata only (or, for type_as, its dtype)."""

    def __init__(self, f) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        return self.f(x[:, :4] * 3, y)


SHAPE_ONLY = {  # f(a, y) and its exact constant in x (ℓ2), a = 3·x[:, :4]
    "view_as": (lambda a, y: a.view_as(y), 3.0),
    "reshape_as": (lambda a, y: a.reshape_as(y), 3.0),
    "expand_as": (lambda a, y: a[:, :1].expand_as(y), 6.0),  # one coordinate copied 4 times: 3·√4
    "type_as": (lambda a, y: a.type_as(y), 3.0),
    "to_other": (lambda a, y: a.to(y), 3.0),  # x.to(y): y's dtype and device (fx keeps y as an argument)
    "zeros_like": (lambda a, y: a + torch.zeros_like(y), 3.0),
    "full_like": (lambda a, y: a + torch.full_like(y, 5.0), 3.0),
    "new_zeros": (lambda a, y: a + y.new_zeros(y.shape), 3.0),
    "new_full": (lambda a, y: a + y.new_full((1, 4), 2.0), 3.0),
}


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("name", list(SHAPE_ONLY))
def test_metadata_arguments_are_not_inputs(name: str, frontend: str) -> None:
    fn, constant = SHAPE_ONLY[name]
    model, x = Twice(fn), torch.randn(1, 4)
    report = lipgraph.analyze(model, x, frontend=frontend, lower=False, cache=False, quiet=True)
    assert report.bound.value == pytest.approx(constant, rel=1e-6)
    assert report.bound.value >= jacobian_norm(model, x) * (1 - 1e-6)


CASTS = [lambda x: x.float(), lambda x: x.double(), lambda x: x.to(torch.float64), lambda x: x.to("cpu"),
         lambda x: x.type(torch.float64), lambda x: x.half().float()]


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("cast", range(len(CASTS)))
def test_floating_point_casts_are_the_identity(cast: int, frontend: str) -> None:
    model = Apply(lambda x: CASTS[cast](x * 2))
    report = lipgraph.analyze(model, torch.randn(1, 3), frontend=frontend, lower=False, cache=False, quiet=True)
    assert report.bound.value == pytest.approx(2.0)
    local = lipgraph.analyze(model, torch.randn(1, 3), frontend=frontend, lower=False, cache=False, quiet=True,
                             region=lipgraph.Box(-1, 1))
    assert local.bound.value == pytest.approx(2.0)


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("spelling, dtype", [(lambda x: x.long(), "torch.int64"), (lambda x: x.bool(), "torch.bool"),
                                             (lambda x: x.to(torch.int32), "torch.int32")])
def test_integer_casts_are_declined_with_their_reason(spelling, dtype: str, frontend: str) -> None:
    with pytest.raises(lipgraph.UnsupportedOpsError) as info:
        lipgraph.analyze(Apply(spelling), torch.randn(1, 3), frontend=frontend, lower=False, cache=False, quiet=True)
    assert "its rule has no constant here: op 'cast' " in str(info.value)
    assert f"a cast to {dtype} rounds or thresholds the values (a step function); no rule bounds what uses it" \
        in str(info.value)


VALUE_READS = {  # a Python number read from the values of an input-dependent tensor; true ℓ2 constants ≥ 7
    "item": lambda x: x + (x[:, 0] * 7).sum().item(),
    "full_like": lambda x: torch.full_like(x, (x[0, 0] * 7).item()),
    "scale": lambda x: x * (x[0, 0] * 7).item(),  # not even Lipschitz
}


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("name", list(VALUE_READS))
def test_numbers_read_from_input_dependent_values_are_refused(name: str, frontend: str) -> None:
    """Recorded as a constant, such a number hid the dependence (``x + x[0].item()`` certified 1)."""
    with pytest.raises(lipgraph.TraceError) as info:
        lipgraph.analyze(Apply(VALUE_READS[name]), torch.randn(1, 3), frontend=frontend, lower=False, cache=False,
                         quiet=True)
    assert "reads the values of an input-dependent tensor as a Python number" in str(info.value)
    assert "Keep it a tensor (x.sum() instead of x.sum().item()" in str(info.value)
