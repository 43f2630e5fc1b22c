"""Input regions for local Lipschitz bounds (docs/local.md): a box [lo, hi] or an ℓp ball B_p(c, r).

A local bound is the Lipschitz constant of the network *restricted to the region*: both regions are convex, so
the mean-value inequality along the segment between two of its points bounds ‖f(x) − f(y)‖ by the supremum of
the Jacobian norm over the region, which the local rules bound from the region's coordinate intervals.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from .bound import Bound, Kind, lower
from .errors import InputError
from .frontend.prepare import eval_mode
from .lower import LowerResult

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
        from .api import parse_norm

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


def region_lower(model: nn.Module, x: Tensor, region: Region, p: float, total: Bound, notes: list[str],
                 points: int = 4, seed: int = 0) -> LowerResult | None:
    """A proven lower bound of the local constant: difference quotients ‖f(a) − f(b)‖_p/‖a − b‖_p of pairs a, b
    inside the region, along the Jacobian's worst direction at the centre and random points (float64, dense
    Jacobians of small models only; None otherwise). A value above a certified ``total`` is reported UNSOUND."""
    start = time.perf_counter()
    with eval_mode(model, []):
        net = copy.deepcopy(model).double()
    fn = lambda z: net(z).reshape(-1)  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    lo, hi = region.interval(x)
    centre = region.centre(x) if isinstance(region, Ball) else (lo + hi) / 2
    best: tuple[float, Tensor, Tensor, Tensor, Tensor] | None = None
    for k in range(points):
        z = centre if k == 0 else region.sample(x, gen)
        if z.numel() * fn(z).numel() > DENSE_LIMIT:
            return None
        J = torch.autograd.functional.jacobian(fn, z).reshape(-1, z.numel())
        v = _worst_direction(J, p).reshape(z.shape)
        h = 1e-5 * (1.0 + float(z.abs().max()))
        while h > 1e-14 and not (region.contains(z + h * v, x) and region.contains(z - h * v, x)):
            h /= 4
        a, b = z + h * v, z - h * v
        fa, fb = fn(a).detach(), fn(b).detach()  # with autograd on: no fused inference kernels (attention)
        num = float(torch.linalg.vector_norm(fa - fb, p)) - 1e-12 * float(torch.linalg.vector_norm(fa, p)
                                                                          + torch.linalg.vector_norm(fb, p))
        den = float(torch.linalg.vector_norm((a - b).flatten(), p))
        value = max(num, 0.0) / den * (1 - 1e-12) if den > 0 else 0.0
        if best is None or value > best[0]:
            best = (value, a, b, z, v)
    value, a, b, z, v = best
    if total.kind is Kind.CERTIFIED and value > total.value:
        notes.append(f"UNSOUND: the lower bound {value:.6g} (a ratio attained inside the region) exceeds the "
                     f"certified bound {total.value:.6g}; some rule is wrong, please report this model")
    return LowerResult(bound=lower(value, "difference quotient in region"), input=a.to(x.dtype), other=b.to(x.dtype),
                       point=z.to(x.dtype), direction=v.flatten(), jacobian=None, norm=p, evaluations=points,
                       rounds=1, seconds=time.perf_counter() - start)


#: largest Jacobian (inputs × outputs) built densely by :func:`region_lower`
DENSE_LIMIT = 1 << 21


def _worst_direction(J: Tensor, p: float) -> Tensor:
    """A unit-ℓp input direction v maximising ‖J v‖_p: top right singular vector (ℓ2), the sign pattern of the
    heaviest row (ℓ∞), the heaviest column (ℓ1)."""
    if p == 2:
        return torch.linalg.svd(J, full_matrices=False).Vh[0]
    if math.isinf(p):
        row = J.abs().sum(1).argmax()
        return torch.where(J[row] >= 0, 1.0, -1.0).to(J.dtype)
    v = torch.zeros(J.shape[1], dtype=J.dtype)
    v[J.abs().sum(0).argmax()] = 1.0
    return v


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
