"""Arguments that give only a shape, a dtype or a device: ``x.view_as(y)`` reads y's shape, ``torch.zeros_like(y)``
y's shape and dtype. Read as a dataflow graph, y would be a second input-dependent input (``view_as`` refused as
"expected one input-dependent argument", ``zeros_like(y)`` bounded as a function of y). :func:`read_metadata_only`
rewrites each such call to read ``y.shape`` / ``y.dtype`` / ``y.device``, which propagation records as constants
(the shapes are fixed), so the op depends on y only through what it uses of it.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import fx

from .inplace import op_name

#: x.f_as(y) → x.f(y.shape)
_AS = {"view_as": "view", "reshape_as": "reshape", "expand_as": "expand"}
#: f_like(y, …) → f(y.shape, …, dtype=y.dtype, device=y.device) (the call's own dtype/device win)
_LIKE: dict[str, Callable[..., torch.Tensor]] = {"zeros_like": torch.zeros, "ones_like": torch.ones,
                                                 "empty_like": torch.empty, "full_like": torch.full}
#: y.new_f(size, …) → f(size, …, dtype=y.dtype, device=y.device)
_NEW: dict[str, Callable[..., torch.Tensor]] = {"new_zeros": torch.zeros, "new_ones": torch.ones,
                                                "new_empty": torch.empty, "new_full": torch.full}
#: keyword arguments the factories take from the call (aten's pin_memory, layout… are dropped: no effect on values)
_FACTORY_KWARGS = ("dtype", "device", "requires_grad")


def read_metadata_only(gm: fx.GraphModule) -> None:
    """Rewrite the calls whose tensor arguments give only metadata (see the module doc)."""
    graph = gm.graph
    changed = False
    for n in list(graph.nodes):
        name = op_name(n)
        if n.op not in ("call_method", "call_function") or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        with graph.inserting_before(n):
            if name in _AS and len(n.args) == 2 and isinstance(n.args[1], fx.Node):
                new = graph.call_method(_AS[name], (n.args[0], _attr(graph, n.args[1], "shape")))
            elif name == "type_as" and len(n.args) == 2 and isinstance(n.args[1], fx.Node):
                new = graph.call_method("to", (n.args[0], _attr(graph, n.args[1], "dtype")))
            elif name in _LIKE:
                new = _factory(graph, n, _LIKE[name], _attr(graph, n.args[0], "shape"), n.args[1:])
            elif name in _NEW:
                new = _factory(graph, n, _NEW[name], n.args[1] if len(n.args) > 1 else n.kwargs.get("size"),
                               n.args[2:])
            else:
                continue
        new.meta = dict(n.meta)
        n.replace_all_uses_with(new)
        graph.erase_node(n)
        changed = True
    if changed:
        gm.recompile()


def _attr(graph: fx.Graph, node: fx.Node, name: str) -> fx.Node:
    return graph.call_function(getattr, (node, name))


def _factory(graph: fx.Graph, n: fx.Node, fn: Callable[..., torch.Tensor], size: Any, rest: tuple) -> fx.Node:
    """``fn(size, *rest)`` with the dtype and device of ``n``'s first argument unless the call gives its own."""
    source = n.args[0]
    kwargs = {k: n.kwargs[k] for k in _FACTORY_KWARGS if k in n.kwargs}
    if "fill_value" in n.kwargs:
        rest = (n.kwargs["fill_value"], *rest)
    kwargs.setdefault("dtype", _attr(graph, source, "dtype"))
    kwargs.setdefault("device", _attr(graph, source, "device"))
    return graph.call_function(fn, (size, *rest), kwargs)

