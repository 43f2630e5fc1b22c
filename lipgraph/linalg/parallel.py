"""A thread pool over independent norm computations, within the thread budget the user gave torch.

The heavy parts (``eigvalsh``, matrix products, convolutions) release the GIL, so ``n = torch.get_num_threads()``
worker threads run them in parallel. While the pool runs, torch's own intra-op threads are set to 1
(:func:`one_thread`, restored afterwards): n workers × 1 thread instead of n × n threads, which would oversubscribe
the cores. With one torch thread everything runs in the calling thread, in order. Workers see the caller's context
variables (the analysis' device and cache).

Interrupts: the calling thread waits on each result in short slices (``POLL`` seconds), so Ctrl-C (a
``KeyboardInterrupt`` in the main thread) is raised within one slice, even while a worker sits in a long torch
call. Leaving early — an interrupt, an error, or the consumer closing the generator — cancels the items not started
and returns at once, without waiting for the running ones (they finish in the background; their results are
dropped).
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

#: Seconds the calling thread blocks at a time while waiting for a worker.
POLL = 0.1


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``fn(item)`` for every item, yielded in order; ``workers`` defaults to ``torch.get_num_threads()``.
    Exceptions are raised when their item's result is reached (``fn`` should catch what it wants to report)."""
    items = list(items)
    n = min(workers or torch.get_num_threads(), len(items))
    if n <= 1:
        yield from map(fn, items)
        return
    with one_thread():
        pool = ThreadPoolExecutor(n, thread_name_prefix="lipgraph-norms")
        finished = False
        try:
            futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in items]
            for future in futures[:-1]:
                yield _result(future)
            last = _result(futures[-1])
            finished = True
        finally:
            pool.shutdown(wait=finished, cancel_futures=True)
    yield last  # with torch's threads restored: a consumer that does not ask past the last result runs on them


def _result(future: Future) -> R:
    """The future's result, waited for in slices of ``POLL`` seconds (so that Ctrl-C is raised within one)."""
    while True:
        try:
            return future.result(timeout=POLL)
        except FutureTimeout:
            continue


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread in the block (restored after), as in the pool's workers: a norm computed outside
    the pool (read later, :mod:`lipgraph.linalg.lazy`; the dense norms of :mod:`lipgraph.linalg.dense`) then has
    the same float rounding as one computed in it, and a symmetric eigensolver on a busy machine does not wait on
    OpenMP threads spinning for cores that other processes hold (1000 × 1000 ``eigvalsh`` at load 5: 4.2 s on 2
    threads, 0.22 s on 1; benchmarks/RESULTS.md)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
