"""AutoLip (Scaman & Virmaux, NeurIPS 2018, §4) over the graph: ``L_k = ||(l_{k,i} L_i)_i||_q``.

With ``q = 1`` this is the paper's sum over inputs; concatenations use ``q = p`` (ℓ2: root of squares).
Writes ``lip.L`` (a :class:`Bound`) on every input-dependent node, ``lip.outputs`` on the output node.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

from torch import fx

from ..bound import Bound, exact, join_kinds
from ..ir import LipGraph


def combine(terms: list[tuple[Bound, Bound]], q: float, method: str = "autolip") -> Bound:
    """``||(g_i · L_i)_i||_q`` for (gain, input bound) pairs; a zero gain kills even an unbounded input."""
    values = [0.0 if g.value == 0 else g.value * x.value for g, x in terms]
    if not values:
        total = 0.0
    elif math.isinf(q):
        total = max(values)
    elif q == 1:
        total = math.fsum(values)
    else:
        total = math.fsum(v ** q for v in values) ** (1.0 / q)
    kind = join_kinds([t.kind for pair in terms for t in pair if not (pair[0].value == 0)] or [exact(0).kind])
    return Bound(total, kind, method, exact=False)


def propagate(nodes: Iterable[fx.Node], entry: Mapping[fx.Node, Bound]) -> dict[fx.Node, Bound]:
    """AutoLip over ``nodes`` (topologically sorted); ``entry`` gives the bounds of nodes outside the set."""
    bounds: dict[fx.Node, Bound] = dict(entry)
    for node in nodes:
        if node in bounds:
            continue
        transfer = node.meta["lip.transfer"]
        terms = list(zip(transfer.gains, (bounds[a] for a in node.meta["lip.inputs"])))
        bounds[node] = combine(terms, transfer.combine)
        if "lip.chain" in node.meta:
            bounds[node] = _through_chain(node, bounds, entry)
    return bounds


def _through_chain(node: fx.Node, bounds: Mapping[fx.Node, Bound], entry: Mapping[fx.Node, Bound]) -> Bound:
    """The smaller of the product path and ``fused · L(chain input)`` (fuse pass), both certified bounds."""
    first, fused, _product = node.meta["lip.chain"]
    source = first.meta["lip.inputs"][0]
    if first in entry or first not in bounds or source not in bounds:  # the chain starts outside this sub-network
        return bounds[node]
    via = combine([(fused, bounds[source])], 1, method="autolip+fusion")
    return via if via.value < bounds[node].value else bounds[node]


def autolip(lg: LipGraph, norm: float) -> Bound:
    """Bound of the whole network; per-output bounds go to ``output.meta["lip.outputs"]``."""
    one = exact(1.0, "input")
    bounds = propagate(lg.ops(), {p: one for p in lg.placeholders})
    for node, bound in bounds.items():
        node.meta["lip.L"] = bound
    outs = lg.output.meta["lip.inputs"]
    lg.output.meta["lip.outputs"] = [(n, bounds[n]) for n in outs]
    return combine([(exact(1.0, "output"), bounds[n]) for n in outs], norm)
