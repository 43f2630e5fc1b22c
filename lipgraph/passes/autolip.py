"""AutoLip (Scaman & Virmaux, NeurIPS 2018, §4) over the graph: ``L_k = ||(l_{k,i} L_i)_i||_q``.

With ``q = 1`` this is the paper's sum over inputs; concatenations use ``q = p`` (ℓ2: root of squares).
Writes ``bound`` (a :class:`Bound`) in the record of every input-dependent node, ``outputs`` in the output node's.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

from torch import fx

from ..bound import Bound, Kind, exact, join_kinds
from ..linalg.lazy import is_pending, pending_combination
from ..ir import LipGraph
from ..record import Shortcut, record
from .joint import JointSplit, joint_split


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
              pieces: bool = False) -> dict[fx.Node, Bound]:
    """AutoLip over ``nodes`` (topologically sorted); ``entry`` gives the bounds of nodes outside the set.

    Shortcuts whose bound is only an estimate (greedy SeqLip) are used when ``estimates`` is true: the result is
    then an estimate of the network's constant, not a bound. ``pieces``: the entries are disjoint selections of
    one tensor, each at 1 (a joint op's branch, :func:`joint_shortcut`), so a joint op inside whose own pieces are
    entries takes its bound over them (:func:`nested_joint`).
    """
    bounds: dict[fx.Node, Bound] = dict(entry)
    for node in nodes:
        if node in bounds:
            continue
        rec = record(node)
        transfer = rec.transfer
        terms = list(zip(transfer.gains, (bounds[a] for a in rec.inputs)))
        bounds[node] = combine(terms, transfer.combine)
        for shortcut in [*joint_shortcut(node, bounds, entry, estimates=estimates), *rec.shortcuts]:
            if estimates or shortcut.bound.kind is not Kind.ESTIMATE:
                bounds[node] = through_shortcut(shortcut, bounds[node], bounds, entry)
        nested = nested_joint(node, bounds, entry, estimates=estimates) if pieces else None
        if nested is not None and nested.value < bounds[node].value:
            bounds[node] = nested
    return bounds


def joint_shortcut(node: fx.Node, bounds: Mapping[fx.Node, Bound], entry: Mapping[fx.Node, Bound], *,
                   estimates: bool = False) -> list[Shortcut]:
    """A joint op (``Transfer.joint``) whose inputs are functions of disjoint selections of one tensor s
    (:mod:`lipgraph.passes.joint`): the shortcut L ≤ max_i g_i·L_i · L(s), L_i the AutoLip bound of input i from its
    pieces (:func:`propagate` over its branch, the pieces at 1; 1 for a piece itself). Empty when there is none or
    a branch is not inside the sub-network ``bounds`` covers (a module call's entries start elsewhere)."""
    split = _split(node)
    if split is None or any(n not in bounds or n in entry
                            for nodes in (*split.pieces, *split.branches) for n in nodes):
        return []
    return [Shortcut(split.first, _joint_gain(node, split, estimates), split.label)]


def nested_joint(node: fx.Node, bounds: Mapping[fx.Node, Bound], entry: Mapping[fx.Node, Bound], *,
                 estimates: bool = False) -> Bound | None:
    """A joint op inside a joint op's branch (``max(max(f(a), f(b)), f(c))``, ``cat(cat(a, f(b)), c)``, clamp
    chains) whose pieces are among the branch's entries: max_i g_i·L_i, over its own pieces; None otherwise.

    Proof. In the branch of :func:`joint_shortcut` the entries are disjoint selections t of one tensor s, at 1;
    write Q(v) for the entries v reads. By induction over the branch, ‖Δv‖_p ≤ bounds[v]·‖ΔQ(v)‖_p (the
    coordinates of the entries of Q(v), together): true at an entry; an op with inputs a_j obeys
    ‖Δv‖ ≤ ‖(g_j‖Δa_j‖)_j‖_q ≤ ‖(g_j bounds[a_j])_j‖_q·‖ΔQ(v)‖ since Q(a_j) ⊆ Q(v); and a joint op whose inputs are
    functions of disjoint pieces P_j (its :func:`joint_split`, every piece an entry, P_j ⊆ Q(a_j)) obeys
    ‖Δv‖_p ≤ ‖(g_j L_j ‖ΔP_j‖_p)_j‖_p ≤ max_j g_j L_j · (Σ_j ‖ΔP_j‖_p^p)^{1/p} = max_j g_j L_j ·‖ΔQ(v)‖_p, the pieces
    being disjoint (ℓ∞: the max directly). The enclosing joint op then reads its input u_i at bounds[u_i] times
    ‖ΔQ(u_i)‖ ≤ ‖ΔP_i‖: docs/by-construction.md §1 with these L_i. Nested ops of any depth: the L_j here are
    computed the same way (:func:`_joint_gain`)."""
    split = _split(node)
    if split is None or any(t not in entry for ts in split.pieces for t in ts) or any(
            n not in bounds or n in entry for ns in split.branches for n in ns):
        return None
    return _joint_gain(node, split, estimates)


def _split(node: fx.Node) -> JointSplit | None:
    transfer = record(node).transfer
    return joint_split(node) if transfer.joint and len(transfer.gains) > 1 else None


def _joint_gain(node: fx.Node, split: JointSplit, estimates: bool) -> Bound:
    """max_i g_i·L_i, L_i the AutoLip bound of input i over its branch from its pieces (each at 1; 1 for a piece
    itself), nested joint ops bounded over their own pieces (:func:`nested_joint`)."""
    one = exact(1.0, "selection")
    inner = [propagate(branch, {t: one for t in pieces}, estimates=estimates, pieces=True)[u] if branch else one
             for u, pieces, branch in zip(record(node).inputs, split.pieces, split.branches)]
    reason = "disjoint selections" if split.plain else "disjoint selections through branches"
    return combine(list(zip(record(node).transfer.gains, inner)), math.inf, method=reason)


def add_shortcut(node: fx.Node, first: fx.Node, bound: Bound, label: str) -> None:
    """Record on ``node`` that it is reached from ``first``'s input through a path bounded by ``bound``."""
    record(node).shortcuts.append(Shortcut(first, bound, label))


def through_shortcut(shortcut: Shortcut, current: Bound, bounds: Mapping[fx.Node, Bound],
             entry: Mapping[fx.Node, Bound]) -> Bound:
    """The smaller of the AutoLip bound so far and ``shortcut · L(source)``; both are certified bounds."""
    first = shortcut.first
    source = record(first).inputs[0]
    if first in entry or first not in bounds or source not in bounds:  # the path starts outside this sub-network
        return current
    via = combine([(shortcut.bound, bounds[source])], 1, method=f"autolip+{shortcut.label}")
    if is_pending(current) and shortcut.label == "fusion" and 0 < via.value < math.inf:
        return via  # fuse proved fused < product·(1 − 1e-6), and current is the product path (linalg.lazy)
    return via if via.value < current.value else current


def network_estimate(lg: LipGraph, norm: float) -> Bound | None:
    """AutoLip with every estimate shortcut taken (e.g. greedy SeqLip in each chain, as the SeqLip paper reports
    its network values); None when no pass recorded an estimate."""
    if not any(s.bound.kind is Kind.ESTIMATE for n in lg.ops() for s in record(n).shortcuts):
        return None
    one = exact(1.0, "input")
    bounds = propagate(lg.ops(), {p: one for p in lg.placeholders}, estimates=True)
    total = combine([(exact(1.0, "output"), bounds[n]) for n in record(lg.output).inputs], norm)
    return Bound(total.value, Kind.ESTIMATE, "autolip+seqlip-greedy")


def autolip(lg: LipGraph, norm: float) -> Bound:
    """Bound of the whole network; per-output bounds go to ``record(output).outputs``."""
    one = exact(1.0, "input")
    bounds = propagate(lg.ops(), {p: one for p in lg.placeholders})
    for node, bound in bounds.items():
        record(node).bound = bound
    outs = record(lg.output).inputs
    record(lg.output).outputs = [(n, bounds[n]) for n in outs]
    return combine([(exact(1.0, "output"), bounds[n]) for n in outs], norm)
