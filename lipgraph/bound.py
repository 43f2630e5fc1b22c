"""Numbers that know what they are: every constant lipgraph computes carries its kind.

``certified``  provably >= the true constant (up to floating point, covered by a stated margin);
``estimate``   a heuristic with no guarantee either way (greedy SeqLip, plain power iteration);
``lower``      provably <= the true constant (an attained Jacobian norm);
``unbounded``  no finite bound is known (an op without a rule under ``unsupported="inf"``).

A :class:`Bound` is also a number, so scripts can use ``report.bound`` directly: ``float(b)``, ``math.isfinite(b)``,
``f"{b:.3g}"``, ``b > 1``, ``sorted(bounds)``, ``2 * b``. The protocol (the record keeps its kind; the number
does not pretend to):

- ``float(b)`` is ``b.value`` (``inf`` when unbounded), so ``math.isfinite``, ``math.log`` … accept a bound;
- ``<``, ``<=``, ``>``, ``>=`` compare values, against real numbers and against other bounds;
- ``b == x`` for a real number ``x`` compares the value; ``a == b`` for two bounds compares the whole record
  (value, kind, method, exact): a certified 2.0 and an estimated 2.0 are different results. Compare ``a.value``
  to compare values only. ``hash(b) == hash(b.value)``, consistent with both equalities;
- ``format(b, spec)`` formats the value with any float format spec (``f"{b:.3g}"``); an empty spec gives ``str(b)``;
- ``b + x``, ``b - x``, ``b * x``, ``b / x`` (either side, ``x`` a number or a bound) and ``round(b, n)`` return a
  plain ``float``: arithmetic on a constant is no longer the constant a method certified, so it loses its kind;
- truthiness is not numeric: a bound is always true (``if report.lower:`` means "a lower bound was found").
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from enum import Enum
from typing import Iterable


class Kind(str, Enum):
    CERTIFIED = "certified"
    ESTIMATE = "estimate"
    LOWER = "lower"
    UNBOUNDED = "unbounded"

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


#: Relative margin applied to float results that are certified "up to floating point".
FLOAT_MARGIN = 1e-6


@dataclass(frozen=True)
class Bound:
    """A Lipschitz constant (or operator norm) with its kind and the method that produced it.

    ``exact`` means the value equals the true constant up to floating point (it is then also certified).
    """

    value: float
    kind: Kind
    method: str
    exact: bool = False

    def __post_init__(self) -> None:
        if math.isnan(self.value) or self.value < 0:
            raise ValueError(f"a Lipschitz constant must be >= 0, got {self.value!r} ({self.method})")
        if self.exact and self.kind is not Kind.CERTIFIED:
            raise ValueError("an exact bound is a certified bound")
        if math.isinf(self.value) and self.kind is not Kind.UNBOUNDED:
            object.__setattr__(self, "kind", Kind.UNBOUNDED)

    # -- the number protocol (module docstring) --------------------------------------------------------------
    def __float__(self) -> float:
        return float(self.value)

    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Bound):
            return (self.value, self.kind, self.method, self.exact) == (other.value, other.kind, other.method,
                                                                      other.exact)
        number = _number(other)
        return NotImplemented if number is None else self.value == number

    def __lt__(self, other: object) -> bool:
        number = _number(other)
        return NotImplemented if number is None else self.value < number

    def __le__(self, other: object) -> bool:
        number = _number(other)
        return NotImplemented if number is None else self.value <= number

    def __gt__(self, other: object) -> bool:
        number = _number(other)
        return NotImplemented if number is None else self.value > number

    def __ge__(self, other: object) -> bool:
        number = _number(other)
        return NotImplemented if number is None else self.value >= number

    def __format__(self, spec: str) -> str:
        return format(self.value, spec) if spec else str(self)

    def __round__(self, ndigits: int | None = None) -> float | int:
        return round(self.value, ndigits)

    def __add__(self, other: object) -> float:
        number = _number(other)
        return NotImplemented if number is None else self.value + number

    def __radd__(self, other: object) -> float:
        return self.__add__(other)

    def __sub__(self, other: object) -> float:
        number = _number(other)
        return NotImplemented if number is None else self.value - number

    def __rsub__(self, other: object) -> float:
        number = _number(other)
        return NotImplemented if number is None else number - self.value

    def __mul__(self, other: object) -> float:
        number = _number(other)
        return NotImplemented if number is None else self.value * number

    def __rmul__(self, other: object) -> float:
        return self.__mul__(other)

    def __truediv__(self, other: object) -> float:
        number = _number(other)
        return NotImplemented if number is None else self.value / number

    def __rtruediv__(self, other: object) -> float:
        number = _number(other)
        return NotImplemented if number is None else number / self.value

    @property
    def is_upper(self) -> bool:
        """True when the number is meant as an upper bound (certified or estimated)."""
        return self.kind in (Kind.CERTIFIED, Kind.ESTIMATE, Kind.UNBOUNDED)


def _number(x: object) -> float | None:
    """The float a bound is compared or combined with: a bound's value, a real number, else None."""
    if isinstance(x, Bound):
        return x.value
    if isinstance(x, numbers.Real):
        return float(x)
    return None


def certified(value: float, method: str, *, exact: bool = False, margin: float = 0.0) -> Bound:
    """A certified upper bound; ``margin`` (relative) covers floating-point error of the computation."""
    return Bound(float(value) * (1.0 + margin), Kind.CERTIFIED, method, exact=exact)


def exact(value: float, method: str = "exact") -> Bound:
    """A constant known in closed form (e.g. the slope bound of ReLU): exact and certified."""
    return Bound(float(value), Kind.CERTIFIED, method, exact=True)


def estimate(value: float, method: str) -> Bound:
    return Bound(float(value), Kind.ESTIMATE, method)


def lower(value: float, method: str) -> Bound:
    return Bound(float(value), Kind.LOWER, method)


def unbounded(method: str) -> Bound:
    return Bound(math.inf, Kind.UNBOUNDED, method)


def join_kinds(kinds: Iterable[Kind]) -> Kind:
    """Kind of an upper bound built from upper bounds of these kinds (AutoLip sums and products).

    certified with certified stays certified; anything with an estimate (or a lower bound used as
    an upper bound) is only an estimate; anything with an unbounded part is unbounded.
    """
    kinds = set(kinds)
    if Kind.UNBOUNDED in kinds:
        return Kind.UNBOUNDED
    if kinds <= {Kind.CERTIFIED}:
        return Kind.CERTIFIED
    return Kind.ESTIMATE
