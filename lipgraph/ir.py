"""The intermediate representation: the fx graph, a networkx view of its input-dependent part, and the
model's own module tree for display.

Fields of each node's record (:class:`lipgraph.record.NodeRecord`) written here (on top of those from
:mod:`lipgraph.frontend.propagate`):

- ``key``     canonical op key (input-dependent ops only; ``None`` if the op has no known spelling)
- ``scope``   the module calls the node sits in, outermost first: ``(("layer1", 0), ("layer1.0", 0))``
- ``path``    display path: the module path of a ``call_module`` op, else ``<scope>.<node name>``
- ``source``  ``file:line: code`` of the user's source line, when known
- ``inputs``  the input-dependent argument nodes, one entry per occurrence, in argument order
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import networkx as nx
from torch import fx, nn

from .frontend.opkeys import display_name, node_key
from .frontend.patterns import rewrite
from .frontend.propagate import propagate
from .frontend.trace import _LIPGRAPH_DIR, _TORCH_DIR, trace
from .registry import Registry
from .record import Scope, record  # noqa: F401 - Scope is part of this module's API

@dataclass
class LipGraph:
    model: nn.Module
    gm: fx.GraphModule
    frontend: str
    inputs: tuple
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    module_types: dict[str, str] = field(default_factory=dict)

    @property
    def placeholders(self) -> list[fx.Node]:
        return [n for n in self.gm.graph.nodes if n.op == "placeholder" and record(n).dep]

    @property
    def output(self) -> fx.Node:
        return next(n for n in reversed(self.gm.graph.nodes) if n.op == "output")

    def ops(self) -> list[fx.Node]:
        """Input-dependent op nodes in topological order (no placeholders, no output)."""
        return [n for n in nx.topological_sort(self.graph) if n.op not in ("placeholder", "output")]

    def target_of(self, node: fx.Node) -> Any:
        """The module of a ``call_module`` node, else the node's target."""
        return self.gm.get_submodule(node.target) if node.op == "call_module" else node.target


def build(model: nn.Module, inputs: tuple, registry: Registry, frontend: str = "auto",
          concrete_args: dict[str, Any] | None = None) -> LipGraph:
    """Trace, run once for shapes and constants, and annotate keys, scopes, paths and sources."""
    gm, used = trace(model, inputs, registry, frontend, concrete_args)
    propagate(gm, inputs)
    _unpack_returned_namedtuples(gm.graph)
    rewrite(gm, registry.patterns.values(), registry.alias)
    lg = LipGraph(model=model, gm=gm, frontend=used, inputs=inputs,
                  module_types={name: type(m).__name__ for name, m in model.named_modules()})
    taken = set(lg.module_types)  # module paths: a functional op must not take one (torch.relu vs self.relu)
    for n in gm.graph.nodes:
        record(n).scope = _scope(n)
        record(n).source = _source(n)
        if n.op == "output" or record(n).dep:
            record(n).inputs = [a for a in arg_nodes(n) if record(a).dep]
            lg.graph.add_node(n)
            lg.graph.add_edges_from((a, n) for a in record(n).inputs)
        if record(n).dep and n.op != "output":
            record(n).key = op_key(lg, n, registry)
            record(n).path = _unique(_path(n), taken) if n.op != "call_module" else _path(n)
    # ops whose results never reach an output (an unused max-pool index, a debug tensor) cannot change L
    lg.graph = lg.graph.subgraph(nx.ancestors(lg.graph, lg.output) | {lg.output}).copy()
    return lg


def _unpack_returned_namedtuples(graph: fx.Graph) -> None:
    """``return Out(a, b)``: fx records building the namedtuple as a call. Return the namedtuple of its arguments
    instead, so that each field is an output of its own, named by its field (:func:`output_names`)."""
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    packs: list[fx.Node] = []

    def unpack(obj: Any) -> Any:
        if isinstance(obj, fx.Node) and obj.op == "call_function" and _is_namedtuple(obj.target) \
                and len(obj.users) == 1 and not obj.kwargs:
            packs.append(obj)
            return obj.target(*(unpack(a) for a in obj.args))
        if isinstance(obj, dict):
            return {k: unpack(v) for k, v in obj.items()}
        if isinstance(obj, (tuple, list)):
            return type(obj)(*map(unpack, obj)) if hasattr(obj, "_fields") else type(obj)(map(unpack, obj))
        return obj

    output.args = tuple(unpack(a) for a in output.args)
    for node in reversed(packs):
        graph.erase_node(node)


def _is_namedtuple(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields")


def output_names(lg: LipGraph) -> list[str]:
    """A name per input-dependent output (``inputs`` of the output node's record, in order): its keys in the returned
    dicts and namedtuples (``logits``, ``aux.feat``), or its node path when no dict or namedtuple holds it."""
    names: list[str] = []

    def walk(obj: Any, keys: tuple[str, ...], keyed: bool) -> None:
        if isinstance(obj, fx.Node):
            if record(obj).dep:
                names.append(".".join(keys) if keyed else record(obj).path)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, (*keys, str(k)), True)
        elif isinstance(obj, (tuple, list)):
            fields = getattr(obj, "_fields", None)
            for i, v in enumerate(obj):
                walk(v, (*keys, fields[i] if fields else str(i)), keyed or bool(fields))

    walk(_returned(lg), (), False)
    return names


def _returned(lg: LipGraph) -> Any:
    """What the model returns, as a structure of nodes: the export frontend flattens it (its output node holds a
    flat tuple), and keeps the structure in the graph's pytree spec."""
    flat = lg.output.args[0] if len(lg.output.args) == 1 else lg.output.args
    spec = getattr(getattr(lg.gm.graph._codegen, "pytree_info", None), "out_spec", None)
    if spec is None or not isinstance(flat, (tuple, list)):
        return flat
    import torch.utils._pytree as pytree

    try:
        return pytree.tree_unflatten(list(flat), spec)
    except Exception:  # noqa: BLE001 - a spec that does not match: the flat outputs, named by their paths
        return flat


def op_key(lg: LipGraph, node: fx.Node, registry: Registry) -> str | None:
    """Canonical key of an op node (see :mod:`lipgraph.frontend.opkeys`)."""
    return node_key(lg.gm, node, registry.alias)


def op_spelling(lg: LipGraph, node: fx.Node) -> str:
    """How the op is spelled in the user's code, for messages and rule stubs."""
    if node.op == "call_module":
        return display_name(type(lg.gm.get_submodule(node.target)))
    return display_name(node.target)


def arg_nodes(node: fx.Node) -> list[fx.Node]:
    """The fx nodes among ``node``'s arguments, one per occurrence, in argument order."""
    found: list[fx.Node] = []
    map_args(node, lambda a: found.append(a) or a)
    return found


def map_args(node: fx.Node, fn: Callable[[fx.Node], Any]) -> tuple[tuple, dict]:
    """``node.args``/``node.kwargs`` with every fx node replaced by ``fn(node)``, visited in argument order."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, fx.Node):
            return fn(obj)
        if isinstance(obj, (tuple, list)):
            return type(obj)(walk(o) for o in obj) if not hasattr(obj, "_fields") else type(obj)(*map(walk, obj))
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, slice):
            return slice(walk(obj.start), walk(obj.stop), walk(obj.step))
        return obj

    return walk(tuple(node.args)), walk(dict(node.kwargs))


def _scope(node: fx.Node) -> Scope:
    """Module calls around a node, from fx's or export's ``nn_module_stack`` (repeated calls carry ``@n``)."""
    stack = node.meta.get("nn_module_stack") or {}
    scope = []
    for key, (path, _type) in stack.items():
        if not path:
            continue
        match = re.search(r"@(\d+)$", str(key))
        scope.append((path, int(match.group(1)) if match else 0))
    return tuple(scope)


def _path(node: fx.Node) -> str:
    if node.op == "placeholder":
        return f"<input {node.name}>"
    if node.op == "call_module":
        return str(node.target)
    scope = record(node).scope
    return f"{scope[-1][0]}.{node.name}" if scope else node.name


def _unique(path: str, taken: set[str]) -> str:
    candidate, i = path, 1
    while candidate in taken:
        candidate, i = f"{path}_{i}", i + 1
    taken.add(candidate)
    return candidate


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)\n\s+(?P<code>[^\n]*)')


def _source(node: fx.Node) -> str | None:
    trace_text = node.meta.get("stack_trace")
    if not trace_text:
        return None
    frames = list(_FRAME.finditer(trace_text))
    if not frames:
        return None
    # the innermost frame in the user's code, not torch's tracing machinery (fx records its own frames last)
    user = [f for f in frames if not f["file"].startswith((_TORCH_DIR, _LIPGRAPH_DIR))]
    if not user:  # e.g. a layer called by nn.Sequential: no line of the user's own code to show
        return None
    f = user[-1]
    return f"{f['file']}:{f['line']}: {f['code'].strip()}"
