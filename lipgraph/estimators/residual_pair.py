"""Runs of consecutive residual blocks (or any small conv network with skip connections) bounded by one LipSDP
per frequency (docs/residual.md, "Several blocks jointly"; Pauli, Gramlich & Allgöwer 2024).

**The network.** Variables v_0 (the input, shape (c, h, w)) and v_k = φ_k(Σ_j K_kj v_j) for k = 1 … m (each K_kj a
2-D zero-padded convolution with BatchNorm folded in, or the identity; j < k), output y = Σ_j K_oj v_j. Two
BasicBlocks are v_1 = relu(C_0 v_0), v_2 = relu(v_0 + C_1 v_1), v_3 = relu(C_2 v_2), y = P v_2 + C_3 v_3: the
identity paths are linear paths of the same quadratic form, the post-add ReLU one more layer of neurons.

**Torus.** As in :mod:`.residual_conv`: every variable lives on a torus large enough that no window wraps into the
map, hidden neurons outside the map get slope 0 (so each layer's slopes widen to [min(α, 0), max(β, 0)]), and the
output is restricted to the map (‖R‖ ≤ 1). All variables share one coarse torus Z_N² (N per axis); a variable of
cumulative stride s lives on the torus (S/s)·N, S the largest stride, split into its (S/s)² polyphase components,
so every K_kj is block-circulant on Z_N² (a stride-σ conv maps phase factor σf to f: output phase a, tap t reads
fine position σa + t·d − p = f_in·u + r, i.e. input phase r at coarse offset u).

**One LMI per frequency.** With one multiplier λ_k ≥ 0 per layer, the S-procedure matrix (docs/residual.md)

    M(ρ, λ) = OᴴO − ρE_0ᴴE_0 + Σ_k λ_k [b_k(E_kᴴG_k + G_kᴴE_k) − 2E_kᴴE_k − 2a_kG_kᴴG_k],

(G_k = Σ_j K_kj E_j the pre-activation, O = Σ_j K_oj E_j, a_k = α'β', b_k = α' + β') is block-circulant, so the unitary
DFT on Z_N² block-diagonalises it: M ⪯ 0 ⇔ M(ω) ⪯ 0 for every ω (half of them: real weights), and then
‖Δy‖ ≤ √ρ‖Δx‖. λ is searched (a global scale, then coordinate-wise golden sections of ρ*(λ) = max_ω λ_max of the
Schur complement on v_0); the final ρ̂ is *verified* per frequency as in :func:`.residual_conv.residual_fft`: the
real form of −M(ω, ρ̂) passes :func:`~.recertify.verified_psd` with the entrywise allowance
4.04(2T + D + 2m + 16)·u·|M|abs (T taps per symbol, D the side of M(ω), |M|abs with every symbol replaced by
Σ_t|A_t| ≥ |Ĉ(ω)| and every coefficient by its modulus).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from lipgraph.bound import Bound, certified
from lipgraph.errors import InputError
from lipgraph.estimators.dcp import Conv2dSpec
from lipgraph.estimators.recertify import UNIT_ROUNDOFF, InfeasibleMultipliers, verified_psd
from lipgraph.estimators.residual import _golden
from lipgraph.linalg.spectral import frequencies

#: a term K_kj v_j: (index j of the variable read, its convolution; None is the identity)
Term = tuple[int, "Conv2dSpec | None"]
#: largest Σ_ω (side of M(ω))² handled (memory: one such array per layer, complex128)
MAX_ENTRIES = 4_000_000
#: golden-section steps per coordinate, coordinate sweeps, relative inflations of ρ tried when verifying
STEPS, SWEEPS, MARGINS = 10, 2, (1e-3, 1e-2, 5e-2, 0.2)


@dataclass(frozen=True)
class Layer:
    """v = φ(Σ_j K_j v_j), φ elementwise with slopes in ``slope``."""

    terms: tuple[Term, ...]
    slope: tuple[float, float]


@dataclass(frozen=True)
class ConvNet:
    """A small network of convolutions with skip connections (module docstring)."""

    input_shape: tuple[int, int, int]
    layers: tuple[Layer, ...]
    output: tuple[Term, ...]

    def shapes_and_strides(self) -> list[tuple[tuple[int, int, int], tuple[int, int]]]:
        """((c, h, w), cumulative stride) of v_0 … v_m and of the output (last); InputError when terms disagree."""
        out = [(tuple(self.input_shape), (1, 1))]
        for terms in [layer.terms for layer in self.layers] + [self.output]:
            got = {_apply(conv, out[j]) for j, conv in terms if 0 <= j < len(out)}
            if len(got) != 1 or any(not 0 <= j < len(out) for j, _ in terms):
                raise InputError(f"the terms of a layer disagree (shapes and strides {sorted(got)}) or read a "
                                 f"later variable")
            out.append(got.pop())
        return out


def _apply(conv: Conv2dSpec | None, var: tuple) -> tuple:
    shape, stride = var
    if conv is None:
        return shape, stride
    if conv.weight.ndim != 4:
        raise InputError("only 2-D convolutions")
    return conv.out_shape(shape), (stride[0] * conv.stride[0], stride[1] * conv.stride[1])


def _dense_weight(conv: Conv2dSpec) -> torch.Tensor:
    """The weight with groups expanded to a block-diagonal (c_out, c_in, kh, kw)."""
    w, g = conv.weight, conv.groups
    if g == 1:
        return w
    co, cig = w.shape[:2]
    full = torch.zeros(co, cig * g, *w.shape[2:], dtype=torch.float64)
    per = co // g
    for i in range(g):
        full[i * per:(i + 1) * per, i * cig:(i + 1) * cig] = w[i * per:(i + 1) * per]
    return full


def _taps(conv: Conv2dSpec | None, channels: int, f_in: tuple[int, int], f_out: tuple[int, int]):
    """(A (T, c_out, c_in), u (T, 2), output phase (T,), input phase (T,)) of the polyphase form (module
    docstring); the identity is one 1×1 tap."""
    if conv is None:
        conv = Conv2dSpec(torch.eye(channels, dtype=torch.float64)[:, :, None, None])
    w = _dense_weight(conv)
    A, u, ro, ri = [], [], [], []
    for a0 in range(f_out[0]):
        for a1 in range(f_out[1]):
            for i in range(w.shape[2]):
                for j in range(w.shape[3]):
                    fine = [conv.stride[d] * a + t * conv.dilation[d] - conv.padding[d]
                            for d, a, t in ((0, a0, i), (1, a1, j))]
                    A.append(w[:, :, i, j])
                    u.append((fine[0] // f_in[0], fine[1] // f_in[1]))
                    ro.append(a0 * f_out[1] + a1)
                    ri.append((fine[0] % f_in[0]) * f_in[1] + fine[1] % f_in[1])
    return torch.stack(A), torch.tensor(u), torch.tensor(ro), torch.tensor(ri)


def _needed(n_in: int, n_out: int, conv: Conv2dSpec | None, d: int) -> int:
    """Smallest input torus size in which the conv's windows never wrap into the map (as in :mod:`.residual_conv`)."""
    if conv is None:
        return max(n_in, n_out)
    s, p, k = conv.stride[d], conv.padding[d], conv.dilation[d] * (conv.weight.shape[2 + d] - 1) + 1
    return max(n_in + p, s * (n_out - 1) - p + k)


@dataclass
class _Operators:
    """Per frequency: E-selections by slices, pre-activations G_k and output O (F, rows, D) with moduli bounds."""

    slices: list[slice]
    G: list[torch.Tensor]
    O: torch.Tensor
    G_abs: list[torch.Tensor]
    O_abs: torch.Tensor
    taps: int


def torus(net: ConvNet) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(coarse torus N, phase factor per variable and output) of ``net`` (module docstring)."""
    vs = net.shapes_and_strides()
    S = tuple(math.lcm(*[st[d] for _, st in vs]) for d in range(2))
    factors = [(S[0] // st[0], S[1] // st[1]) for _, st in vs]
    N = [1, 1]
    for k, terms in enumerate([layer.terms for layer in net.layers] + [net.output], start=1):
        for j, conv in terms:
            for d in range(2):
                need = _needed(vs[j][0][1 + d], vs[k][0][1 + d], conv, d)
                N[d] = max(N[d], -(-need // factors[j][d]), -(-vs[k][0][1 + d] // factors[k][d]))
    return (N[0], N[1]), factors


def lmi_size(net: ConvNet) -> tuple[int, int]:
    """(number of frequencies, side D of M(ω)) of ``net``'s LMI."""
    vs = net.shapes_and_strides()
    N, factors = torus(net)
    return frequencies(N).shape[0], sum(shape[0] * f[0] * f[1] for (shape, _), f in zip(vs[:-1], factors))


def operators(net: ConvNet) -> _Operators:
    vs = net.shapes_and_strides()
    N, factors = torus(net)
    freqs = frequencies(N)
    sizes = [shape[0] * f[0] * f[1] for (shape, _), f in zip(vs, factors)]
    D = sum(sizes[:-1])
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    slices = [slice(starts[k], starts[k] + sizes[k]) for k in range(len(sizes) - 1)]
    taps = 0

    def assemble(k: int, terms: Sequence[Term]) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal taps
        S = torch.zeros(freqs.shape[0], sizes[k], D, dtype=torch.complex128)
        B = torch.zeros(sizes[k], D, dtype=torch.float64)
        co = vs[k][0][0]
        for j, conv in terms:
            A, u, ro, ri = _taps(conv, vs[j][0][0], factors[j], factors[k])
            taps = max(taps, A.shape[0])
            ci = A.shape[2]
            turns = (((freqs[:, None, :] * u[None]) % torch.tensor(N)).double() / torch.tensor(N)).sum(-1)
            z = torch.polar(torch.ones_like(turns), 2 * math.pi * turns)
            for t in range(A.shape[0]):
                rows = slice(int(ro[t]) * co, (int(ro[t]) + 1) * co)
                cols = slice(starts[j] + int(ri[t]) * ci, starts[j] + (int(ri[t]) + 1) * ci)
                S[:, rows, cols] += z[:, t, None, None] * A[t].to(torch.complex128)
                B[rows, cols] += A[t].abs()
        return S, B

    built = [assemble(k, layer.terms) for k, layer in enumerate(net.layers, start=1)]
    O, O_abs = assemble(len(sizes) - 1, net.output)
    return _Operators(slices, [g for g, _ in built], O, [b for _, b in built], O_abs, taps)


def _slopes(slope: tuple[float, float]) -> tuple[float, float]:
    lo, hi = min(slope[0], 0.0), max(slope[1], 0.0)
    return lo * hi, lo + hi


class PairLMI:
    """The fixed parts of M(ω) (module docstring): M(ρ, λ) = Q_0 + Σ λ_k Q_k − ρE_0ᴴE_0."""

    def __init__(self, net: ConvNet) -> None:
        F, D = lmi_size(net)
        if F * D * D * (len(net.layers) + 1) > MAX_ENTRIES:
            raise InputError(f"joint LMI too large: {F} frequencies of side {D} "
                             f"({len(net.layers) + 1} matrices; limit {MAX_ENTRIES} entries)")
        op = operators(net)
        self.net, self.op = net, op
        self.d0 = op.slices[0].stop
        self.Q0 = op.O.mH @ op.O
        self.Q, self.Q_abs = [], []
        eye = torch.eye(D, dtype=torch.float64)
        for k, (layer, G, G_abs) in enumerate(zip(net.layers, op.G, op.G_abs), start=1):
            a, b = _slopes(layer.slope)
            E = eye[op.slices[k]].to(torch.complex128)
            EG = E.mH @ G
            self.Q.append(b * (EG + EG.mH) - 2 * (E.mH @ E) - 2 * a * (G.mH @ G))
            EGa = eye[op.slices[k]].T @ G_abs
            self.Q_abs.append(abs(b) * (EGa + EGa.T) + 2 * eye[op.slices[k]].T @ eye[op.slices[k]]
                              + 2 * abs(a) * G_abs.T @ G_abs)
        self.Q0_abs = op.O_abs.T @ op.O_abs

    def matrix(self, lam: Sequence[float]) -> torch.Tensor:
        M = self.Q0.clone()
        for lk, Qk in zip(lam, self.Q):
            M += lk * Qk
        return M

    def rho(self, lam: Sequence[float]) -> float:
        """ρ*(λ) = max_ω λ_max(A + Bᴴ(−H)⁻¹B) (exact eigenvalues), inf when −H(ω) ⊁ 0 somewhere."""
        if min(lam) <= 0:
            return math.inf
        M, d0 = self.matrix(lam), self.d0
        L, info = torch.linalg.cholesky_ex(-M[:, d0:, d0:])
        if bool((info != 0).any()):
            return math.inf
        Z = torch.linalg.solve_triangular(L, M[:, d0:, :d0], upper=False)
        S = M[:, :d0, :d0] + Z.mH @ Z
        return float(torch.linalg.eigvalsh((S + S.mH) / 2)[:, -1].max())

    def verify(self, lam: Sequence[float], rho: float) -> bool:
        """−M(ω, ρ) ⪰ 0 proven for every ω with the rounding allowance of the module docstring."""
        M = -self.matrix(lam)
        idx = torch.arange(self.d0)
        M[:, idx, idx] += rho
        absolute = self.Q0_abs.clone()
        for lk, Qa in zip(lam, self.Q_abs):
            absolute += abs(lk) * Qa
        absolute[idx, idx] += rho
        D = M.shape[1]
        err = 4.04 * (2 * self.op.taps + D + 2 * len(lam) + 16) * UNIT_ROUNDOFF * absolute
        err2 = torch.cat([torch.cat([err, err], 1), torch.cat([err, err], 1)], 0)
        for k in range(M.shape[0]):
            Mk = (M[k] + M[k].mH) / 2
            real = torch.cat([torch.cat([Mk.real, -Mk.imag], 1), torch.cat([Mk.imag, Mk.real], 1)], 0)
            if not verified_psd(real, err2):
                return False
        return True


def _direction(lmi: PairLMI) -> list[float]:
    """Initial multiplier direction: λ_k ∝ g_k², g_k a bound on the gain from v_k to the output (backwards)."""
    op, m = lmi.op, len(lmi.net.layers)
    norm = lambda X: float(torch.linalg.matrix_norm(X, 2).max())  # noqa: E731
    gain = [0.0] * (m + 1)
    for k in range(m, 0, -1):
        g = norm(op.O[:, :, op.slices[k]])
        for j in range(k + 1, m + 1):
            lo, hi = lmi.net.layers[j - 1].slope
            g += norm(op.G[j - 1][:, :, op.slices[k]]) * max(abs(lo), abs(hi)) * gain[j]
        gain[k] = max(g, 1e-12)
    return [g * g for g in gain[1:]]


def search(lmi: PairLMI, start: Sequence[float] | None = None, steps: int = STEPS) -> tuple[float, list[float]]:
    """(ρ*(λ), λ) after the search of the module docstring from ``start`` (else a scaled :func:`_direction`)."""
    if start is None:
        lam = _direction(lmi)
        scale = _golden(lambda c: lmi.rho([c * x for x in lam]), 1e-4, 1e4, 2 * steps)
        lam = [scale * x for x in lam]
    else:
        lam = list(start)
    best = lmi.rho(lam)
    for _ in range(SWEEPS):
        for k in range(len(lam)):
            def at(c: float, k: int = k) -> float:
                return lmi.rho(lam[:k] + [c * lam[k]] + lam[k + 1:])
            c = _golden(at, 1 / 8, 8, steps)
            value = at(c)
            if value < best:
                best, lam = value, lam[:k] + [c * lam[k]] + lam[k + 1:]
    if not math.isfinite(best):
        raise InfeasibleMultipliers("no multipliers found with −H(ω) ≻ 0 at every frequency")
    return best, lam


def certify(lmi: PairLMI, rho: float, lam: Sequence[float], method: str = "residual-joint") -> Bound:
    """Certified √ρ̂, ρ̂ = ρ(1 + margin) for the first margin of :data:`MARGINS` that verifies."""
    for margin in MARGINS:
        rho_hat = rho * (1 + margin)
        if lmi.verify(lam, rho_hat):
            return certified(math.sqrt(rho_hat) * (1 + 4 * UNIT_ROUNDOFF), method)
    raise InfeasibleMultipliers(f"could not verify the joint bound √ρ ≈ {math.sqrt(rho):.6g}")


def joint_bound(net: ConvNet) -> Bound:
    """Certified bound of ``net`` by one verified LipSDP-Layer per frequency (module docstring)."""
    lmi = PairLMI(net)
    return certify(lmi, *search(lmi))


def compose(nets: Sequence[ConvNet], posts: Sequence[tuple[float, float]]) -> ConvNet:
    """nets[0], then φ with slopes posts[0], then nets[1], …: one :class:`ConvNet` (each output becomes a layer)."""
    if len(posts) != len(nets) - 1:
        raise InputError(f"{len(nets)} networks need {len(nets) - 1} activations between them, got {len(posts)}")
    layers, offset = [], 0
    for i, net in enumerate(nets):
        shift = lambda terms, o=offset: tuple((j + o, conv) for j, conv in terms)  # noqa: E731
        layers += [Layer(shift(layer.terms), layer.slope) for layer in net.layers]
        if i < len(posts):
            layers.append(Layer(shift(net.output), posts[i]))
        offset = len(layers)
    out = tuple((j + offset - len(nets[-1].layers), conv) for j, conv in nets[-1].output)
    return ConvNet(nets[0].input_shape, tuple(layers), out)


def _post_gain(slope: tuple[float, float]) -> float:
    """K with ‖φ(z) − φ(z')‖² − K‖Δz‖² + q(Δz, Δφ) ≤ 0 for the widened slopes (multiplier 1; docs/residual.md)."""
    a, b = _slopes(slope)
    return b * b - 2 * a


def composed_bound(nets: Sequence[ConvNet], posts: Sequence[tuple[float, float]]) -> Bound:
    """Certified bound of the composition (:func:`compose`), searched from the product of the parts' own
    certificates (so its ρ*(λ) starts at Π ρ_i · Π K_i: never above the product of the parts' searched values).
    Run by ``--method cp`` too, so never stopped by a budget (``budget.CHEAP_NAMES``: ``best`` ≤ ``cp``)."""
    parts = [search(PairLMI(net)) for net in nets]
    lam: list[float] = []
    for i, (rho_i, lam_i) in enumerate(parts):
        downstream = math.prod(rho for rho, _ in parts[i + 1:]) * math.prod(_post_gain(s) for s in posts[i + 1:])
        lam += [downstream * x for x in lam_i]
        if i < len(posts):
            lam.append(downstream)
            lam = [x * _post_gain(posts[i]) for x in lam[:-1]] + [lam[-1]]
    lmi = PairLMI(compose(nets, posts))
    return certify(lmi, *search(lmi, lam))
