"""Shared constants of structural operators, per ℓp norm (p ∈ {1, 2, ∞})."""
from __future__ import annotations

import math

import torch

from lipgraph.bound import Bound, certified, exact
from lipgraph.ruleapi import OpContext, Var


def copies_gain(copies: float, p: float, method: str) -> Bound:
    """A map where every output coordinate copies one input coordinate, each input copied ≤ ``copies`` times.

    Its matrix has one 1 per row, so AᵀA = diag(copies): ‖A‖₂ = √copies, ‖A‖₁ = copies, ‖A‖∞ = 1 (exact).
    """
    if math.isinf(p):
        return exact(1.0, method)
    return exact(copies if p == 1 else math.sqrt(copies), method)


def max_copies(ctx: OpContext, var: Var) -> float:
    """How often the most-copied coordinate of ``var`` appears in the op's output: a vjp with ones.

    Exact for gather-like ops (indexing, expand, repeat, pad, pixel shuffle); other inputs stay zero.
    """
    probes = [torch.zeros(v.shape, dtype=v.dtype, requires_grad=(v is var)) for v in ctx.inputs]
    out = ctx.apply(*probes)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    total = sum(o.sum() for o in outs if isinstance(o, torch.Tensor))
    (grad,) = torch.autograd.grad(total, probes[var.index], allow_unused=True)
    return 0.0 if grad is None else float(grad.max())


def broadcast_copies(var: Var, out_shape: tuple[int, ...]) -> int:
    """How many copies of each coordinate broadcasting ``var`` to ``out_shape`` makes."""
    return math.prod(out_shape) // max(var.numel, 1)


def constant_scale_gain(c: torch.Tensor, var: Var, out_shape: tuple[int, ...], p: float, method: str) -> Bound:
    """x ↦ c ⊙ broadcast(x) for a constant tensor c. Column j of the matrix holds the c's that multiply x_j,
    rows have one entry: ‖A‖₂ = max_j ‖c_{·j}‖₂, ‖A‖₁ = max_j Σ|c_{·j}|, ‖A‖∞ = max|c| (exact)."""
    c = torch.as_tensor(c, dtype=torch.float64).detach().abs().broadcast_to(out_shape)
    if math.isinf(p):
        return certified(float(c.max()), method, exact=True)
    powered = c.square() if p == 2 else c
    # sum the broadcast copies back onto x's shape
    lead = len(out_shape) - len(var.shape)
    summed = powered.sum(dim=tuple(range(lead))) if lead else powered
    dims = tuple(i for i, n in enumerate(var.shape) if n == 1 and summed.shape[i] != 1)
    if dims:
        summed = summed.sum(dim=dims, keepdim=True)
    value = float(summed.max())
    return certified(math.sqrt(value) if p == 2 else value, method, exact=True)
