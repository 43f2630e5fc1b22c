"""What a rule sees of its op: the :class:`~lipgraph.ruleapi.OpContext` of a graph node (used by the annotate and
fuse passes)."""
from __future__ import annotations

from torch import fx

from ..ir import LipGraph, map_args
from ..ruleapi import OpContext, Var
from ..record import record


def context(lg: LipGraph, node: fx.Node, norm: float) -> OpContext:
    """What the rule of ``node`` sees: constants as values, input-dependent arguments as :class:`Var`."""
    counter = iter(range(len(record(node).inputs)))

    def value(arg: fx.Node):
        if record(arg).dep:
            info = record(arg).info
            return Var(info.shape, info.dtype, next(counter), parts=info.parts)
        return record(arg).value

    args, kwargs = map_args(node, value)
    module = lg.gm.get_submodule(node.target) if node.op == "call_module" else None
    bounds = [record(a).interval for a in record(node).inputs]  # set by passes/interval.py
    return OpContext(key=record(node).key, target=lg.target_of(node), module=module, args=args,
                     kwargs=kwargs, output=record(node).info, norm=norm, name=node.name,
                     path=record(node).path, bounds=tuple(bounds) if any(b is not None for b in bounds) else None)
