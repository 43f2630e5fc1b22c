"""Whole convolutional residual blocks at full size: y = P x + C_1 φ(C_0 x) by one LipSDP per frequency
(docs/residual.md, "Frequency domain").

**Torus embedding.** A zero-padded convolution is R C E: E zero-extends the map into a torus Z_N (an isometry),
C is the circular convolution, R restricts to the output map (‖R‖ ≤ 1). With tori large enough that no window
wraps into the map (:func:`torus_sizes`), the block is y = R_2 (P̃ + C̃_1 D̃ C̃_0) E_0 Δx for every pair of inputs,
where D̃ holds the activation's secant slopes on the hidden map and 0 on the rest of the hidden torus: every
hidden neuron of the torus network has slopes in [α', β'] = [min(α, 0), max(β, 0)]. The LipSDP bound of the torus
network (valid for every activation with those slopes, the masked one included) bounds the block.

**One LMI per frequency.** With one multiplier λ for the whole hidden torus (LipSDP-Layer), every operator of
M(ρ, λ) is (polyphase) block-circulant, so the unitary DFT on Z_{N_1}² (the input split into its s² stride phases)
block-diagonalises it: M ⪯ 0 ⇔ for every frequency ω

    M(ω) = [[−ρI + P̂ᴴP̂ − 2aλĈ_0ᴴĈ_0,  bλĈ_0ᴴ + P̂ᴴĈ_1], [bλĈ_0 + Ĉ_1ᴴP̂,  −2λI + Ĉ_1ᴴĈ_1]] ⪯ 0,

a = α'β' ≤ 0, b = α' + β', Ĉ(ω) = Σ_t A_t e^{2πi⟨ω, u_t⟩/N_1} (tap t reading phase r_t at offset u_t). Real
operators give M(−ω) = conj M(ω): half the frequencies suffice. λ is chosen by a golden-section search of
ρ*(λ) = max_ω λ_max(Schur complement) (estimated by power iteration), then ρ̂ is *verified*: for every ω the real
form [[Re, −Im], [Im, Re]] of −M(ω, ρ̂) passes :func:`~.recertify.verified_psd` with an entrywise allowance
γ·|M|abs for the rounding of the symbols and of forming M (|M|abs built from B = Σ_t |A_t| ≥ |Ĉ(ω)|).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lipgraph.bound import Bound, certified
from lipgraph.errors import InputError
from lipgraph.estimators.dcp import Conv2dSpec
from lipgraph.estimators.recertify import UNIT_ROUNDOFF, InfeasibleMultipliers, verified_psd
from lipgraph.estimators.residual import _golden
from lipgraph.linalg.spectral import frequencies

#: golden-section steps of the multiplier search, and power iterations per evaluation
SEARCH_STEPS = 14
POWER_STEPS = 60
#: descent steps on the per-channel multipliers after the one-multiplier search
CHANNEL_STEPS = 20
#: the final ρ is an exact eigenvalue (not a power-iteration estimate) up to this matrix side
EXACT_MAX = 1024
#: relative inflations of the estimated ρ tried when verifying
MARGINS = (1e-3, 1e-2, 5e-2, 0.2)


@dataclass(frozen=True)
class ConvResidualBlock:
    """y = P x + conv1(φ(conv0(x))) on inputs of shape (c, h, w); ``shortcut`` None is the identity. BN is folded
    into the convolutions; groups 1, dilation 1, conv1 of stride 1."""

    conv0: Conv2dSpec
    conv1: Conv2dSpec
    slope: tuple[float, float]
    input_shape: tuple[int, int, int]
    shortcut: Conv2dSpec | None = None

    def __post_init__(self) -> None:
        convs = [self.conv0, self.conv1] + ([self.shortcut] if self.shortcut else [])
        if any(c.groups != 1 or c.dilation != (1, 1) for c in convs) or self.conv1.stride != (1, 1):
            raise InputError("frequency-domain residual blocks need groups 1, dilation 1 and a stride-1 last conv")
        out = self.conv1.out_shape(self.conv0.out_shape(self.input_shape))
        short = self.input_shape if self.shortcut is None else self.shortcut.out_shape(self.input_shape)
        if short != out or (self.shortcut is not None and self.shortcut.stride != self.conv0.stride):
            raise InputError(f"shortcut output {short} does not match the branch output {out}")


def _needed(n_in: int, n_out: int, k: int, s: int, p: int) -> int:
    """Smallest input torus size (a multiple of s) in which the zero-padded conv's windows never wrap into the map:
    N − p ≥ n_in and s(n_out − 1) − p + k − 1 ≤ N − 1."""
    N = max(n_in + p, s * (n_out - 1) - p + k)
    return -(-N // s) * s


def torus_sizes(block: ConvResidualBlock) -> tuple[int, int]:
    """Hidden torus size N_1 per spatial dimension (the input torus is s·N_1, the output torus N_1)."""
    hidden = block.conv0.out_shape(block.input_shape)
    out = block.conv1.out_shape(hidden)
    sizes = []
    for d in range(2):
        s = block.conv0.stride[d]
        n0, n1, n2 = block.input_shape[1 + d], hidden[1 + d], out[1 + d]
        N1 = _needed(n1, n2, block.conv1.weight.shape[2 + d], 1, block.conv1.padding[d])
        N1 = max(N1, -(-_needed(n0, n1, block.conv0.weight.shape[2 + d], s, block.conv0.padding[d]) // s))
        if block.shortcut is not None:
            N1 = max(N1, -(-_needed(n0, n2, block.shortcut.weight.shape[2 + d], s, block.shortcut.padding[d]) // s))
        sizes.append(max(N1, n2))
    return sizes[0], sizes[1]


def _taps(conv: Conv2dSpec, stride: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(A_t (T, c_out, c_in), offsets u_t (T, 2), phase index r_t (T,), phases) of y_o = Σ_t A_t x^{(r_t)}_{o+u_t}:
    tap t reads input s·o + t − p = s·(o + u_t) + r_t."""
    w = conv.weight
    kh, kw = w.shape[2:]
    taps, offsets, phases = [], [], []
    for i in range(kh):
        for j in range(kw):
            qi, qj = i - conv.padding[0], j - conv.padding[1]
            taps.append(w[:, :, i, j])
            offsets.append((qi // stride[0], qj // stride[1]))
            phases.append((qi % stride[0]) * stride[1] + qj % stride[1])
    return torch.stack(taps), torch.tensor(offsets), torch.tensor(phases), stride[0] * stride[1]


def _identity_taps(c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    return torch.eye(c, dtype=torch.float64)[None], torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), 1


def _symbols(taps, freqs: torch.Tensor, modulus: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The symbols Ĉ(ω) (F, c_out, c_in·phases), complex128, and B = Σ_t |A_t| placed the same way (≥ |Ĉ(ω)|)."""
    A, u, r, phases = taps
    T, co, ci = A.shape
    M = torch.tensor(modulus)
    turns = (((freqs[:, None, :] * u[None]) % M).double() / M).sum(-1)  # (F, T)
    z = torch.polar(torch.ones_like(turns), 2 * math.pi * turns)
    S = torch.zeros(freqs.shape[0], co, ci * phases, dtype=torch.complex128)
    B = torch.zeros(co, ci * phases, dtype=torch.float64)
    for t in range(T):
        block = slice(int(r[t]) * ci, (int(r[t]) + 1) * ci)
        S[:, :, block] += z[:, t, None, None] * A[t].to(torch.complex128)
        B[:, block] += A[t].abs()
    return S, B


@dataclass
class _Spectra:
    """Per-frequency matrices of one block and the entrywise bounds B of their moduli."""

    C0: torch.Tensor
    C1: torch.Tensor
    P: torch.Tensor
    B0: torch.Tensor
    B1: torch.Tensor
    BP: torch.Tensor
    taps: int


def spectra(block: ConvResidualBlock) -> _Spectra:
    N1 = torus_sizes(block)
    freqs = frequencies(N1)
    s = block.conv0.stride
    t0, t1 = _taps(block.conv0, s), _taps(block.conv1, (1, 1))
    tp = _identity_taps(block.input_shape[0]) if block.shortcut is None else _taps(block.shortcut, s)
    if tp[3] != t0[3]:  # an identity shortcut on a strided branch is refused by ConvResidualBlock already
        raise InputError("shortcut and branch read different stride phases")
    (C0, B0), (C1, B1), (P, BP) = (_symbols(t, freqs, N1) for t in (t0, t1, tp))
    if P.shape[2] < C0.shape[2]:  # identity with one phase while conv0 has one phase too: same width
        raise InputError("shortcut symbol narrower than the branch's")
    return _Spectra(C0, C1, P, B0, B1, BP, max(t0[0].shape[0], t1[0].shape[0], tp[0].shape[0]))


def _slopes(slope: tuple[float, float]) -> tuple[float, float]:
    """(a, b) = (α'β', α' + β') for the widened interval [min(α, 0), max(β, 0)] (module docstring)."""
    lo, hi = min(slope[0], 0.0), max(slope[1], 0.0)
    return lo * hi, lo + hi


def _schur(sp: _Spectra, t: torch.Tensor, a: float, b: float, factor: bool = False):
    """A(ω) + B(ω)ᴴ(−H(ω))⁻¹B(ω) for every ω (F, n0, n0), T = diag(t) the per-channel multipliers; raises
    InfeasibleMultipliers when −H ⊁ 0. ``factor``: also (L, Z) with −H = LLᴴ, Z = L⁻¹B."""
    C1h = sp.C1.mH
    tc = t.to(torch.complex128)
    negH = 2 * torch.diag(tc) - C1h @ sp.C1
    L, info = torch.linalg.cholesky_ex(negH)
    if bool((info != 0).any()):
        raise InfeasibleMultipliers("λ too small: 2T − Ĉ_1ᴴĈ_1 is not positive definite at some frequency")
    TC0 = tc[:, None] * sp.C0
    Bm = b * TC0 + C1h @ sp.P
    Z = torch.linalg.solve_triangular(L, Bm, upper=False)
    A = sp.P.mH @ sp.P - 2 * a * (sp.C0.mH @ TC0)
    return (A + Z.mH @ Z, L, Z) if factor else A + Z.mH @ Z


def _top(S: torch.Tensor, steps: int = POWER_STEPS) -> float:
    """max over the batch of λ_max of Hermitian PSD matrices, by batched power iteration (an estimate from below)."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(S.shape[0], S.shape[1], 1, generator=g, dtype=torch.float64).to(torch.complex128)
    for _ in range(steps):
        v = S @ v
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp(min=1e-300)
    return float((v.mH @ S @ v).real.max())


def _lmi(sp: _Spectra, k: int, t: torch.Tensor, rho: float, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(−M(ω_k) in its real symmetric form, entrywise rounding allowance of that form), T = diag(t)."""
    C0, C1, P = sp.C0[k], sp.C1[k], sp.P[k]
    n0 = C0.shape[1]
    TC0 = t.to(torch.complex128)[:, None] * C0
    top = torch.cat([-rho * torch.eye(n0, dtype=torch.complex128) + P.mH @ P - 2 * a * C0.mH @ TC0,
                     b * TC0.mH + P.mH @ C1], 1)
    bottom = torch.cat([b * TC0 + C1.mH @ P, -2 * torch.diag(t.to(torch.complex128)) + C1.mH @ C1], 1)
    M = -torch.cat([top, bottom], 0)
    B0, B1, BP = sp.B0, sp.B1, sp.BP
    TB0 = t[:, None] * B0
    absolute = torch.cat([torch.cat([rho * torch.eye(n0, dtype=torch.float64) + BP.T @ BP
                                     + 2 * abs(a) * B0.T @ TB0, abs(b) * TB0.T + BP.T @ B1], 1),
                          torch.cat([abs(b) * TB0 + B1.T @ BP, 2 * torch.diag(t) + B1.T @ B1], 1)], 0)
    inner = max(B0.shape[0], B1.shape[0], BP.shape[0])
    err = 4.04 * (2 * sp.taps + inner + 16) * UNIT_ROUNDOFF * absolute
    M = (M + M.mH) / 2
    real = torch.cat([torch.cat([M.real, -M.imag], 1), torch.cat([M.imag, M.real], 1)], 0)
    return real, torch.cat([torch.cat([err, err], 1), torch.cat([err, err], 1)], 0)


def _descend(sp: _Spectra, t: torch.Tensor, a: float, b: float, steps: int) -> tuple[torch.Tensor, float]:
    """Per-channel multipliers: multiplicative steps along −∂ρ*/∂t from ``t``, kept only where ρ* decreases.

    At the deciding frequency, with u the top eigenvector of the Schur complement and w = (−H)⁻¹Bu, the envelope
    theorem gives ∂ρ*/∂t_c = vᴴ(∂M/∂t_c)v = −2a|(Ĉ_0u)_c|² + 2b Re(w̄_c(Ĉ_0u)_c) − 2|w_c|² (v = (u, w))."""
    def value(t: torch.Tensor):
        try:
            S, L, Z = _schur(sp, t, a, b, factor=True)
        except InfeasibleMultipliers:
            return math.inf, None
        vals, vecs = torch.linalg.eigh((S + S.mH) / 2)
        k = int(vals[:, -1].argmax())
        u = vecs[k, :, -1]
        w = torch.linalg.solve_triangular(L[k].mH, Z[k] @ u[:, None], upper=True)[:, 0]
        c0u = sp.C0[k] @ u
        grad = -2 * a * c0u.abs() ** 2 + 2 * b * (w.conj() * c0u).real - 2 * w.abs() ** 2
        return float(vals[k, -1]), grad

    best, grad = value(t)
    eta = 0.5
    for _ in range(steps):
        if grad is None or eta < 1e-3:
            break
        step = -eta * t * grad / max(float((t * grad).abs().max()), 1e-300)
        trial = t * torch.exp(step)
        rho, g = value(trial)
        if rho < best:
            t, best, grad, eta = trial, rho, g, min(1.0, eta * 1.5)
        else:
            eta /= 2
    return t, best


def residual_fft(block: ConvResidualBlock) -> Bound:
    """Certified LipSDP bound of the whole block, one verified LMI per frequency (module docstring): one multiplier
    by a golden-section search, then :data:`CHANNEL_STEPS` descent steps on per-channel multipliers."""
    sp = spectra(block)
    a, b = _slopes(block.slope)
    c = sp.C1.shape[2]
    lam0 = float(torch.linalg.matrix_norm(sp.C1, 2).max()) ** 2 / 2 or 1.0

    def rho_of(lam: float) -> float:
        try:
            return _top(_schur(sp, torch.full((c,), lam, dtype=torch.float64), a, b))
        except InfeasibleMultipliers:
            return math.inf

    e = _golden(lambda e: rho_of(lam0 * (1 + e)), 1e-3, 1e3, SEARCH_STEPS)
    t = torch.full((c,), lam0 * (1 + e), dtype=torch.float64)
    if sp.C0.shape[2] <= EXACT_MAX:
        t, rho = _descend(sp, t, a, b, CHANNEL_STEPS)
    else:
        rho = _top(_schur(sp, t, a, b), 4 * POWER_STEPS)
    for margin in MARGINS:
        rho_hat = rho * (1 + margin)
        if all(verified_psd(*_lmi(sp, k, t, rho_hat, a, b)) for k in range(sp.C0.shape[0])):
            return certified(math.sqrt(rho_hat) * (1 + 4 * UNIT_ROUNDOFF), "residual-fft")
    raise InfeasibleMultipliers(f"could not verify the frequency-domain residual bound √ρ ≈ {math.sqrt(rho):.6g}")
