"""An example lipgraph rule pack: two layers of Lipschitz-constrained networks, with rules by construction.

``pyproject.toml`` declares the entry point ``example = "lipgraph_example_rules:register"`` in the group
``lipgraph.rules``; lipgraph calls :func:`register` with its registry when it starts, so any model using these
layers is analysed with their rules (``lipgraph doctor`` lists the pack). A rule on a module class makes the module
one op of the traced graph (an fx leaf): lipgraph does not look inside it.
"""
from __future__ import annotations

import torch
from torch import nn

import lipgraph


class MaxMin(nn.Module):
    """GroupSort with groups of two (Anil, Lucas & Grosse, ICML 2019, §4): the channel halves (a, b) become
    (max(a, b), min(a, b)). On each linear piece this permutes coordinates, so it is 1-Lipschitz in every ℓp;
    traced op by op, AutoLip bounds the max, the min and their concatenation separately (2 in ℓ2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class OrthogonalLinear(nn.Module):
    """y = W x with W = exp(A − Aᵀ), orthogonal by construction (the exponential of a skew-symmetric matrix), so
    ‖W x‖₂ = ‖x‖₂."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.skew = nn.Parameter(torch.randn(features, features) / features)

    def weight(self) -> torch.Tensor:
        return torch.linalg.matrix_exp(self.skew - self.skew.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight().T


def maxmin(ctx: lipgraph.OpContext) -> lipgraph.Bound:
    """GroupSort: a permutation of coordinates on each linear piece, Lipschitz 1 in every ℓp."""
    return lipgraph.exact(1.0, "groupsort")


def orthogonal_linear(ctx: lipgraph.OpContext) -> lipgraph.Bound:
    """Orthogonal W: ‖W‖₂ = 1 exactly; in ℓ1 / ℓ∞ the max column / row abs sum of W (computed, certified)."""
    if ctx.norm == 2:
        return lipgraph.exact(1.0, "orthogonal by construction")
    w = ctx.module.weight().detach().double().abs()
    return lipgraph.certified((w.sum(0) if ctx.norm == 1 else w.sum(1)).max().item(), "abs sums", margin=1e-12)


def register(registry: lipgraph.Registry) -> None:
    """The entry point: lipgraph calls it with the registry to fill."""
    registry.register(MaxMin, maxmin, exact=True)
    registry.register(OrthogonalLinear, orthogonal_linear, affine=True)
