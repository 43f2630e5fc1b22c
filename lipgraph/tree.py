"""The tree pass: the report's tree (:class:`lipgraph.report.ReportNode`) and formulas, from the node records and
the module calls' bounds the bound passes wrote — no AutoLip runs here.

One node per module of the model's own hierarchy; its bound is the Lipschitz constant of the sub-network
the module computes (AutoLip over its ops, inputs at 1: :mod:`lipgraph.passes.calls`). Functional ops appear as
children of the module that calls them; an op merging several branches (``add``, ``cat``) shows its value inside
the parent module with its formula, e.g. ``1 + L(conv2+bn2)·L(relu)·L(conv1+bn1)`` for a residual addition. Every
node also carries its bound as a sympy formula over its children's constants (``expr``, :mod:`lipgraph.symbolic`),
which ``Report.formulas`` evaluates, differentiates (attribution) and re-evaluates with other constants (what-if).
The formulas are built on first use (:class:`LazyFormulas`), so an analysis shown without them never imports sympy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from torch import fx

from .bound import Bound, Kind, exact, join_kinds
from .ir import LipGraph, output_names
from .passes.calls import ModuleCall
from .passes.fuse import fused_members
from .paths import chain_path
from .record import Scope, record
from .report import ChainInfo, FusedChain, ReportNode

if TYPE_CHECKING:
    from .formula import Formulas
    from .symbolic import TreeFormulas


class LazyFormulas:
    """The tree's formulas (:func:`lipgraph.symbolic.build_formulas`), built once, on first use: calling it gives the
    :class:`~lipgraph.formula.Formulas`; :meth:`node` a tree node's formula and display formula. ``merges`` holds
    every path that may carry a display formula (ops with several inputs or a taken shortcut), so that a tree
    without merges is drawn without building anything."""

    def __init__(self, lg: LipGraph, calls: dict[Scope, ModuleCall], norm: float, merges: frozenset[str]) -> None:
        self._args: tuple | None = (lg, calls, norm)
        self._built: TreeFormulas | None = None
        self.merges = merges

    def _tree(self) -> TreeFormulas:
        if self._built is None:
            from .symbolic import build_formulas  # sympy: only here

            self._built, self._args = build_formulas(*self._args), None
        return self._built

    def __call__(self) -> Formulas:
        return self._tree().formulas

    def node(self, path: str, is_op: bool) -> tuple[Any, str | None]:
        """A tree node's formula (``expr``) and, for a merge, its worked display formula inside its module."""
        built = self._tree()
        merge = built.merges.get(path)
        return built.expr(path, is_op), built.formulas.worked(*merge) if merge is not None else None


def build_tree(lg: LipGraph, calls: dict[Scope, ModuleCall], total: Bound, norm: float
               ) -> tuple[ReportNode, LazyFormulas]:
    """The report's tree and its formulas, built on first use (every node's ``expr``; merges also get their display
    formula), from the records and ``calls`` (:func:`lipgraph.passes.calls.module_calls`); ``total`` is the model's
    bound."""
    order = {n: i for i, n in enumerate(calls[()].nodes)}
    instances = {scope: call.nodes for scope, call in calls.items()}

    root = ReportNode(path="", type=type(lg.model).__name__, op=None, bound=total)
    root.seconds = _op_seconds(order)
    by_path: dict[str, ReportNode] = {"": root}
    rank: dict[str, int] = {}  # children are listed in execution order of their first op
    # the root scope has no op when the output does not depend on the input (L = 0)
    for scope in sorted(instances, key=lambda s: (len(s), order[instances[s][0]] if instances[s] else -1)):
        nodes = instances[scope]
        parent = by_path[scope[-2][0] if len(scope) > 1 else ""] if scope else None
        if scope:
            bound = calls[scope].bound
            path = scope[-1][0]
            single = nodes[0] if len(nodes) == 1 and record(nodes[0]).scope == scope else None
            node = by_path.get(path)
            if node is not None:  # another call of the same module: the bound covers every call
                node.calls += 1
                node.seconds += _op_seconds(nodes)
                node.bound = _worst(node.bound, bound)
                if single is not None:
                    node.layer_lower = _best_lower(node.layer_lower, record(single).layer_lower)
                continue
            node = ReportNode(path=path, type=lg.module_types.get(path, "?"),
                              op=record(single).key if single else None, bound=bound)
            by_path[path] = node
            node.seconds = _op_seconds(nodes)
            rank[path] = order[nodes[0]]
            parent.children.append(node)
            if single is not None:
                node.notes.extend(_op_notes(single))
                node.fused = _fused_chain(single)
                node.layer_lower = record(single).layer_lower
                continue
        _add_op_children(lg, by_path[scope[-1][0]] if scope else root, scope, calls[scope])
        rank.update((record(n).path, order[n]) for n in nodes if record(n).scope == scope)
    for n in order:
        if record(n).chain is not None:
            chain = _chain_node(record(n).chain)
            by_path.get(record(n).chain.chain.scope, root).children.append(chain)
            rank[chain.path] = order[n]
    merges = frozenset(record(n).path for n in order
                       if len(record(n).inputs) > 1 or n in calls.get(record(n).scope, calls[()]).taken)
    formulas = LazyFormulas(lg, calls, norm, merges)
    for node in root.walk():
        node.children.sort(key=lambda c: rank[c.path])
        if node.calls > 1:
            node.notes.append(f"called ×{node.calls}")
        node._lazy = formulas  # a merge shows "1 + L(conv2+bn2)·L(relu)·L(conv1+bn1) = 1 + 8.99" in the tree
    return root, formulas


def _add_op_children(lg: LipGraph, parent: ReportNode, scope: Scope, call: ModuleCall) -> None:
    """Functional ops called directly in this scope (not inside a child module)."""
    for n in call.nodes:
        if record(n).scope != scope:
            continue
        transfer = record(n).transfer
        child = ReportNode(path=record(n).path, type=_op_type(lg, n), op=record(n).key,
                           bound=_local_gain(transfer), notes=_op_notes(n), fused=_fused_chain(n),
                           layer_lower=record(n).layer_lower)
        child.seconds = _op_seconds([n])
        if len(transfer.gains) > 1:  # a merge: show its value inside the parent, and where it comes from
            child.bound = call.bounds[n]
        parent.children.append(child)


def _op_seconds(nodes: Iterable[fx.Node]) -> float:
    """Time spent on these ops' rules and norms (``seconds``, written by the annotate pass)."""
    return math.fsum(record(n).seconds for n in nodes)


def _local_gain(transfer) -> Bound:
    """The op's own constant: its gain if it has one input, else the largest (all are shown in formulas)."""
    gains = transfer.gains
    if len(gains) == 1:
        return gains[0]
    if not gains:
        return exact(0.0, "constant")
    worst = max(gains, key=lambda g: g.value)
    return Bound(worst.value, join_kinds(g.kind for g in gains), worst.method, exact=all(g.exact for g in gains))


def _op_type(lg: LipGraph, node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return f"Tensor.{target}"
    if node.op == "call_module":
        return type(lg.gm.get_submodule(target)).__name__
    return getattr(target, "__name__", None) or str(target)


def _op_notes(node: fx.Node) -> list[str]:
    transfer = record(node).transfer
    notes = list(transfer.notes)
    if any(g.kind is Kind.UNBOUNDED for g in transfer.gains):
        notes.append("no rule for this op: treated as unbounded (unsupported='inf')")
    return notes


def _fused_chain(node: fx.Node) -> FusedChain | None:
    fused = record(node).fused
    if fused is None:
        return None
    return FusedChain(members=[record(m).path for m in fused_members(node)], bound=fused.bound,
                      product=fused.product, lower=fused.lower)


def _chain_node(result) -> ReportNode:
    """The tree node of a chain (a :class:`lipgraph.passes.seqlip.ChainResult`), placed in the module that
    contains all its members, named ``<scope>.chain(<first member>)``."""
    members = result.chain.members()
    info = ChainInfo(members=members, bound=result.best, winner=result.winner, product=result.product.value,
                     results=dict(result.results), seconds=dict(result.seconds), notes=list(result.notes))
    return ReportNode(path=chain_path(result), type="chain", op=None, bound=result.best, chain=info,
                      notes=list(info.notes))


def _best_lower(a: Bound | None, b: Bound | None) -> Bound | None:
    """Lower bounds of several calls of one module: the largest (each is ≤ its call's gain ≤ the worst)."""
    return max((x for x in (a, b) if x is not None), key=lambda x: x.value, default=None)


def _worst(a: Bound, b: Bound) -> Bound:
    top = a if a.value >= b.value else b
    return Bound(top.value, join_kinds([a.kind, b.kind]), top.method, exact=a.exact and b.exact)



def output_bounds(lg: LipGraph) -> list[tuple[str, Bound]]:
    return [(name, b) for name, (_, b) in zip(output_names(lg), record(lg.output).outputs)]

