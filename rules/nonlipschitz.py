"""Ops with no global Lipschitz constant: refused with the reason, whatever their spelling, never given a rule stub.

A rule here either raises ``ctx.not_lipschitz(why)`` or, in the special cases where the op *is* Lipschitz but
lipgraph has no constant for it, declines (:class:`~lipgraph.errors.NormNotSupported`: reported as an op without
a rule, never as the identity). Why each op is not globally Lipschitz:

- **dot-product attention** softmax(QKᵀ/√d)·V (``nn.MultiheadAttention``, ``F.scaled_dot_product_attention`` and
  its aten kernels): with input-dependent keys, or input-dependent queries and values, over ≥ 2 positions, its
  Jacobian is unbounded (Kim, Papamakarios & Mnih, "The Lipschitz constant of self-attention", ICML 2021,
  Theorem 3.1: the derivative of the softmax weights multiplies the values, which grow with the input). With
  only the queries input-dependent it is Lipschitz (softmax then a fixed linear map) and with only the values it
  is linear: both declined. Transformer layers (``nn.TransformerEncoderLayer`` …) contain such an attention on an
  input-dependent sequence; a sequence of length 1 is declined (its attention is linear).
- **products** of ≥ 2 input-dependent operands (einsum, bilinear, outer, dot, kron, cross, multi_dot …): x·y
  grows quadratically (d(xy) = y dx + x dy, unbounded in x, y). One input-dependent operand: linear, declined.
- **unbounded slope**: exp, log, sqrt, reciprocal, x^p (p ∉ {0, 1}), tan, sinh … (the derivative is unbounded
  on the domain); **jumps**: floor, ceil, round, trunc, sign, frac, floor division, remainder (discontinuous);
  **products of entries**: prod and cumprod over ≥ 2 entries, the variance (quadratic).
"""
from __future__ import annotations

import math
from typing import Any

from lipgraph.bound import exact
from lipgraph.errors import NormNotSupported
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Var, not_lipschitz

ATTENTION = ("dot-product attention softmax(QKᵀ/√d)·V with input-dependent keys (or queries and values) has an "
             "unbounded Jacobian (Kim, Papamakarios & Mnih 2021, Theorem 3.1)")
PRODUCT = "it multiplies two input-dependent tensors (x·y grows quadratically)"

#: op key -> why it has no global Lipschitz constant (as a function of any input-dependent argument)
UNBOUNDED_SLOPE = {
    "exp": "exp has an unbounded slope (e^x)",
    "exp2": "2^x has an unbounded slope",
    "expm1": "e^x − 1 has an unbounded slope",
    "log": "log has an unbounded slope near 0", "log2": "log2 has an unbounded slope near 0",
    "log10": "log10 has an unbounded slope near 0", "log1p": "log(1 + x) has an unbounded slope near x = −1",
    "reciprocal": "1/x has an unbounded slope near 0", "rsqrt": "1/√x has an unbounded slope near 0",
    "sqrt": "√x has an unbounded slope near 0", "square": "x² has an unbounded slope",
    "tan": "tan has poles", "sinh": "sinh has an unbounded slope", "cosh": "cosh has an unbounded slope",
    "asin": "asin has an unbounded slope at ±1", "acos": "acos has an unbounded slope at ±1",
    "atanh": "atanh has an unbounded slope at ±1", "erfinv": "erfinv has an unbounded slope at ±1",
    "floor": "floor jumps at the integers", "ceil": "ceil jumps at the integers",
    "round": "round jumps between integers", "trunc": "trunc jumps at the integers",
    "frac": "the fractional part jumps at the integers", "sign": "sign jumps at 0",
    "heaviside": "the Heaviside step jumps at 0", "floor_divide": "floor division is a step function",
    "remainder": "the remainder jumps (a sawtooth)", "fmod": "fmod jumps (a sawtooth)",
}
PRODUCTS = ("bilinear", "einsum", "outer", "inner", "dot", "vdot", "kron", "tensordot", "cross", "multi_dot")


def decline(ctx: OpContext, why: str) -> NormNotSupported:
    """The op is Lipschitz in this case but lipgraph has no constant for it: reported as an op without a rule."""
    return NormNotSupported(f"{ctx.describe()}: {why}")


def _argument(ctx: OpContext, index: int, name: str) -> Any:
    """Positional argument ``index`` of the call, or keyword ``name`` (modules included: no attribute lookup)."""
    return ctx.args[index] if index < len(ctx.args) else ctx.kwargs.get(name)


def _sequence_length(ctx: OpContext, x: Any) -> int:
    """Positions attended over in ``x``: dim −2 of the functional kernels' (…, L, E); for ``nn`` modules and
    ``F.multi_head_attention_forward`` dim 0 (sequence first) or dim 1 (``batch_first``) of a batched input."""
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) < 2:
        return 1
    if ctx.module is None:
        return shape[0] if "multi_head_attention_forward" in str(ctx.target) else shape[-2]
    batch_first = any(getattr(m, "batch_first", False) for m in ctx.module.modules())
    return shape[1] if len(shape) == 3 and batch_first else shape[0]


def attention(ctx: OpContext):
    """not globally Lipschitz: dot-product attention with input-dependent keys (or queries and values)."""
    query, key, value = (_argument(ctx, i, n) for i, n in enumerate(("query", "key", "value")))
    moving = isinstance(key, Var) or (isinstance(query, Var) and isinstance(value, Var))
    if moving and _sequence_length(ctx, key) >= 2:
        raise ctx.not_lipschitz(ATTENTION)
    raise decline(ctx, "attention that is Lipschitz here (fixed keys; one position) has no rule")


def transformer_layer(ctx: OpContext):
    """not globally Lipschitz: a transformer layer on an input-dependent sequence (self-attention inside)."""
    if any(_sequence_length(ctx, v) >= 2 for v in ctx.inputs):
        raise ctx.not_lipschitz("it applies self-attention to an input-dependent sequence: " + ATTENTION)
    raise decline(ctx, "a transformer layer over one position has no rule")


def product(ctx: OpContext):
    """not globally Lipschitz: a product of ≥ 2 input-dependent operands (one: linear, no rule)."""
    if len(ctx.inputs) >= 2:
        raise ctx.not_lipschitz(PRODUCT)
    raise decline(ctx, "linear in its one input-dependent operand, but no rule")


def power(ctx: OpContext):
    """not globally Lipschitz: x^p for p ∉ {0, 1} (1 and 0 for p = 1, 0), and c^x or x^y.

    x^p for p > 1 grows faster than |x|, for p < 1 its slope is unbounded near 0; c^x is exponential."""
    base, exponent = _argument(ctx, 0, "input"), _argument(ctx, 1, "exponent")
    if isinstance(exponent, Var):
        raise ctx.not_lipschitz("an input-dependent exponent: c^x and x^y have unbounded slopes")
    try:
        p = float(exponent)
    except (TypeError, ValueError, RuntimeError):  # a tensor of several exponents
        raise decline(ctx, "a tensor of exponents has no rule") from None
    if p in (0.0, 1.0) and isinstance(base, Var):
        return exact(p, f"x^{p:g}")
    why = "it grows faster than |x|" if p > 1 else "its slope is unbounded near 0"
    raise ctx.not_lipschitz(f"x^{p:g} is not globally Lipschitz: {why}")


def logit(ctx: OpContext):
    """not globally Lipschitz: log(x / (1 − x)), unbounded slope at 0 and 1 (with ``eps``: clamped, no rule)."""
    if _argument(ctx, 1, "eps") is not None:
        raise decline(ctx, "logit with eps (Lipschitz: 1/(eps(1 − eps))) has no rule")
    raise ctx.not_lipschitz("logit has an unbounded slope at 0 and 1")


def entry_products(ctx: OpContext):
    """not globally Lipschitz: prod, cumprod and the variance over ≥ 2 entries (products of coordinates)."""
    (x,) = ctx.inputs
    if ctx.key == "cumprod":
        dim = _argument(ctx, 1, "dim")
        grouped = dim is not None and x.shape[int(dim)] >= 2
    else:
        out = ctx.output.numel if isinstance(ctx.output, Var) else math.inf
        grouped = x.numel > out
    if grouped:
        raise ctx.not_lipschitz(f"{ctx.key} multiplies entries of the input with each other"
                                + (" (the variance is quadratic)" if ctx.key == "var" else ""))
    raise decline(ctx, f"{ctx.key} over single entries has no rule")


def register(registry: Registry) -> None:
    registry.register("multihead_attention", attention)
    registry.register("transformer_layer", transformer_layer)
    for key in PRODUCTS:
        registry.register(key, product, key=key)
    for key, why in UNBOUNDED_SLOPE.items():
        registry.register(key, not_lipschitz(why, name=key))
    registry.register("pow", power, exact=True)
    registry.register("logit", logit)
    for key in ("prod", "cumprod", "var"):
        registry.register(key, entry_products, key=key)
