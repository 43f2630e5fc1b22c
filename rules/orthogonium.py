"""Rules for orthogonium layers (https://github.com/deel-ai/orthogonium), keyed by their fully qualified class names:
they apply once the user imports ``orthogonium``; lipgraph never imports it.

``AdaptiveOrthoConv2d`` (a factory of ``nn.Conv2d`` subclasses: RKO, block-orthogonal, BCOP×RKO), ``OrthoLinear``,
``UnitNormLinear`` and ``AOLConv2D`` keep the torch ``forward``: the torch rules bound them with the weight their
parametrizations compute (an orthogonalisation by Björck or Cayley steps is approximate: its certified norm is
reported, e.g. 1.0000003, not the advertised 1). The classes below compute something the traced ops bound loosely.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lipgraph.bound import Bound, exact, join_kinds
from lipgraph.linalg import conv_norm, dense_is_cheap, materialize
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, elementwise

from ._by_construction import (centering, householder, householder_order_2, permutation_pieces, sll_conv, sll_dense,
                               slope_restricted_residual)

PACKAGE = "orthogonium.layers"


def max_min(ctx: OpContext) -> Bound:
    """MaxMin: (max(a, b), min(a, b)) of the two halves along ``axis``: a permutation on each piece, 1, exact."""
    return permutation_pieces(1.0, "max-min")


def householder_activation(ctx: OpContext) -> Bound:
    """HouseHolder: identity or the reflection R_θ on each channel pair, divided by √2: 1/√2 in ℓ2, exact."""
    return householder(ctx.module.theta, 1.0 / math.sqrt(2.0), ctx.norm)


def householder_order_2_activation(ctx: OpContext) -> Bound:
    """HouseHolder_Order_2: four orthogonal pieces on each channel pair, continuous, divided by √2: 1/√2 in ℓ2."""
    m = ctx.module
    return householder_order_2(m.theta0, m.theta1, m.theta2, 1.0 / math.sqrt(2.0), ctx.norm)


def layer_centering(ctx: OpContext) -> Bound:
    """LayerCentering2D: x − mean over the spatial plane + β: the centering projection, 1 in ℓ2."""
    return centering(math.prod(ctx.input.shape[-2:]), ctx.norm)


def batch_centering(ctx: OpContext) -> Bound:
    """BatchCentering2D in eval mode (lipgraph's): x − running mean + β, a translation: 1 in every ℓp, exact."""
    return exact(1.0, "translation")


def sll_dense_layer(ctx: OpContext) -> Bound:
    """SDPBasedLipschitzDense: y = x − 2 Wᵀ diag(t) relu(W x + b): max(1, ‖√(2t) ⊙ W‖₂² − 1) in ℓ2 (SLL, Thm 3)."""
    return sll_dense(ctx.module.weight, ctx.module.compute_t(), ctx.norm)


def sll_conv_block(ctx: OpContext) -> Bound:
    """SDPBasedLipschitzResBlock: y = x − 2 Cᵀ relu(C x + b): max(1, 2‖C‖₂² − 1) in ℓ2 (SLL, Thm 3)."""
    m = ctx.module
    return sll_conv(m.kernel, m.padding, m.groups, tuple(ctx.input.shape[-2:]), ctx.norm)


def aoc_residual_block(ctx: OpContext) -> Bound:
    """AOCLipschitzResBlock: y = x − 2 Cᵀ relu(C x + b) with C the unpadded stride-1 convolution by the AOC kernel
    (``forward`` pads by ``self.padding = 0`` in circular mode and passes ``padding=0`` in zeros mode, and its
    ``conv_transpose2d`` by the same kernel is exactly Cᵀ): the SLL bound max(1, 2‖C‖₂² − 1) with ‖C‖₂ certified
    from the actual kernel (≤ 1 up to the orthogonalisation's accuracy)."""
    m = ctx.module
    return sll_conv(m.in_conv.weight, 0, m.groups, tuple(ctx.input.shape[-2:]), ctx.norm)


def sll_aoc_residual_block(ctx: OpContext) -> Bound:
    """SLLxAOCLipschitzResBlock: y = A x − B relu(C x + b) with three zero-padded convolutions by the fused kernels
    that ``forward`` computes: A by K_pre ⊛ K_post (stride s), C by K_pre ⊛ K, B by 2·(Kᵀ ⊛ K_post) (stride s).
    With zero padding, A, B and C are the compositions P∘Q, 2P∘Kᵀ, K∘Q only away from the borders, so the SLL
    argument (J = P(I − 2KᵀDK)Q, norm ≤ 1) is not a proof for the computed map. Sound: ‖A‖ + ‖B‖·‖C‖ (relu's
    slopes in [0, 1]), each norm certified from the fused kernel; in ℓ2, when A, B, C are small enough to
    materialise, the smaller of that and the S-procedure bound on the actual A, B, C with SLL's multiplier t = 2
    (:func:`~._by_construction.slope_restricted_residual`), which certifies ‖A‖ (1 up to AOC's accuracy)."""
    m = ctx.module
    fuse = type(m).forward.__globals__  # the kernel algebra ``forward`` itself calls (no import of orthogonium)
    compose, transpose = fuse["fast_matrix_conv"], fuse["transpose_kernel"]
    with torch.no_grad():
        kernel, pre, post = m.kernel, m.pre_conv.weight, m.post_conv.weight
        k_in, k_out = compose(pre, kernel, groups=m.groups), compose(transpose(kernel, groups=m.groups), post,
                                                                     groups=m.groups)
        k_skip = compose(pre, post, groups=m.groups)
    spatial = tuple(ctx.input.shape[-2:])
    inner = tuple(n + 2 * m.padding - k + 1 for n, k in zip(spatial, k_in.shape[-2:]))
    common = dict(groups=m.groups, p=ctx.norm)
    a = conv_norm(k_skip, spatial, stride=m.stride, padding=m.skip_kernel_size // 2, **common)
    c = conv_norm(k_in, spatial, padding=m.padding, **common)
    b = conv_norm(k_out, inner, stride=m.stride, padding=m.padding, **common)
    generic = Bound(a.value + 2 * b.value * c.value, join_kinds([a.kind, b.kind, c.kind]), "‖A‖ + ‖B‖‖C‖ (fused kernels)")
    channels = ctx.input.shape[-3]
    hidden, n_in = k_in.shape[0] * math.prod(inner), channels * math.prod(spatial)
    if ctx.norm != 2 or not dense_is_cheap(n_in + hidden, n_in + hidden):
        return generic

    def conv(kernel: torch.Tensor, **options):
        return lambda z: F.conv2d(z, kernel.detach().to(torch.float64), groups=m.groups, **options)

    A = materialize(conv(k_skip, stride=m.stride, padding=m.skip_kernel_size // 2), (channels, *spatial))
    C = materialize(conv(k_in, padding=m.padding), (channels, *spatial))
    B = 2 * materialize(conv(k_out, stride=m.stride, padding=m.padding), (k_in.shape[0], *inner))
    sdp = slope_restricted_residual(A, B, C, t_guess=2.0)
    return generic if sdp is None or sdp.value >= generic.value else sdp


#: SoftHuber: δ(√(1 + (z/δ)²) − 1) elementwise, derivative (z/δ)/√(1 + (z/δ)²) ∈ (−1, 1) for any δ ≠ 0: 1, exact (sup)
SOFT_HUBER = elementwise((-1.0, 1.0), name="soft Huber")

RULES = {
    "custom_activations.MaxMin": max_min,
    "custom_activations.HouseHolder": householder_activation,
    "custom_activations.HouseHolder_Order_2": householder_order_2_activation,
    "custom_activations.SoftHuber": SOFT_HUBER,
    "normalization.LayerCentering2D": layer_centering,
    "normalization.BatchCentering2D": batch_centering,
    "conv.SLL.sll_layer.SDPBasedLipschitzDense": sll_dense_layer,
    "conv.SLL.sll_layer.SDPBasedLipschitzResBlock": sll_conv_block,
    "conv.SLL.sll_layer.AOCLipschitzResBlock": aoc_residual_block,
    "conv.SLL.sll_layer.SLLxAOCLipschitzResBlock": sll_aoc_residual_block,
}


UPPER_BOUNDS = {"conv.SLL.sll_layer.SDPBasedLipschitzDense", "conv.SLL.sll_layer.SDPBasedLipschitzResBlock",
                "conv.SLL.sll_layer.AOCLipschitzResBlock", "conv.SLL.sll_layer.SLLxAOCLipschitzResBlock",
                "custom_activations.HouseHolder_Order_2"}


def register(registry: Registry) -> None:
    for name, rule in RULES.items():
        registry.register_named(f"{PACKAGE}.{name}", rule, exact=name not in UPPER_BOUNDS)
