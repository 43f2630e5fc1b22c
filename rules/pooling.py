"""Pooling and resampling (docs/mathematics.md §2).

Max pooling: |max_w x − max_w y| ≤ max_{i∈w} |x_i − y_i|, so ‖Δout‖₂² ≤ Σ_w ‖Δx_w‖₂² = Σ_i c_i Δx_i² with c_i the
number of windows covering pixel i: L₂ = √(max c), L₁ = max c, L∞ = 1 (3×3 stride 2: c = 4, L₂ = 2).
Average pooling and upsampling are linear with nonnegative entries and act on each channel alike: their norm
is that of the single-channel operator, exact (dense SVD) when small, else the Schur bound √(‖A‖₁‖A‖∞);
ℓ1/ℓ∞ norms are exact column/row sums.

Power-average pooling (``nn.LPPool1d/2d/3d``, ``F.lp_pool*``; see :func:`lp_window_gain` for the proof): each output
is a weighted ℓp norm of its window, y_w = s·(Σ_{i∈w} a_wi |x_i|^p)^{1/p}; in ℓ2 with p = 2 and s = 1 the constant
is √(max number of windows covering one input), 1 for non-overlapping windows.
"""

from __future__ import annotations

import math

import torch

from lipgraph.bound import Bound, certified
from lipgraph.linalg import col_sum_max, dense_is_cheap, dense_norm, row_sum_max, schur_bound
from lipgraph.errors import NormNotSupported
from lipgraph.registry import Registry
from lipgraph.ruleapi import ChannelMean, OpContext, Transfer, Var, ntuple

from ._gains import copies_gain


NONNEGATIVE_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area")


def _dims(key: str) -> int:
    return int(key[-2]) if key[-1] == "d" else 2


def window_coverage(n: int, starts: list[int], sizes: list[int], step: int = 1) -> int:
    """Max number of windows (start, start + step·j for j < size) covering one of the n input positions."""
    counts = torch.zeros(n, dtype=torch.int64)
    for start, size in zip(starts, sizes):
        idx = start + step * torch.arange(size)
        counts.index_add_(0, idx[(idx >= 0) & (idx < n)], torch.ones_like(idx[(idx >= 0) & (idx < n)]))
    return int(counts.max()) if n else 0


def _out_shape(ctx: OpContext) -> tuple[int, ...]:
    """The output's shape; with ``return_indices=True`` (and aten's ``*_with_indices``) that of the values."""
    out = ctx.output
    return out.parts[0].shape if isinstance(out, Var) and out.parts else ctx.output_shape


def max_pool(ctx: OpContext) -> Bound:
    """√(max windows covering a pixel) in ℓ2; computed per dimension from the real output size."""
    d = _dims(ctx.key)
    n_in, n_out = ctx.input.shape[-d:], _out_shape(ctx)[-d:]
    k = ntuple(ctx.arg("kernel_size", 1), d)
    stride = ctx.arg("stride", 2, None)
    s = ntuple(stride if stride not in (None, [], ()) else k, d)
    pad, dil = ntuple(ctx.arg("padding", 3, 0), d), ntuple(ctx.arg("dilation", 4, 1), d)
    copies = math.prod(
        window_coverage(n_in[i], [o * s[i] - pad[i] for o in range(n_out[i])], [k[i]] * n_out[i], dil[i])
        for i in range(d))
    return copies_gain(copies, ctx.norm, "window-count")


def adaptive_max_pool(ctx: OpContext) -> Bound:
    """Adaptive windows [⌊o·n/m⌋, ⌈(o+1)·n/m⌉) may overlap; same bound as max pooling."""
    d = _dims(ctx.key)
    n_in, n_out = ctx.input.shape[-d:], _out_shape(ctx)[-d:]
    copies = 1
    for n, m in zip(n_in, n_out):
        starts = [(o * n) // m for o in range(m)]
        ends = [-((-(o + 1) * n) // m) for o in range(m)]
        copies *= window_coverage(n, starts, [e - s for s, e in zip(starts, ends)])
    return copies_gain(copies, ctx.norm, "window-count")


def per_channel_linear(ctx: OpContext) -> Bound:
    """Norm of a nonnegative linear op applied to each channel alike (avg pooling, upsampling)."""
    d = _dims(ctx.key) if ctx.key != "upsample" else len(ctx.input.shape) - 2
    in_shape = (1, *ctx.input.shape[-d:])
    fn = ctx.apply
    if ctx.key == "upsample" and ctx.arg("mode", None, "nearest") not in NONNEGATIVE_MODES:
        # bicubic weights are signed: the row/column sums and the Schur test below need A ≥ 0
        if not dense_is_cheap(math.prod(in_shape), math.prod(ctx.output_shape[-d:])):
            raise NormNotSupported(f"{ctx.describe()}: bicubic upsampling has signed weights; only its dense "
                                   "norm is implemented, and this operator is too large to materialise")
        return dense_norm(fn, in_shape, ctx.norm)
    if math.isinf(ctx.norm):
        return row_sum_max(fn, in_shape)
    if ctx.norm == 1:
        return col_sum_max(fn, in_shape)
    out_numel = math.prod(ctx.output_shape[-d:])
    if dense_is_cheap(math.prod(in_shape), out_numel):
        return dense_norm(fn, in_shape, 2)
    return schur_bound(fn, in_shape)


def adaptive_avg_pool(ctx: OpContext) -> Bound | Transfer:
    """Adaptive average pooling: :func:`per_channel_linear`; to one position per channel (global average pooling)
    with the structure :class:`~lipgraph.ruleapi.ChannelMean`, which fusion folds into a following linear layer."""
    gain = per_channel_linear(ctx)
    d = _dims(ctx.key)
    if len(ctx.input.shape) != d + 2 or any(m != 1 for m in ctx.output_shape[-d:]):
        return gain
    return Transfer(gains=(gain,), affine=True,
                    structure=ChannelMean(ctx.input.shape[1], math.prod(ctx.input.shape[-d:])))


def window_lengths(n: int, kernel: int, stride: int, n_out: int) -> list[int]:
    """In-bounds lengths of the 1-D windows [o·stride, o·stride + kernel) ∩ [0, n), o < n_out (no padding)."""
    return [max(0, min(o * stride + kernel, n) - o * stride) for o in range(n_out)]


def lp_window_gain(n_in: tuple[int, ...], n_out: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
                   inner: tuple[float, ...], p: float, r: float, method: str) -> Bound:
    """Lipschitz constant in ℓr of y_w = (Σ_{i∈w} a_wi |x_i|^p)^{1/p} over separable windows (no padding), with
    a_wi = Π_d inner_d / len_d(w) (``inner_d = kernel_d``: ``LPPool``'s (Σ x^p)^{1/p}; ``inner_d = 1``: the root of
    an average).

    Proof. y_w is a weighted ℓp norm, so |Δy_w| ≤ ‖u_w‖_p with u_wi = a_wi^{1/p}|Δx_i| (reverse triangle
    inequality). For r ≤ p, ‖u‖_p ≤ ‖u‖_r, hence Σ_w |Δy_w|^r ≤ Σ_i (Σ_w a_wi^{r/p}) |Δx_i|^r and
    L_r ≤ (max_i Σ_w a_wi^{r/p})^{1/r}. For r = ∞, |Δy_w| ≤ (Σ_i a_wi)^{1/p} ‖Δx‖_∞. For r = 2 > p = 1, Cauchy–
    Schwarz gives (Σ_i a_wi |Δx_i|)² ≤ (Σ_i a_wi)(Σ_i a_wi Δx_i²), hence L_2 ≤ √(max row sum · max column sum).
    The a_wi factor over dimensions, so the sums are products of 1-D sums. For a = 1 (LPPool, full windows) this
    is c^{1/r}·n^{max(0, 1/p − 1/r)} with c the max window coverage and n the window size (Hölder), attained by
    one coordinate at a most-covered position (p ≥ r) or a constant window (c = 1): exact there.
    """
    col_r, row, col_1 = 1.0, 1.0, 1.0  # max_i Σ_w a^{r/p};  max_w Σ_i a;  max_i Σ_w a
    full, coverage = True, 1
    for n, m, k, s, c in zip(n_in, n_out, kernel, stride, inner):
        lengths = window_lengths(n, k, s, m)
        full = full and all(length == k for length in lengths)
        weights = torch.tensor([c / length if length else 0.0 for length in lengths], dtype=torch.float64)
        starts = torch.arange(m) * s
        member = (torch.arange(n)[:, None] >= starts[None, :]) & (torch.arange(n)[:, None] < starts[None, :] + k)
        power = 1.0 if math.isinf(r) else r / p
        col_r *= float((member * weights.pow(power)).sum(1).max()) if m else 0.0
        col_1 *= float((member * weights).sum(1).max()) if m else 0.0
        row *= float((weights * torch.tensor(lengths, dtype=torch.float64)).max()) if m else 0.0
        coverage *= int(member.sum(1).max()) if m else 0
    if math.isinf(r):
        value = row ** (1.0 / p)
    elif r <= p:
        value = col_r ** (1.0 / r)
    else:
        value = math.sqrt(row * col_1)
    tight = full and all(c == k for c, k in zip(inner, kernel)) and (math.isinf(r) or p >= r or coverage == 1)
    return certified(value, method, exact=tight, margin=0.0 if tight else 1e-12)


def lp_order(ctx: OpContext, p: float) -> float:
    """The order p of a power-average pooling, refused where the op is not globally Lipschitz."""
    if math.isinf(p) and p > 0:
        return p
    if p <= 0 or p != int(p):
        raise ctx.not_lipschitz(f"x**{p:g} is undefined (NaN) for negative x or unbounded in slope near 0")
    if p > 1 and int(p) % 2 == 1:
        raise ctx.not_lipschitz(f"with odd p = {p:g} the signed sum of x**p makes (Σ x**p)^(1/p) steep near 0 "
                                "(e.g. (a³ + b³)^(1/3) near a = −b)")
    return float(p)


def lp_pool(ctx: OpContext) -> Bound:
    """(Σ_{i∈w} x_i^p)^{1/p} per window: c^{1/r}·n^{max(0, 1/p − 1/r)} (c = max window coverage, n = window size)."""
    return lp_pool_gain(ctx, _dims(ctx.key))


def lp_pool_gain(ctx: OpContext, d: int) -> Bound:
    """:func:`lp_pool` for a ``d``-dimensional LPPool module or ``F.lp_pool{d}d`` call."""
    p = lp_order(ctx, float(ctx.arg("norm_type", 1)))
    k = ntuple(ctx.arg("kernel_size", 2), d)
    stride = ctx.arg("stride", 3, None)
    s = ntuple(stride if stride not in (None, [], ()) else k, d)
    return lp_window_gain(tuple(ctx.input.shape[-d:]), tuple(ctx.output_shape[-d:]), k, s, tuple(map(float, k)), p,
                          ctx.norm, f"ℓ{p:g}-pooling windows")


def register(registry: Registry) -> None:
    for d in (1, 2, 3):
        registry.register(f"lp_pool{d}d", lp_pool, exact=True)
        registry.register(f"max_pool{d}d", max_pool)
        registry.register(f"adaptive_max_pool{d}d", adaptive_max_pool)
        registry.register(f"avg_pool{d}d", per_channel_linear, affine=True)
        registry.register(f"adaptive_avg_pool{d}d", adaptive_avg_pool, affine=True)
    registry.register("upsample", per_channel_linear, affine=True)


