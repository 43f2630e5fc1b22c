"""Power iteration for the ℓ2 norm of a linear map (Scaman & Virmaux 2018, Alg. 1; docs/mathematics.md §3).

v ← ∇_v ½‖A v‖² = AᵀA v, normalised. For a unit v, √‖AᵀA v‖ ≤ ‖AᵀA‖^{1/2} = ‖A‖₂, so every iterate is a lower
bound that converges to ‖A‖₂ **from below** (linearly, at rate (σ₂/σ₁)²). It is not a certificate: a finite
number of matrix-vector products cannot bound ‖A‖ from above (Kuczyński & Woźniakowski 1992), so the result
is labelled an estimate.
"""
from __future__ import annotations

import math

import torch
from torch.func import vjp

from lipgraph.bound import Bound, estimate
from lipgraph.linalg.dense import LinearMap


def power_iteration(
    fn: LinearMap,
    in_shape: tuple[int, ...],
    *,
    iters: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    v0: torch.Tensor | None = None,
) -> tuple[Bound, torch.Tensor]:
    """Estimate ‖A‖₂ of the linear map ``fn`` (batched on ``(B, *in_shape)``) in float64.

    Stops after ``iters`` steps or when the estimate changes by less than ``tol`` (relative). Returns the
    estimate and the last unit vector (shape ``in_shape``), usable as ``v0`` to warm-start a later call.
    """
    if v0 is None:
        v = torch.randn(in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    else:
        v = v0.detach().to(torch.float64).reshape(in_shape).clone()
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iters):
        out, pullback = vjp(fn, v.unsqueeze(0))
        (g,) = pullback(out)  # AᵀA v
        g = g.squeeze(0).detach()
        g_norm = g.norm().item()
        previous, sigma = sigma, math.sqrt(g_norm)
        if g_norm == 0.0:
            break
        v = g / g_norm
        if abs(sigma - previous) <= tol * sigma:
            break
    return estimate(sigma, "power-iteration"), v
