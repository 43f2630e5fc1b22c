"""The user's model and example input leave an analysis as they came in, whatever happens inside it.

lipgraph runs the user's ``forward`` several times: the input check, torch.fx tracing and shape propagation, the
export frontend, the lower-bound search. A forward may change the model: a counter (``self.calls.add_(1)``),
``self.buf.copy_(x)`` (refused, but after it ran), ``F.batch_norm(..., training=True)`` updating its running
statistics, ``self.last = x`` (while fx traces, the attribute receives a ``Proxy``). :func:`untouched` puts back,
on the way out (result or error), every parameter, buffer and input tensor written in place, their
``requires_grad``, the tensor each parameter and buffer name holds, and the plain attributes tracing left a
``Proxy`` in. The training flags are :func:`lipgraph.frontend.prepare.eval_mode`'s.

A block copies every parameter, buffer and input tensor on the way in (once: blocks inside it reuse the copies) and
compares them on the way out (benchmarks/untouched.py); a value is copied back only where the tensor was written
(:func:`_written`).
torch's copy-on-write clone (``torch._lazy_clone``) would copy nothing, but a tensor it shares then crashes
torch.multiprocessing's pickler (``certify`` on spawned workers, torch 2.13), and BatchNorm's running statistics
move no version counter, so neither saves the copy or the comparison.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import fx, nn

F = TypeVar("F", bound=Callable[..., Any])
#: the snapshots of the blocks open now, by tensor: a block inside another (the input check inside ``analyze``)
#: copies nothing the enclosing one holds, and puts back the value the tensor had on the way into the outermost
_OPEN: dict[int, torch.Tensor] = {}


@contextlib.contextmanager
def untouched(model: Any, example_input: Any = ()) -> Iterator[None]:
    """Within the block, ``model`` (an ``nn.Module``; anything else is left alone) and the tensors of
    ``example_input`` (a tensor or a sequence) may change; after it they are restored (see the module doc)."""
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    entries = [(m, dict(m._parameters), dict(m._buffers), dict(m.__dict__)) for m in modules]
    tensors = {id(t): t for m in modules for t in [*m._parameters.values(), *m._buffers.values()] if t is not None}
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    tensors.update((id(t), t) for t in inputs if isinstance(t, torch.Tensor))
    tensors = {key: t for key, t in tensors.items() if not t.is_inference()}  # (never written outside inference)
    with torch.no_grad():
        own = {key: t.clone() for key, t in tensors.items() if key not in _OPEN}
    _OPEN.update(own)
    saved = [(t, t._version, _OPEN[key], t.requires_grad) for key, t in tensors.items()]
    try:
        yield
    finally:
        for key in own:
            del _OPEN[key]
        for m, parameters, buffers, attributes in entries:
            _put_back(m._parameters, parameters)
            _put_back(m._buffers, buffers)
            for name in [k for k, v in m.__dict__.items() if isinstance(v, fx.Proxy)]:
                _put_back_attribute(m, name, attributes)
        with torch.no_grad():
            for t, version, snapshot, requires_grad in saved:
                if _written(t, version, snapshot):
                    t.copy_(snapshot)
                if t.requires_grad != requires_grad:
                    t.requires_grad_(requires_grad)


def leaves_untouched(fn: F) -> F:
    """Decorate an entry point ``fn(model, example_input, ...)`` (its first two parameters, whatever their names):
    it runs inside :func:`untouched`."""
    signature = inspect.signature(fn)
    model_name, input_name = list(signature.parameters)[:2]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = signature.bind_partial(*args, **kwargs).arguments
        with untouched(given.get(model_name), given.get(input_name)):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _written(t: torch.Tensor, version: int, snapshot: torch.Tensor) -> bool:
    """``t`` was written since ``snapshot``: its version counter moved, or its values differ (kernels that write
    without moving it: BatchNorm's running statistics)."""
    return t._version != version or not torch.equal(t, snapshot)


def _put_back(current: dict, saved: dict) -> None:
    """Make ``current`` hold ``saved``'s objects again (compared by identity: tensors have no truth value)."""
    if list(current) != list(saved) or any(current[k] is not v for k, v in saved.items()):
        current.clear()
        current.update(saved)


def _put_back_attribute(module: nn.Module, name: str, attributes: dict) -> None:
    if name in attributes:
        module.__dict__[name] = attributes[name]
    else:
        del module.__dict__[name]
