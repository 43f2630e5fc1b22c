"""In-place ops: the graph computes what the code computes (lipgraph/frontend/inplace.py), and propagation
never overwrites the constants that rules read."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lipgraph


class Updated(nn.Module):
    """y = 2x, then y.mul_(3) whose result is unused: the output is 6x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        y.mul_(3)
        return y


class InPlaceModule(nn.Module):
    """relu(inplace=True) rewrites x: x + relu(x) reads the updated x, so the output is 2·relu(x) (L = 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1
        y = self.relu(x)
        return x + y


class ConstantUpdated(nn.Module):
    """c·x computed as c.clone().mul_(x): L = max |c| = 2, whatever the example input."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("c", torch.full((1, 3), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c.clone().mul_(x)


class ViewUpdated(nn.Module):
    """An update through a view changes its base, which the graph does not connect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1
        y.view(-1).mul_(3)
        return y


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("model, expected", [(Updated(), 6.0), (InPlaceModule(), 2.0), (ConstantUpdated(), 2.0)])
def test_in_place_updates_are_followed(model: nn.Module, expected: float, frontend: str) -> None:
    report = lipgraph.analyze(model, torch.full((1, 3), 0.1), frontend=frontend, lower=False, cache=False, quiet=True)
    assert report.bound.value == pytest.approx(expected)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_in_place_update_of_a_view_is_refused(frontend: str) -> None:
    with pytest.raises(lipgraph.TraceError, match=r"shares storage with another one \(a view\) read afterwards.*"
                                                  r"Write the update out of place"):
        lipgraph.analyze(ViewUpdated(), torch.ones(1, 3), frontend=frontend, lower=False, cache=False, quiet=True)
