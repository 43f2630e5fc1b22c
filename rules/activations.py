"""Elementwise activations: Lipschitz constant = max |slope|, the same in every ℓp norm.

Slope intervals are the exact ranges of the derivative (docs/mathematics.md §2), rounded outward; chain passes
(SeqLip, SDP) use the interval, AutoLip only its largest magnitude.
"""
from __future__ import annotations

import math

from lipgraph.bound import exact
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer, elementwise, not_lipschitz

SELU_SLOPE = 1.0507009873554805 * 1.6732632423543772  # λ·α, the slope of SELU just left of 0

FIXED_SLOPES: dict[str, tuple[float, float]] = {
    "relu": (0.0, 1.0),
    "relu6": (0.0, 1.0),
    "hardtanh": (0.0, 1.0),  # also clamp/clip: slopes 0 outside, 1 inside
    "sigmoid": (0.0, 0.25),
    "tanh": (0.0, 1.0),
    "softsign": (0.0, 1.0),
    "logsigmoid": (0.0, 1.0),
    "tanhshrink": (0.0, 1.0),  # tanh²
    "softshrink": (0.0, 1.0),
    "hardsigmoid": (0.0, 1.0 / 6.0),
    "celu": (0.0, 1.0),  # exp(x/α) on x < 0
    "gelu": (-0.1290, 1.1290),  # erf form [-0.12890, 1.12890]; tanh approximation [-0.12899, 1.12899]
    "silu": (-0.0999, 1.0999),  # [-0.09984, 1.09984]
    "mish": (-0.1126, 1.0885),  # [-0.11253, 1.08850]
    "hardswish": (-0.5, 1.5),
    "selu": (0.0, 1.758100),  # λ·α = 1.7580993...
}


def _between_one(ctx: OpContext, a: float) -> Transfer:
    lo, hi = min(a, 1.0), max(a, 1.0)
    return Transfer(gains=(exact(max(abs(lo), abs(hi)), "slope"),), slope=(lo, hi))


def leaky_relu(ctx: OpContext) -> Transfer:
    """Slopes {a, 1}: Lipschitz max(|a|, 1)."""
    return _between_one(ctx, float(ctx.arg("negative_slope", 1, 0.01)))


def rrelu(ctx: OpContext) -> Transfer:
    """Eval-mode RReLU is LeakyReLU with slope (lower + upper) / 2."""
    lower, upper = float(ctx.arg("lower", 1, 1 / 8)), float(ctx.arg("upper", 2, 1 / 3))
    return _between_one(ctx, (lower + upper) / 2)


def prelu(ctx: OpContext) -> Transfer:
    """Per-channel slopes a_c on x < 0: slopes in [min(a, 1), max(a, 1)] over all channels."""
    a = ctx.arg("weight", 1).detach()
    lo, hi = min(float(a.min()), 1.0), max(float(a.max()), 1.0)
    return Transfer(gains=(exact(max(abs(lo), abs(hi)), "slope"),), slope=(lo, hi))


def elu(ctx: OpContext) -> Transfer:
    """Slopes α·eˣ on x < 0 and 1 on x > 0: interval [min(0, α), max(1, α)]."""
    alpha = float(ctx.arg("alpha", 1, 1.0))
    lo, hi = min(0.0, alpha), max(1.0, alpha)
    return Transfer(gains=(exact(max(abs(lo), abs(hi)), "slope"),), slope=(lo, hi))


def softplus(ctx: OpContext) -> Transfer:
    """Slopes σ(βx) ∈ (0, 1); but torch returns x itself once βx > threshold, a jump of log1p(e^{−t})/β there.
    Below float32 resolution at that point (2e-9 at the default t = 20) it is rounding: slope [0, 1]; a larger
    jump (t = 5: 6.7e-3) makes the function discontinuous, hence not Lipschitz."""
    beta, t = float(ctx.arg("beta", 1, 1.0)), float(ctx.arg("threshold", 2, 20.0))
    jump = math.log1p(math.exp(-t)) / beta
    if jump > 2.0 ** -23 * max(1.0, abs(t / beta)):
        raise ctx.not_lipschitz(f"torch's Softplus(beta={beta:g}, threshold={t:g}) jumps by {jump:.2g} at x = "
                                f"{t / beta:g}, where it switches to the identity")
    return Transfer(gains=(exact(1.0, "slope"),), slope=(0.0, 1.0))


def threshold(ctx: OpContext) -> Transfer:
    """max(x, t) when value = t (slopes {0, 1}); any other value makes it jump at x = t."""
    t, value = float(ctx.arg("threshold", 1)), float(ctx.arg("value", 2))
    if value != t:
        raise ctx.not_lipschitz(f"Threshold({t:g}, {value:g}) jumps from {value:g} to {t:g} at x = {t:g}")
    return Transfer(gains=(exact(1.0, "slope"),), slope=(0.0, 1.0))


def register(registry: Registry) -> None:
    for key, slope in FIXED_SLOPES.items():
        registry.register(key, elementwise(slope=slope, name=key))
    for fn in (leaky_relu, rrelu, prelu, elu, softplus, threshold):
        registry.register(fn.__name__, fn, exact=True)
    registry.register("hardshrink", not_lipschitz("Hardshrink jumps from 0 to ±λ at |x| = λ", name="hardshrink"))
