"""AutoLip (Scaman & Virmaux, NeurIPS 2018, §4) over the graph: ``L_k = ||(l_{k,i} L_i)_i||_q``.

With ``q = 1`` this is the paper's sum over inputs; concatenations use ``q = p`` (ℓ2: root of squares).
Writes ``lip.L`` (a :class:`Bound`) on every input-dependent node, ``lip.outputs`` on the output node.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from torch import fx

from ..bound import Bound, Kind, exact, join_kinds
from ..linalg.lazy import is_pending, pending_combination
from ..patternapi import injective_selection, selection_root
from ..ir import LipGraph


def combine(terms: list[tuple[Bound, Bound]], q: float, method: str = "autolip") -> Bound:
    """``||(g_i · L_i)_i||_q`` for (gain, input bound) pairs; a zero gain kills even an unbounded input."""
    if any(is_pending(b) for pair in terms for b in pair):  # a norm only shown so far: combined when read
        return pending_combination(terms, lambda forced: combine(forced, q, method))
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


def propagate(nodes: Iterable[fx.Node], entry: Mapping[fx.Node, Bound], *, estimates: bool = False,
              ) -> dict[fx.Node, Bound]:
    """AutoLip over ``nodes`` (topologically sorted); ``entry`` gives the bounds of nodes outside the set.

    Shortcuts whose bound is only an estimate (greedy SeqLip) are used when ``estimates`` is true: the result is
    then an estimate of the network's constant, not a bound.
    """
    bounds: dict[fx.Node, Bound] = dict(entry)
    for node in nodes:
        if node in bounds:
            continue
        transfer = node.meta["lip.transfer"]
        terms = list(zip(transfer.gains, (bounds[a] for a in node.meta["lip.inputs"])))
        bounds[node] = combine(terms, transfer.combine)
        if transfer.joint and len(terms) > 1:
            bounds[node] = _joint(node, transfer, bounds)
        for shortcut in node.meta.get("lip.shortcuts", ()):
            if estimates or shortcut.bound.kind is not Kind.ESTIMATE:
                bounds[node] = through_shortcut(shortcut, bounds[node], bounds, entry)
    return bounds


def joint_source(node: fx.Node) -> fx.Node | None:
    """The tensor whose disjoint selections are all the inputs of ``node`` (the halves of a split), if any;
    cached in ``lip.joint_source``."""
    if "lip.joint_source" not in node.meta:
        pieces = node.meta["lip.inputs"]
        key = lambda n: n.meta.get("lip.key")  # noqa: E731
        roots = {selection_root(p, key) for p in pieces}
        root = roots.pop() if len(roots) == 1 else None
        found = root is not None and injective_selection(node.graph.owning_module, root, pieces, key) is not None
        node.meta["lip.joint_source"] = root if found else None
    return node.meta["lip.joint_source"]


def _joint(node: fx.Node, transfer, bounds: dict[fx.Node, Bound]) -> Bound:
    """A joint op (``Transfer.joint``) on disjoint selections of one tensor s: L ≤ max_i g_i · L(s), when smaller."""
    current = bounds[node]
    source = joint_source(node)
    if source is None or source not in bounds:
        return current
    gain = max(transfer.gains, key=lambda g: g.value)
    via = combine([(gain, bounds[source])], 1, method="autolip+joint")
    return via if via.value < current.value else current


@dataclass(frozen=True)
class Shortcut:
    """A certified bound of the sub-network from the input of ``first`` to the node that carries the shortcut
    (written by the fusion and chain passes): L(node) ≤ bound · L(input of first)."""

    first: fx.Node
    bound: Bound
    label: str  # what produced it, e.g. "fusion" or "seqlip": the node's bound reads "autolip+<label>"


def add_shortcut(node: fx.Node, first: fx.Node, bound: Bound, label: str) -> None:
    """Record on ``node`` that it is reached from ``first``'s input through a path bounded by ``bound``."""
    node.meta.setdefault("lip.shortcuts", []).append(Shortcut(first, bound, label))


def through_shortcut(shortcut: Shortcut, current: Bound, bounds: Mapping[fx.Node, Bound],
             entry: Mapping[fx.Node, Bound]) -> Bound:
    """The smaller of the AutoLip bound so far and ``shortcut · L(source)``; both are certified bounds."""
    first = shortcut.first
    source = first.meta["lip.inputs"][0]
    if first in entry or first not in bounds or source not in bounds:  # the path starts outside this sub-network
        return current
    via = combine([(shortcut.bound, bounds[source])], 1, method=f"autolip+{shortcut.label}")
    if is_pending(current) and shortcut.label == "fusion" and 0 < via.value < math.inf:
        return via  # fuse proved fused < product·(1 − 1e-6), and current is the product path (linalg.lazy)
    return via if via.value < current.value else current


def network_estimate(lg: LipGraph, norm: float) -> Bound | None:
    """AutoLip with every estimate shortcut taken (e.g. greedy SeqLip in each chain, as the SeqLip paper reports
    its network values); None when no pass recorded an estimate."""
    if not any(s.bound.kind is Kind.ESTIMATE for n in lg.ops() for s in n.meta.get("lip.shortcuts", ())):
        return None
    one = exact(1.0, "input")
    bounds = propagate(lg.ops(), {p: one for p in lg.placeholders}, estimates=True)
    total = combine([(exact(1.0, "output"), bounds[n]) for n in lg.output.meta["lip.inputs"]], norm)
    return Bound(total.value, Kind.ESTIMATE, "autolip+seqlip-greedy")


def autolip(lg: LipGraph, norm: float) -> Bound:
    """Bound of the whole network; per-output bounds go to ``output.meta["lip.outputs"]``."""
    one = exact(1.0, "input")
    bounds = propagate(lg.ops(), {p: one for p in lg.placeholders})
    for node, bound in bounds.items():
        node.meta["lip.L"] = bound
    outs = lg.output.meta["lip.inputs"]
    lg.output.meta["lip.outputs"] = [(n, bounds[n]) for n in outs]
    return combine([(exact(1.0, "output"), bounds[n]) for n in outs], norm)
