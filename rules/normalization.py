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


def sqrt_eps(ctx: OpContext, eps: float) -> float:
    """√ε of a normalisation's divisor √(· + ε); ε ≤ 0 leaves x/‖x‖ near 0 (slope → ∞ as ‖x‖ → 0)."""
    if not eps > 0:
        raise ctx.not_lipschitz(f"eps = {eps:g}: the normalisation divides by √(variance + eps), unbounded slope "
                                "near inputs of zero variance (use eps > 0, or bound it on a region)")
    return math.sqrt(eps)


def feature_norm(ctx: OpContext) -> Transfer:
    """LayerNorm/GroupNorm/InstanceNorm: J = diag(γ)/σ_ε · P with P a contraction and σ_ε ≥ √ε, so
    L ≤ max|γ|/√ε (ℓ2), attained only near constant inputs: certified but loose."""
    if ctx.norm != 2:
        raise NormNotSupported(f"{ctx.describe()}: only the ℓ2 bound is implemented")
    eps = float(ctx.arg("eps", None, 1e-5))
    weight = ctx.arg("weight", None, None)
    gamma = float(weight.detach().abs().max()) if weight is not None else 1.0
    return Transfer(gains=(certified(gamma / sqrt_eps(ctx, eps), "max|γ|/√ε"),),
                    notes=("loose: the worst case is a near-constant input",))


def rms_eps(ctx: OpContext) -> float:
    """RMSNorm's ε; ``None`` means torch's default, the machine epsilon of the input's dtype."""
    eps = ctx.arg("eps", None, None)
    return float(torch.finfo(ctx.input.dtype).eps if eps is None else eps)


def rms_group(ctx: OpContext) -> tuple[int, ...]:
    """The input viewed as (…, n): RMSNorm normalises over its trailing ``normalized_shape``."""
    shape = ctx.input.shape
    normalized = ctx.arg("normalized_shape", 1)
    k = 1 if isinstance(normalized, int) else len(normalized)
    return (*shape[:len(shape) - k], math.prod(shape[len(shape) - k:]))


def rms_row_factor(n: int) -> float:
    """sup over t ∈ [0, 1) of (1 + a·t)·√(1 − t), a = (√n − 1)/2: the ℓ1/ℓ∞ factor of RMSNorm over max|w|/√ε.

    Row i of B = I − x xᵀ/(n r²) sums to 1 + (|x_i|·Σ_{j≠i}|x_j| − x_i²)/(n r²) (x_i² < n r²). With s = ‖x‖₂ and
    |x_i| = s·cos θ, Cauchy–Schwarz gives Σ_{j≠i}|x_j| ≤ √(n−1)·s·sin θ, so the numerator is at most
    s²(√(n−1)·sin 2θ − cos 2θ − 1)/2 ≤ s²(√n − 1)/2. With t = s²/(n r²) ∈ [0, 1) and 1/r = √((1 − t)/ε), a row of
    B/r is ≤ (1 + a·t)·√(1 − t)/√ε; the maximum is at t* = (2a − 1)/(3a) when a > 1/2 (n > 4), else at t = 0
    (value 1, attained at x = 0: exact for n ≤ 4). B is symmetric, so columns obey the same bound."""
    a = (math.sqrt(n) - 1) / 2
    if a <= 0.5:
        return 1.0
    return 2 * (1 + a) / 3 * math.sqrt((1 + a) / (3 * a))


def rms_norm(ctx: OpContext) -> Transfer:
    """RMSNorm y = w ⊙ x / r, r = √(mean(x²) + ε): J = diag(w)/r · (I − x xᵀ/(n r²)). The bracket has
    eigenvalues 1 and ε/r² ∈ (0, 1], so ‖J‖₂ ≤ max|w|/r ≤ max|w|/√ε, attained at x = 0 (exact). ℓ1/ℓ∞:
    max|w|/√ε · :func:`rms_row_factor` (exact for n ≤ 4)."""
    weight = ctx.arg("weight", 2, None)
    w = float(weight.detach().abs().max()) if weight is not None else 1.0
    scale = w / sqrt_eps(ctx, rms_eps(ctx))
    if ctx.norm == 2:
        return Transfer(gains=(certified(scale, "max|w|/√ε", exact=True, margin=1e-12),))
    factor = rms_row_factor(rms_group(ctx)[-1])
    return Transfer(gains=(certified(scale * factor, "max|w|/√ε·h(n)", exact=factor == 1.0, margin=1e-12),))


def register(registry: Registry) -> None:
    registry.register("batch_norm", batch_norm, exact=True)
    for key in ("layer_norm", "group_norm", "instance_norm"):
        registry.register(key, feature_norm)
    registry.register("rms_norm", rms_norm)
