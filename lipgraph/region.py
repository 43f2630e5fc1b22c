"""Input regions for local Lipschitz bounds (docs/local.md): a box [lo, hi] or an ℓp ball B_p(c, r).

A local bound is the Lipschitz constant of the network *restricted to the region*: both regions are convex, so
the mean-value inequality along the segment between two of its points bounds ‖f(x) − f(y)‖ by the supremum of
the Jacobian norm over the region, which the local rules bound from the region's coordinate intervals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch
from torch import Tensor

from .bound import Bound, Kind
from .errors import InputError, LipgraphError
from .norms import parse_norm

Interval = tuple[Tensor, Tensor]  # (lo, hi), float64, lo <= hi elementwise


@dataclass(frozen=True)
class Box:
    """The box {x : lo ≤ x ≤ hi}; ``lo``/``hi`` are scalars or tensors broadcast to the input's shape."""

    lo: Any
    hi: Any

    def interval(self, like: Tensor) -> Interval:
        lo, hi = (_broadcast(v, like, name) for v, name in ((self.lo, "lo"), (self.hi, "hi")))
        if bool((lo > hi).any()):
            raise InputError("Box(lo, hi) needs lo <= hi everywhere; "
                             f"lo > hi at {int((lo > hi).sum())} coordinate(s)")
        return lo, hi

    def contains(self, y: Tensor, like: Tensor) -> bool:
        lo, hi = self.interval(like)
        return bool(((y >= lo) & (y <= hi)).all())

    def sample(self, like: Tensor, gen: torch.Generator) -> Tensor:
        lo, hi = self.interval(like)
        return lo + (hi - lo) * torch.rand(lo.shape, dtype=torch.float64, generator=gen)

    def describe(self, like: Tensor) -> str:
        lo, hi = self.interval(like)
        return f"box [{_range(lo)}, {_range(hi)}]"


@dataclass(frozen=True)
class Ball:
    """The ℓp ball {x : ‖x − center‖_p ≤ radius}, p ∈ {1, 2, inf}; ``center=None`` is the example input."""

    center: Any
    radius: float
    norm: Any = 2

    def __post_init__(self) -> None:
        r = self.radius
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0:
            raise InputError(f"Ball radius must be a finite number >= 0, got {r!r}")
        object.__setattr__(self, "norm", parse_norm(self.norm))

    def centre(self, like: Tensor) -> Tensor:
        return like.detach().to(torch.float64) if self.center is None else _broadcast(self.center, like, "center")

    def interval(self, like: Tensor) -> Interval:
        """Every ℓp ball (p ≥ 1) lies in the ℓ∞ ball of the same radius: |x_i − c_i| ≤ ‖x − c‖_p ≤ r."""
        c = self.centre(like)
        return c - self.radius, c + self.radius

    def contains(self, y: Tensor, like: Tensor) -> bool:
        return float(torch.linalg.vector_norm((y - self.centre(like)).flatten(), self.norm)) <= self.radius

    def sample(self, like: Tensor, gen: torch.Generator) -> Tensor:
        """A random point of the ball (a random direction, scaled to a random fraction of the radius)."""
        d = torch.randn(like.shape, dtype=torch.float64, generator=gen)
        d = d / torch.linalg.vector_norm(d.flatten(), self.norm).clamp_min(1e-300)
        return self.centre(like) + d * self.radius * float(torch.rand((), dtype=torch.float64, generator=gen))

    def describe(self, like: Tensor) -> str:
        p = "inf" if math.isinf(self.norm) else f"{self.norm:g}"
        where = "the example input" if self.center is None else f"center {_range(self.centre(like))}"
        return f"ℓ{p} ball of radius {self.radius:g} around {where}"


Region = Union[Box, Ball]


def check_region(region: Any, inputs: tuple) -> Region:
    """A Box or Ball over a single input tensor with a batch of 1 (a clear error otherwise)."""
    if not isinstance(region, (Box, Ball)):
        raise InputError(f"region must be lipgraph.Box(lo, hi) or lipgraph.Ball(center, radius, norm), "
                         f"got {type(region).__name__}")
    if len(inputs) != 1:
        raise InputError(f"a region analysis needs a model with one input tensor, got {len(inputs)} inputs")
    if inputs[0].ndim == 0 or inputs[0].shape[0] != 1:
        raise InputError(f"a region analysis needs an example input with a batch of 1 (shape (1, ...)), got shape "
                         f"{tuple(inputs[0].shape)}; analyse one point at a time")
    region.interval(inputs[0])  # validates shapes and values now
    return region


def global_ceiling(run: Callable[[], Bound]) -> Bound | None:
    """The network's global certified bound (``run`` is its analysis), or None where there is none (an op that is
    not globally Lipschitz, an unbounded or estimated total)."""
    try:
        bound = run()
    except LipgraphError:
        return None
    return bound if bound.kind is Kind.CERTIFIED else None


def within_global(local: Bound, ceiling: Bound | None, notes: list[str]) -> Bound:
    """min(local, global): a global certified bound holds on every region, so a region analysis never reports
    more. Op by op it can: compound patterns (residual blocks, MaxMin, lp-pooling) are bounded as one op globally
    but by their parts on a region, and chain estimators need not be monotone in the slope ranges."""
    if ceiling is None or (local.kind is Kind.CERTIFIED and local.value <= ceiling.value):
        return local
    notes.append(f"the global bound {ceiling.value:.6g} ({ceiling.method}) is below the region's bound "
                 f"{local.value:.6g} ({local.kind.value}): reported, as it holds on every region")
    return Bound(ceiling.value, Kind.CERTIFIED, f"global {ceiling.method}")


def _broadcast(value: Any, like: Tensor, name: str) -> Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"region {name} must be a number or a tensor, got {type(value).__name__}") from None
    try:
        t = t.broadcast_to(like.shape).clone()
    except RuntimeError:
        raise InputError(f"region {name} of shape {tuple(t.shape)} does not broadcast to the input shape "
                         f"{tuple(like.shape)}") from None
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"region {name} contains NaN or Inf")
    return t


def _range(t: Tensor) -> str:
    lo, hi = float(t.min()), float(t.max())
    return f"{lo:g}" if lo == hi else f"{lo:g}..{hi:g}"
