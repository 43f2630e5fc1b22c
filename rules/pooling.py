"""Pooling and resampling (algorithms.md §2).

Max pooling: |max_w x − max_w y| ≤ max_{i∈w} |x_i − y_i|, so ‖Δout‖₂² ≤ Σ_w ‖Δx_w‖₂² = Σ_i c_i Δx_i² with c_i the
number of windows covering pixel i: L₂ = √(max c), L₁ = max c, L∞ = 1 (3×3 stride 2: c = 4, L₂ = 2).
Average pooling and upsampling are linear with nonnegative entries and act on each channel alike: their norm
is that of the single-channel operator, exact (dense SVD) when small, else the Schur bound √(‖A‖₁‖A‖∞);
ℓ1/ℓ∞ norms are exact column/row sums.
"""
from __future__ import annotations

import math

import torch

from lipgraph.bound import Bound
from lipgraph.linalg import col_sum_max, dense_is_cheap, dense_norm, row_sum_max, schur_bound
from lipgraph.errors import NormNotSupported
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Var, ntuple

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


def register(registry: Registry) -> None:
    for d in (1, 2, 3):
        registry.register(f"max_pool{d}d", max_pool)
        registry.register(f"adaptive_max_pool{d}d", adaptive_max_pool)
        registry.register(f"avg_pool{d}d", per_channel_linear, affine=True)
        registry.register(f"adaptive_avg_pool{d}d", per_channel_linear, affine=True)
    registry.register("upsample", per_channel_linear, affine=True)


