"""Numbers that know what they are: every constant lipgraph computes carries its kind.

``certified``  provably >= the true constant (up to floating point, covered by a stated margin);
``estimate``   a heuristic with no guarantee either way (greedy SeqLip, plain power iteration);
``lower``      provably <= the true constant (an attained Jacobian norm);
``unbounded``  no finite bound is known (an op without a rule under ``unsupported="inf"``).
"""
from __future__ import annotations

import math
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

    @property
    def is_upper(self) -> bool:
        """True when the number is meant as an upper bound (certified or estimated)."""
        return self.kind in (Kind.CERTIFIED, Kind.ESTIMATE, Kind.UNBOUNDED)


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
