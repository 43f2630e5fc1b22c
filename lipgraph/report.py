"""The result of an analysis as a plain tree: no rich, no printing (renderers live in ``lipgraph.render``).

One node per module of the model's own hierarchy; its bound is the Lipschitz constant of the sub-network
the module computes (AutoLip over its ops, inputs at 1). Functional ops appear as children of the module
that calls them; an op merging several branches (``add``, ``cat``) shows its value inside the parent module
with the formula, e.g. ``1 + L(bn2)`` for a residual addition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from torch import fx

from .bound import Bound, Kind, exact, join_kinds
from .ir import LipGraph, Scope
from .passes.autolip import combine, propagate


@dataclass
class FusedChain:
    """A chain of affine ops bounded as one operator (ends at the node that carries it)."""

    members: list[str]
    bound: Bound
    product: float
    lower: Bound | None = None  # power iteration on the composed operator (``analyze(layer_lower=True)``)

    def to_dict(self) -> dict[str, Any]:
        return {"members": self.members, **bound_dict(self.bound), "product": self.product,
                "lower": lower_value(self.lower)}


@dataclass
class ChainInfo:
    """A sequential chain W_K ∘ φ ∘ ⋯ ∘ φ ∘ W_1 bounded as a whole (``method="seqlip"`` etc., algorithms.md §5–§8):
    ``bound`` is the smallest certified value, found by ``winner``; ``results`` has every estimator's value
    (certified or estimate) and ``product`` is AutoLip along the chain."""

    members: list[str]
    bound: Bound
    winner: str
    product: float
    results: dict[str, Bound]
    seconds: dict[str, float]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"members": self.members, **bound_dict(self.bound), "winner": self.winner, "product": self.product,
                "results": {name: bound_dict(b) for name, b in self.results.items()},
                "seconds": {name: round(t, 4) for name, t in self.seconds.items()}, "notes": list(self.notes)}


@dataclass
class ReportNode:
    path: str
    type: str
    op: str | None
    bound: Bound
    calls: int = 1
    formula: str | None = None
    notes: list[str] = field(default_factory=list)
    children: list["ReportNode"] = field(default_factory=list)
    fused: FusedChain | None = None
    layer_lower: Bound | None = None  # power iteration on this layer's operator (``analyze(layer_lower=True)``)
    chain: ChainInfo | None = None  # set on the node that stands for a sequential chain

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1] if self.path else self.type

    def walk(self) -> Iterator["ReportNode"]:
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type,
            "op": self.op,
            **bound_dict(self.bound),
            "calls": self.calls,
            "formula": self.formula,
            "notes": list(self.notes),
            "fused": self.fused.to_dict() if self.fused else None,
            "layer_lower": lower_value(self.layer_lower),
            "chain": self.chain.to_dict() if self.chain else None,
            "children": [c.to_dict() for c in self.children],
        }


@dataclass
class Report:
    bound: Bound
    norm: float
    model: str
    input_shape: list[list[int]]
    seconds: float
    frontend: str
    tree: ReportNode
    outputs: list[tuple[str, Bound]]
    notes: list[str] = field(default_factory=list)
    lower: Bound | None = None  # a proven lower bound (None with ``analyze(lower=False)`` or if the search failed)
    lower_input: Any = None  # the input (batch 1) at which it is attained
    estimate: Bound | None = None  # the network with each chain's estimate (greedy SeqLip), when computed

    @property
    def chains(self) -> list[ChainInfo]:
        """Every sequential chain bounded as a whole, in execution order."""
        return [node.chain for node in self.tree.walk() if node.chain is not None]

    @property
    def ratio(self) -> float | None:
        """upper / lower: how far the certified bound can be from the truth (None without a lower bound)."""
        if self.lower is None or self.lower.value <= 0 or math.isinf(self.bound.value):
            return None
        return self.bound.value / self.lower.value

    @property
    def kind(self) -> Kind:
        return self.bound.kind

    @property
    def method(self) -> str:
        return self.bound.method

    def find(self, path: str) -> ReportNode:
        """The tree node of a module path (``"layer1.0.conv1"``)."""
        for node in self.tree.walk():
            if node.path == path:
                return node
        raise KeyError(f"no node with path {path!r} in the report")

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of ``lipgraph explain --json``."""
        return {
            **bound_dict(self.bound),
            "lower": lower_value(self.lower),
            "ratio": self.ratio,
            "estimate": lower_value(self.estimate),
            "norm": norm_name(self.norm),
            "model": self.model,
            "input_shape": self.input_shape[0] if len(self.input_shape) == 1 else self.input_shape,
            "seconds": round(self.seconds, 4),
            "frontend": self.frontend,
            "outputs": [{"name": name, **bound_dict(b)} for name, b in self.outputs],
            "notes": list(self.notes),
            "tree": self.tree.to_dict(),
        }

    def print(self, **options: Any) -> None:
        from .render.rich_tree import print_report

        print_report(self, **options)


def bound_dict(b: Bound) -> dict[str, Any]:
    return {"bound": None if math.isinf(b.value) else b.value, "kind": b.kind.value, "method": b.method,
            "exact": b.exact}


def lower_value(b: Bound | None) -> float | None:
    return None if b is None else b.value


def norm_name(norm: float) -> str:
    return "inf" if math.isinf(norm) else f"{norm:g}"


# -- building the tree ----------------------------------------------------------------------------------
def build_tree(lg: LipGraph, total: Bound, norm: float) -> ReportNode:
    order = {n: i for i, n in enumerate(lg.ops())}
    instances: dict[Scope, list[fx.Node]] = {(): list(order)}
    for node in order:
        scope = node.meta["lip.scope"]
        for depth in range(1, len(scope) + 1):
            instances.setdefault(scope[:depth], []).append(node)

    root = ReportNode(path="", type=type(lg.model).__name__, op=None, bound=total)
    by_path: dict[str, ReportNode] = {"": root}
    rank: dict[str, int] = {}  # children are listed in execution order of their first op
    # the root scope has no op when the output does not depend on the input (L = 0)
    for scope in sorted(instances, key=lambda s: (len(s), order[instances[s][0]] if instances[s] else -1)):
        nodes = instances[scope]
        parent = by_path[scope[-2][0] if len(scope) > 1 else ""] if scope else None
        if scope:
            bound = _subnetwork_bound(lg, nodes, norm)
            path = scope[-1][0]
            single = nodes[0] if len(nodes) == 1 and nodes[0].meta["lip.scope"] == scope else None
            node = by_path.get(path)
            if node is not None:  # another call of the same module: the bound covers every call
                node.calls += 1
                node.bound = _worst(node.bound, bound)
                if single is not None:
                    node.layer_lower = _best_lower(node.layer_lower, single.meta.get("lip.layer_lower"))
                continue
            node = ReportNode(path=path, type=lg.module_types.get(path, "?"),
                              op=single.meta["lip.key"] if single else None, bound=bound)
            by_path[path] = node
            rank[path] = order[nodes[0]]
            parent.children.append(node)
            if single is not None:
                node.notes.extend(_op_notes(single))
                node.fused = _fused_chain(single)
                node.layer_lower = single.meta.get("lip.layer_lower")
                continue
        _add_op_children(lg, by_path[scope[-1][0]] if scope else root, scope, nodes, norm)
        rank.update((n.meta["lip.path"], order[n]) for n in nodes if n.meta["lip.scope"] == scope)
    for n in order:
        if "lip.seqlip" in n.meta:
            chain = _chain_node(n.meta["lip.seqlip"])
            by_path.get(n.meta["lip.seqlip"].chain.scope, root).children.append(chain)
            rank[chain.path] = order[n]
    for node in root.walk():
        node.children.sort(key=lambda c: rank[c.path])
        if node.calls > 1:
            node.notes.append(f"called ×{node.calls}")
    return root


def _add_op_children(lg: LipGraph, parent: ReportNode, scope: Scope, nodes: list[fx.Node], norm: float) -> None:
    """Functional ops called directly in this scope (not inside a child module)."""
    inside = set(nodes)
    local: dict[fx.Node, Bound] | None = None
    for n in nodes:
        if n.meta["lip.scope"] != scope:
            continue
        transfer = n.meta["lip.transfer"]
        child = ReportNode(path=n.meta["lip.path"], type=_op_type(lg, n), op=n.meta["lip.key"],
                           bound=_local_gain(transfer), notes=_op_notes(n), fused=_fused_chain(n),
                           layer_lower=n.meta.get("lip.layer_lower"))
        if len(transfer.gains) > 1:  # a merge: show its value inside the parent, and where it comes from
            local = local or propagate(nodes, _entries(nodes, inside))
            child.bound = local[n]
            child.formula = _merge_formula(n, local, inside, transfer)
        parent.children.append(child)


def _subnetwork_bound(lg: LipGraph, nodes: list[fx.Node], norm: float) -> Bound:
    """AutoLip over one module call: its inputs at 1, its outputs joined as a concatenation."""
    inside = set(nodes)
    if len(nodes) == 1 and len(nodes[0].meta["lip.inputs"]) == 1:  # one op: its own constant and method
        return nodes[0].meta["lip.transfer"].gains[0]
    bounds = propagate(nodes, _entries(nodes, inside))
    outs = [n for n in nodes if any(u not in inside for u in n.users)]
    one = exact(1.0, "output")
    return combine([(one, bounds[n]) for n in outs], norm)


def _entries(nodes: list[fx.Node], inside: set[fx.Node]) -> dict[fx.Node, Bound]:
    one = exact(1.0, "module input")
    return {a: one for n in nodes for a in n.meta["lip.inputs"] if a not in inside}


def _local_gain(transfer) -> Bound:
    """The op's own constant: its gain if it has one input, else the largest (all are shown in formulas)."""
    gains = transfer.gains
    if len(gains) == 1:
        return gains[0]
    if not gains:
        return exact(0.0, "constant")
    worst = max(gains, key=lambda g: g.value)
    return Bound(worst.value, join_kinds(g.kind for g in gains), worst.method, exact=all(g.exact for g in gains))


def _merge_formula(node: fx.Node, local: dict[fx.Node, Bound], inside: set[fx.Node], transfer) -> str:
    terms_sym, terms_num = [], []
    for gain, arg in zip(transfer.gains, node.meta["lip.inputs"]):
        name = "1" if arg not in inside else f"L({_term_name(arg, node.meta['lip.scope'])})"
        value = local[arg].value if arg in inside else 1.0
        coef = "" if gain.value == 1 else f"{gain.value:.4g}·"
        terms_sym.append(f"{coef}{name}" if name != "1" or coef == "" else f"{gain.value:.4g}")
        terms_num.append(f"{gain.value * value:.4g}")
    q = transfer.combine
    if q == 1:
        sym, num = " + ".join(terms_sym), " + ".join(terms_num)
    elif math.isinf(q):
        sym, num = f"max({', '.join(terms_sym)})", f"max({', '.join(terms_num)})"
    else:
        sym = f"({' + '.join(t + f'^{q:g}' for t in terms_sym)})^(1/{q:g})"
        num = f"({' + '.join(t + f'^{q:g}' for t in terms_num)})^(1/{q:g})"
    return f"{sym} = {num}"


def _term_name(arg: fx.Node, scope: Scope) -> str:
    """A merge input named after the child module of the merge's scope that produces it (``downsample``, not
    ``1`` for ``downsample.1``), else after its own path, relative to the scope."""
    inner = arg.meta["lip.scope"]
    path = inner[len(scope)][0] if len(inner) > len(scope) and inner[:len(scope)] == scope else arg.meta["lip.path"]
    return path.removeprefix(scope[-1][0] + ".") if scope else path


def _op_type(lg: LipGraph, node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return f"Tensor.{target}"
    if node.op == "call_module":
        return type(lg.gm.get_submodule(target)).__name__
    return getattr(target, "__name__", None) or str(target)


def _op_notes(node: fx.Node) -> list[str]:
    transfer = node.meta["lip.transfer"]
    notes = list(transfer.notes)
    if any(g.kind is Kind.UNBOUNDED for g in transfer.gains):
        notes.append("no rule for this op: treated as unbounded (unsupported='inf')")
    return notes


def _fused_chain(node: fx.Node) -> FusedChain | None:
    if "lip.chain" not in node.meta:
        return None
    first, fused, product = node.meta["lip.chain"]
    lower = node.meta.get("lip.chain_lower")
    members = [node.meta["lip.path"]]
    while members[-1] != first.meta["lip.path"]:
        node = node.meta["lip.inputs"][0]
        members.append(node.meta["lip.path"])
    return FusedChain(members=members[::-1], bound=fused, product=product, lower=lower)


def _chain_node(result) -> ReportNode:
    """The tree node of a chain (a :class:`lipgraph.passes.seqlip.ChainResult`), placed in the module that
    contains all its members, named ``<scope>.chain(<first member>)``."""
    members = result.chain.members()
    info = ChainInfo(members=members, bound=result.best, winner=result.winner, product=result.product.value,
                     results=dict(result.results), seconds=dict(result.seconds), notes=list(result.notes))
    scope = result.chain.scope
    path = f"{scope}.chain({members[0]})" if scope else f"chain({members[0]})"
    return ReportNode(path=path, type="chain", op=None, bound=result.best, chain=info)


def _best_lower(a: Bound | None, b: Bound | None) -> Bound | None:
    """Lower bounds of several calls of one module: the largest (each is ≤ its call's gain ≤ the worst)."""
    return max((x for x in (a, b) if x is not None), key=lambda x: x.value, default=None)


def _worst(a: Bound, b: Bound) -> Bound:
    top = a if a.value >= b.value else b
    return Bound(top.value, join_kinds([a.kind, b.kind]), top.method, exact=a.exact and b.exact)


def output_bounds(lg: LipGraph) -> list[tuple[str, Bound]]:
    return [(n.meta["lip.path"], b) for n, b in lg.output.meta["lip.outputs"]]

