"""Local Lipschitz rules (docs/local.md §3): valid only on the analysed region, they read the input intervals
``ctx.bounds``. Used in region analyses in place of the global rule of the same op key.

- **activations**: the slope range of each neuron over its pre-activation interval [l, u]. Piecewise-linear maps
  (ReLU, LeakyReLU, ReLU6, Hardtanh, Hardsigmoid, abs, Softshrink, Threshold): the slopes of the pieces that meet
  [l, u] in more than a point — exact (ReLU with l ≥ 0: {1}, u ≤ 0: {0}). Smooth maps: σ' on [l, u] has its
  extrema at l, u or a critical point of σ' inside (a zero of σ''); both one-sided limits at a kink inside.
  The transfer carries the per-neuron ranges (``Transfer.neuron_slopes``), their hull, and gain max |slope|.
- **products** x ⊙ y: d(xy) = y dx + x dy, so the gains are those of scaling by max|y| and by max|x| over the
  region (the operator norms of a diagonal/broadcast scaling grow with |c| entrywise).
- **quotients** x / y with y bounded away from 0: d(x/y) = dx / y − x dy / y², gains of scaling by 1/min|y| and
  max|x| / min|y|².
- **matmul** A @ B of two varying operands: d(AB) = dA B + A dB, gains ‖|B|_max‖ and ‖|A|_max‖ (ℓ2 norms are
  monotone in the entrywise absolute value, ℓ1/ℓ∞ norms depend on it alone).
- **LayerNorm/GroupNorm/InstanceNorm**: per group of m coordinates J = diag(γ)/σ_ε · (I − 11ᵀ/m − ŷŷᵀ/m) with
  ŷ = (x − μ)/σ_ε, σ_ε = √(var + ε) (block diagonal over groups). In ℓ2 the bracket is an orthogonal projection
  (ŷ ⟂ 1, ‖ŷ‖² ≤ m), so ‖J‖₂ ≤ max|γ| / √(var_min + ε), var_min the variance's lower bound over the region.
  In ℓ∞ (max row sum) and ℓ1 (max column sum) every row/column i of the bracket sums to at most
  Σ_j |δ_ij − 1/m| + |ŷ_i|·‖ŷ‖₁/m ≤ 2(1 − 1/m) + max|ŷ| (‖ŷ‖₁ ≤ √m‖ŷ‖₂ ≤ m), max|ŷ| from the interval of ŷ.
- **RMSNorm**: J = diag(w)/r · (I − x xᵀ/(n r²)), r = √(mean x² + ε) ≥ r_lo = √(mean min x² + ε) over the region.
  ℓ2: the bracket's eigenvalues are 1 and ε/r² ≤ 1, so ‖J‖₂ ≤ max|w|/r_lo. With A = max|x|, a = min|x| over the
  region: ℓ∞, row i sums to |w_i|(1 − x_i²/(n r²) + |x_i|Σ_{j≠i}|x_j|/(n r²))/r ≤ |w_i|(1 + c_i)/r_lo,
  c_i = min(max(0, A_i(Σ_{j≠i}A_j − a_i))/(n r_lo²), (√n − 1)/2); ℓ1, column j sums to at most (|w_j| + c'_j)/r_lo,
  c'_j = min(max(0, A_j(Σ_{i≠j}|w_i|A_i − |w_j|a_j))/(n r_lo²), max|w|·√(n − 1)/2) (the caps: Cauchy–Schwarz and
  AM–GM as in rules/normalization.py ``rms_row_factor``).
- **softmax**: ‖J‖ ≤ max_i 2 s_i(1 − s_i) (ℓ1, ℓ2, ℓ∞), maximised over each s_i's interval.
"""
from __future__ import annotations

import math

import torch

from lipgraph.bound import certified
from lipgraph.errors import NormNotSupported, NotLipschitzError
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer, Var

from ._gains import constant_scale_gain
from .arithmetic import _operands as operands
from .intervals import normalized_interval, norm_groups, rms_interval, softmax_dim, softmax_interval
from .normalization import rms_eps, rms_group
from .activations import softplus, threshold
from .linear import product_gain

F64 = torch.float64
#: global rules that refuse discontinuous parameter choices (Softplus' switch, Threshold with value ≠ threshold)
GLOBAL_CHECKS = {"softplus": softplus, "threshold": threshold}
#: smooth activations: brackets each holding one zero of σ'' (where σ' has an extremum)
SMOOTH = {"sigmoid": ((-1.0, 1.0),), "tanh": ((-1.0, 1.0),), "gelu": ((-2.0, -1.0), (1.0, 2.0)),
          "silu": ((-3.5, -1.5), (1.5, 3.5)), "mish": ((-3.5, -1.5), (1.0, 3.5)), "softplus": (),
          "logsigmoid": (), "selu": (), "celu": (), "elu": (), "tanhshrink": ((-1.0, 1.0),), "softsign": ()}
#: kinks (where σ' jumps): both one-sided slopes count when a kink lies in [l, u]
KINKS = {"selu": (0.0,), "celu": (0.0,), "elu": (0.0,), "softsign": (0.0,), "tanhshrink": (), "hardswish": (-3.0, 3.0)}
#: widening of the smooth activations' slope ranges (their critical points are located to ~1e-6)
SLOPE_MARGIN = 1e-9


def _pieces(ctx: OpContext) -> tuple[list[float], list[float]] | None:
    """Breakpoints and the slope of each piece, for piecewise-linear activations (None otherwise)."""
    key = ctx.key
    if key == "relu":
        return [0.0], [0.0, 1.0]
    if key == "relu6":
        return [0.0, 6.0], [0.0, 1.0, 0.0]
    if key == "hardtanh":
        return [float(ctx.arg("min_val", 1, -1.0)), float(ctx.arg("max_val", 2, 1.0))], [0.0, 1.0, 0.0]
    if key == "hardsigmoid":
        return [-3.0, 3.0], [0.0, 1.0 / 6.0, 0.0]
    if key == "leaky_relu":
        return [0.0], [float(ctx.arg("negative_slope", 1, 0.01)), 1.0]
    if key == "rrelu":
        return [0.0], [(float(ctx.arg("lower", 1, 1 / 8)) + float(ctx.arg("upper", 2, 1 / 3))) / 2, 1.0]
    if key == "abs":
        return [0.0], [-1.0, 1.0]
    if key == "softshrink":
        lam = float(ctx.arg("lambd", 1, 0.5))
        return [-lam, lam], [1.0, 0.0, 1.0]
    if key == "threshold":
        return [float(ctx.arg("threshold", 1))], [0.0, 1.0]
    return None


def piecewise_slopes(lo: torch.Tensor, hi: torch.Tensor, breaks: list[float], slopes: list[float]):
    """Per-neuron [min, max] slope of a piecewise-linear map over [lo, hi]: pieces meeting it in an interval of
    positive length (a degenerate [l, l] takes the pieces whose closure holds l)."""
    edges = [-math.inf, *breaks, math.inf]
    s_lo = torch.full_like(lo, math.inf)
    s_hi = torch.full_like(lo, -math.inf)
    for k, s in enumerate(slopes):
        a, b = edges[k], edges[k + 1]
        meets = torch.where(lo < hi, (lo < b) & (hi > a), (lo <= b) & (hi >= a))
        s_lo = torch.where(meets, torch.clamp(s_lo, max=s), s_lo)
        s_hi = torch.where(meets, torch.clamp(s_hi, min=s), s_hi)
    return s_lo, s_hi


def _derivative(ctx: OpContext, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(ctx.apply(x, dtype=F64).sum(), x)
    return g.detach()


def _second_zero(ctx: OpContext, a: float, b: float) -> float:
    """A zero of σ'' in [a, b] by bisection on the sign of σ'' (finite differences of σ' in float64)."""
    def curvature(x: float) -> float:
        pts = torch.tensor([x - 1e-6, x + 1e-6], dtype=F64)
        d = _derivative(ctx, pts)
        return float(d[1] - d[0])

    sign_a = curvature(a) > 0
    for _ in range(50):
        mid = (a + b) / 2
        a, b = (mid, b) if (curvature(mid) > 0) == sign_a else (a, mid)
    return (a + b) / 2


def smooth_slopes(ctx: OpContext, lo: torch.Tensor, hi: torch.Tensor):
    """[min, max] of σ' over [lo, hi]: endpoints, critical points of σ' inside, both sides of kinks inside.
    Widened by ``SLOPE_MARGIN`` (critical points are located to ~1e-6, where σ'' ≈ 0)."""
    cands = [_derivative(ctx, lo), _derivative(ctx, hi)]
    masks = [torch.ones_like(lo, dtype=torch.bool)] * 2
    points = [(_second_zero(ctx, a, b), 0.0) for a, b in SMOOTH.get(ctx.key, ())]
    points += [(k, side) for k in KINKS.get(ctx.key, ()) for side in (-1e-12, 1e-12)]
    for x, side in points:
        value = float(_derivative(ctx, torch.tensor([x + side], dtype=F64)))
        cands.append(torch.full_like(lo, value))
        masks.append((lo <= x + 1e-6) & (hi >= x - 1e-6))
    stack, mask = torch.stack(cands), torch.stack(masks)
    s_lo = torch.where(mask, stack, torch.full_like(stack, math.inf)).min(0).values
    s_hi = torch.where(mask, stack, torch.full_like(stack, -math.inf)).max(0).values
    return s_lo - SLOPE_MARGIN, s_hi + SLOPE_MARGIN


def activation(ctx: OpContext) -> Transfer:
    """Per-neuron slope ranges over the pre-activation intervals (see the module docstring)."""
    if ctx.key in GLOBAL_CHECKS:  # torch's spellings that jump are refused, on a region too
        GLOBAL_CHECKS[ctx.key](ctx)
    lo, hi = ctx.bounds[0]
    pieces = _pieces(ctx)
    if ctx.key == "prelu":
        weight = ctx.arg("weight", 1).detach().to(F64)
        view = (1, -1) + (1,) * (len(lo.shape) - 2) if weight.numel() > 1 else ()
        a = weight.reshape(view).broadcast_to(lo.shape) if view else weight.broadcast_to(lo.shape)
        neg, pos = lo < 0, hi > 0
        s_lo = torch.where(neg & pos, torch.minimum(a, torch.ones_like(a)), torch.where(neg, a, torch.ones_like(a)))
        s_hi = torch.where(neg & pos, torch.maximum(a, torch.ones_like(a)), torch.where(neg, a, torch.ones_like(a)))
    elif pieces is not None:
        s_lo, s_hi = piecewise_slopes(lo, hi, *pieces)
    else:
        s_lo, s_hi = smooth_slopes(ctx, lo, hi)
    gain = float(torch.maximum(s_lo.abs(), s_hi.abs()).max()) if lo.numel() else 0.0
    return Transfer(gains=(certified(gain, "local slope"),), slope=(float(s_lo.min()), float(s_hi.max())),
                    neuron_slopes=(s_lo, s_hi))


def _abs_max(bound: tuple) -> torch.Tensor:
    return torch.maximum(bound[0].abs(), bound[1].abs())


def _abs_min(bound: tuple) -> torch.Tensor:
    lo, hi = bound
    return torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))


def mul(ctx: OpContext) -> Transfer:
    """x ⊙ y: gains = scaling by max|other| (a constant other: its own value)."""
    a, b = operands(ctx)
    gains = []
    for var, other in ((a, b), (b, a)):
        if not isinstance(var, Var):
            continue
        c = _abs_max(ctx.bounds[other.index]) if isinstance(other, Var) else torch.as_tensor(other, dtype=F64).abs()
        gains.append(constant_scale_gain(c, var, ctx.output_shape, ctx.norm, "local product"))
    return Transfer(gains=tuple(gains))


def div(ctx: OpContext) -> Transfer:
    """x / y with min|y| > 0 over the region: gains 1/min|y| (numerator) and max|x|/min|y|² (denominator)."""
    a, b = operands(ctx)
    if ctx.kwargs.get("rounding_mode") is not None:
        raise ctx.not_lipschitz(f"rounding_mode={ctx.kwargs['rounding_mode']!r} makes it a step function")
    den = ctx.bounds[b.index] if isinstance(b, Var) else (torch.as_tensor(b, dtype=F64),) * 2
    smallest = _abs_min(den)
    if bool((smallest <= 0).any()):
        raise NotLipschitzError(f"{ctx.describe()} is not Lipschitz on the region: its divisor's interval contains 0; "
                                "shrink the region")
    gains = []
    if isinstance(a, Var):
        gains.append(constant_scale_gain(1.0 / smallest, a, ctx.output_shape, ctx.norm, "local quotient"))
    if isinstance(b, Var):
        num = _abs_max(ctx.bounds[a.index]) if isinstance(a, Var) else torch.as_tensor(a, dtype=F64).abs()
        gains.append(constant_scale_gain(num / smallest.square(), b, ctx.output_shape, ctx.norm, "local quotient"))
    return Transfer(gains=tuple(gains))


def matmul(ctx: OpContext) -> Transfer:
    """A @ B: gain of A is ‖B‖ over the region (≤ the norm of max|B|), of B is ‖A‖ likewise."""
    a, b = ctx.args[0], ctx.args[1]
    gains = []
    for var, other, left in ((a, b, True), (b, a, False)):
        if isinstance(var, Var):
            c = _abs_max(ctx.bounds[other.index]) if isinstance(other, Var) else torch.as_tensor(other)
            gains.append(product_gain(var, c, left, ctx.norm))
    return Transfer(gains=tuple(gains))


def feature_norm(ctx: OpContext) -> Transfer:
    """max|γ| / √(var_min + ε) over the groups (ℓ2); ℓ1/ℓ∞: times 2(1 − 1/m) + max|ŷ| (module docstring)."""
    if ctx.norm not in (1, 2, math.inf):
        raise NormNotSupported(f"{ctx.describe()}: local bounds of normalisation layers exist in ℓ1, ℓ2 and ℓ∞ only")
    lo, hi = ctx.bounds[0]
    view, _ = norm_groups(ctx)
    eps = float(ctx.arg("eps", None, 1e-5))
    y_lo, y_hi, var_lo = normalized_interval(lo.reshape(view), hi.reshape(view), eps)
    weight = ctx.arg("weight", None, None)
    gamma = float(weight.detach().abs().max()) if weight is not None else 1.0
    scale = gamma / _region_divisor(ctx, float(var_lo.min()) + eps)
    if ctx.norm == 2:
        return Transfer(gains=(certified(scale, "max|γ|/√(var_min+ε)"),))
    m = view[-1]
    rows = 2 * (1 - 1 / m) + float(torch.maximum(y_lo.abs(), y_hi.abs()).max())
    return Transfer(gains=(certified(scale * rows, "max|γ|/√(var_min+ε)·(2(1−1/m)+max|ŷ|)"),))


def _region_divisor(ctx: OpContext, square: float) -> float:
    """√square, the smallest divisor √(mean + ε) of a normalisation over the region; 0 (ε = 0 and a region reaching
    a zero-variance input): x/‖x‖ has unbounded slope there."""
    if not square > 0:
        raise NotLipschitzError(f"{ctx.describe()} is not Lipschitz on the region: with eps = 0 its divisor "
                                "√(mean + eps) reaches 0 there; shrink the region or use eps > 0")
    return math.sqrt(square)


def rms_norm(ctx: OpContext) -> Transfer:
    """max|w|/r_lo (ℓ2); ℓ∞: max_i |w_i|(1 + c_i)/r_lo; ℓ1: max_j (|w_j| + c'_j)/r_lo, r_lo per group
    (module docstring)."""
    view = rms_group(ctx)
    n = view[-1]
    lo, hi = (b.reshape(view) for b in ctx.bounds[0])
    eps = rms_eps(ctx)
    r_lo = (rms_interval(lo, hi, eps)[2] + eps).sqrt()
    _region_divisor(ctx, float(r_lo.min()) ** 2)
    weight = ctx.arg("weight", 2, None)
    w = weight.detach().to(F64).abs().reshape(n) if weight is not None else torch.ones(n, dtype=F64)
    if ctx.norm == 2:
        return Transfer(gains=(certified(float(w.max() / r_lo.min()), "max|w|/√(mean x²_min+ε)"),))
    big, small = _abs_max((lo, hi)), _abs_min((lo, hi))
    if ctx.norm == math.inf:  # row i: |w_i|·(1 + c_i)
        cross = (big * (big.sum(-1, keepdim=True) - big - small)).clamp_min(0) / (n * r_lo.square())
        lines = w * (1 + cross.clamp(max=(math.sqrt(n) - 1) / 2))
    else:  # column j: |w_j| + c'_j
        weighted = w * big
        cross = (big * (weighted.sum(-1, keepdim=True) - weighted - w * small)).clamp_min(0) / (n * r_lo.square())
        lines = w + cross.clamp(max=math.sqrt(n - 1) / 2 * float(w.max()))
    return Transfer(gains=(certified(float((lines / r_lo).max()), "local RMSNorm row/column sums"),))


def softmax(ctx: OpContext) -> Transfer:
    """max_i sup 2 s_i(1 − s_i) over the interval of s_i (≤ 1/2)."""
    lo, hi = ctx.bounds[0]
    if ctx.key == "softmin":
        lo, hi = -hi, -lo
    s_lo, s_hi = softmax_interval(lo, hi, softmax_dim(ctx))
    peak = torch.where((s_lo <= 0.5) & (s_hi >= 0.5), torch.full_like(s_lo, 0.25),
                       torch.maximum(s_lo * (1 - s_lo), s_hi * (1 - s_hi)))
    d = lo.shape[softmax_dim(ctx)] if lo.ndim else 1
    return Transfer(gains=(certified(min(0.5, 2 * float(peak.max())) if d > 1 else 0.0, "local softmax"),))


ACTIVATIONS = ("relu", "relu6", "hardtanh", "hardsigmoid", "leaky_relu", "rrelu", "abs", "softshrink", "threshold",
               "prelu", "sigmoid", "tanh", "gelu", "silu", "mish", "softplus", "logsigmoid", "selu", "celu", "elu",
               "tanhshrink", "softsign", "hardswish")


def register(registry: Registry) -> None:
    for key in ACTIVATIONS:
        registry.register_local(key, activation)
    for key in ("layer_norm", "group_norm", "instance_norm"):
        registry.register_local(key, feature_norm)
    registry.register_local("rms_norm", rms_norm)
    for key in ("softmax", "softmin", "softmax2d"):
        registry.register_local(key, softmax)
    registry.register_local("mul", mul)
    registry.register_local("div", div)
    registry.register_local("matmul", matmul)
