"""Run the graph once on the example input and record, per node, what the passes need.

Fields of the node's record (:class:`lipgraph.record.NodeRecord`) written here:

- ``dep``    the node's output is a tensor that depends on the network input
- ``info``   its output: a :class:`Var` (shape, dtype), a tuple of them, or ``None`` for non-tensors
- ``value``  the value of a constant node that feeds an input-dependent one (weights, sizes, flags)

Non-tensor results (``x.size(0)``, ``x.shape``) depend on shapes only, which are fixed: they are constants. A
number read from an input-dependent tensor's values (``x.item()``, ``x.tolist()``) is not: it is refused
(:func:`_refuse_value_read`), since the graph would treat it as a constant.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..errors import InputError, TraceError
from ..ruleapi import Var
from .inplace import OUT_OF_PLACE, is_in_place, op_name
from .trace import user_frame
from ..record import record


class _Propagate(fx.Interpreter):
    """Runs the graph as a function: an in-place op writes to a copy of its first argument, so the constants kept
    in the records' ``value`` (and the user's tensors) are the values the graph's rules read, never overwritten.

    It also checks what :mod:`.inplace` cannot see in the code, on the actual tensors: an op that changes an
    input-dependent input without being a known in-place op (a leaf module that updates its argument), and a
    known in-place op whose target shares storage with a tensor read after it (a leaf module that returns a
    view), and an op that writes input-dependent values into a constant read again afterwards (``self.buf.copy_(x)``
    then ``self.buf``: a module's state, which each read fetches anew). Each would change a tensor the graph does
    not connect: a :class:`TraceError`."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.order = {m: i for i, m in enumerate(gm.graph.nodes)}

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple, dict]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if is_in_place(n, self.module) and args and isinstance(args[0], torch.Tensor):
            _refuse_hidden_aliases(self, n, args[0])
            if not record(n.args[0]).dep:
                _refuse_constant_written(self, n, n.args[0], lost=n.args[0].op == "get_attr" and not n.users)
            args = (args[0].clone(), *args[1:])
        return args, kwargs

    def run_node(self, n: fx.Node) -> Any:
        versions = {a: self.env[a]._version for a in n.all_input_nodes if isinstance(self.env.get(a), torch.Tensor)}
        try:
            result = super().run_node(n)
        except TraceError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"running node {n.name} ({n.format_node()}) on the example input failed: "
                f"{type(exc).__name__}: {exc}\n  at {user_frame(exc)}"
            ) from None
        changed = [a.name for a, version in versions.items() if self.env[a]._version != version and record(a).dep]
        for a, version in versions.items():
            if self.env[a]._version != version and not record(a).dep:
                _refuse_constant_written(self, n, a)
        if changed:
            raise TraceError(f"{n.format_node()} changes its input {', '.join(changed)} in place, which the graph "
                             f"does not show; {OUT_OF_PLACE}")
        from_input = n.op == "placeholder" or any(record(a).dep for a in n.all_input_nodes)
        if from_input and not _has_tensor(result):
            _refuse_value_read(n, result)
        dep = _has_tensor(result) and from_input
        record(n).dep = dep
        record(n).info = describe(result, index=-1)
        if not dep and n.op != "output":
            record(n).value = result
        return result


#: ops that return a Python number read from a tensor's values (not from its shape)
_VALUE_READS = frozenset({"item", "tolist", "_local_scalar_dense", "equal", "allclose", "is_nonzero", "__float__",
                          "__int__", "__bool__", "__index__", "__complex__"})


def _refuse_value_read(n: fx.Node, result: Any) -> None:
    """A non-tensor result of input-dependent arguments must be metadata (a shape, a dtype): a number read from the
    values (``x.item()``, ``x.tolist()``; any float) would be recorded as a constant, and the bound would miss how
    the output depends on it (unsound), so it is a :class:`TraceError`."""
    name = op_name(n) or getattr(n.target, "__name__", "")
    if name in _VALUE_READS or _has_float(result):
        raise TraceError(f"{n.format_node()} reads the values of an input-dependent tensor as a Python number "
                         f"({type(result).__name__}); lipgraph cannot follow a dependence through it. Keep it a "
                         "tensor (x.sum() instead of x.sum().item(), torch.full_like(x, 0) + v instead of "
                         "torch.full_like(x, v.item()))")


def _has_float(value: Any) -> bool:
    if isinstance(value, (float, complex, torch.SymFloat)):
        return True
    return isinstance(value, (tuple, list)) and any(_has_float(v) for v in value)


def _refuse_constant_written(interpreter: _Propagate, n: fx.Node, constant: fx.Node, lost: bool = False) -> None:
    """``n`` writes into ``constant`` (a tensor that does not depend on the input): refused when what it writes
    depends on the input and the constant, or a module attribute sharing its storage, is read after ``n``: that
    read would take an input-dependent value for a constant (``self.buf.copy_(x); return x * self.buf``: x²).
    ``lost``: an in-place op on an attribute read (``get_attr``) whose result nobody uses is refused even with no
    later read in the graph: the update can only matter through the attribute, e.g. through what torch.fx computed
    from it while tracing (``out = torch.zeros(4); out.add_(x); return 3 * out`` traces to a constant output)."""
    if not any(record(a).dep for a in n.all_input_nodes):
        return
    if lost:
        made = (" (a tensor made in forward without the input, which torch.fx turns into a constant: make it from "
                "the input, e.g. torch.zeros_like(x) or x.new_zeros(size), and fx traces the update)"
                if str(constant.target).startswith("_tensor_constant") else "")
        raise TraceError(f"{n.format_node()} writes input-dependent values into the attribute {constant.target} in "
                         "place; its later reads, and what torch.fx computed from it while tracing, do not see the "
                         f"update{made}; {OUT_OF_PLACE}")
    order, storage = interpreter.order, interpreter.env[constant].untyped_storage().data_ptr()
    later = [u for u in constant.users if u is not n and order[u] > order[n]]
    attributes = [(m, interpreter.fetch_attr(m.target)) for m in interpreter.module.graph.nodes
                  if m.op == "get_attr" and order[m] > order[n]]
    later += [m for m, t in attributes if isinstance(t, torch.Tensor) and t.numel()
              and t.untyped_storage().data_ptr() == storage]
    if later:
        raise TraceError(f"{n.format_node()} writes input-dependent values into {constant.name} in place, which "
                         f"{later[0].name} reads afterwards as a constant; {OUT_OF_PLACE}")


def _refuse_hidden_aliases(interpreter: _Propagate, n: fx.Node, target: torch.Tensor) -> None:
    """The in-place op ``n`` must not write storage that a tensor read after it shares (beyond its own target)."""
    order = interpreter.order
    storage = target.untyped_storage().data_ptr()
    for m, value in interpreter.env.items():
        if (m is not n.args[0] and isinstance(value, torch.Tensor) and value.numel() and target.numel()
                and value.untyped_storage().data_ptr() == storage
                and any(order[u] > order[n] for u in m.users if u is not n)):
            raise TraceError(f"{n.format_node()} updates a tensor in place that shares storage with {m.name} "
                             f"({m.format_node()}), read afterwards; {OUT_OF_PLACE}")


def propagate(gm: fx.GraphModule, inputs: tuple) -> None:
    """Annotate every node of ``gm`` with ``dep``, ``info`` and (constants) ``value`` (its record)."""
    with torch.no_grad():
        interpreter = _Propagate(gm)
        interpreter.extra_traceback = False  # our errors name the node and the user's line already
        interpreter.run(*inputs)
    for n in gm.graph.nodes:  # constants nobody input-dependent uses need not stay alive
        if record(n).value is not None and not any(record(u).dep for u in n.users):
            record(n).value = None


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
