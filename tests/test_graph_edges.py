"""Graph edge cases: dead branches do not count, integer index outputs are refused where they are used."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipgraph


class _UnusedIndices(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = F.max_pool1d(x, 2, return_indices=True)
        _debug = indices.float() * 1e9  # never reaches the output
        return values


class _UsedIndices(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = F.max_pool1d(x, 2, return_indices=True)
        return values + indices


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_results_that_never_reach_the_output_do_not_count(frontend: str) -> None:
    report = lipgraph.analyze(_UnusedIndices(), torch.randn(1, 2, 6), frontend=frontend, lower=False)
    assert report.bound.value == pytest.approx(1.0)


def test_integer_indices_on_the_output_path_are_refused() -> None:
    with pytest.raises(lipgraph.NotLipschitzError, match="integer indices"):
        lipgraph.analyze(_UsedIndices(), torch.randn(1, 2, 6), lower=False)
