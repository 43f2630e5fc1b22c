"""Certified constants computed on first read (issue #19, "no wasted norms").

A conv layer followed by BatchNorm is bounded by the fused operator's norm ‖diag(s)·C‖; the conv's own norm ‖C‖
then serves no bound, only the report's per-layer display. A :class:`LazyBound` holds such a norm unevaluated: it
is a :class:`lipgraph.Bound` whose value, method and exactness are computed (once, thread-safely) the first
time any of them is read — by a renderer, ``report.tree``, a pickle or any arithmetic — and is the same Bound
from then on. Deferring a computation changes no number, only when (and whether) it is done: it runs in the
context variables of its creation (the analysis' norm cache, device and layer label).
"""
from __future__ import annotations

import contextvars
import math
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from lipgraph.bound import Bound, Kind, join_kinds
from lipgraph.linalg.parallel import parallel_map

_UNSET = object()


class LazyBound(Bound):
    """The Bound ``compute()`` returns, evaluated on first read of its value, method or exactness. Its ``kind``
    is declared up front (reading it computes nothing); a computed Bound of another kind is an error. ``below``
    (optional) gives cheap attained values one at a time, each ≤ the computed one and growing: enough to decide
    some comparisons without it (:func:`product_above`)."""

    def __init__(self, compute: Callable[[], Bound], kind: Kind = Kind.CERTIFIED,
                 below: Callable[[], Iterator[float]] | None = None) -> None:
        object.__setattr__(self, "_compute", compute)
        object.__setattr__(self, "_context", contextvars.copy_context())  # the analysis' cache, device, label
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "below", below)
        object.__setattr__(self, "_bound", _UNSET)
        object.__setattr__(self, "_lock", threading.Lock())

    def force(self) -> Bound:
        """The computed Bound (computing it now if nobody has yet)."""
        if self._bound is _UNSET:
            with self._lock:
                if self._bound is _UNSET:
                    bound = self._context.run(self._compute)
                    if bound.kind is not self._kind:
                        raise ValueError(f"a lazy {self._kind} constant computed a {bound.kind} one: {bound!r}")
                    object.__setattr__(self, "_bound", bound)
        return self._bound

    @property
    def forced(self) -> bool:
        return self._bound is not _UNSET

    @property
    def value(self) -> float:  # type: ignore[override]
        return self.force().value

    @property
    def kind(self) -> Kind:  # type: ignore[override]
        return self._kind

    @property
    def method(self) -> str:  # type: ignore[override]
        return self.force().method

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return self.force().exact

    def __repr__(self) -> str:  # showing it reads it
        return repr(self.force())

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (disk cache, worker processes) as the plain Bound
        b = self.force()
        return (Bound, (b.value, b.kind, b.method, b.exact))


def is_pending(value: object) -> bool:
    """A :class:`LazyBound` nobody has read yet."""
    return isinstance(value, LazyBound) and not value.forced


def product_above(gains: Sequence[Bound], test: Callable[[float], bool]) -> bool:
    """``test(Π gains)`` for a ``test`` that is monotone (true stays true as the product grows).

    The pending gains' cheap attained values (:attr:`LazyBound.below`, each ≤ its gain) are drawn one round at a
    time (one more of each per round: a power step of each pending conv norm) and the product with them tested after
    each round; the first that passes decides (the real product, its factors multiplied in the same order, is no
    smaller: rounding is monotone, so it passes too) and the rest is not computed. When they never pass, the gains
    are read and the real product decides. Either way the answer is ``test(Π gains)``: the values drawn only decide
    how soon it is known, never what it is."""
    drawn = {i: iter(g.below()) for i, g in enumerate(gains) if is_pending(g) and g.below is not None}
    low = {i: 0.0 for i in drawn}
    while drawn:
        for i, values in list(drawn.items()):
            value = next(values, None)
            if value is None:
                del drawn[i]
            else:
                low[i] = max(low[i], value)
        if test(math.prod(low[i] if i in low else g.value for i, g in enumerate(gains))):
            return True
    return test(math.prod(g.value for g in gains))


def lazy_product(gains: Sequence[Bound]) -> float | Bound:
    """Π gains: a float, or when a gain is pending a :class:`LazyBound` of it (method ``product``)."""
    if not any(is_pending(g) for g in gains):
        return math.prod(g.value for g in gains)
    kind = join_kinds(g.kind for g in gains)
    return LazyBound(lambda: Bound(math.prod(g.value for g in gains), kind, "product"), kind)


def pending_combination(terms: Sequence[tuple[Bound, Bound]],
                        combine: Callable[[list[tuple[Bound, Bound]]], Bound]) -> Bound:
    """``combine(terms)`` computed on first read (its pending bounds then read too). Only certified terms are
    combined lazily (their combination is certified); other kinds are combined now."""
    kinds = {b.kind for pair in terms for b in pair}
    forced = lambda: [(_read(g), _read(x)) for g, x in terms]  # noqa: E731
    if kinds != {Kind.CERTIFIED}:
        return combine(forced())
    return LazyBound(lambda: combine(forced()), Kind.CERTIFIED)


def _read(b: Bound) -> Bound:
    return b.force() if isinstance(b, LazyBound) else b


def force_all(bounds: Iterable[Bound]) -> list[float]:
    """Compute every pending bound now, in the norm thread pool (:mod:`lipgraph.linalg.parallel`); the seconds each
    bound took (0 for those already known)."""
    bounds = list(bounds)
    pending = [b for b in bounds if is_pending(b)]
    seconds = dict(zip(map(id, pending), parallel_map(_timed_force, pending)))
    return [seconds.get(id(b), 0.0) for b in bounds]


def _timed_force(b: LazyBound) -> float:
    start = time.perf_counter()
    b.force()
    return time.perf_counter() - start
