"""Pattern √(Σ_k w_k·v_k² + c) elementwise, w_k ≥ 0, c ≥ 0 (docs/by-construction.md): orthogonium's
``L2NormResidual``, √(x²/2 + f(x)²/2 + eps), and root-sum-of-squares written out.

Each ``v_k ** 2`` alone is not Lipschitz; the compound is. Per coordinate, y = ‖(√w_1·v_1, …, √w_m·v_m, √c)‖₂, a
norm of a vector whose entries move by √w_k·Δv_k, so by the reverse triangle inequality
|Δy_i| ≤ ‖(√w_k·Δv_{k,i})_k‖₂. Hence, over the coordinates,

- ℓ2: ‖Δy‖₂² ≤ Σ_k w_k‖Δv_k‖₂²: gains √w_k combined in ℓ2;
- ℓ1: |Δy_i| ≤ Σ_k √w_k|Δv_{k,i}|: gains √w_k summed;
- ℓ∞: |Δy_i| ≤ √(Σ_k w_k)·max_k |Δv_{k,i}|: gains √(Σ w) combined by max;

each joint (``combine = p``: ≤ max_k gain times the ℓp norm of all the Δv_k together). With L(f) ≤ 1 the
L2NormResidual is 1-Lipschitz in ℓ2 (√(½ + ½·L(f)²)). Matched when every term is a nonnegative Python-number
weight times a square (``v ** 2``, ``square``, ``v * v``) of a tensor of the output's shape (no broadcasting), the
constants sum to c ≥ 0, and the root is ``sqrt``; a term used twice merges its weights.
"""
from __future__ import annotations

import math
from typing import Any

from torch import fx

from lipgraph.bound import certified
from lipgraph.patternapi import GraphView, Match, Pattern, binary_operands
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer

from .pattern_lp_pool import _power, _scalar_factor


def _term(node: fx.Node, view: GraphView) -> tuple[fx.Node, float, list[fx.Node]] | None:
    """(v, w, nodes) for w·v² or v² (w a Python number ≥ 0)."""
    scaled = _scalar_factor(node, view)
    square, weight, nodes = (scaled[0], scaled[1], [node]) if scaled is not None else (node, 1.0, [])
    if weight < 0 or not isinstance(square, fx.Node) or _power(square, view) != 2.0:
        return None
    return square.args[0], weight, [square, *nodes]


def _sum(node: Any, view: GraphView, nodes: list[fx.Node], terms: dict[fx.Node, float]) -> float | None:
    """Flatten a tree of additions into ``terms`` (v -> Σ w) and ``nodes``; return its constant part, or None."""
    if not view.dep(node):
        value = view.value(node)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if view.key(node) == "add" and node.kwargs.get("alpha", 1) == 1 and len(node.args) <= 2:
        parts = [_sum(a, view, nodes, terms) for a in binary_operands(node)]
        if None in parts:
            return None
        nodes.append(node)
        return sum(parts)
    term = _term(node, view)
    if term is None:
        return None
    v, w, used = term
    terms[v] = terms.get(v, 0.0) + w
    nodes.extend(used)
    return 0.0


def match_root_sum_squares(anchor: fx.Node, view: GraphView) -> Match | None:
    """√(Σ w_k·v_k² + c), w_k ≥ 0, c ≥ 0, every v_k of the output's shape."""
    if view.key(anchor) != "sqrt" or not anchor.args:
        return None
    nodes: list[fx.Node] = []
    terms: dict[fx.Node, float] = {}
    constant = _sum(anchor.args[0], view, nodes, terms)
    shape = view.shape(anchor)
    if constant is None or constant < 0 or not terms or any(view.shape(v) != shape for v in terms):
        return None
    order = {n: i for i, n in enumerate(view.gm.graph.nodes)}
    inputs = sorted(terms, key=order.__getitem__)  # the compound's input-dependent inputs, in graph order
    matched = sorted(dict.fromkeys(nodes), key=order.__getitem__)
    first_use = {v: min(order[n] for n in matched if v in n.all_input_nodes) for v in inputs}
    inputs.sort(key=first_use.__getitem__)  # as the compound receives them: by first use in the matched nodes
    return Match(nodes=[*matched, anchor], params={"weights": tuple(terms[v] for v in inputs)})


def root_sum_squares(ctx: OpContext) -> Transfer:
    """√(Σ w_k v_k² + c): gains √w_k in ℓ2 and ℓ1, √(Σ w) in ℓ∞, combined in ℓp, jointly (module docstring)."""
    weights = ctx.target.params["weights"]
    if math.isinf(ctx.norm):
        gains = (math.sqrt(math.fsum(weights)),) * len(weights)
    else:
        gains = tuple(math.sqrt(w) for w in weights)
    return Transfer(gains=tuple(certified(g, "root of a sum of squares", margin=1e-15) for g in gains),
                    combine=ctx.norm, joint=True)


PATTERN = Pattern("root_sum_squares", "RootSumSquares", match_root_sum_squares, root_sum_squares,
                  "√(Σ w·v² + c) elementwise (orthogonium's L2NormResidual): a norm of the weighted vector",
                  exact=False)


def register(registry: Registry) -> None:
    registry.register_pattern(PATTERN)
