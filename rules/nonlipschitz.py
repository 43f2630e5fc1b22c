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
- **products** of ≥ 2 input-dependent factors (einsum, bilinear, outer, dot, kron, cross, multi_dot, mv, and the
  fused ``input + α·t1·t2`` forms baddbmm, addbmm, addmv, addr, addcmul, and lerp's ``w·(end − start)``): x·y
  grows quadratically (d(xy) = y dx + x dy, unbounded in x, y). One input-dependent factor: linear, declined.
- **quotients and logarithms of an operand**: addcdiv by an input-dependent ``tensor2``, xlogy/xlog1py in ``other``,
  atan2 of two input-dependent operands or against a constant 0, ldexp's exponent, copysign's sign source (a jump at 0), the incomplete gamma P(a, x) in x
  for some a < 1 (slope ∝ x^{a−1} at 0): each is refused only when that operand depends on the input.
  (A constant operand cannot make these Lipschitz, except as stated: atan2 against c ≠ 0, incomplete gamma
  with a ≥ 1, and the other operand of xlogy, ldexp, copysign, addcdiv, which it scales.)
- **unbounded slope** (any input-dependent argument, every spelling: ``torch.X``, ``torch.special.X``,
  ``Tensor.X``, ``Tensor.X_``, ``aten.X``): exp, log, sqrt, reciprocal, x^p (p ∉ {0, 1}), tan, sinh, erfcx,
  log Γ and ψ (poles), I₀/I₁ (exponential growth), K₀/K₁/Y₀/Y₁ (singular at 0), Φ⁻¹, log Φ, −x log x …
  (the derivative is unbounded on the domain); **jumps**: floor, ceil, round, trunc, sign, frac, floor division,
  remainder (discontinuous); **matrix functions**: inverse and pseudo-inverse, log|det|, Cholesky, matrix_exp,
  det and matrix powers of degree ≥ 2, solve with an input-dependent matrix; **polynomials** of degree ≥ 2
  (Chebyshev, Hermite, Laguerre, Legendre); **products of entries**: prod and cumprod over ≥ 2 entries, the
  variance (quadratic).

Lipschitz ops that merely lack a rule (erf, expit (= sigmoid, ruled), logaddexp, logsumexp, cdist, std, i0e,
sinc, Bessel J …) are never refused here: they are reported as ops without a rule.
"""
from __future__ import annotations

import math
from typing import Any

import torch

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
    "signbit": "signbit jumps at 0", "acosh": "acosh has an unbounded slope at 1",
    "erfcx": "erfcx(x) = e^{x²}·erfc(x) grows like 2e^{x²} as x → −∞",
    "lgamma": "log Γ has poles at 0, −1, −2, …", "digamma": "ψ has poles at 0, −1, −2, …",
    "polygamma": "ψ⁽ⁿ⁾ has poles at 0, −1, −2, …", "mvlgamma": "the multivariate log Γ has poles",
    "zeta": "the Hurwitz zeta ζ(x, q) has a pole at x = 1 and at q = 0",
    "i0": "I₀ grows like e^|x|", "i1": "I₁ grows like e^|x|",
    "modified_bessel_i0": "I₀ grows like e^|x|", "modified_bessel_i1": "I₁ grows like e^|x|",
    "modified_bessel_k0": "K₀ has an unbounded slope at 0", "modified_bessel_k1": "K₁ has a pole at 0",
    "scaled_modified_bessel_k0": "e^x·K₀ has an unbounded slope at 0",
    "scaled_modified_bessel_k1": "e^x·K₁ has a pole at 0",
    "bessel_y0": "Y₀ has an unbounded slope at 0", "bessel_y1": "Y₁ has a pole at 0",
    "airy_ai": "Ai′(x) grows like |x|^{1/4} as x → −∞",
    "ndtri": "Φ⁻¹ has an unbounded slope at 0 and 1", "log_ndtr": "log Φ(x) has slope ≈ |x| as x → −∞",
    "entr": "−x·log x has an unbounded slope at 0",
    "inverse": "the matrix (pseudo-)inverse has an unbounded slope near singular matrices",
    "logdet": "log|det| has an unbounded slope near singular matrices",
    "cholesky": "the Cholesky factor has an unbounded slope near singular matrices (like √x at 0)",
    "matrix_exp": "the matrix exponential grows like e^x",
}
#: products: op key -> its factor groups (argument slots (index, keyword)); the op multiplies one operand of each
#: group (other arguments are added). ``None``: every input-dependent argument is a factor of its own.
FACTORS: dict[str, tuple[tuple[tuple[int, str], ...], ...] | None] = {
    **dict.fromkeys(("bilinear", "einsum", "outer", "inner", "dot", "vdot", "kron", "tensordot", "cross", "multi_dot",
                     "mv")),
    **dict.fromkeys(("baddbmm", "addbmm"), (((1, "batch1"),), ((2, "batch2"),))),
    "addmv": (((1, "mat"),), ((2, "vec"),)),
    "addr": (((1, "vec1"),), ((2, "vec2"),)),
    "addcmul": (((1, "tensor1"),), ((2, "tensor2"),)),
    "lerp": (((2, "weight"),), ((0, "input"), (1, "end"))),
}
#: op key -> (the argument slot that must not depend on the input, why)
ONE_SIDED = {
    "addcdiv": ((2, "tensor2"), "it divides by an input-dependent tensor (unbounded as the divisor nears 0)"),
    "xlogy": ((1, "other"), "x·log(y) has an unbounded slope in y near 0"),
    "xlog1py": ((1, "other"), "x·log(1 + y) has an unbounded slope in y near −1"),
    "ldexp": ((1, "other"), "x·2^e has an unbounded slope in e"),
    "copysign": ((1, "other"), "copysign jumps as its sign source crosses 0"),
    "linalg_solve": ((0, "A"), "it solves with an input-dependent matrix (A⁻¹ has an unbounded slope near "
                               "singular matrices)"),
}
POLYNOMIALS = tuple(f"{family}_polynomial_{kind}" for family, kinds in (
    ("chebyshev", "tuvw"), ("shifted_chebyshev", "tuvw"), ("hermite", ("h", "he")), ("laguerre", "l"),
    ("legendre", "p")) for kind in kinds)


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
        raise ctx.not_lipschitz(ATTENTION, product=True)
    raise decline(ctx, "attention that is Lipschitz here (fixed keys; one position) has no rule")


def transformer_layer(ctx: OpContext):
    """not globally Lipschitz: a transformer layer on an input-dependent sequence (self-attention inside)."""
    if any(_sequence_length(ctx, v) >= 2 for v in ctx.inputs):
        raise ctx.not_lipschitz("it applies self-attention to an input-dependent sequence: " + ATTENTION, product=True)
    raise decline(ctx, "a transformer layer over one position has no rule")


def _depends(ctx: OpContext, slot: tuple[int, str]) -> bool:
    """The argument in ``slot`` (index, keyword) depends on the input (``self`` is how aten names ``input``)."""
    index, name = slot
    value = _argument(ctx, index, name)
    return isinstance(value if value is not None or name != "input" else ctx.kwargs.get("self"), Var)


def product(ctx: OpContext):
    """not globally Lipschitz: a product of ≥ 2 input-dependent factors (one: affine, no rule)."""
    groups = FACTORS[ctx.key]
    moving = len(ctx.inputs) if groups is None else sum(any(_depends(ctx, s) for s in group) for group in groups)
    if moving >= 2:
        raise ctx.not_lipschitz(PRODUCT, product=True)
    raise decline(ctx, "affine in its input-dependent operands (at most one factor depends on the input), but no rule")


def one_sided(ctx: OpContext):
    """not globally Lipschitz when the operand in its ``ONE_SIDED`` slot depends on the input; else no rule."""
    slot, why = ONE_SIDED[ctx.key]
    if _depends(ctx, slot):
        raise ctx.not_lipschitz(why, product=ctx.key == "addcdiv")
    raise decline(ctx, "Lipschitz here (that operand is constant), but no rule")


def incomplete_gamma(ctx: OpContext):
    """not globally Lipschitz: P(a, x), Q(a, x) in x when a depends on the input too or some constant a < 1 (slope
    x^{a−1}e^{−x}/Γ(a), unbounded at x = 0); in a alone (x constant) and for constant a ≥ 1: no rule."""
    a = _argument(ctx, 0, "input")
    if _depends(ctx, (1, "other")):
        if isinstance(a, Var):
            raise ctx.not_lipschitz("with a and x input-dependent, P(a, x) has slope x^{a−1}e^{−x}/Γ(a) in x, "
                                    "unbounded at x = 0 as a → 0")
        if float(torch.as_tensor(a).min()) < 1:
            raise ctx.not_lipschitz("the incomplete gamma function has slope x^{a−1}e^{−x}/Γ(a), unbounded at "
                                    "x = 0 for a < 1")
    raise decline(ctx, "the incomplete gamma function (in a alone, or in x with a ≥ 1) has no rule")


def angle(ctx: OpContext):
    """not globally Lipschitz: atan2(y, x) with both input-dependent (slope 1/‖(x, y)‖ near the origin) or with a
    constant operand that has a 0 (atan2(y, 0) jumps by π at y = 0; atan2(0, x) by π at x = 0). One operand
    against a constant c ≠ 0: Lipschitz 1/(2|c|), no rule."""
    if len(ctx.inputs) >= 2:
        raise ctx.not_lipschitz("atan2(y, x) has slope 1/‖(x, y)‖, unbounded near the origin")
    other = next(a for a in (_argument(ctx, 0, "input"), _argument(ctx, 1, "other")) if not isinstance(a, Var))
    if bool((torch.as_tensor(other) == 0).any()):
        raise ctx.not_lipschitz("atan2 against a constant 0 jumps by π where the other operand crosses 0")
    raise decline(ctx, "atan2 against a nonzero constant c (Lipschitz 1/(2|c|)) has no rule")


def _constant_values(value: Any) -> torch.Tensor | None:
    """A constant argument's values as a float64 tensor; ``None`` for an input-dependent one or a non-number."""
    if isinstance(value, Var):
        return None
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def polynomial(ctx: OpContext):
    """not globally Lipschitz: an orthogonal polynomial p_n(x) of degree n ≥ 2 in an input-dependent x."""
    n = _constant_values(_argument(ctx, 1, "n"))
    if _depends(ctx, (0, "input")) and n is not None and n.numel() and float(n.max()) >= 2:
        raise ctx.not_lipschitz(f"a polynomial of degree {float(n.max()):g} ≥ 2 grows faster than |x|")
    raise decline(ctx, "a polynomial of degree ≤ 1 (or with an input-dependent degree) has no rule")


def determinant(ctx: OpContext):
    """not globally Lipschitz: det of n×n matrices, n ≥ 2 (a polynomial of degree n in the entries)."""
    n = ctx.input.shape[-1] if ctx.input.shape else 1
    if n >= 2:
        raise ctx.not_lipschitz(f"det of {n}×{n} matrices is a polynomial of degree {n} in the entries")
    raise decline(ctx, "det of 1×1 matrices (the entry itself) has no rule")


def matrix_power(ctx: OpContext):
    """not globally Lipschitz: Aⁿ for n ≥ 2 (a product) or n < 0 (an inverse); A¹ and A⁰ have no rule."""
    n = int(_argument(ctx, 1, "n"))
    if n >= 2:
        raise ctx.not_lipschitz(f"A^{n} multiplies the input-dependent matrix with itself", product=True)
    if n < 0:
        raise ctx.not_lipschitz(f"A^{n} inverts the matrix: " + UNBOUNDED_SLOPE["inverse"])
    raise decline(ctx, f"A^{n} has no rule")


def power(ctx: OpContext):
    """not globally Lipschitz: x^p for p ∉ {0, 1} (1 and 0 for p = 1, 0), and c^x or x^y.

    x^p for p > 1 grows faster than |x|, for p < 1 its slope is unbounded near 0; c^x is exponential."""
    exponent = _argument(ctx, 1, "exponent")
    if isinstance(exponent, Var):
        raise ctx.not_lipschitz("an input-dependent exponent: c^x and x^y have unbounded slopes")
    exponents = _constant_values(exponent)
    if exponents is None or not exponents.numel():
        raise decline(ctx, f"exponent {exponent!r} has no rule")
    wild = exponents[(exponents != 0) & (exponents != 1)]
    if not wild.numel():  # every coordinate is x^0 = 1 or x^1 = x
        if exponents.numel() == 1:
            return exact(float(exponents), f"x^{float(exponents):g}")
        raise decline(ctx, "a tensor of exponents 0 and 1 has no rule")
    p = float(wild[0])  # the coordinates raised to p are input-dependent (the output broadcasts x against p)
    why = "it grows faster than |x|" if p > 1 else "its slope is unbounded near 0"
    raise ctx.not_lipschitz(f"x^{p:g} is not globally Lipschitz: {why}")


def logit(ctx: OpContext):
    """not globally Lipschitz: log(x / (1 − x)), unbounded slope at 0 and 1 (with ``eps``: clamped, no rule)."""
    if _argument(ctx, 1, "eps") is not None:
        raise decline(ctx, "logit with eps (Lipschitz: 1/(eps(1 − eps))) has no rule")
    raise ctx.not_lipschitz("logit has an unbounded slope at 0 and 1")


def entry_products(ctx: OpContext):
    """not globally Lipschitz: prod, cumprod, var and var_mean over ≥ 2 entries (products of coordinates)."""
    (x,) = ctx.inputs
    if ctx.key == "cumprod":
        dim = _argument(ctx, 1, "dim")
        grouped = dim is not None and x.shape[int(dim)] >= 2
    else:
        out = ctx.output.parts[0] if isinstance(ctx.output, Var) and ctx.output.parts else ctx.output  # var_mean
        grouped = x.numel > (out.numel if isinstance(out, Var) else math.inf)
    if grouped:
        raise ctx.not_lipschitz(f"{ctx.key} multiplies entries of the input with each other"
                                + (" (the variance is quadratic)" if ctx.key.startswith("var") else ""))
    raise decline(ctx, f"{ctx.key} over single entries has no rule")


def register(registry: Registry) -> None:
    registry.register("multihead_attention", attention)
    registry.register("transformer_layer", transformer_layer)
    for key in FACTORS:
        registry.register(key, product, key=key)
    for key in ONE_SIDED:
        registry.register(key, one_sided, key=key)
    for key in ("igamma", "igammac"):
        registry.register(key, incomplete_gamma, key=key)
    for key in POLYNOMIALS:
        registry.register(key, polynomial, key=key)
    registry.register("atan2", angle)
    registry.register("det", determinant)
    registry.register("matrix_power", matrix_power)
    for key, why in UNBOUNDED_SLOPE.items():
        registry.register(key, not_lipschitz(why, name=key))
    registry.register("pow", power, exact=True)
    registry.register("logit", logit)
    for key in ("prod", "cumprod", "var", "var_mean"):
        registry.register(key, entry_products, key=key)
