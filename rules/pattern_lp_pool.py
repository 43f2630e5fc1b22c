"""Pattern of power-average pooling written out: (m · avg_pool(x ** p))^(1/p) (docs/by-construction.md).

``F.lp_pool1d/2d`` trace to ``x.pow(p)`` → ``avg_pool`` → ``sign(o) · relu(|o|)`` → ``· (kernel size)`` →
``.pow(1/p)``; by hand people write ``sqrt(avg_pool(x ** 2))`` (times a scale, which stays its own op). ``x ** p``
alone is not Lipschitz, the compound is: each output is a weighted ℓp norm of its window,
y_w = (Σ_i a_wi |x_i|^p)^{1/p} with a_wi = m / |w| (avg_pool without padding divides by the in-bounds window
size), bounded by ``rules.pooling.lp_window_gain`` (proof there). Matched only for even integer p (x ** p = |x|^p),
an avg_pool without padding or divisor_override, and a root of exactly 1/p; ``sign(o)·relu(|o|)`` = o is
accepted in between.
"""
from __future__ import annotations

import math
import operator
from typing import Any

from torch import fx

from lipgraph.bound import Bound
from lipgraph.patternapi import GraphView, Match, Pattern, binary_operands
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, ntuple

from .pooling import lp_window_gain

_POOLS = {f"avg_pool{d}d": d for d in (1, 2, 3)}


def _power(node: Any, view: GraphView) -> float | None:
    """The constant exponent of x ** c (``pow``, ``operator.pow``, ``sqrt``, ``square``, ``x * x``)."""
    if not isinstance(node, fx.Node):
        return None
    key = view.key(node)
    if key == "sqrt":
        return 0.5
    if key == "square":
        return 2.0
    if key == "mul":
        a, b = binary_operands(node)
        return 2.0 if a is b and view.dep(a) else None
    if key == "pow" or node.target is operator.pow:
        base, exponent = binary_operands(node)
        exponent = view.value(exponent)
        return float(exponent) if view.dep(base) and isinstance(exponent, (int, float)) else None
    return None


def _scalar_factor(node: fx.Node, view: GraphView) -> tuple[fx.Node, float] | None:
    """(x, c) for x * c or c * x with a Python number c."""
    if view.key(node) != "mul":
        return None
    a, b = binary_operands(node)
    x, c = (a, view.value(b)) if view.dep(a) else (b, view.value(a))
    if not view.dep(x) or isinstance(c, bool) or not isinstance(c, (int, float)):
        return None
    return x, float(c)


def _sign_times_relu_abs(node: fx.Node, view: GraphView) -> tuple[fx.Node, list[fx.Node]] | None:
    """(o, nodes) for sign(o) * relu(abs(o)), which is o."""
    if view.key(node) != "mul":
        return None
    a, b = binary_operands(node)
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return None
    sign, relu = (a, b) if view.key(a) == "sign" else (b, a)
    if view.key(sign) != "sign" or view.key(relu) != "relu":
        return None
    absolute = relu.args[0] if relu.args else None
    if view.key(absolute) != "abs" or absolute.args[0] is not sign.args[0]:
        return None
    return sign.args[0], [sign, absolute, relu, node]


def _pool_options(node: fx.Node, view: GraphView) -> dict | None:
    """kernel, stride, dims of an avg_pool node without padding and divisor_override."""
    d = _POOLS.get(view.key(node))
    if d is None:
        return None
    args = fx.node.map_arg(node.args, lambda a: None if view.dep(a) else view.value(a))
    kwargs = fx.node.map_arg(node.kwargs, lambda a: None if view.dep(a) else view.value(a))
    ctx = OpContext(key=view.key(node), target=node.target, module=view.module(node), args=args, kwargs=kwargs,
                    output=None, norm=2.0, name=node.name, path="")
    kernel = ntuple(ctx.arg("kernel_size", 1), d)
    stride = ctx.arg("stride", 2, None)
    stride = ntuple(stride if stride not in (None, [], ()) else kernel, d)
    if any(ntuple(ctx.arg("padding", 3, 0), d)) or ctx.arg("divisor_override", 6, None) is not None:
        return None
    return {"kernel": kernel, "stride": stride, "dims": d}


def match_lp_pool(anchor: fx.Node, view: GraphView) -> Match | None:
    """(m · avg_pool(x ** p))^(1/p), p an even integer."""
    root = _power(anchor, view)
    if root is None or root <= 0 or root >= 1:
        return None
    nodes, node, m = [anchor], anchor.args[0], 1.0
    scaled = _scalar_factor(node, view) if isinstance(node, fx.Node) else None
    if scaled is not None:
        nodes.insert(0, node)
        node, m = scaled
    identity = _sign_times_relu_abs(node, view)
    if identity is not None:
        nodes[:0] = identity[1]
        node = identity[0]
    options = _pool_options(node, view) if isinstance(node, fx.Node) else None
    if options is None or m <= 0:
        return None
    power = node.args[0]
    p_in = _power(power, view)
    if p_in is None or abs(p_in - round(p_in)) > 0 or round(p_in) % 2 or abs(p_in * root - 1.0) > 1e-12:
        return None
    nodes[:0] = [power, node]
    x = power.args[0]
    if view.shape(x) is None:
        return None
    return Match(nodes=nodes, params={"p": float(round(p_in)), "inner": m, **options})


def lp_pool_compound(ctx: OpContext) -> Bound:
    """(m · avg_pool(x ** p))^(1/p): a weighted ℓp norm per window (``rules.pooling.lp_window_gain``)."""
    params = ctx.target.params
    d, k, s = params["dims"], params["kernel"], params["stride"]
    inner = tuple(map(float, k)) if math.isclose(params["inner"], math.prod(k)) else (params["inner"],) + (1.0,) * (d - 1)
    return lp_window_gain(tuple(ctx.input.shape[-d:]), tuple(ctx.output_shape[-d:]), k, s, inner, params["p"],
                          ctx.norm, f"ℓ{params['p']:g}-norm pooling (pattern)")


PATTERN = Pattern("lp_norm_pool", "LpNormPool", match_lp_pool, lp_pool_compound,
                  "(m·avg_pool(x**p))^(1/p), p even: a weighted ℓp norm of each window")


def register(registry: Registry) -> None:
    registry.register_pattern(PATTERN)
