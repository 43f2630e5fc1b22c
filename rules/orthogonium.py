"""Rules for orthogonium layers (https://github.com/deel-ai/orthogonium), keyed by their fully qualified class names:
they apply once the user imports ``orthogonium``; lipgraph never imports it.

``AdaptiveOrthoConv2d`` (a factory of ``nn.Conv2d`` subclasses: RKO, block-orthogonal, BCOP×RKO), ``OrthoLinear``,
``UnitNormLinear`` and ``AOLConv2D`` keep the torch ``forward``: the torch rules bound them with the weight their
parametrizations compute (an orthogonalisation by Björck or Cayley steps is approximate: its certified norm is
reported, e.g. 1.0000003, not the advertised 1). The classes below compute something the traced ops bound loosely.
"""
from __future__ import annotations

import math

from lipgraph.bound import Bound
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext

from ._by_construction import householder, permutation_pieces, sll_conv, sll_dense

PACKAGE = "orthogonium.layers"


def max_min(ctx: OpContext) -> Bound:
    """MaxMin: (max(a, b), min(a, b)) of the two halves along ``axis``: a permutation on each piece, 1, exact."""
    return permutation_pieces(1.0, "max-min")


def householder_activation(ctx: OpContext) -> Bound:
    """HouseHolder: identity or the reflection R_θ on each channel pair, divided by √2: 1/√2 in ℓ2, exact."""
    return householder(ctx.module.theta, 1.0 / math.sqrt(2.0), ctx.norm)


def sll_dense_layer(ctx: OpContext) -> Bound:
    """SDPBasedLipschitzDense: y = x − 2 Wᵀ diag(t) relu(W x + b): max(1, ‖√(2t) ⊙ W‖₂² − 1) in ℓ2 (SLL, Thm 3)."""
    return sll_dense(ctx.module.weight, ctx.module.compute_t(), ctx.norm)


def sll_conv_block(ctx: OpContext) -> Bound:
    """SDPBasedLipschitzResBlock: y = x − 2 Cᵀ relu(C x + b): max(1, 2‖C‖₂² − 1) in ℓ2 (SLL, Thm 3)."""
    m = ctx.module
    return sll_conv(m.kernel, m.padding, m.groups, tuple(ctx.input.shape[-2:]), ctx.norm)


RULES = {
    "custom_activations.MaxMin": max_min,
    "custom_activations.HouseHolder": householder_activation,
    "conv.SLL.sll_layer.SDPBasedLipschitzDense": sll_dense_layer,
    "conv.SLL.sll_layer.SDPBasedLipschitzResBlock": sll_conv_block,
}


UPPER_BOUNDS = {"conv.SLL.sll_layer.SDPBasedLipschitzDense", "conv.SLL.sll_layer.SDPBasedLipschitzResBlock"}


def register(registry: Registry) -> None:
    for name, rule in RULES.items():
        registry.register_named(f"{PACKAGE}.{name}", rule, exact=name not in UPPER_BOUNDS)
