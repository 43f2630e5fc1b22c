"""Run the graph once on the example input and record, per node, what the passes need.

``node.meta`` keys written here (all under the ``lip.`` prefix):

- ``lip.dep``    the node's output is a tensor that depends on the network input
- ``lip.info``   its output: a :class:`Var` (shape, dtype), a tuple of them, or ``None`` for non-tensors
- ``lip.value``  the value of a constant node that feeds an input-dependent one (weights, sizes, flags)

Non-tensor results (``x.size(0)``, ``x.shape``) depend on shapes only, which are fixed: they are constants.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..errors import InputError
from ..ruleapi import Var
from .inplace import is_in_place
from .trace import user_frame


class _Propagate(fx.Interpreter):
    """Runs the graph as a function: an in-place op writes to a copy of its first argument, so the constants kept
    in ``lip.value`` (and the user's tensors) are the values the graph's rules read, never overwritten."""

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple, dict]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if is_in_place(n, self.module) and args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(), *args[1:])
        return args, kwargs

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"running node {n.name} ({n.format_node()}) on the example input failed: "
                f"{type(exc).__name__}: {exc}\n  at {user_frame(exc)}"
            ) from None
        dep = _has_tensor(result) and (n.op == "placeholder" or any(a.meta.get("lip.dep") for a in n.all_input_nodes))
        n.meta["lip.dep"] = dep
        n.meta["lip.info"] = describe(result, index=-1)
        if not dep and n.op != "output":
            n.meta["lip.value"] = result
        return result


def propagate(gm: fx.GraphModule, inputs: tuple) -> None:
    """Annotate every node of ``gm`` with ``lip.dep``, ``lip.info`` and (constants) ``lip.value``."""
    with torch.no_grad():
        _Propagate(gm).run(*inputs)
    for n in gm.graph.nodes:  # constants nobody input-dependent uses need not stay alive
        if "lip.value" in n.meta and not any(u.meta.get("lip.dep") for u in n.users):
            del n.meta["lip.value"]


def describe(value: Any, index: int) -> Any:
    """Shape/dtype summary of a result: a Var, a tuple of them, or None for non-tensor values."""
    if isinstance(value, torch.Tensor):
        return Var(tuple(value.shape), value.dtype, index)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        parts = tuple(describe(v, index) for v in value)
        return Var((), parts[0].dtype if isinstance(parts[0], Var) else torch.float32, index, parts=parts)
    return None


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_has_tensor(v) for v in value.values())
    return False
