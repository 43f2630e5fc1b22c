"""Convolutions and transposed convolutions (1-D/2-D/3-D): certified operator norms at the real input size.

``lipgraph.linalg.conv_norm`` picks the method: the exact dense operator when small, else the circular
(FFT) norm on a grid large enough to contain the zero-padded operator (docs/mathematics.md §3).
"""
from __future__ import annotations

from lipgraph.linalg import lazy_conv_norm
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer

CONV_KEYS = ("conv1d", "conv2d", "conv3d")
TRANSPOSE_KEYS = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def conv(ctx: OpContext) -> Transfer:
    """‖conv‖_p at the input's spatial size; stride, padding (any mode), dilation and groups included."""
    transposed = ctx.key in TRANSPOSE_KEYS
    dims = int(ctx.key[-2])
    weight = ctx.arg("weight", 1).detach()
    options = dict(
        stride=ctx.arg("stride", 3, 1),
        padding=ctx.arg("padding", 4, 0),
        dilation=ctx.arg("dilation", 7 if transposed else 5, 1),
        groups=int(ctx.arg("groups", 6, 1)),
        padding_mode=getattr(ctx.module, "padding_mode", "zeros"),
    )
    if transposed:
        options["output_padding"] = ctx.arg("output_padding", 5, 0)
    options.update(in_spatial=tuple(ctx.input.shape[-dims:]), transposed=transposed)
    return Transfer(gains=(lazy_conv_norm(weight, p=ctx.norm, **options),), affine=True,
                    structure=("conv", weight, options))


def register(registry: Registry) -> None:
    for key in CONV_KEYS + TRANSPOSE_KEYS:
        registry.register(key, conv)
