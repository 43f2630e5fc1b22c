"""Norms of linear maps with nonnegative matrix entries, without materialising them.

Pooling (average/sum), nearest/bilinear upsampling and window-count operators have A ≥ 0 entrywise, so
‖A‖∞ = max row sum = max(A·1) and ‖A‖₁ = max column sum = max(Aᵀ·1): one forward pass and one vjp.
For ℓ2, the Schur test / Riesz–Thorin interpolation gives ‖A‖₂ ≤ √(‖A‖₁‖A‖∞) (docs/mathematics.md §2, AvgPool row;
Horn & Johnson, *Matrix Analysis*, Cor. 5.6.14). The caller vouches for A ≥ 0: on a signed matrix the sums
below are not the norms.
"""
from __future__ import annotations

import math

import torch
from torch.func import vjp

from lipgraph.bound import FLOAT_MARGIN, Bound, certified
from lipgraph.linalg.dense import LinearMap


def row_sum_max(fn: LinearMap, in_shape: tuple[int, ...]) -> Bound:
    """‖A‖∞ = max_i Σ_j A_ij of a nonnegative linear map (exact): the largest entry of ``fn(1)``."""
    with torch.no_grad():
        value = fn(torch.ones(1, *in_shape, dtype=torch.float64)).max().item()
    return certified(value, "row-sum", exact=True, margin=FLOAT_MARGIN)


def col_sum_max(fn: LinearMap, in_shape: tuple[int, ...]) -> Bound:
    """‖A‖₁ = max_j Σ_i A_ij of a nonnegative linear map (exact): the largest entry of ``Aᵀ·1`` (one vjp)."""
    out, pullback = vjp(fn, torch.zeros(1, *in_shape, dtype=torch.float64))
    (cols,) = pullback(torch.ones_like(out))
    return certified(cols.max().item(), "col-sum", exact=True, margin=FLOAT_MARGIN)


def schur_bound(fn: LinearMap, in_shape: tuple[int, ...]) -> Bound:
    """Certified ‖A‖₂ ≤ √(‖A‖₁ ‖A‖∞) for a nonnegative linear map (Schur test); not exact in general."""
    value = math.sqrt(row_sum_max(fn, in_shape).value * col_sum_max(fn, in_shape).value)
    return certified(value, "schur")
