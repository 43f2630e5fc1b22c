"""Normalisation layers in eval mode (docs/mathematics.md §2, §4)."""
from __future__ import annotations

import math

import torch

from lipgraph.bound import certified
from lipgraph.errors import NormNotSupported, RuleError
from lipgraph.registry import Registry
from lipgraph.ruleapi import ChannelScale, OpContext, Transfer


def batch_norm(ctx: OpContext) -> Transfer:
    """Eval BatchNorm is the diagonal map x_c ↦ γ_c (x_c − μ_c)/√(σ²_c + ε) + β_c: exactly max_c |γ_c|/√(σ²_c + ε)
    in every ℓp."""
    running_var = ctx.arg("running_var")
    if running_var is None or ctx.arg("training", None, False):
        raise RuleError(f"{ctx.describe()} normalises with batch statistics (training mode or "
                        "track_running_stats=False): one sample's output depends on the others; lipgraph "
                        "bounds eval-mode networks that use running statistics")
    eps = float(ctx.arg("eps", None, 1e-5))
    scale = 1.0 / torch.sqrt(running_var.detach().to(torch.float64) + eps)
    weight = ctx.arg("weight", None, None)
    if weight is not None:
        scale = scale * weight.detach().to(torch.float64)
    return Transfer(gains=(certified(float(scale.abs().max()), "diagonal", exact=True, margin=1e-12),),
                    affine=True, structure=ChannelScale(scale))


def feature_norm(ctx: OpContext) -> Transfer:
    """LayerNorm/GroupNorm/InstanceNorm: J = diag(γ)/σ_ε · P with P a contraction and σ_ε ≥ √ε, so
    L ≤ max|γ|/√ε (ℓ2), attained only near constant inputs: certified but loose."""
    if ctx.norm != 2:
        raise NormNotSupported(f"{ctx.describe()}: only the ℓ2 bound is implemented")
    eps = float(ctx.arg("eps", None, 1e-5))
    weight = ctx.arg("weight", None, None)
    gamma = float(weight.detach().abs().max()) if weight is not None else 1.0
    return Transfer(gains=(certified(gamma / math.sqrt(eps), "max|γ|/√ε"),),
                    notes=("loose: the worst case is a near-constant input",))


def register(registry: Registry) -> None:
    registry.register("batch_norm", batch_norm, exact=True)
    for key in ("layer_norm", "group_norm", "instance_norm"):
        registry.register(key, feature_norm)
