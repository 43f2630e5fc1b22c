"""Constants shared by the rules of Lipschitz-by-construction layers (deel-torchlip, orthogonium, patterns).

Every constant is computed from the layer's actual weights, never taken from what the layer advertises.
"""
from __future__ import annotations

import math

import torch

from lipgraph.bound import FLOAT_MARGIN, Bound, certified, exact, join_kinds
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


#: γ² increments tried, in units of the eigensolver margin, until M(γ, t) ⪰ 0 is verified
#: (:func:`slope_restricted_residual`)
GAMMA_SLACKS = (3.0, 30.0, 1e3, 1e5)
#: relative increments of the multiplier t tried with them
T_NUDGES = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
UNIT_ROUNDOFF = 2.0 ** -53


def _schur_gamma2(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, t: float) -> float:
    """λ_max(AᵀA + G H⁻¹ Gᵀ), G = AᵀB − tCᵀ, H = 2tI − BᵀB: the smallest γ² with M(γ, t) ⪰ 0 (float64, unverified;
    inf when H is not positive definite)."""
    H = 2 * t * torch.eye(B.shape[1], dtype=torch.float64) - B.T @ B
    factor, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        return math.inf
    G = A.T @ B - t * C.T
    root = torch.linalg.solve_triangular(factor, G.T, upper=False)  # L⁻¹Gᵀ: G H⁻¹ Gᵀ = rootᵀ root
    S = A.T @ A + root.T @ root
    return float(torch.linalg.eigvalsh((S + S.T) / 2).max())


def _verified_gamma(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, t: float, gamma2: float) -> float | None:
    """√γ² once M(γ, t) ⪰ 0 is verified in floating point, else None: the smallest computed eigenvalue of M must
    exceed the eigensolver's error (``FLOAT_MARGIN``·‖M‖₂, the margin of every certified norm, far above a
    backward-stable eigvalsh's O(n·u)‖M‖₂) plus the error of forming M, entrywise ≤ γ_n(|A|ᵀ|A| + 2|A|ᵀ|B| +
    |B|ᵀ|B| + 2t|C|ᵀ|B|) + u|M| (Higham, Thm 3.5) with ‖|X|ᵀ|Y|‖₂ ≤ ‖X‖_F‖Y‖_F (Weyl: λ_min moves by ≤ ‖E‖₂)."""
    n0, n1 = A.shape[1], B.shape[1]
    M = torch.zeros(n0 + n1, n0 + n1, dtype=torch.float64)
    M[:n0, :n0] = gamma2 * torch.eye(n0, dtype=torch.float64) - A.T @ A
    M[:n0, n0:] = A.T @ B - t * C.T
    M[n0:, :n0] = M[:n0, n0:].T
    M[n0:, n0:] = 2 * t * torch.eye(n1, dtype=torch.float64) - B.T @ B
    fa, fb, fc = (float(torch.linalg.matrix_norm(X, "fro")) for X in (A, B, C))
    n = max(A.shape[0], C.shape[0]) + 2
    forming = 2 * n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF) * (fa + fb + t * fc) ** 2 \
        + UNIT_ROUNDOFF * float(torch.linalg.matrix_norm(M, "fro"))
    eigenvalues = torch.linalg.eigvalsh(M)
    solver = FLOAT_MARGIN * float(eigenvalues.abs().max())
    return math.sqrt(gamma2) if float(eigenvalues.min()) >= solver + forming else None


def slope_restricted_residual(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, t_guess: float = 2.0) -> Bound | None:
    """Certified ℓ2 Lipschitz bound of y = A x − B σ(C x + b), σ elementwise with slopes in [0, 1] (float64 dense
    A, B, C), by the S-procedure of LipSDP (Fazlyab et al. 2019) with one multiplier t ≥ 0: for two inputs, with
    Δu = CΔx and v = Δσ, each v_i(Δu_i − v_i) ≥ 0, so ‖AΔx − Bv‖² ≤ γ²‖Δx‖² whenever

        M(γ, t) = [[γ²I − AᵀA, AᵀB − tCᵀ], [BᵀA − tC, 2tI − BᵀB]] ⪰ 0.

    For the SLL construction (A = PQ, B = 2PKᵀ, C = KQ, P, Q orthogonal, ‖K‖ ≤ 1; Araujo et al. 2023) t = 2 makes
    the off-diagonal block 0 and γ = ‖A‖ = 1. ``t_guess`` first, then a golden-section search over t when that is
    not already at γ = ‖A‖ (its floor: D = 0); then, for t raised by ``T_NUDGES`` and γ² by ``GAMMA_SLACKS``, the
    first γ for which M ⪰ 0 is verified (:func:`_verified_gamma`). None when nothing verifies."""
    floor = float(torch.linalg.matrix_norm(A, 2)) ** 2
    low = float(torch.linalg.matrix_norm(B, 2)) ** 2 / 2  # H ≻ 0 needs t > ‖B‖²/2
    best_t, best = t_guess, _schur_gamma2(A, B, C, t_guess)
    if best > floor * (1 + 1e-6):
        a, b = math.log(low * (1 + 1e-9)), math.log(max(4 * t_guess, 4 * low))
        g = (math.sqrt(5) - 1) / 2
        for _ in range(12):
            c, d = b - g * (b - a), a + g * (b - a)
            fc, fd = _schur_gamma2(A, B, C, math.exp(c)), _schur_gamma2(A, B, C, math.exp(d))
            a, b = (a, d) if fc <= fd else (c, b)
            for t, value in ((math.exp(c), fc), (math.exp(d), fd)):
                if value < best:
                    best_t, best = t, value
    if not math.isfinite(best):
        return None
    for t in (best_t * (1 + nudge) for nudge in T_NUDGES):  # a nudged t keeps H = 2tI − BᵀB off singular
        value = _schur_gamma2(A, B, C, t)
        # λ_min(M) ≤ the slack added to γ² must clear the eigensolver margin FLOAT_MARGIN·‖M‖ (‖M‖ ≥ 2t, γ²)
        floor_slack = FLOAT_MARGIN * max(2 * t, value, 1.0)
        for factor in GAMMA_SLACKS if math.isfinite(value) else ():
            gamma = _verified_gamma(A, B, C, t, value + factor * floor_slack)
            if gamma is not None:  # the margin covers materialising A, B, C in float64 (relative error ≲ 1e-13)
                return certified(gamma, f"S-procedure, one multiplier (t = {t:.4g})", margin=1e-10)
    return None


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
