"""In-place ops in an fx graph: make the graph say what the code computes.

torch.fx (and torch.export's training graph, with ``aten.exp_``) records ``y.exp_()`` as a node, but code that reads ``y`` afterwards still points at the node that made
``y`` before the update: read as a dataflow graph, the update is lost (``y = 2x; y.exp_(); return y`` would be
bounded as 2x). :func:`rebind_in_place` points every later reader of ``y`` at the in-place node, whose result is
``y`` after the update. Views share storage: an in-place op on a view, or on a tensor whose view is read after
the update, would change tensors the graph does not connect, so it is refused (write the update out of place).
:func:`is_in_place` also tells propagation to run the op on a copy.
"""
from __future__ import annotations

import operator

from torch import fx, nn

from ..errors import TraceError
from .opkeys import is_torch_owned

_IN_PLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                       operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor,
                       operator.ilshift, operator.irshift)
#: torch functions and tensor methods whose result may share storage with their first argument
_VIEWS = frozenset("""view view_as reshape reshape_as _unsafe_view transpose t T mT mH H swapaxes swapdims permute
squeeze unsqueeze expand expand_as getitem __getitem__ select slice narrow flatten unflatten chunk split
split_with_sizes tensor_split unbind contiguous detach alias diagonal as_strided movedim moveaxis unfold real imag
view_as_real view_as_complex dropout feature_dropout alpha_dropout dropout1d dropout2d dropout3d""".split())


#: the end of every refusal of an in-place update the graph cannot follow
OUT_OF_PLACE = ("lipgraph cannot follow that update through the graph. Write the update out of place "
                "(y = y.exp() instead of y.exp_(), y = y * 3 instead of y.view(-1).mul_(3))")


def op_name(n: fx.Node) -> str:
    """The name of a method call or a torch function (an aten overload's schema name: ``aten::mul_`` → ``mul_``);
    '' for anything else."""
    if n.op == "call_method":
        return str(n.target)
    if n.op == "call_function" and is_torch_owned(n.target):
        schema = getattr(n.target, "_schema", None)  # aten.mul_.Tensor: the schema's name is "aten::mul_"
        return schema.name.split("::", 1)[-1] if schema is not None else getattr(n.target, "__name__", "") or ""
    return ""


def is_in_place(n: fx.Node, gm: fx.GraphModule | None = None) -> bool:
    """``n`` updates its first argument in place: ``x.mul_(y)``, ``torch.relu_(x)``, ``aten.mul_``, ``x += y``,
    ``F.relu(x, inplace=True)``, or (given ``gm``) a module built with ``inplace=True`` (``nn.ReLU(inplace=True)``)."""
    if n.op == "call_function" and n.target in _IN_PLACE_OPERATORS or n.kwargs.get("inplace") is True:
        return True
    if n.op == "call_module" and gm is not None:
        return getattr(gm.get_submodule(n.target), "inplace", False) is True
    name = op_name(n)
    return name.endswith("_") and not name.startswith("_")


def _is_view(gm: fx.GraphModule, n: fx.Node) -> bool:
    """``n``'s result may share storage with its input (a view, or a module that returns its input)."""
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd))
    if n.op == "call_function" and n.target is getattr:  # x.T, x.mT
        return n.args[1] in _VIEWS
    return n.op in ("call_method", "call_function") and (op_name(n) or getattr(n.target, "__name__", "")) in _VIEWS


def _aliases(gm: fx.GraphModule, node: fx.Node) -> set[fx.Node]:
    """The nodes that may share storage with ``node``: up its chain of views to their base, and the views taken of
    any of them."""
    found, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in found:
            continue
        found.add(n)
        if _is_view(gm, n) and n.args and isinstance(n.args[0], fx.Node):
            todo.append(n.args[0])
        todo.extend(u for u in n.users if _is_view(gm, u))
    return found


def rebind_in_place(gm: fx.GraphModule) -> None:
    """Point the readers of a tensor after an in-place update of it at the update's node (see the module doc)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in list(gm.graph.nodes):
        if not (is_in_place(n, gm) and n.args and isinstance(n.args[0], fx.Node)):
            continue
        target = n.args[0]
        for user in [u for u in target.users if u is not n and order[u] > order[n]]:
            user.replace_input_with(target, n)
        aliased = any(order[u] > order[n] for a in _aliases(gm, target) - {target} for u in a.users
                      if u is not n and not _is_view(gm, u))
        if aliased:
            raise TraceError(
                f"{n.format_node()} updates a tensor in place that shares storage with another one (a view) read "
                "afterwards; " + OUT_OF_PLACE)
    gm.recompile()
