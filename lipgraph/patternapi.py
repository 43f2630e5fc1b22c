"""The pattern API: what a subgraph pattern is and what its matcher sees (``lipgraph.Pattern``, ``lipgraph.Match``).

A :class:`Pattern` recognises a compound in the traced graph whose constant is exact while its ops, bounded one by
one, are loose (MaxMin traced to split/max/min/cat: AutoLip gives 2 in ℓ2, the compound is a permutation on each
linear piece: 1). :mod:`lipgraph.frontend.patterns` runs the matchers and rewrites each match into one op; rules
(``rules/pattern_*.py``) and users define patterns with this module only, and register them like rules
(``registry.register_pattern``).

Matchers are small functions over canonical op keys (``view.key(node)``), so every spelling of an op
(``torch.max(a, b)``, ``torch.maximum``, ``aten.maximum``) matches alike; they must check everything their rule's
proof assumes (input dependence, shapes, disjointness) and return ``None`` otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import fx

from .ruleapi import RuleFn, Var
from .record import record

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


class GraphView:
    """What matchers see of a propagated graph: canonical keys, input dependence, shapes, constant values."""

    def __init__(self, gm: fx.GraphModule, key_of: Callable[[fx.Node], str | None]) -> None:
        self.gm = gm
        self._key_of = key_of

    def key(self, node: Any) -> str | None:
        """The canonical op key of an op node (``None`` for anything else)."""
        return self._key_of(node) if isinstance(node, fx.Node) else None

    @staticmethod
    def dep(node: Any) -> bool:
        return isinstance(node, fx.Node) and bool(record(node).dep)

    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...] | None:
        info = record(node).info
        return info.shape if isinstance(info, Var) and info.parts is None else None

    @staticmethod
    def value(arg: Any) -> Any:
        """A constant argument's value (an fx node's recorded value, or the literal itself)."""
        return record(arg).value if isinstance(arg, fx.Node) else arg

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
        deps = [a for a in node.all_input_nodes if record(a).dep]
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
        deps = [a for a in node.all_input_nodes if record(a).dep]
        if key_of(node) not in SELECTIONS or len(deps) != 1 or not collect(deps[0]):
            return False
        path.append(node)
        return True

    info = record(source).info
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
    args = fx.node.map_arg(node.args, lambda a: env[a] if a in env else record(a).value)
    kwargs = fx.node.map_arg(node.kwargs, lambda a: env[a] if a in env else record(a).value)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    return node.target(*args, **kwargs)


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
                return _Ref(index[a]) if a in index else record(a).value

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
