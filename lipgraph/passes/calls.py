"""AutoLip per module call: the constant of the sub-network each call of a module computes (its inputs at 1, its
outputs joined as a concatenation), which the report's tree shows beside each module and the formulas use.

Part of the bound pass: :func:`module_calls` runs :func:`.autolip.propagate` once per call and records, for each
op, the shortcut that won there (:func:`taken_shortcuts`), so that the tree and the formulas read these results
instead of running AutoLip again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import fx

from ..bound import Bound, Kind, exact
from ..ir import LipGraph
from ..record import Scope, Shortcut, record
from .autolip import combine, joint_shortcut, propagate, through_shortcut


@dataclass
class ModuleCall:
    """One call of a module (``()``: the whole model): its ops in execution order, AutoLip over them with the
    call's inputs at 1 (``bounds``, entries included), the call's constant, and the shortcuts AutoLip took."""

    nodes: list[fx.Node]
    entries: dict[fx.Node, Bound]
    bounds: dict[fx.Node, Bound]
    bound: Bound
    taken: dict[fx.Node, Shortcut]


def module_calls(lg: LipGraph, norm: float) -> dict[Scope, ModuleCall]:
    """Every module call of ``lg`` (scope -> its :class:`ModuleCall`; ``()`` is the model), in the order of the
    scopes' first appearance in the graph."""
    order = lg.ops()
    instances: dict[Scope, list[fx.Node]] = {(): list(order)}
    for node in order:
        scope = record(node).scope
        for depth in range(1, len(scope) + 1):
            instances.setdefault(scope[:depth], []).append(node)
    return {scope: _call(nodes, norm) for scope, nodes in instances.items()}


def _call(nodes: list[fx.Node], norm: float) -> ModuleCall:
    inside = set(nodes)
    entries = module_entries(nodes, inside)
    bounds = propagate(nodes, entries)
    if len(nodes) == 1 and len(record(nodes[0]).inputs) == 1:  # one op: its own constant and method
        bound = record(nodes[0]).transfer.gains[0]
    else:
        one = exact(1.0, "output")
        bound = combine([(one, bounds[n]) for n in module_outputs(nodes, inside)], norm)
    return ModuleCall(nodes, entries, bounds, bound, taken_shortcuts(nodes, bounds, entries))


def module_outputs(nodes: list[fx.Node], inside: set[fx.Node]) -> list[fx.Node]:
    """The ops of a module call whose results are used outside it."""
    return [n for n in nodes if any(u not in inside for u in n.users)]


def module_entries(nodes: list[fx.Node], inside: set[fx.Node]) -> dict[fx.Node, Bound]:
    """The tensors a module call reads from outside it, each at bound 1 (the call's own constant)."""
    one = exact(1.0, "module input")
    return {a: one for n in nodes for a in record(n).inputs if a not in inside}


def taken_shortcuts(nodes: list[fx.Node], bounds: Mapping[fx.Node, Bound],
                    entry: Mapping[fx.Node, Bound]) -> dict[fx.Node, Shortcut]:
    """For each op where :func:`propagate` (with these results) replaced the AutoLip bound by a shortcut, the last
    shortcut that won; replayed from the final bounds with the same comparison."""
    taken = {}
    for n in nodes:
        if n in entry:
            continue
        shortcuts = [s for s in [*joint_shortcut(n, bounds, entry), *record(n).shortcuts]
                     if s.bound.kind is not Kind.ESTIMATE]
        if not shortcuts:
            continue
        transfer = record(n).transfer
        current = combine(list(zip(transfer.gains, (bounds[a] for a in record(n).inputs))), transfer.combine)
        for s in shortcuts:
            after = through_shortcut(s, current, bounds, entry)
            if after is not current:
                taken[n] = s
            current = after
    return taken
