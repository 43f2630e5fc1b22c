"""F.normalize and cosine similarity: Lipschitz only through their ``eps``, with constant 1/eps (ℓ2).

Without ``eps``, x/‖x‖ has slope 1/‖x‖, unbounded at 0. torch divides by max(‖x_g‖₂, eps) instead, per group g
along ``dim``, and that map is the projection onto the ball of radius eps, divided by eps:

    n(x) = x / max(‖x‖₂, eps) = P_eps(x) / eps,   P_eps(x) = x·min(1, eps/‖x‖₂),

and a projection onto a convex set is 1-Lipschitz in ℓ2, so n is (1/eps)-Lipschitz on each group, and on the whole
tensor since the groups are disjoint: ``F.normalize(x, p=2)`` has L = 1/eps in ℓ2, exact (n(x) = x/eps inside the
ball). ``cosine_similarity(x1, x2)`` is torch's Σ_g n(x1_g)·n(x2_g) over the broadcast groups (normalised first,
as ATen does). With ‖n‖ ≤ 1, |Δ⟨n(a), n(b)⟩| ≤ ‖Δn(a)‖ + ‖Δn(b)‖ ≤ (‖Δa‖ + ‖Δb‖)/eps per group; summing squares over
groups (Minkowski) gives gain √c/eps per operand, c its broadcast copy count, combined as a sum. These are honest
(certified) but huge constants (10¹² and 10⁸ by default): the ops are not globally Lipschitz in any useful sense.
Other ℓp norms and ``F.normalize`` with p ≠ 2 have no rule.
"""
from __future__ import annotations

import math

import torch

from lipgraph.bound import certified, exact
from lipgraph.errors import NormNotSupported
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer

from ._gains import broadcast_copies


def normalize(ctx: OpContext) -> Transfer:
    """x / max(‖x_g‖₂, eps) per group: P_eps(x)/eps, 1/eps in ℓ2 (exact)."""
    p, eps = float(ctx.arg("p", 1, 2.0)), float(ctx.arg("eps", 3, 1e-12))
    if p != 2 or ctx.norm != 2:
        raise NormNotSupported(f"{ctx.describe()}: F.normalize with p={p:g} in ℓ{ctx.norm:g} has no rule")
    ctx.input  # noqa: B018 - raises unless exactly one argument depends on the input
    return Transfer(gains=(exact(1.0 / eps, "eps-ball projection / eps"),))


def cosine_similarity(ctx: OpContext) -> Transfer:
    """Σ_g n(x1_g)·n(x2_g) with n = P_eps/eps: √c/eps per operand (c its broadcast copies), summed; ℓ2 only."""
    if ctx.norm != 2:
        raise NormNotSupported(f"{ctx.describe()}: cosine_similarity in ℓ{ctx.norm:g} has no rule")
    eps = float(ctx.arg("eps", 3, 1e-8))
    operands = [ctx.arg("x1", 0), ctx.arg("x2", 1)]
    shape = torch.broadcast_shapes(*(tuple(a.shape) for a in operands))
    gains = tuple(certified(math.sqrt(broadcast_copies(v, tuple(shape))) / eps, "normalised inner product / eps")
                  for v in ctx.inputs)
    return Transfer(gains=gains)


def register(registry: Registry) -> None:
    registry.register("normalize", normalize, exact=True)
    registry.register("cosine_similarity", cosine_similarity)

