"""Interval rules (docs/local.md §2): for each op, an interval containing every value the op takes when each input
ranges over its interval ``ctx.bounds[i]`` = (lo, hi). Everything runs in float64; the interval pass widens each
result outward by a relative 1e-12 for rounding.

- **monotone** ops (nondecreasing in every input coordinate jointly: ReLU-like activations, reshapes, selections,
  concatenation, sums/means, pooling, sort, clamp, max/min): [f(lo), f(hi)] exactly.
- **diagonal affine** ops (x ↦ a ⊙ x + b, a fixed: BatchNorm, scaling by a constant): [min, max] of f(lo), f(hi).
- **affine** ops with signed weights (linear, conv, matmul by a constant): centre/radius form,
  f(c) ± |A| r with c = (lo + hi)/2, r = (hi − lo)/2 (|A| the entrywise absolute value): exact per coordinate.
- **non-monotone elementwise** maps: extrema on [l, u] sit at l, u or a critical point inside (GELU, SiLU, Mish,
  Hardswish have one minimum; abs, PReLU/LeakyReLU with a negative slope have a kink at 0).
- **products** a·b, a/b, A@B: interval arithmetic (the min/max of the four corner products; Rump's centre/radius
  product for matrices); dividing by an interval that contains 0 is an error.
- **softmax**: s_i ∈ [e^{l_i} / (e^{l_i} + Σ_{j≠i} e^{u_j}), e^{u_i} / (e^{u_i} + Σ_{j≠i} e^{l_j})] (monotone in each
  logit: increasing in its own, decreasing in the others).
- **norms** ‖x‖_q over groups: nondecreasing in every |x_i|, so [‖min|x|‖, ‖max|x|‖].
- **LayerNorm/GroupNorm/InstanceNorm**: centred value n_i = (1 − 1/m)x_i − (1/m)Σ_{j≠i}x_j by interval arithmetic,
  variance ∈ [mean n²_lo, mean n²_hi], ŷ_i = n_i / √(var + ε) (positive denominator), clipped to
  |ŷ_i| ≤ √(m − 1); then γ ŷ + β.
- **RMSNorm**: x_i / r with r = √(mean x² + ε) ∈ [√(mean min x² + ε), √(mean max x² + ε)] (interval division by a
  positive interval), clipped to |x_i / r| < √n (x_i² ≤ Σ x² < n r²); then w ⊙ (x / r).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lipgraph.errors import NormNotSupported, NotLipschitzError, RuleError
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Var

from .arithmetic import _operands as operands
from .normalization import rms_eps, rms_group

F64 = torch.float64

MONOTONE = ("relu", "relu6", "hardtanh", "sigmoid", "tanh", "softsign", "logsigmoid", "hardsigmoid", "celu",
            "selu", "softplus", "softshrink", "hardshrink", "tanhshrink", "flatten", "unflatten", "reshape",
            "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "identity", "channel_shuffle",
            "pixel_shuffle", "pixel_unshuffle", "chunk", "split", "unbind", "getitem", "expand", "pad", "cat",
            "stack", "sum", "mean", "flip", "roll", "rot90", "max", "min", "amax", "amin", "sort", "topk",
            "maximum", "minimum", "clamp", "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d",
            "adaptive_max_pool2d", "adaptive_max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
            "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "pos")
#: elementwise maps with one interior minimum: a bracket holding the minimiser (found by bisection on f')
UNIMODAL = {"gelu": (-2.0, -0.25), "silu": (-3.0, -0.5), "mish": (-3.0, -0.5), "hardswish": (-2.9, -0.1)}


# -- generic helpers ----------------------------------------------------------------------------------------
def _fill(ctx: OpContext, pick: int) -> list[Any]:
    """The input intervals' lower (pick 0) or upper (pick 1) ends, in ``ctx.inputs`` order."""
    return [_pick(b, pick) for b in ctx.bounds]


def _pick(bound: Any, pick: int) -> Any:
    if bound is None:
        return None
    if isinstance(bound, tuple) and len(bound) == 2 and isinstance(bound[0], torch.Tensor):
        return bound[pick]
    return tuple(_pick(b, pick) for b in bound)  # a tuple-valued input: one interval per part


def _parts(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    if isinstance(out, (tuple, list)):
        return tuple(_parts(o) for o in out)
    return None


def _zip(lo: Any, hi: Any, order: bool = False) -> Any:
    """Pair up two results of the same structure; ``order``: sort each pair elementwise."""
    if lo is None or hi is None:
        return None
    if isinstance(lo, torch.Tensor):
        return (torch.minimum(lo, hi), torch.maximum(lo, hi)) if order else (lo, hi)
    return tuple(_zip(a, b, order) for a, b in zip(lo, hi))


def monotone(ctx: OpContext) -> Any:
    """[f(lo), f(hi)] for f nondecreasing in every input coordinate."""
    lo = _parts(ctx.apply(*_fill(ctx, 0), dtype=F64))
    hi = _parts(ctx.apply(*_fill(ctx, 1), dtype=F64))
    return _zip(lo, hi)


def diagonal(ctx: OpContext) -> Any:
    """[min, max] of f(lo), f(hi) for x ↦ a ⊙ x + b (single input, fixed a of any sign)."""
    (lo,), (hi,) = _fill(ctx, 0), _fill(ctx, 1)
    return _zip(_parts(ctx.apply(lo, dtype=F64)), _parts(ctx.apply(hi, dtype=F64)), order=True)


def _centre_radius(bound: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = bound
    return (lo + hi) / 2, (hi - lo) / 2


def _interval_mul(a: tuple, b: tuple) -> tuple:
    corners = torch.stack(torch.broadcast_tensors(a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]))
    return corners.min(0).values, corners.max(0).values


def _const(value: Any) -> tuple:
    t = torch.as_tensor(value, dtype=F64)
    return t, t


def _interval_of(ctx: OpContext, arg: Any) -> tuple:
    return ctx.bounds[arg.index] if isinstance(arg, Var) else _const(arg)


# -- affine ops with signed weights ---------------------------------------------------------------------------
def linear(ctx: OpContext) -> tuple:
    """W c + b ± |W| r."""
    c, r = _centre_radius(ctx.bounds[0])
    weight = ctx.arg("weight", 1).detach().to(F64)
    bias = ctx.arg("bias", 2, None)
    centre = F.linear(c, weight, None if bias is None else bias.detach().to(F64))
    radius = F.linear(r, weight.abs())
    return centre - radius, centre + radius


def conv(ctx: OpContext) -> tuple:
    """conv(c) ± conv_{|W|, no bias}(r): the same op with the absolute kernel (padding of r adds zeros ≥ 0,
    reflect/replicate/circular padding copies coordinates: both keep |A| r exact)."""
    c, r = _centre_radius(ctx.bounds[0])
    centre = ctx.apply(c, dtype=F64)
    weight = ctx.arg("weight", 1).detach().to(F64).abs()
    if isinstance(ctx.module, nn.modules.conv._ConvNd) and not ctx.module.transposed:  # padding modes included;
        radius = ctx.module._conv_forward(r, weight, None)  # a parametrized weight cannot be swapped in
    elif ctx.module is not None:
        state = {"weight": weight}
        if getattr(ctx.module, "bias", None) is not None:
            state["bias"] = torch.zeros_like(ctx.module.bias, dtype=F64)
        radius = torch.func.functional_call(ctx.module, state, (r,))
    else:
        args = list(ctx.args)
        args[0], args[1] = r, weight
        if len(args) > 2:
            args[2] = None
        kwargs = {k: v for k, v in ctx.kwargs.items() if k not in ("weight", "bias")}
        radius = ctx.target(*args, **kwargs)
    return centre - radius, centre + radius


def matmul(ctx: OpContext) -> tuple:
    """A @ B by centre/radius: A_c B_c ± (|A_c| B_r + A_r |B_c| + A_r B_r) (Rump 1999), exact for constants."""
    (ac, ar), (bc, br) = (_centre_radius(_interval_of(ctx, a)) for a in ctx.args[:2])
    centre = ac @ bc
    radius = ac.abs() @ br + ar @ bc.abs() + ar @ br
    return centre - radius, centre + radius


def addmm(ctx: OpContext) -> tuple:
    """beta·bias + alpha·(mat1 @ mat2)."""
    alpha, beta = float(ctx.arg("alpha", None, 1.0)), float(ctx.arg("beta", None, 1.0))
    (ac, ar), (bc, br) = (_centre_radius(_interval_of(ctx, a)) for a in ctx.args[1:3])
    bias_c, bias_r = _centre_radius(_interval_of(ctx, ctx.args[0]))
    centre = beta * bias_c + alpha * (ac @ bc)
    radius = abs(beta) * bias_r + abs(alpha) * (ac.abs() @ br + ar @ bc.abs() + ar @ br)
    return centre - radius, centre + radius


# -- arithmetic -----------------------------------------------------------------------------------------------
def add(ctx: OpContext) -> tuple:
    """a + α·b, a − α·b, rsub: interval sums (a coefficient of negative sign swaps the ends)."""
    a, b = operands(ctx)
    alpha = float(ctx.arg("alpha", None, 1.0))
    name = str(getattr(ctx.target, "__name__", ctx.target))
    sign_a, sign_b = 1.0, alpha * (-1.0 if ctx.key == "sub" else 1.0)
    if "rsub" in name:  # rsub(a, b, alpha) = b − alpha·a
        sign_a, sign_b = -alpha, 1.0
    ia, ib = _scaled(_interval_of(ctx, a), sign_a), _scaled(_interval_of(ctx, b), sign_b)
    return ia[0] + ib[0], ia[1] + ib[1]


def _scaled(bound: tuple, c: float) -> tuple:
    lo, hi = bound[0] * c, bound[1] * c
    return (lo, hi) if c >= 0 else (hi, lo)


def mul(ctx: OpContext) -> tuple:
    """a·b: min and max of the four corner products (either operand may be a constant)."""
    a, b = operands(ctx)
    return _interval_mul(_interval_of(ctx, a), _interval_of(ctx, b))


def div(ctx: OpContext) -> tuple:
    """a / b = a · [1/hi_b, 1/lo_b] when b's interval excludes 0."""
    a, b = operands(ctx)
    if ctx.kwargs.get("rounding_mode") is not None:
        raise ctx.not_lipschitz(f"rounding_mode={ctx.kwargs['rounding_mode']!r} makes it a step function")
    lo, hi = _interval_of(ctx, b)
    if bool(((lo <= 0) & (hi >= 0)).any()):
        raise NotLipschitzError(f"{ctx.describe()} is not Lipschitz on the region: its divisor ranges over an "
                                f"interval that contains 0 (e.g. [{float(lo.min()):.3g}, {float(hi.max()):.3g}]); "
                                "shrink the region")
    return _interval_mul(_interval_of(ctx, a), (1.0 / hi, 1.0 / lo))


def neg(ctx: OpContext) -> tuple:
    lo, hi = ctx.bounds[0]
    return -hi, -lo


# -- non-monotone elementwise maps ----------------------------------------------------------------------------
def _critical(ctx: OpContext, lo: float, hi: float) -> float:
    """The zero of f' in [lo, hi] (f' < 0 at lo, > 0 at hi) by bisection in float64."""
    def slope(x: float) -> float:
        t = torch.tensor([x], dtype=F64, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(ctx.apply(t, dtype=F64).sum(), t)
        return float(g)

    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def unimodal(ctx: OpContext) -> tuple:
    """f decreasing then increasing: [f(x*) if x* ∈ [l, u] else min(f(l), f(u)), max(f(l), f(u))]; the minimum
    value is lowered by 1e-12 (the minimiser is known to ~1e-16, where f' ≈ 0)."""
    lo, hi = ctx.bounds[0]
    f_lo, f_hi = ctx.apply(lo, dtype=F64), ctx.apply(hi, dtype=F64)
    x_star = _critical(ctx, *UNIMODAL[ctx.key])
    f_star = float(ctx.apply(torch.tensor([x_star], dtype=F64), dtype=F64)) - 1e-12
    inside = (lo <= x_star + 1e-9) & (hi >= x_star - 1e-9)
    low = torch.where(inside, torch.full_like(f_lo, f_star), torch.minimum(f_lo, f_hi))
    return low, torch.maximum(f_lo, f_hi)


def kinked(ctx: OpContext) -> tuple:
    """Piecewise monotone with one kink at 0 (abs, LeakyReLU/PReLU/RReLU/ELU with a negative slope): extrema at
    l, u or 0."""
    lo, hi = ctx.bounds[0]
    f_lo, f_hi = ctx.apply(lo, dtype=F64), ctx.apply(hi, dtype=F64)
    f_zero = ctx.apply(torch.zeros_like(lo), dtype=F64)
    inside = (lo <= 0) & (hi >= 0)
    low = torch.where(inside, torch.minimum(torch.minimum(f_lo, f_hi), f_zero), torch.minimum(f_lo, f_hi))
    high = torch.where(inside, torch.maximum(torch.maximum(f_lo, f_hi), f_zero), torch.maximum(f_lo, f_hi))
    return low, high


def threshold(ctx: OpContext) -> tuple:
    """x if x > t else value: [min(f(l), value), max(f(u), value)] covers both branches."""
    lo, hi = monotone(ctx)
    value = float(ctx.arg("value", 2))
    return torch.clamp(lo, max=value), torch.clamp(hi, min=value)


def dropout(ctx: OpContext) -> Any:
    if ctx.arg("training", 2, True):
        raise RuleError(f"{ctx.describe()}: dropout is active (training=True): its output is random, no interval")
    return ctx.bounds[0]


def cast(ctx: OpContext) -> Any:
    """A floating-point dtype or device change: the same interval (the global rule refuses other casts)."""
    return ctx.bounds[0]


def tuple_values(ctx: OpContext) -> Any:
    """``.values`` of (values, indices): the first part's interval."""
    return ctx.bounds[0][0]


def non_float(ctx: OpContext) -> None:
    """Integer results (argmax, indices): no interval; any op using them as values has no Lipschitz rule."""
    return None


# -- softmax, norms, normalisation ----------------------------------------------------------------------------
def softmax_dim(ctx: OpContext) -> int:
    """The softmax dimension, as :func:`rules.softmax.softmax_size` reads it (torch's legacy default)."""
    shape = ctx.input.shape
    if ctx.key == "softmax2d":
        return len(shape) - 3
    dim = ctx.arg("dim", 1, None)
    if dim is None:
        dim = 0 if len(shape) in (0, 1, 3) else 1
    return int(dim) % len(shape)


def softmax_interval(lo: torch.Tensor, hi: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of softmax along ``dim`` (log-sum-exp shifted for stability)."""
    shift = hi.amax(dim, keepdim=True)
    el, eu = (lo - shift).exp(), (hi - shift).exp()
    sum_l, sum_u = el.sum(dim, keepdim=True), eu.sum(dim, keepdim=True)
    low = el / (el + (sum_u - eu).clamp_min(0))
    high = eu / (eu + (sum_l - el).clamp_min(0))
    return low, high.clamp(max=1.0)


def softmax(ctx: OpContext) -> tuple:
    lo, hi = ctx.bounds[0]
    dim = softmax_dim(ctx)
    if ctx.key == "softmin":
        lo, hi = -hi, -lo
    return softmax_interval(lo, hi, dim)


def log_softmax(ctx: OpContext) -> tuple:
    low, high = softmax_interval(*ctx.bounds[0], softmax_dim(ctx))
    return low.clamp_min(1e-300).log(), high.log()


def vector_norm(ctx: OpContext) -> tuple:
    """Norms are nondecreasing in every |x_i|: [‖min |x|‖, ‖max |x|‖]."""
    lo, hi = ctx.bounds[0]
    small = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
    return ctx.apply(small, dtype=F64), ctx.apply(torch.maximum(lo.abs(), hi.abs()), dtype=F64)


def normalized_interval(lo: torch.Tensor, hi: torch.Tensor, eps: float) -> tuple:
    """For groups along the last dim (…, m): bounds of ŷ = (x − μ)/√(var + ε) and the variance's lower bound."""
    m = lo.shape[-1]
    s_lo, s_hi = lo.sum(-1, keepdim=True), hi.sum(-1, keepdim=True)
    n_lo = (1 - 1 / m) * lo - (s_hi - hi) / m
    n_hi = (1 - 1 / m) * hi - (s_lo - lo) / m
    sq_hi = torch.maximum(n_lo.square(), n_hi.square())
    sq_lo = torch.where((n_lo <= 0) & (n_hi >= 0), torch.zeros_like(n_lo), torch.minimum(n_lo.square(), n_hi.square()))
    var_lo, var_hi = sq_lo.mean(-1, keepdim=True), sq_hi.mean(-1, keepdim=True)
    d_lo, d_hi = (var_lo + eps).sqrt(), (var_hi + eps).sqrt()
    y_lo = torch.minimum(n_lo / d_lo, n_lo / d_hi)
    y_hi = torch.maximum(n_hi / d_lo, n_hi / d_hi)
    cap = math.sqrt(max(m - 1, 0))
    return y_lo.clamp(-cap, cap), y_hi.clamp(-cap, cap), var_lo


def norm_groups(ctx: OpContext) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(group view, affine-parameter view) of a LayerNorm/GroupNorm/InstanceNorm input."""
    shape = ctx.input.shape
    if ctx.key == "layer_norm":
        normalized = ctx.arg("normalized_shape", 1)
        k = 1 if isinstance(normalized, int) else len(normalized)
        return (*shape[:len(shape) - k], math.prod(shape[len(shape) - k:])), tuple(shape[len(shape) - k:])
    if ctx.key == "group_norm":
        groups = int(ctx.arg("num_groups", 1))
    else:  # instance_norm: every channel its own group, unless running statistics are used
        if ctx.module is not None and getattr(ctx.module, "track_running_stats", False):
            raise NormNotSupported(f"{ctx.describe()}: instance norm with running statistics has no interval rule")
        groups = shape[1]
    return (shape[0], groups, math.prod(shape[1:]) // groups), (shape[1],) + (1,) * (len(shape) - 2)


def feature_norm(ctx: OpContext) -> tuple:
    """γ ⊙ ŷ + β with ŷ from :func:`normalized_interval`."""
    lo, hi = ctx.bounds[0]
    view, param_view = norm_groups(ctx)
    eps = float(ctx.arg("eps", None, 1e-5))
    y_lo, y_hi, _ = normalized_interval(lo.reshape(view), hi.reshape(view), eps)
    y_lo, y_hi = y_lo.reshape(lo.shape), y_hi.reshape(lo.shape)
    weight, bias = ctx.arg("weight", None, None), ctx.arg("bias", None, None)
    if weight is not None:
        y_lo, y_hi = _interval_mul((y_lo, y_hi), _const(weight.detach().to(F64).reshape(param_view)))
    if bias is not None:
        b = bias.detach().to(F64).reshape(param_view)
        y_lo, y_hi = y_lo + b, y_hi + b
    return y_lo, y_hi


def rms_interval(lo: torch.Tensor, hi: torch.Tensor, eps: float) -> tuple:
    """For groups along the last dim (…, n): bounds of x / √(mean x² + ε) and the lower bound of mean x²."""
    small = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
    ms_lo = small.square().mean(-1, keepdim=True)
    ms_hi = torch.maximum(lo.abs(), hi.abs()).square().mean(-1, keepdim=True)
    r_lo, r_hi = (ms_lo + eps).sqrt(), (ms_hi + eps).sqrt()
    cap = math.sqrt(lo.shape[-1])
    y_lo = torch.minimum(lo / r_lo, lo / r_hi).clamp(-cap, cap)
    y_hi = torch.maximum(hi / r_lo, hi / r_hi).clamp(-cap, cap)
    return y_lo, y_hi, ms_lo


def rms_norm(ctx: OpContext) -> tuple:
    """w ⊙ (x / r) with x / r from :func:`rms_interval`."""
    lo, hi = ctx.bounds[0]
    view = rms_group(ctx)
    y_lo, y_hi, _ = rms_interval(lo.reshape(view), hi.reshape(view), rms_eps(ctx))
    y_lo, y_hi = y_lo.reshape(lo.shape), y_hi.reshape(lo.shape)
    weight = ctx.arg("weight", 2, None)
    if weight is not None:
        y_lo, y_hi = _interval_mul((y_lo, y_hi), _const(weight.detach().to(F64)))
    return y_lo, y_hi


def upsample(ctx: OpContext) -> Any:
    """Nonnegative interpolation weights (nearest, (bi/tri)linear, area) make it monotone; bicubic is signed."""
    from .pooling import NONNEGATIVE_MODES

    if ctx.arg("mode", None, "nearest") not in NONNEGATIVE_MODES:
        raise NormNotSupported(f"{ctx.describe()}: bicubic upsampling has signed weights; no interval rule")
    return monotone(ctx)


def register(registry: Registry) -> None:
    for key in MONOTONE:
        registry.register_interval(key, monotone)
    for key in ("batch_norm", "pos"):
        registry.register_interval(key, diagonal, override=True)
    for key in UNIMODAL:
        registry.register_interval(key, unimodal)
    for key in ("abs", "leaky_relu", "prelu", "rrelu", "elu"):
        registry.register_interval(key, kinked)
    for key in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        registry.register_interval(key, conv)
    for key in ("softmax", "softmin", "softmax2d"):
        registry.register_interval(key, softmax)
    for key in ("norm", "linalg_vector_norm", "linalg_norm"):
        registry.register_interval(key, vector_norm)
    for key in ("layer_norm", "group_norm", "instance_norm"):
        registry.register_interval(key, feature_norm)
    registry.register_interval("rms_norm", rms_norm)
    for key in ("argmax", "argmin", "indices"):
        registry.register_interval(key, non_float)
    for fn, keys in ((linear, ("linear",)), (matmul, ("matmul",)), (addmm, ("addmm",)), (add, ("add", "sub")),
                     (mul, ("mul",)), (div, ("div",)), (neg, ("neg",)), (threshold, ("threshold",)),
                     (dropout, ("dropout",)), (cast, ("cast",)), (tuple_values, ("values",)), (log_softmax, ("log_softmax",)), (upsample, ("upsample",))):
        for key in keys:
            registry.register_interval(key, fn)
