"""A proven lower bound of the Lipschitz constant of a network restricted to a region (docs/local.md §5)."""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import Tensor, nn

from .bound import Bound, Kind, lower
from .errors import UnsoundBoundError
from .frontend.prepare import eval_mode
from .lower import LowerResult, _flatten_outputs
from .region import Ball, Region


def region_lower(model: nn.Module, x: Tensor, region: Region, p: float, total: Bound,
                 points: int = 4, seed: int = 0) -> LowerResult | None:
    """A proven lower bound of the local constant: difference quotients ‖f(a) − f(b)‖_p/‖a − b‖_p of pairs a, b
    inside the region, along the Jacobian's worst direction at the centre and random points (float64, dense
    Jacobians of small models only; None otherwise). A value above a certified ``total`` fails the run
    (:class:`UnsoundBoundError`), as the global search does."""
    start = time.perf_counter()
    with eval_mode(model, []):
        net = copy.deepcopy(model).double()
    fn = lambda z: torch.cat([t.reshape(-1) for t in _flatten_outputs(net(z), None)])  # noqa: E731 - all outputs
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
        raise UnsoundBoundError(f"unsound bound: the lower bound {value:.6g} (a ratio attained inside the region) "
                                f"exceeds the certified bound {total.value:.6g}.")
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
