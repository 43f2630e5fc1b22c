"""Rules for deel-torchlip layers (https://github.com/deel-ai/deel-torchlip), keyed by their fully qualified class
names: they apply once the user imports ``deel.torchlip``; lipgraph never imports it.

Layers that subclass a torch layer and keep its ``forward`` (``SpectralLinear``, ``FrobeniusLinear``,
``SpectralConvTranspose2d``, ``InvertibleDownSampling``/``UpSampling``) already get the torch rule, evaluated on the
weight their parametrizations compute (power iteration, Björck steps, the Lipschitz factor): the certified norm
of that weight, not the advertised 1. Layers that pad then convolve (``SpectralConv2d``, ``FrobeniusConv2d``,
``PadConv2d``), scale an average pooling (``ScaledAvgPool2d``, ``ScaledAdaptiveAvgPool2d``) or mix two branches
(``LipResidual``: α·x + (1 − α)·y) are traced into ops that the built-in rules bound exactly. The classes below
compute something the traced ops would bound loosely (or refuse: the ``x ** 2`` of ℓ2-norm pooling).
"""
from __future__ import annotations

import math

from lipgraph.bound import Bound, certified
from lipgraph.errors import RuleError
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer

from ._by_construction import centering, householder, permutation_pieces, positive_negative_parts
from .pooling import lp_pool_gain, lp_window_gain

PACKAGE = "deel.torchlip.modules"


def _scale(ctx: OpContext) -> float:
    """deel's ``k_coef_lip``: every layer multiplies its output (or weight) by it."""
    return float(getattr(ctx.module, "_coefficient_lip", 1.0))


def group_sort(ctx: OpContext) -> Bound:
    """GroupSort / GroupSort2 / FullSort: sorting within groups times k_coef_lip: |k| in every ℓp, exact."""
    return permutation_pieces(_scale(ctx), "group sort")


def max_min(ctx: OpContext) -> Bound:
    """deel's MaxMin is k·(relu(x), relu(−x)) concatenated: |k| in every ℓp, exact."""
    return positive_negative_parts(_scale(ctx))


def householder_activation(ctx: OpContext) -> Bound:
    """HouseHolder: identity or the reflection R_θ on each channel pair: 1 in ℓ2, exact."""
    return householder(ctx.module.theta, 1.0, ctx.norm)


def lipschitz_prelu(ctx: OpContext) -> Transfer:
    """LPReLU: PReLU with its slopes clamped to [−k, k] (``F.lipschitz_prelu``): slopes 1 on x ≥ 0 and a'_c on
    x < 0, both on every coordinate: max(1, max_c |a'_c|) in every ℓp, exact."""
    k = _scale(ctx)
    a = ctx.module.weight.detach().clamp(-k, k)
    lo, hi = min(float(a.min()), 1.0), max(float(a.max()), 1.0)
    return Transfer(gains=(certified(max(abs(lo), abs(hi)), "clamped PReLU slopes", exact=True),), slope=(lo, hi))


def layer_centering(ctx: OpContext) -> Bound:
    """LayerCentering: x − mean over ``dim`` + β, per sample and channel: the centering projection
    (``centering``), 1 in ℓ2. Centering across the batch dimension couples samples: refused."""
    shape = ctx.input.shape
    dims = {d % len(shape) for d in ctx.module.dim}
    if 0 in dims:
        raise RuleError(f"{ctx.describe()} centers over the batch dimension: one sample's output depends on the "
                        "others; lipgraph bounds per-sample maps")
    return centering(math.prod(shape[d] for d in dims), ctx.norm)


def batch_lip_norm(ctx: OpContext) -> Bound:
    """BatchLipNorm / BatchCentering in eval mode (lipgraph's): (x − μ)·s + β with the running mean μ and the single
    factor s = 1/√(max_c Var_c) from the running statistics (1 when ``normalize=False``): a translation times s,
    |s| in every ℓp, exact."""
    return certified(abs(float(ctx.module.get_scaling(training=False))), "running-statistics scale", exact=True,
                     margin=1e-7)


def l2_norm_pool(ctx: OpContext) -> Bound:
    """ScaledL2NormPool2d = k·LPPool2d(2, ...): |k|·√(max window coverage) in ℓ2 (see ``rules.pooling``)."""
    gain = lp_pool_gain(ctx, 2)
    return Bound(abs(_scale(ctx)) * gain.value, gain.kind, gain.method, exact=gain.exact)


def adaptive_l2_norm_pool(ctx: OpContext) -> Bound:
    """ScaledAdaptativeL2NormPool2d = k·‖x_c‖₂ over each channel's whole plane: |k| in ℓ2 and ℓ1, |k|·√(H·W) in ℓ∞."""
    spatial = tuple(ctx.input.shape[-2:])
    gain = lp_window_gain(spatial, (1, 1), spatial, spatial, tuple(map(float, spatial)), 2.0, ctx.norm,
                          "ℓ2 norm of each plane")
    return Bound(abs(_scale(ctx)) * gain.value, gain.kind, gain.method, exact=gain.exact)


RULES = {
    "activation.GroupSort": group_sort,
    "activation.GroupSort2": group_sort,
    "activation.FullSort": group_sort,
    "activation.MaxMin": max_min,
    "activation.HouseHolder": householder_activation,
    "activation.LPReLU": lipschitz_prelu,
    "normalization.LayerCentering": layer_centering,
    "normalization.BatchLipNorm": batch_lip_norm,
    "normalization.BatchCentering": batch_lip_norm,
    "pooling.ScaledL2NormPool2d": l2_norm_pool,
    "pooling.ScaledAdaptativeL2NormPool2d": adaptive_l2_norm_pool,
}


def register(registry: Registry) -> None:
    for name, rule in RULES.items():
        registry.register_named(f"{PACKAGE}.{name}", rule, exact=True)
