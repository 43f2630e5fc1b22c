"""Sums, differences and scaling; products and quotients of two input-dependent tensors are refused."""
from __future__ import annotations

import torch

from lipgraph.bound import exact
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer, Var, scale

from ._gains import broadcast_copies, constant_scale_gain, copies_gain


def add(ctx: OpContext) -> Transfer:
    """a ± alpha·b: gain 1 per input (AutoLip: L_a + L_b), times |alpha| for the scaled operand and the
    broadcast copy count when an input is broadcast to a larger shape."""
    alpha = abs(float(ctx.arg("alpha", None, 1.0)))
    rsub = "rsub" in str(getattr(ctx.target, "__name__", ctx.target))  # rsub(a, b, alpha) = b - alpha·a
    scaled = _operands(ctx)[0 if rsub else 1]
    gains = []
    for v in ctx.inputs:
        g = copies_gain(broadcast_copies(v, ctx.output_shape), ctx.norm, ctx.key)
        gains.append(exact(g.value * alpha, ctx.key) if scaled is v and alpha != 1 else g)
    return Transfer(gains=tuple(gains), affine=len(gains) == 1)


def mul(ctx: OpContext) -> Transfer:
    """x·c for a constant c (scalar or broadcast tensor); x·y of two input-dependent tensors is not Lipschitz."""
    x = ctx.input if len(ctx.inputs) == 1 else None
    if x is None:
        raise ctx.not_lipschitz("it multiplies two input-dependent tensors (x·y grows quadratically)", product=True)
    c = next(a for a in _operands(ctx) if a is not x)
    return Transfer(gains=(constant_scale_gain(torch.as_tensor(c), x, ctx.output_shape, ctx.norm, "constant-scale"),),
                    affine=True)


def div(ctx: OpContext) -> Transfer:
    """x / c for a constant c; anything divided by an input-dependent tensor is not Lipschitz."""
    numerator, denominator = _operands(ctx)
    if ctx.kwargs.get("rounding_mode") is not None:
        raise ctx.not_lipschitz(f"rounding_mode={ctx.kwargs['rounding_mode']!r} makes it a step function")
    if isinstance(denominator, Var):
        raise ctx.not_lipschitz("it divides by an input-dependent tensor (unbounded as the divisor nears 0)",
                                product=isinstance(numerator, Var))  # 1/x is a reciprocal, not a quotient
    c = 1.0 / torch.as_tensor(denominator, dtype=torch.float64)
    return Transfer(gains=(constant_scale_gain(c, numerator, ctx.output_shape, ctx.norm, "constant-scale"),),
                    affine=True)


def _operands(ctx: OpContext) -> tuple:
    """The two operands of a binary op, positional or given as ``input=``/``other=`` keywords."""
    args = list(ctx.args[:2])
    for name in ("input", "other")[len(args):]:
        args.append(ctx.kwargs.get(name))
    return tuple(args)


def register(registry: Registry) -> None:
    registry.register("add", add, exact=True)
    registry.register("sub", add, key="sub", exact=True)
    registry.register("neg", scale(-1.0, name="neg"))
    registry.register("pos", scale(1.0, name="pos"))
    registry.register("mul", mul, exact=True)
    registry.register("div", div, exact=True)
