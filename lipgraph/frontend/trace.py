"""Turn a module into an fx graph: ``torch.fx`` with a registry-aware tracer, or ``torch.export`` (non-strict).

Trace failures become a :class:`TraceError` naming the user's source line and the remedies.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import traceback
import warnings
from typing import Any, Iterator

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from ..errors import TraceError
from ..registry import Registry
from .inplace import rebind_in_place
from .shape_args import read_metadata_only
from .untouched import without_proxies
from .opkeys import CONTAINERS, module_key

FRONTENDS = ("auto", "fx", "export")
_TORCH_DIR = os.path.dirname(torch.__file__)
_LIPGRAPH_DIR = os.path.dirname(os.path.dirname(__file__))


class LipTracer(fx.Tracer):
    """fx tracer whose leaves are the module classes that have a rule (plus torch.nn modules without one,
    which are then reported as unsupported rather than traced into their internals)."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(autowrap_functions=registry.functions)
        self.registry = registry

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        key = module_key(type(m), self.registry.alias)
        if key is not None and self.registry.get(key) is not None:
            return True
        # a module with parametrizations has a class made by torch.nn.utils.parametrize: judge its own class
        return (parametrize.type_before_parametrizations(m).__module__.startswith("torch.nn")
                and not isinstance(m, CONTAINERS))

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        """fx's node, with the user's stack trace recorded by :mod:`traceback` (fx's own recording imports
        torch._dynamo and torch._inductor, over a second at the first trace): the frames from the first
        ``forward`` on, without torch's files."""
        node = super().create_node(*args, **kwargs)
        if not node.stack_trace:
            frames = traceback.extract_stack()[:-1]
            first = next((i for i, f in enumerate(frames) if f.name == "forward"), len(frames))
            user = [f for f in frames[first:] if not f.filename.startswith(_TORCH_DIR)]
            if user:
                node.stack_trace = "".join(traceback.StackSummary.from_list(user).format()).strip()
        return node


def trace(model: nn.Module, inputs: tuple, registry: Registry, frontend: str = "auto",
          concrete_args: dict[str, Any] | None = None) -> tuple[fx.GraphModule, str]:
    """Trace ``model``; return the graph module and the frontend that produced it."""
    if frontend not in FRONTENDS:
        raise TraceError(f"unknown frontend {frontend!r}; choose one of {', '.join(FRONTENDS)}")
    _refuse_torchscript(model, registry)
    if frontend == "export":
        return _export(model, inputs), "export"
    try:
        return _fx(model, registry, concrete_args), "fx"
    except TraceError as fx_error:
        if frontend == "fx":
            raise
        try:
            return _export(model, inputs), "export"
        except TraceError as export_error:
            raise TraceError(f"{fx_error}\n\nThe export frontend failed as well: {export_error}") from None


def _refuse_torchscript(model: nn.Module, registry: Registry) -> None:
    """A TorchScript module (``torch.jit.script``/``trace``) runs compiled code that neither frontend can read: a
    clear error up front, unless a rule makes it a leaf."""
    for name, m in model.named_modules():
        key = module_key(type(m), registry.alias)
        if isinstance(m, torch.jit.ScriptModule) and (key is None or registry.get(key) is None):
            raise TraceError(
                f"{'the model' if not name else f'module {name!r}'} is a TorchScript module (torch.jit.script or "
                "torch.jit.trace): lipgraph reads eager PyTorch code, which scripting compiles away.\n"
                "Remedies:\n"
                "  - analyse the module as it was before scripting (the eager nn.Module)\n"
                "  - give its class a rule: lipgraph.register(type(module), rule)")


def _fx(model: nn.Module, registry: Registry, concrete_args: dict[str, Any] | None) -> fx.GraphModule:
    tracer = LipTracer(registry)
    with without_proxies(model):  # a Proxy tracing left in the model (``self.last = x``) is gone before it runs
        try:
            graph = tracer.trace(model, concrete_args=concrete_args)
        except Exception as exc:  # noqa: BLE001 - every fx failure is reported the same way
            scope = next(reversed(tracer.module_stack.values()), None) if tracer.module_stack else None
            where = f" inside module {scope[0] or '<root>'} ({_type_name(scope[1])})" if scope else ""
            raise TraceError(
                f"torch.fx could not trace {type(model).__name__}{where}: {type(exc).__name__}: {exc}\n"
                f"  at {user_frame(exc)}\n"
                "Remedies:\n"
                "  - make the module that contains this line a leaf by giving its class a rule:\n"
                "      lipgraph.register(ThatModule, rule)   (or @lipgraph.rule(ThatModule))\n"
                "  - fix the value that drives Python control flow with concrete_args={'flag': value}\n"
                "  - use the export frontend: --frontend export (Python API: frontend='export')"
            ) from None
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    read_metadata_only(gm)
    rebind_in_place(gm)
    return gm


@contextlib.contextmanager
def _quiet_export_failure() -> Iterator[None]:
    """On failure torch.export prints its partial graph to stderr and logs warnings; our TraceError says it all.
    On success whatever it printed is passed on."""
    captured = io.StringIO()
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(captured):
            yield
        sys.stderr.write(captured.getvalue())
    finally:
        logger.setLevel(level)


def _export(model: nn.Module, inputs: tuple) -> fx.GraphModule:
    try:
        with _quiet_export_failure(), warnings.catch_warnings():
            # nn.RNN/GRU/LSTM rebuild their _flat_weights list in forward: torch.export warns that these tensor
            # attributes were "assigned during export"; they are the module's own parameters, nothing to act on
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*\._flat_weights\[\d+\]",
                                    category=UserWarning)
            program = torch.export.export(model, inputs, strict=False)
    except Exception as exc:  # noqa: BLE001
        raise TraceError(
            f"torch.export could not export {type(model).__name__}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}\n  at {user_frame(exc)}"
        ) from None
    gm = program.module()
    read_metadata_only(gm)
    rebind_in_place(gm)  # torch.export's graph keeps in-place ops too
    return gm


def user_frame(exc: BaseException) -> str:
    """The innermost traceback frame in the user's code (not torch's, not lipgraph's): ``file:line: code``."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(_TORCH_DIR) and not f.filename.startswith(_LIPGRAPH_DIR)
              and not f.filename.startswith("<")]
    if not frames:
        return "(no user source line in the traceback)"
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def _type_name(t: Any) -> str:
    return t.__name__ if isinstance(t, type) else str(t).rsplit(".", 1)[-1]
