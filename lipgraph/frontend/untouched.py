"""The user's model and example input leave an analysis as they came in, whatever happens inside it.

lipgraph runs the user's ``forward`` several times: the input check, torch.fx tracing and shape propagation, the
export frontend, the lower-bound search. A forward may change the model: a counter (``self.calls.add_(1)``),
``self.buf.copy_(x)`` (refused, but after it ran), ``F.batch_norm(..., training=True)`` updating its running
statistics, ``self.last = x`` (while fx traces, the attribute receives a ``Proxy``). :func:`untouched` puts back,
on the way out (result or error), every parameter, buffer and input tensor written in place (or given other
``.data``: its own memory back, which tensors tied by ``.data`` share), their ``requires_grad``, every module
attribute rebound (the tensor each parameter and buffer name holds, a Python counter, a ``Proxy`` fx tracing left)
and the contents of its list, dict and set attributes (``self.seen.append(x)``). The training flags are
:func:`lipgraph.frontend.prepare.eval_mode`'s. Left alone: a lazy module not yet run (its first run changes its
class), sparse and meta tensors, objects reached through other objects (a list's elements).

A block copies every parameter, buffer and input tensor on the way in (once: blocks inside it reuse the copies) and
compares them on the way out (benchmarks/untouched.py); a value is copied back only where the tensor was written
(:func:`_written`).
torch's copy-on-write clone (``torch._lazy_clone``) would copy nothing, but a tensor it shares then crashes
torch.multiprocessing's pickler (``certify`` on spawned workers, torch 2.13), and BatchNorm's running statistics
move no version counter, so neither saves the copy or the comparison.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import fx, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import is_lazy

F = TypeVar("F", bound=Callable[..., Any])
#: the snapshots of the blocks open now, by tensor: a block inside another (the input check inside ``analyze``)
#: copies nothing the enclosing one holds, and puts back the value the tensor had on the way into the outermost
_OPEN: dict[int, torch.Tensor] = {}
#: the attribute values whose contents are put back too (a forward's ``self.seen.append(x)``); the module's own
#: ``_parameters``, ``_buffers``, ``_modules`` among them
_CONTAINERS = (list, dict, set)
_MISSING = object()


@contextlib.contextmanager
def untouched(model: Any, example_input: Any = ()) -> Iterator[None]:
    """Within the block, ``model`` (an ``nn.Module``; anything else is left alone) and the tensors of
    ``example_input`` (a tensor or a sequence) may change; after it they are restored (see the module doc). Where the
    block raised, a failure to restore is added to its error as a note, never raised instead of it."""
    modules = [m for m in model.modules() if not _lazy(m)] if isinstance(model, nn.Module) else []
    entries = [(m, dict(m.__dict__), {k: copy.copy(v) for k, v in m.__dict__.items() if type(v) in _CONTAINERS})
               for m in modules]
    tensors = {id(t): t for m in modules for t in [*m._parameters.values(), *m._buffers.values()] if t is not None}
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    tensors.update((id(t), t) for t in inputs if isinstance(t, torch.Tensor))
    tensors = {key: t for key, t in tensors.items() if _copyable(t)}
    with torch.no_grad():
        own = {key: t.clone() for key, t in tensors.items() if key not in _OPEN}
    _OPEN.update(own)
    saved = [(t, t.detach(), t._version, _OPEN[key], t.requires_grad) for key, t in tensors.items()]
    try:
        yield
    except BaseException as exc:
        try:
            _restore(own, entries, saved)
        except Exception as failure:  # noqa: BLE001 - the block's own error is the one to see
            exc.add_note(f"lipgraph could not put the model back as it was: {type(failure).__name__}: {failure}")
        raise
    _restore(own, entries, saved)


@contextlib.contextmanager
def without_proxies(model: nn.Module) -> Iterator[None]:
    """Around torch.fx tracing: an attribute of a module of ``model``, or an entry of a dict attribute
    (``_buffers``), that holds an ``fx.Proxy`` after the block (``self.last = x`` while tracing) gets its value from
    before the block back (or goes, if it is new), since the model runs again after tracing (shape propagation, the
    lower-bound search). Nothing else is put back: the graph describes the model as tracing left it (a forward that
    assigns ``self.lin.weight`` traces a call of ``lin`` with that weight)."""
    entries = [(m, dict(m.__dict__), {k: dict(v) for k, v in m.__dict__.items() if type(v) is dict})
               for m in model.modules()]
    try:
        yield
    finally:
        for m, attributes, contents in entries:
            for holder, before in [(m.__dict__, attributes), *((m.__dict__[k], v) for k, v in contents.items()
                                                                if m.__dict__.get(k) is attributes[k])]:
                for name in [k for k, v in holder.items() if isinstance(v, fx.Proxy)]:
                    if name in before:
                        holder[name] = before[name]
                    else:
                        del holder[name]


def _copyable(t: torch.Tensor) -> bool:
    """Tensors whose values are copied and compared: dense, with values (not meta), not inference tensors (never
    written outside inference mode), not a lazy module's uninitialized parameters (the module replaces them)."""
    return t.layout is torch.strided and not t.is_meta and not t.is_inference() and not is_lazy(t)


def _lazy(module: nn.Module) -> bool:
    """A lazy module not yet run: its first forward turns it into another class with new attributes, for good."""
    return isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()


def _restore(own: dict, entries: list, saved: list) -> None:
    """Put back the modules' attributes and the tensors' values as :func:`untouched` took them."""
    for key in own:
        _OPEN.pop(key, None)
    for m, attributes, contents in entries:
        for name, value in contents.items():
            if m.__dict__.get(name) is attributes[name]:
                _put_back_contents(attributes[name], value)
        for name in [k for k in m.__dict__ if k not in attributes]:
            del m.__dict__[name]
        for name, value in attributes.items():
            if m.__dict__.get(name, _MISSING) is not value:
                m.__dict__[name] = value
    with torch.no_grad():
        for t, alias, version, snapshot, requires_grad in saved:
            if not t.is_set_to(alias):  # ``t.data = ...``: its own memory back (tensors tied by ``.data`` share it)
                t.data = alias
            if (t.shape, t.dtype, t.device) != (snapshot.shape, snapshot.dtype, snapshot.device):
                t.data = snapshot.clone()  # ``t.data = ...`` or ``t.resize_``: the values cannot be copied back
            elif _written(t, version, snapshot):
                t.copy_(snapshot)
            if t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)


def leaves_untouched(fn: F, *, inputs: bool = True) -> F:
    """Decorate an entry point ``fn(model, example_input, ...)`` (its first two parameters, whatever their names):
    it runs inside :func:`untouched`. ``inputs=False``: the model only (an entry point that runs the model on copies
    of a dataset's batches, rather than copy the whole dataset)."""
    signature = inspect.signature(fn)
    model_name, input_name = list(signature.parameters)[:2]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = signature.bind_partial(*args, **kwargs).arguments
        with untouched(given.get(model_name), given.get(input_name) if inputs else ()):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _written(t: torch.Tensor, version: int, snapshot: torch.Tensor) -> bool:
    """``t`` was written since ``snapshot``: its version counter moved, or its values differ (kernels that write
    without moving it: BatchNorm's running statistics)."""
    return t._version != version or not torch.equal(t, snapshot)


def _put_back_contents(current: Any, saved: Any) -> None:
    """Make the list, dict or set ``current`` hold ``saved``'s objects again (compared by identity: tensors have no
    truth value)."""
    if isinstance(current, dict):
        changed = list(current) != list(saved) or any(current[k] is not v for k, v in saved.items())
    else:
        changed = len(current) != len(saved) or any(a is not b for a, b in zip(current, saved))
    if not changed:
        return
    current.clear()
    if isinstance(current, list):
        current.extend(saved)
    else:
        current.update(saved)
