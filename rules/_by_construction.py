"""Constants shared by the rules of Lipschitz-by-construction layers (deel-torchlip, orthogonium, patterns).

Every constant is computed from the layer's actual weights, never taken from what the layer advertises.
"""
from __future__ import annotations

import math

import torch

from lipgraph.bound import Bound, certified, exact, join_kinds
from lipgraph.linalg import conv_norm, matrix_norm


def permutation_pieces(scale: float, method: str) -> Bound:
    """MaxMin, GroupSort, FullSort (Anil, Lucas & Grosse 2019): on each linear piece the map permutes coordinates
    (within groups), so it is 1-Lipschitz in every ℓp (continuous and piecewise an isometry), exactly 1 (move one
    coordinate without changing the order); a scale s multiplies it: |s|."""
    return exact(abs(float(scale)), method)


def positive_negative_parts(scale: float) -> Bound:
    """x ↦ s·(relu(x), relu(−x)) (deel's MaxMin, CReLU): per coordinate |Δx⁺|^p + |Δx⁻|^p ≤ |Δx|^p (same sign:
    one term is |Δx|, the other 0; opposite signs: |x|^p + |y|^p ≤ (|x| + |y|)^p = |x − y|^p) and
    max(|Δx⁺|, |Δx⁻|) ≤ |Δx|: |s| in every ℓp, exact (one coordinate moving on one side of 0)."""
    return exact(abs(float(scale)), "positive/negative parts")


def householder(theta: torch.Tensor, scale: float, p: float) -> Bound:
    """Householder activation (Singla, Singla & Feizi 2022): on each pair (x, y) either the identity or the
    reflection R_θ = [[cos θ, sin θ], [sin θ, −cos θ]], switched on the line x·sin(θ/2) = y·cos(θ/2) that R_θ
    fixes, so the map is continuous and piecewise linear: L ≤ |s|·max(‖I‖_p, ‖R_θ‖_p). ‖R_θ‖₂ = 1 (orthogonal:
    exact in ℓ2), ‖R_θ‖₁ = ‖R_θ‖∞ = |cos θ| + |sin θ| (both pieces occur, so that is exact too)."""
    s = abs(float(scale))
    if p == 2:
        return exact(s, "householder (piecewise orthogonal)")
    return certified(s * max(1.0, _rotation_reflection_norm(theta, p)), "householder (piecewise I / reflection)",
                     exact=True, margin=1e-15)


def symmetric_residual(inner: Bound, p: float, outer: Bound | None = None) -> Bound:
    """y = x − Bᵀ Λ σ(B x + b) with Λ ⪰ 0 diagonal and σ elementwise with slope in [0, 1] (SLL, Araujo et al.
    2023, Thm 3; CPL, Meunier et al. 2022): the Jacobian J = I − Bᵀ Λ D B (D = diag σ' ∈ [0, 1]) is symmetric with
    0 ⪯ Bᵀ Λ D B ⪯ Bᵀ Λ B, so its eigenvalues lie in [1 − λ, 1] with λ = ‖Λ^{1/2} B‖₂²:
    L₂ = max(1, λ − 1) (``inner`` = ‖Λ^{1/2} B‖₂). Other ℓp: 1 + ‖Bᵀ Λ‖_p ‖B‖_p (``outer`` = ‖BᵀΛ‖_p, ``inner``
    = ‖B‖_p), the generic residual bound."""
    if p == 2:
        lam = inner.value ** 2
        return Bound(max(1.0, lam - 1.0), inner.kind, f"symmetric residual (λ = {lam:.6g})", exact=lam <= 2.0)
    assert outer is not None
    return Bound(1.0 + outer.value * inner.value, join_kinds([inner.kind, outer.kind]), "residual 1 + ‖A‖‖B‖")


def sll_dense(weight: torch.Tensor, t: torch.Tensor, p: float) -> Bound:
    """SLL dense layer y = x − 2 Wᵀ diag(t) σ(W x + b), t ≥ 0: :func:`symmetric_residual` with B = W, Λ = 2 diag(t)."""
    w = weight.detach().to(torch.float64)
    lam = (2 * t.detach().to(torch.float64).reshape(-1).clamp_min(0))
    if p == 2:
        return symmetric_residual(matrix_norm(lam.sqrt()[:, None] * w, 2), p)
    return symmetric_residual(matrix_norm(w, p), p, outer=matrix_norm(w.T * lam[None, :], p))


def sll_conv(kernel: torch.Tensor, padding: int, groups: int, in_spatial: tuple[int, ...], p: float) -> Bound:
    """SLL convolutional block y = x − 2 Cᵀ σ(C x + b), C the convolution with ``kernel`` (its rescaled kernel):
    :func:`symmetric_residual` with B = C, Λ = 2 I (‖√2 C‖₂² = 2‖C‖₂²); in ℓ1/ℓ∞, ‖Cᵀ‖_p = ‖C‖_{p*} (dual)."""
    options = dict(stride=1, padding=padding, groups=groups)
    k = kernel.detach()
    if p == 2:
        return symmetric_residual(conv_norm(k * math.sqrt(2.0), in_spatial, p=2, **options), p)
    adjoint = conv_norm(k, in_spatial, p=1.0 if math.isinf(p) else math.inf, **options)
    return symmetric_residual(conv_norm(k, in_spatial, p=p, **options), p,
                              outer=Bound(2 * adjoint.value, adjoint.kind, adjoint.method))


def _rotation_reflection_norm(angles: torch.Tensor, p: float) -> float:
    """max over the 2×2 rotations/reflections by ``angles`` of their ℓp operator norm: 1 in ℓ2 (orthogonal),
    |cos α| + |sin α| in ℓ1 and ℓ∞ (the largest absolute column/row sum)."""
    if p == 2:
        return 1.0
    a = angles.detach().to(torch.float64).reshape(-1)
    return float((a.cos().abs() + a.sin().abs()).max()) if a.numel() else 1.0


def householder_order_2(theta0: torch.Tensor, theta1: torch.Tensor, theta2: torch.Tensor, scale: float,
                        p: float) -> Bound:
    """Householder activation of order 2 (Singla, Singla & Feizi 2022, §5) on each pair (x, y), angles clamped to
    [0, 2π]: by the polar angle φ − θ₀/2 it applies on four consecutive sectors the identity, the reflection
    R(θ₀+θ₁), the rotation by −θ₂ and the reflection R(θ₀) (R(α) fixes the line at angle α/2). On each sector
    boundary the two neighbours agree (R(θ₀) and I fix the ray at θ₀/2; I and R(θ₀+θ₁) the ray at (θ₀+θ₁)/2;
    R(θ₀+θ₁) and the rotation both send the ray at (θ₀+θ₁+θ₂)/2 to (θ₀+θ₁−θ₂)/2; the rotation and R(θ₀) both send
    π + (θ₀+θ₂)/2 to π + (θ₀−θ₂)/2), so the map is continuous and piecewise linear: L ≤ |s|·max of the four
    pieces' norms, exactly |s| in ℓ2 (every piece orthogonal); in ℓ1/ℓ∞ the max of |cos α| + |sin α| over the
    pieces' angles (an upper bound: a piece of zero width does not occur)."""
    clamp = [t.detach().to(torch.float64).clamp(0.0, 2 * math.pi) for t in (theta0, theta1, theta2)]
    angles = torch.cat([clamp[0] + clamp[1], clamp[2], clamp[0]])
    s = abs(float(scale))
    if p == 2:
        return exact(s, "householder order 2 (piecewise orthogonal)")
    return certified(s * max(1.0, _rotation_reflection_norm(angles, p)), "householder order 2 (piecewise)",
                     margin=1e-15)


def centering(count: int, p: float) -> Bound:
    """x ↦ x − mean(x) over groups of ``count`` coordinates (plus a constant): the projection P = I − 11ᵀ/n on each
    group, orthogonal, so 1 in ℓ2 (exact for n > 1; n = 1 gives a constant map); its largest absolute row/column
    sum is (1 − 1/n) + (n − 1)/n = 2(n − 1)/n in ℓ1 and ℓ∞ (exact: the row of one coordinate)."""
    if count <= 1:
        return certified(0.0, "centering a single value: constant", exact=True)
    value = 1.0 if p == 2 else 2.0 * (count - 1) / count
    return certified(value, f"centering over {count} values (projection I − 11ᵀ/n)", exact=True, margin=1e-15)
