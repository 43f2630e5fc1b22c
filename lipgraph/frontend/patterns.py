"""Subgraph patterns: compounds whose constant is exact while their ops, bounded one by one, are loose.

A :class:`Pattern` recognises a compound in the traced graph (MaxMin traced to split/max/min/cat: AutoLip gives 2 in
ℓ2, the compound is a permutation on each linear piece: 1). :func:`rewrite` runs after
:func:`lipgraph.frontend.propagate.propagate` (it needs which nodes depend on the input, their shapes and the
constants) and replaces each match by one ``call_function`` node whose target is a :class:`Compound`: it computes
the same values (it runs the matched nodes), carries the pattern's name as its op key, and its rule bounds it as one
op; the tree shows it as one node. A pattern is registered like a rule (``registry.register_pattern``), from the
built-in rules, an entry-point pack, a rules file or user code.

Matchers are small functions over canonical op keys (:func:`lipgraph.frontend.opkeys.node_key`), so every spelling
of an op (``torch.max(a, b)``, ``torch.maximum``, ``aten.maximum``) matches alike; they must check everything their
rule's proof assumes (input dependence, shapes, disjointness) and return ``None`` otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import fx

from ..ruleapi import RuleFn, Var
from .opkeys import node_key

# ops that only select coordinates of their tensor input (each output coordinate is one input coordinate)
SELECTIONS = frozenset({"split", "chunk", "unbind", "getitem", "reshape", "flatten", "unflatten", "permute",
                        "transpose", "squeeze", "unsqueeze", "contiguous", "identity", "narrow"})


@dataclass
class Match:
    """One occurrence: the matched ``nodes`` (the anchor, i.e. the compound's output, last), and ``params`` the rule
    needs (dims, scales, ...). The compound's inputs are the nodes outside the match that matched nodes use."""

    nodes: list[fx.Node]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pattern:
    """A compound recognised in the graph and its rule.

    ``match(anchor, view)`` looks at a candidate output node and returns a :class:`Match` or ``None``; ``rule``
    bounds the compound (``ctx.target.params`` holds the match's params); ``title`` names it in the tree.
    """

    name: str
    title: str
    match: Callable[[fx.Node, "GraphView"], Match | None]
    rule: RuleFn
    description: str = ""
    exact: bool = True


class Compound:
    """The target of a rewritten node: runs the matched nodes (a small ``GraphModule``) on the compound's inputs."""

    def __init__(self, pattern: Pattern, module: fx.GraphModule, params: dict[str, Any]) -> None:
        self.lipgraph_op_key = pattern.name  # read by opkeys.node_key
        self.pattern = pattern
        self.module = module
        self.params = params
        self.__name__ = pattern.title
        self.__qualname__ = pattern.title
        self.__module__ = __name__

    def __call__(self, *inputs: Any) -> Any:
        return self.module(*inputs)

    def __repr__(self) -> str:
        return f"<compound {self.key}>"


class GraphView:
    """What matchers see of a propagated graph: canonical keys, input dependence, shapes, constant values."""

    def __init__(self, gm: fx.GraphModule, alias_of: Callable[[Any], str | None]) -> None:
        self.gm = gm
        self._alias_of = alias_of

    def key(self, node: Any) -> str | None:
        return node_key(self.gm, node, self._alias_of) if isinstance(node, fx.Node) else None

    @staticmethod
    def dep(node: Any) -> bool:
        return isinstance(node, fx.Node) and bool(node.meta.get("lip.dep"))

    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...] | None:
        info = node.meta.get("lip.info")
        return info.shape if isinstance(info, Var) and info.parts is None else None

    @staticmethod
    def value(arg: Any) -> Any:
        """A constant argument's value (an fx node's recorded value, or the literal itself)."""
        return arg.meta.get("lip.value") if isinstance(arg, fx.Node) else arg

    def module(self, node: fx.Node) -> torch.nn.Module | None:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def dep_args(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if self.dep(a)]

    def injective_selection(self, source: fx.Node, pieces: Sequence[fx.Node]) -> list[fx.Node] | None:
        """See :func:`injective_selection`."""
        return injective_selection(self.gm, source, pieces, self.key)


def selection_root(node: fx.Node, key_of: Callable[[fx.Node], str | None]) -> fx.Node | None:
    """The first node up the chain of selections (:data:`SELECTIONS`) above ``node`` that is not one."""
    while key_of(node) in SELECTIONS:
        deps = [a for a in node.all_input_nodes if a.meta.get("lip.dep")]
        if len(deps) != 1:
            return None
        node = deps[0]
    return node


def injective_selection(gm: fx.GraphModule, source: fx.Node, pieces: Sequence[fx.Node],
                        key_of: Callable[[fx.Node], str | None]) -> list[fx.Node] | None:
    """The nodes between ``source`` and ``pieces`` when every piece is reached from ``source`` through selections
    only (:data:`SELECTIONS`) and, together, the pieces hold each coordinate of ``source`` at most once: then
    ‖(Δpiece_1, …, Δpiece_k)‖_p ≤ ‖Δsource‖_p in every ℓp. Checked by running the path on the coordinates'
    indices (a float64 arange: exact). ``None`` otherwise."""
    path: list[fx.Node] = []

    def collect(node: fx.Node) -> bool:
        if node is source or node in path:
            return True
        deps = [a for a in node.all_input_nodes if a.meta.get("lip.dep")]
        if key_of(node) not in SELECTIONS or len(deps) != 1 or not collect(deps[0]):
            return False
        path.append(node)
        return True

    info = source.meta.get("lip.info")
    if not isinstance(info, Var) or info.parts is not None or not all(collect(p) for p in pieces):
        return None
    env: dict[fx.Node, Any] = {source: torch.arange(info.numel, dtype=torch.float64).reshape(info.shape)}
    try:
        for node in path:
            env[node] = _run(gm, node, env)
    except Exception:  # noqa: BLE001 - e.g. an index that is itself the input: not a plain selection
        return None
    values = [env[p] for p in pieces]
    if not all(isinstance(v, torch.Tensor) for v in values):
        return None
    indices = torch.cat([v.reshape(-1) for v in values])
    return path if indices.unique().numel() == indices.numel() else None


def _run(gm: fx.GraphModule, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
    """Evaluate one node with its input-dependent arguments taken from ``env`` and constants from propagation."""
    args = fx.node.map_arg(node.args, lambda a: env[a] if a in env else a.meta.get("lip.value"))
    kwargs = fx.node.map_arg(node.kwargs, lambda a: env[a] if a in env else a.meta.get("lip.value"))
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    return node.target(*args, **kwargs)


def rewrite(gm: fx.GraphModule, patterns: Iterable[Pattern], alias_of: Callable[[Any], str | None]) -> int:
    """Replace every match of ``patterns`` in ``gm`` (propagated) by one compound node; returns how many.

    Nodes are tried as anchors in graph order, patterns in registration order; a match whose inner nodes are used
    outside it, or that overlaps an earlier match, is skipped (its ops keep their own rules).
    """
    patterns = list(patterns)
    if not patterns:
        return 0
    view = GraphView(gm, alias_of)
    taken: set[fx.Node] = set()
    found: list[tuple[Pattern, Match]] = []
    for anchor in list(gm.graph.nodes):
        if not view.dep(anchor) or anchor.op not in ("call_function", "call_method", "call_module"):
            continue
        for pattern in patterns:
            match = pattern.match(anchor, view)
            if match is None or match.nodes[-1] is not anchor:
                continue
            inner = set(match.nodes)
            # unused results (the indices of a max whose values are taken) go with the match
            dead = [u for n in match.nodes[:-1] for u in n.users if u not in inner and not u.users and u.op != "output"]
            inner |= set(dead)
            if any(u not in inner for n in match.nodes[:-1] for u in n.users) or taken & inner:
                continue
            match.nodes[:-1] = [*match.nodes[:-1], *dict.fromkeys(dead)]
            taken |= inner
            found.append((pattern, match))
            break
    for pattern, match in found:
        _replace(gm, pattern, match)
    if found:
        gm.graph.lint()
        gm.recompile()
    return len(found)


def _replace(gm: fx.GraphModule, pattern: Pattern, match: Match) -> None:
    inner = set(match.nodes)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    nodes = sorted(match.nodes, key=order.__getitem__)
    inputs: list[fx.Node] = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inner and a not in inputs:
                inputs.append(a)
    sub = fx.Graph()
    env = {a: sub.placeholder(f"in_{i}") for i, a in enumerate(inputs)}
    for n in nodes:
        env[n] = sub.node_copy(n, env.__getitem__)
    anchor = match.nodes[-1]
    sub.output(env[anchor])
    compound = Compound(pattern, fx.GraphModule(gm, sub, pattern.title), match.params)
    with gm.graph.inserting_before(anchor):
        new = gm.graph.create_node("call_function", compound, tuple(inputs), {}, name=pattern.name)
    new.meta = {k: v for k, v in anchor.meta.items()}
    anchor.replace_all_uses_with(new)
    for n in reversed(nodes):
        gm.graph.erase_node(n)


# -- helpers for matchers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ref:
    index: int


class Chain:
    """A straight chain of ops from ``start`` captured with its constants, so a rule can run it after the graph has
    been rewritten (``chain(t, dtype=torch.float64)`` casts the floating constants and module states to ``dtype``)."""

    def __init__(self, gm: fx.GraphModule, nodes: Sequence[fx.Node], start: fx.Node) -> None:
        index = {start: 0}
        self.steps = []
        for i, n in enumerate(nodes, 1):
            def value(a: fx.Node) -> Any:
                return _Ref(index[a]) if a in index else a.meta.get("lip.value")

            module = gm.get_submodule(n.target) if n.op == "call_module" else None
            self.steps.append((n.op, n.target, fx.node.map_arg(n.args, value), fx.node.map_arg(n.kwargs, value), module))
            index[n] = i

    def __call__(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        values = [t]

        def fill(obj: Any) -> Any:
            if isinstance(obj, _Ref):
                return values[obj.index]
            if isinstance(obj, torch.Tensor):
                return obj.to(dtype) if dtype is not None and obj.is_floating_point() else obj
            if isinstance(obj, (tuple, list)):
                return type(obj)(fill(o) for o in obj)
            if isinstance(obj, dict):
                return {k: fill(v) for k, v in obj.items()}
            return obj

        for op, target, args, kwargs, module in self.steps:
            args, kwargs = fill(args), fill(kwargs)
            if op == "call_method":
                values.append(getattr(args[0], target)(*args[1:], **kwargs))
            elif module is not None:
                state = {k: fill(v.detach()) for k, v in [*module.named_parameters(), *module.named_buffers()]}
                values.append(torch.func.functional_call(module, state, args, kwargs))
            else:
                values.append(target(*args, **kwargs))
        return values[-1]


def binary_operands(node: fx.Node) -> tuple[Any, Any]:
    """The two operands of a binary op, positional or as ``input=``/``other=`` keywords."""
    args = list(node.args[:2])
    for name in ("input", "other")[len(args):]:
        args.append(node.kwargs.get(name))
    return args[0], args[1]


def cat_operands(node: fx.Node, view: GraphView) -> tuple[list[Any], int] | None:
    """The tensors and the dim of a ``cat``/``stack`` node (dim normalised to be ≥ 0 against the output rank)."""
    if view.key(node) not in ("cat", "stack") or view.shape(node) is None:
        return None
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
        return None
    return list(tensors), dim % len(view.shape(node))
