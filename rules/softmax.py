"""Softmax, softmin and log-softmax along one dimension (docs/mathematics.md §2).

Notation: along the softmax dimension the input is a vector x ∈ ℝ^d, s = softmax(x) lies in the open simplex
(s_i > 0, Σ s_i = 1). The op acts on disjoint groups (one per position of the other dimensions), so its
Jacobian is block diagonal and its ℓp operator norm (p ∈ {1, 2, ∞}) is the largest norm of one block. Both maps
are C¹, so their Lipschitz constant is exactly sup_x ‖J(x)‖_p (mean-value inequality for ≤; a directional
derivative at the maximising point for ≥): a supremum that is only *approached* is still the exact constant.

**softmax**: J = diag(s) − s sᵀ, symmetric positive semidefinite. Row i has diagonal s_i(1 − s_i) and
off-diagonal absolute sum s_i Σ_{j≠i} s_j = s_i(1 − s_i), so
    ‖J‖∞ = ‖J‖₁ = max_i 2 s_i(1 − s_i) ≤ 1/2       (t(1 − t) ≤ 1/4),
    ‖J‖₂ = λ_max(J) ≤ max Gershgorin radius+centre = max_i 2 s_i(1 − s_i) ≤ 1/2.
Equality: s = (1/2, 1/2, 0, …) (approached by x = (0, 0, −t, …), t → ∞; attained for d = 2 at x₁ = x₂) gives
the block [[1/4, −1/4], [−1/4, 1/4]] (eigenvalue 1/2, row sums 1/2). So L = 1/2 in ℓ1, ℓ2, ℓ∞ (exact) for d ≥ 2;
d = 1: softmax ≡ 1, L = 0. softmin(x) = softmax(−x): the same constant. A temperature x/T is a separate
``div``/``mul`` node and is accounted for there.

**log_softmax**: J = I − 1 sᵀ, an idempotent (sᵀ1 = 1): the oblique projection onto s^⊥ along 1.
    ℓ2: for an idempotent P ∉ {0, I}, ‖P‖₂ = ‖I − P‖₂ (Szyld 2006), and ‖1 sᵀ‖₂ = ‖1‖₂‖s‖₂ = √d ‖s‖₂ < √d;
        s → e_i makes ‖s‖₂ → 1: L₂ = √d.
    ℓ∞: row i = e_iᵀ − sᵀ has absolute sum (1 − s_i) + Σ_{j≠i} s_j = 2(1 − s_i) < 2, → 2 as s_i → 0: L∞ = 2.
    ℓ1: column j has absolute sum (1 − s_j) + (d − 1) s_j = 1 + (d − 2) s_j, whose sup over s_j ∈ (0, 1) is
        max(1, d − 1): L₁ = max(1, d − 1).
All exact for d ≥ 2 (suprema, approached as one logit dominates); d = 1: log_softmax ≡ 0, L = 0.
(Nair 2025 and the older "softmax ≤ 1" line of work state the ℓ2 values; the ℓ1/ℓ∞ ones are the row/column sums.)
"""
from __future__ import annotations

import math

from torch import nn

from lipgraph.bound import exact
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer


def softmax_size(ctx: OpContext) -> int:
    """d: the size of the softmax dimension (torch's legacy implicit dim when ``dim=None``)."""
    shape = ctx.input.shape
    if isinstance(ctx.module, nn.Softmax2d):
        dim = -3
    else:
        dim = ctx.arg("dim", 1, None)
    if not shape:
        return 1
    if dim is None:  # torch.nn.functional._get_softmax_dim
        dim = 0 if len(shape) in (0, 1, 3) else 1
    return int(shape[int(dim)])


def softmax(ctx: OpContext) -> Transfer:
    """softmax/softmin along dim: 1/2 in ℓ1, ℓ2, ℓ∞ (J = diag(s) − ssᵀ, rows sum to 2s_i(1 − s_i) ≤ 1/2); 0 if d = 1."""
    d = softmax_size(ctx)
    return Transfer(gains=(exact(0.5 if d > 1 else 0.0, f"softmax (d={d})"),))


def log_softmax(ctx: OpContext) -> Transfer:
    """log_softmax along dim: √d (ℓ2), 2 (ℓ∞), max(1, d − 1) (ℓ1); J = I − 1sᵀ; 0 if d = 1."""
    d = softmax_size(ctx)
    p = ctx.norm
    if d <= 1:
        value = 0.0
    elif math.isinf(p):
        value = 2.0
    elif p == 1:
        value = float(max(1, d - 1))
    else:
        value = math.sqrt(d)
    return Transfer(gains=(exact(value, f"log_softmax (d={d})"),))


def register(registry: Registry) -> None:
    for key in ("softmax", "softmin", "softmax2d"):
        registry.register(key, softmax, key=key, exact=True)
    registry.register("log_softmax", log_softmax, exact=True)
