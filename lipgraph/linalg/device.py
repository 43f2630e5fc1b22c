"""Where norm computations run: a torch device set per analysis (``analyze(device=...)``), CPU by default.

The device is context-local (a :class:`contextvars.ContextVar`), so rules need not pass it on; worker threads of
:func:`lipgraph.linalg.parallel.parallel_map` inherit it. Results are the same numbers on every device up to
rounding, which the float margins cover.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

from lipgraph.errors import InputError

_DEVICE: ContextVar[torch.device] = ContextVar("lipgraph_norm_device", default=torch.device("cpu"))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"cpu" → CPU; "cuda" (or "cuda:1") → that GPU; InputError when torch cannot use it."""
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise InputError(f"device must be 'cpu' or 'cuda[:index]', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(dev)!r} was asked for, but torch.cuda.is_available() is False "
                         "(no GPU, or a CPU-only torch build)")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cpu' or 'cuda[:index]', got {str(dev)!r}")
    return dev


@functools.lru_cache(maxsize=None)
def _load_cuda_linalg(device: torch.device) -> None:
    """Run one CUDA eigensolver in the calling thread: torch loads its CUDA linear-algebra library on first use,
    and that loading fails ("lazy wrapper should be called at most once") when several worker threads of
    :func:`lipgraph.linalg.parallel.parallel_map` get there at the same time."""
    torch.linalg.eigvalsh(torch.eye(2, device=device, dtype=torch.float64))


def norm_device() -> torch.device:
    """The device of the current analysis (CPU outside one)."""
    return _DEVICE.get()


@contextmanager
def on_device(device: str | torch.device | None) -> Iterator[torch.device]:
    """Run norm computations inside the block on ``device`` (checked by :func:`resolve_device`)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        _load_cuda_linalg(dev)
    token = _DEVICE.set(dev)
    try:
        yield _DEVICE.get()
    finally:
        _DEVICE.reset(token)
