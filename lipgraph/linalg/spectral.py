"""max over frequencies of σ_max of a circular convolution's symbol: float32 screening and float64 recheck
(:func:`max_singular_value`, exact), or Gram iteration (:func:`gram_iteration_norm`, an upper bound).

The symbol of a (polyphase, grouped) circular convolution on the grid Z_M^d is the matrix-valued trigonometric
polynomial S(ω) = Σ_t A_t e^{−2πi⟨ω, u_t⟩/M} (per group: c_out × width); the operator's ℓ2 norm is
max_ω σ_max(S(ω)) (Sedghi, Gupta & Long, ICLR 2019). Real taps give S(−ω) = conj S(ω), so one frequency of each
pair {ω, −ω} is enough (:func:`frequencies`).

Screening, in float32 (complex64) on the chosen device, per frequency and group, with u = 2⁻²⁴ and
γ_m = m·u / (1 − m·u) (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 2002):

1. Symbol: each entry of S is a sum of at most T products a·z with |z| = 1. Rounding a and z to float32, the
   complex products (Lemma 3.5: √2·γ₂) and the T-term sums give |S̃ − S| ≤ c_S·u·B entrywise, with
   B = Σ_t |A_t| and c_S = 2T + 8, so ‖S̃ − S‖₂ ≤ e_S = c_S·u·√(‖B‖₁‖B‖∞) (‖X‖₂² ≤ ‖X‖₁‖X‖∞ and
   ‖|X|‖₂ ≥ ‖X‖₂), the same for every frequency.
2. Gram matrix: G̃ = fl(S̃S̃ᴴ) (or S̃ᴴS̃) with inner dimension k, as a float32 sum of the products of m = ⌈k/b⌉
   column blocks of width b ≤ ``GRAM_BLOCK``: each block product is off by at most √2·γ_{b+2}·|S̃_j||S̃_j|ᴴ
   entrywise (§3.6, complex inner products, in any order), and summing m of them adds √2·γ_m of the sum of their
   moduli, so |G̃ − S̃S̃ᴴ| ≤ √2·γ_{b+2+m}·|S̃||S̃|ᴴ (and ≤ √2·γ_{k+2}·|S̃||S̃|ᴴ, any summation order), hence
   ‖G̃ − S̃S̃ᴴ‖₂ ≤ e_G = √2·γ_{min(b+m, k)+2}·‖|S̃|‖₁‖|S̃|‖∞.
3. Eigensolver: ``eigvalsh`` is backward stable: its largest value λ̃ is an eigenvalue of G̃ + E with
   ‖E‖₂ ≤ p(n)·u·‖G̃‖₂ (LAPACK Users' Guide, 3rd ed., §4.7; LAPACK's own error bounds take p(n) = 1, we take
   p(n) = 4n), ‖G̃‖₂ ≤ |λ̃| + e_G + ‖E‖₂, which gives e_E.

By Weyl's inequality σ_max(S(ω)) ∈ [l(ω), h(ω)] = [√(λ̃ − e_E − e_G)₊ − e_S, √(λ̃ + e_E + e_G) + e_S].
Recheck: frequencies are recomputed in float64 (complex128 symbol, Gram matrix, ``eigvalsh``) in decreasing order
of h, while h(ω) ≥ τ, the largest value known to be attained: max l at first, then the largest float64 value;
no other frequency can hold the maximum. The result is the max of the rechecked values (and of h over the
others, which is smaller): a float64 value, certified by the caller with ``FLOAT_MARGIN`` as elsewhere.
e_G grows like ‖|S|‖₂²/‖S‖₂², large for the wide polyphase symbols of strided convolutions: when the first
chunk's enclosures are wider than ``MAX_WINDOW`` (relative, median) they could not exclude frequencies of a flat
spectrum, and every frequency is computed in float64 instead, as are small matrices (n < ``SCREEN_MIN_DIM``).

Cholesky tests, on a CPU for matrices with n ≥ ``CHOLESKY_MIN_DIM`` (there a float64 Cholesky factorisation costs
about half a float32 eigensolver): the frequencies of a chunk are visited in decreasing order of a Lanczos estimate
of λ_max(G̃) (``LANCZOS_STEPS`` steps: an order, proven by nothing). The first is computed in float64; its value τ is
attained. Every later one is skipped when λ_max(G̃) ≤ b = (τ − e_S)² − e_G is proven (then σ_max(S(ω)) ≤ √(λ_max(G̃) +
e_G) + e_S ≤ τ by Weyl; b rounded down, :func:`_skip_bound`), else computed in float64, which raises τ if larger. The
proof: G̃ is exact in complex128; form Ã = fl((b − c)·I − G̃) and factorise it in float64. Demmel's bound (Higham Thm
10.3): a completed Cholesky factorisation of a Hermitian Ã gives R̃ᴴR̃ = Ã + ΔA with |ΔA| ≤ γ_c|R̃ᴴ||R̃|, γ_c =
γ_{n+1} in real arithmetic, for any order of the inner products; we take γ_c = 2γ_{n+4} (u = 2⁻⁵³), room for complex
products (√2γ₂ ≤ γ₃) and a division done as a product with a reciprocal. Then ‖R̃‖_F² = Σ_j (R̃ᴴR̃)_jj ≤ tr Ã +
γ_c‖R̃‖_F², so λ_min(Ã) ≥ −‖ΔA‖₂ ≥ −γ_c‖R̃‖_F² ≥ −γ_c·tr(Ã)/(1 − γ_c) (the trace form of Rump, "Verification of
positive definiteness", BIT 46 (2006), Thm 2.3), with tr Ã ≤ D = (1 + u)(n·b + Σ_j|g̃_jj|); forming Ã rounds its
diagonal (≤ u|ã_jj|) and b − c (≤ u·b). Hence λ_max(G̃) ≤ b whenever c ≥ γ_c·D/(1 − γ_c) + 2u·(b + max_j|g̃_jj|), plus
n(n + 3)·2⁻¹⁰²² for underflow (Rump's term is O(n(n + max ã_jj))·2⁻¹⁰⁷⁴, smaller for these normalised matrices). c ≈
2n²u·b: 6e-11 of b at n = 512, far inside e_G. Both tests and eigensolvers read the lower triangle: the Hermitian
matrix it defines obeys the same bound e_G (S̃S̃ᴴ is Hermitian). Frequencies are tested in chunks ``TESTED_CHUNKS``
times larger, so that the first value is the largest of the grid, not of a chunk. As for the screen, when e_G /
estimate in the first chunk exceeds ``MAX_WINDOW`` (median), every frequency is computed in float64 instead.
On a GPU the screen is float64 Gram iteration instead (:func:`_gram_iteration_bounds`: batched matrix products,
enclosures within ``GRAM_TOLERANCE``), since batched eigensolvers are slow there and float32 products may run
in TF32 (u ≈ 2⁻¹¹, not the 2⁻²⁴ assumed above); the recheck is the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import torch

#: Gram matrices are summed over blocks of this many columns of the inner dimension.
GRAM_BLOCK = 256
#: Unit roundoffs of float32 and float64.
U32, U64 = 2.0 ** -24, 2.0 ** -53
#: Gram iteration runs until its worst-case relative excess is below this.
GRAM_TOLERANCE = 1e-3
#: Screening is dropped when the first chunk's enclosures are wider than this (relative, median).
MAX_WINDOW = 1e-2
#: Frequencies are processed in chunks of about this many complex matrix entries per array (on a GPU: 16×).
CHUNK_ENTRIES = 1 << 22
#: Per-frequency matrices smaller than this are computed in float64 directly (screening would not pay).
SCREEN_MIN_DIM = 24
#: Per-frequency matrices at least this large are screened by float64 Cholesky tests on a CPU (faster than float32
#: eigenvalues there).
CHOLESKY_MIN_DIM = 256
#: Chunks of the Cholesky tests are this many times larger (whole grids of 512-channel layers at 4×4 maps: the
#: first value found is then the largest, not the largest of a chunk, and fewer frequencies are computed in float64).
TESTED_CHUNKS = 4
#: Lanczos steps of the estimates that order the frequencies for the Cholesky tests.
LANCZOS_STEPS = 12
#: Absolute slack for float32 underflow of the (normalised, |a| ≤ 1) symbol entries.
_UNDERFLOW = 1e-30


def _gamma(m: int, u: float = U32) -> float:
    return m * u / (1 - m * u)


@dataclass(frozen=True)
class Symbol:
    """S(ω) = Σ_t A_t e^{−2πi⟨ω, u_t⟩/M}: tap t is the (g, c_out, c_in) matrix ``taps[t]`` placed in input block
    ``phase[t]`` (polyphase component) of the (g, c_out, c_in · phases) symbol."""

    taps: torch.Tensor  # (T, g, c_out, c_in) float64
    offsets: torch.Tensor  # (T, d) int64
    phase: torch.Tensor  # (T,) int64 in 0..phases-1
    modulus: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(groups, rows, columns) of the per-frequency matrices."""
        _, g, co, ci = self.taps.shape
        return g, co, ci * self.n_phases

    @property
    def n_phases(self) -> int:
        return int(self.phase.max()) + 1 if self.phase.numel() else 1

    @cached_property
    def _blocks(self) -> list[torch.Tensor]:
        return [(self.phase == p).nonzero().squeeze(1) for p in range(self.n_phases)]

    def to(self, device: torch.device) -> Symbol:
        """The same symbol with its tensors on ``device`` (moved once, not per chunk of frequencies)."""
        return replace(self, taps=self.taps.to(device), offsets=self.offsets.to(device), phase=self.phase.to(device))

    def at(self, freqs: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The symbols at ``freqs`` (F, d), shape (F, g, c_out, width), complex ``dtype`` on ``device``."""
        T, g, co, ci = self.taps.shape
        M = torch.tensor(self.modulus, device=device)
        f, u = freqs.to(device), self.offsets.to(device)
        turns = (((f[:, None, :] * u[None]) % M).double() / M).sum(-1)  # Σ (ω·u mod M)/M: exact integer parts
        z = torch.polar(torch.ones_like(turns), -2 * math.pi * turns).to(dtype)
        if dtype not in self._complex_taps:  # converted once per symbol, not per chunk of frequencies
            self._complex_taps[dtype] = self.taps.reshape(T, -1).to(dtype)
        flat = self._complex_taps[dtype].to(device)
        blocks = [(z[:, idx] @ flat[idx]).reshape(-1, g, co, ci) for idx in self._blocks]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)

    @cached_property
    def _complex_taps(self) -> dict[torch.dtype, torch.Tensor]:
        """The taps as (T, g·c_out·c_in) complex matrices, per dtype."""
        return {}

    @cached_property
    def abs_sum(self) -> torch.Tensor:
        """B = Σ_t |A_t| (g, c_out, width), float64: an entrywise bound of |S(ω)| for every ω."""
        a = self.taps.abs()
        return torch.cat([a[idx].sum(0) for idx in self._blocks], dim=-1)


def frequencies(modulus: tuple[int, ...]) -> torch.Tensor:
    """One frequency ω ∈ Z_M^d of each pair {ω, −ω} (F, d): the rfft half-grid (last axis 0..M/2) without the
    duplicates on its boundary planes (last = 0 or M/2), where ω and −ω are both in the half-grid."""
    half = (*modulus[:-1], modulus[-1] // 2 + 1)
    f = _unravel(torch.arange(math.prod(half)), half)
    if len(modulus) == 1:
        return f
    last = f[:, -1]
    boundary = (last == 0) | (2 * last == modulus[-1])
    rest, m_rest = f[:, :-1], torch.tensor(modulus[:-1])
    keep = ~boundary | (_ravel(rest, m_rest) <= _ravel((-rest) % m_rest, m_rest))
    return f[keep]


def _unravel(flat: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """C-order multi-indices (F, d) of flat indices (``torch.unravel_index``, which imports sympy on first use)."""
    out = []
    for m in reversed(sizes):
        out.append(flat % m)
        flat = flat // m
    return torch.stack(out[::-1], -1)


def _ravel(index: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    strides = torch.tensor([math.prod(sizes[i + 1:].tolist()) for i in range(len(sizes))])
    return (index * strides).sum(-1)


def _entries_per_frequency(symbol: Symbol) -> int:
    """Matrix entries held per frequency: the symbols and their Gram matrices (for chunking)."""
    g, co, w = symbol.shape
    return g * (co * w + min(co, w) ** 2)


def _chunk_entries(device: torch.device) -> int:
    return CHUNK_ENTRIES * (16 if device.type == "cuda" else 1)


def _chunks(n_freq: int, per_freq: int, device: torch.device, entries: int | None = None):
    step = max(1, (entries or _chunk_entries(device)) // max(per_freq, 1))
    for start in range(0, n_freq, step):
        yield slice(start, min(start + step, n_freq))


def _gram(s: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of each symbol, S Sᴴ or Sᴴ S, summed over blocks of ``GRAM_BLOCK`` of the inner
    dimension k (module docstring, step 2: the rounding bound then grows with GRAM_BLOCK + k/GRAM_BLOCK, not k)."""
    if s.shape[-2] > s.shape[-1]:
        s = s.mH
    gram = None
    for start in range(0, s.shape[-1], GRAM_BLOCK):
        part = s[..., start:start + GRAM_BLOCK]
        gram = part @ part.mH if gram is None else gram.add_(part @ part.mH)
    return gram


def _top_eigenvalues(symbol: Symbol, freqs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """λ_max of the Gram matrix per frequency (max over groups), in float64: (F,)."""
    out = []
    for part in _chunks(len(freqs), _entries_per_frequency(symbol), device):
        s = symbol.at(freqs[part], torch.complex128, device)
        out.append(torch.linalg.eigvalsh(_gram(s))[..., -1].amax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _symbol_error(symbol: Symbol, u: float = U32) -> float:
    """e_S (module docstring, step 1) of a normalised symbol (|a| ≤ 1), plus underflow slack."""
    return (2 * symbol.taps.shape[0] + 8) * u * math.sqrt(_schur(symbol.abs_sum).max().item()) + _UNDERFLOW


def _gram_error(k: int, u: float = U32) -> float:
    """The factor of ‖|S̃|‖₁‖|S̃|‖∞ in e_G for inner dimension k (module docstring, step 2)."""
    return math.sqrt(2) * _gamma(min(k, GRAM_BLOCK + math.ceil(k / GRAM_BLOCK)) + 2, u)


def _float32_grams(symbol: Symbol, freqs: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """G̃ (F, g, n, n) complex64 and e_G (F, g) float64 at ``freqs`` (module docstring, step 2)."""
    s = symbol.at(freqs, torch.complex64, device)
    k = max(s.shape[-2:])
    # |s| by hypot: within one ulp (2u), several times faster than complex abs(); freed before the Gram product.
    # computed ‖|S̃|‖₁‖|S̃|‖∞ ≥ exact · (1 − γ(2k+3)): moduli (2u each, in both sums), two sums of ≤ k terms, a product
    e_g = _gram_error(k) * _schur(torch.hypot(s.real, s.imag)).double() / (1 - _gamma(2 * k + 3))
    return _gram(s), e_g


def _schur(a: torch.Tensor) -> torch.Tensor:
    """‖A‖₁‖A‖∞ ≥ ‖A‖₂² per matrix of a batch (…, m, n) of nonnegative matrices."""
    return a.sum(-2).amax(-1) * a.sum(-1).amax(-1)


def _normalised(symbol: Symbol) -> tuple[Symbol, float]:
    """The symbol divided by its largest |tap| (so |a| ≤ 1: no float32 overflow), and that scale (0: all zero)."""
    scale = symbol.taps.abs().max().item() if symbol.taps.numel() else 0.0
    return (replace(symbol, taps=symbol.taps / scale) if scale else symbol), scale


def _screen(symbol: Symbol, freqs: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous float32 enclosures [l(ω), h(ω)] of max_group σ_max(S(ω)) (module docstring), float64 (F,)."""
    gram, e_g = _float32_grams(symbol, freqs, device)
    lam = torch.linalg.eigvalsh(gram)[..., -1].double()
    p_n = 4 * min(symbol.shape[1:]) * U32
    e_e = p_n * (lam.abs() + e_g) / (1 - p_n)
    e_s = _symbol_error(symbol)
    low = (torch.sqrt((lam - e_e - e_g).clamp(min=0)) - e_s).amax(-1)
    high = (torch.sqrt(lam.clamp(min=0) + e_e + e_g) + e_s).amax(-1)
    return low.cpu(), high.cpu()


def max_singular_value(symbol: Symbol, device: torch.device | str | None = None) -> float:
    """max over ω of σ_max(S(ω)) (every group): screening, then a float64 recheck (module docstring). The screen
    is float32 eigenvalues on a CPU (float64 Cholesky tests from n = ``CHOLESKY_MIN_DIM``), float64 Gram iteration
    on a GPU (matrix products; batched eigensolvers are slow there and float32 products may run in TF32)."""
    device = torch.device(device or "cpu")
    symbol, scale = _normalised(symbol)
    if scale == 0.0:
        return 0.0
    symbol = symbol.to(device)
    freqs = frequencies(symbol.modulus)
    g, co, w = symbol.shape
    gpu = device.type == "cuda"
    if min(co, w) < SCREEN_MIN_DIM and not gpu:
        return scale * _exact_max(symbol, freqs, device)
    if min(co, w) >= CHOLESKY_MIN_DIM and not gpu:
        return scale * _tested_max(symbol, freqs, device)
    lows, highs = [], []
    for part in _chunks(len(freqs), _entries_per_frequency(symbol), device):
        low, high = (_gram_iteration_bounds if gpu else _screen)(symbol, freqs[part], device)
        if not lows and not gpu and ((high - low) / high.clamp(min=1e-300)).median() > MAX_WINDOW:  # would not pay
            return scale * _exact_max(symbol, freqs, device)
        lows.append(low)
        highs.append(high)
    return scale * _recheck(symbol, freqs, torch.cat(lows), torch.cat(highs), device)


def _recheck(symbol: Symbol, freqs: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
             device: torch.device) -> float:
    """max_ω σ_max(S(ω)) from enclosures [low, high]: float64 values in decreasing order of ``high`` while
    ``high`` ≥ the largest value known to be attained (module docstring)."""
    order = torch.argsort(high, descending=True)
    best, step = low.max().item(), max(1, min(64, _chunk_entries(device) // _entries_per_frequency(symbol)))
    exact = 0.0
    for start in range(0, len(order), step):
        batch = order[start:start + step]
        batch = batch[high[batch] >= best]
        if len(batch) == 0:
            return max(exact, high[order[start]].item())  # every frequency left is below an attained value
        exact = max(exact, _exact_max(symbol, freqs[batch], device))
        best = max(best, exact)
    return exact


def _tested_max(symbol: Symbol, freqs: torch.Tensor, device: torch.device) -> float:
    """max_ω σ_max(S(ω)): float64 values in decreasing order of Lanczos estimates, skipping every frequency that a
    float64 Cholesky test proves not above the largest value found (module docstring, "Cholesky tests")."""
    best, e_s = 0.0, _symbol_error(symbol)
    per_freq = _entries_per_frequency(symbol)
    for first, part in enumerate(_chunks(len(freqs), per_freq, device, TESTED_CHUNKS * _chunk_entries(device))):
        gram, e_g = _float32_grams(symbol, freqs[part], device)
        estimate = _lanczos_estimates(gram)
        if first == 0 and (e_g / estimate.clamp(min=1e-300)).median() > MAX_WINDOW:  # the tests would not pay
            return _exact_max(symbol, freqs, device)
        for i in torch.argsort(estimate.amax(-1), descending=True).tolist():  # one at a time: one float64 copy
            if best > e_s and _below(gram[i], _skip_bound(best, e_s, e_g[i])):
                continue
            best = max(best, _exact_max(symbol, freqs[part][i:i + 1], device))
    return best


def _skip_bound(best: float, e_s: float, e_g: torch.Tensor) -> torch.Tensor:
    """b = (τ − e_S)² − e_G (per group), rounded down: the computed square (≤ (τ − e_S)²(1 + 4u)) is taken 1e-12
    smaller before e_G is subtracted, which leaves room for that subtraction's rounding (≤ u·b). A relative margin
    on the difference would not do: with e_G ≈ (τ − e_S)², b is small and the square's rounding is not."""
    return (best - e_s) ** 2 * (1 - 1e-12) - e_g


def _lanczos_estimates(gram: torch.Tensor) -> torch.Tensor:
    """Estimates of λ_max of each Hermitian matrix G of the batch (…, n, n): the top Ritz value of ``LANCZOS_STEPS``
    Lanczos steps on Gᵀ (same eigenvalues; row vectors times G run faster than G times columns) from a fixed random
    start, without reorthogonalisation: only an order, proven by nothing. float64."""
    *batch, n, _ = gram.shape
    mats = gram.reshape(-1, n, n)
    start = torch.randn(mats.shape[0], 1, n, generator=torch.Generator().manual_seed(0), dtype=gram.dtype)
    q = (start / torch.linalg.vector_norm(start, dim=-1, keepdim=True)).to(gram.device)
    previous, beta, alphas, betas = torch.zeros_like(q), torch.zeros_like(q.real[..., :1]), [], []
    for _ in range(min(LANCZOS_STEPS, n)):
        w = torch.bmm(q, mats)
        alpha = (q.conj() * w).sum(-1, keepdim=True).real
        w = w - alpha * q - beta * previous
        beta = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        alphas.append(alpha.flatten())
        betas.append(beta.flatten())
        previous, q = q, w / beta.clamp(min=1e-30)  # an invariant subspace: q = 0, the Ritz values stay exact
    off = torch.stack(betas, -1)[:, :-1].double()
    tridiagonal = torch.diag_embed(torch.stack(alphas, -1).double())
    tridiagonal += torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return torch.linalg.eigvalsh(tridiagonal)[..., -1].reshape(batch)


def _below(gram: torch.Tensor, bound: torch.Tensor) -> bool:
    """Is λ_max(G) ≤ ``bound`` proven for every Hermitian matrix G (read from its lower triangle) of the batch
    (…, n, n)? By float64 Cholesky factorisations of (bound − c)·I − G that run to completion (module docstring,
    "Cholesky tests", for the shift c)."""
    n = gram.shape[-1]
    a = gram.to(torch.complex128).neg_()
    diagonal = a.diagonal(dim1=-2, dim2=-1)
    g_diag = diagonal.real.abs()
    gamma = 2 * _gamma(n + 4, U64)
    trace = (n * bound.abs() + g_diag.sum(-1)) * (1 + 1e-6)
    shift = (gamma / (1 - gamma) * trace + 2 * U64 * (bound.abs() + g_diag.amax(-1)) * (1 + 1e-6)
             + n * (n + 3) * 2.0 ** -1022)
    diagonal.add_((bound - shift)[..., None])
    return bool(((torch.linalg.cholesky_ex(a).info == 0) & (bound > 0)).all())


def _exact_max(symbol: Symbol, freqs: torch.Tensor, device: torch.device) -> float:
    """max σ_max over ``freqs`` in float64 (0 for none)."""
    return math.sqrt(max(_top_eigenvalues(symbol, freqs, device).max().item(), 0.0)) if len(freqs) else 0.0


def gram_iteration_norm(symbol: Symbol, device: torch.device | str | None = None) -> float:
    """Certified upper bound on max_ω σ_max(S(ω)) by Gram iteration per frequency (Delattre, Barthélemy, Araujo &
    Allauzen, ICML 2023), in float64, within ``GRAM_TOLERANCE`` of it: matrix products only
    (:func:`_gram_iteration_bounds`)."""
    device = torch.device(device or "cpu")
    symbol, scale = _normalised(symbol)
    if scale == 0.0:
        return 0.0
    symbol = symbol.to(device)
    freqs, best = frequencies(symbol.modulus), 0.0
    for part in _chunks(len(freqs), _entries_per_frequency(symbol), device):
        best = max(best, _gram_iteration_bounds(symbol, freqs[part], device)[1].max().item())
    return scale * best


def _gram_iteration_bounds(symbol: Symbol, freqs: torch.Tensor, device: torch.device
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous enclosures [l(ω), h(ω)] of max_group σ_max(S(ω)) from Gram iteration in float64, (F,) each.

    X₀ = S, X_{j+1} = fl(X_jX_jᴴ) / c_{j+1} (the smaller Gram matrix; c a power of two near its Frobenius norm,
    an exact scaling). With ε_{j+1} the product's rounding bound (module docstring step 2, with ‖|X|‖₂ ≤ ‖X‖_F:
    ε = √2·γ_{min(b+m, k)+2}·‖X_j‖_F²), Weyl gives σ₁(X_j)² ∈ [c_{j+1}σ₁(X_{j+1}) − ε_{j+1},
    c_{j+1}σ₁(X_{j+1}) + ε_{j+1}], and σ₁(X_t) ∈ [‖X_t‖_F/√n, ‖X_t‖_F] (n = min dimension). Unwinding from t
    gives [l, h] for σ₁(S̃), widened by e_S (step 1, u = 2⁻⁵³) for S. The ratio h/l is about n^{2^{-(t+1)}}:
    t is the smallest with ln(n)/2^{t+1} ≤ ``GRAM_TOLERANCE``.
    """
    _, co, w = symbol.shape
    n = min(co, w)
    steps = max(1, math.ceil(math.log2(max(math.log(n), GRAM_TOLERANCE) / GRAM_TOLERANCE)) - 1)
    x = symbol.at(freqs, torch.complex128, device)
    scales, errors = [], []
    for _ in range(steps):
        errors.append(_gram_error(max(x.shape[-2:]), U64) * torch.linalg.matrix_norm(x, "fro").square() * (1 + 1e-6))
        y = _gram(x)
        c = torch.exp2(torch.round(torch.log2(torch.linalg.matrix_norm(y, "fro").clamp(min=1e-300))))
        x = y / c[..., None, None]
        scales.append(c)
    frob = torch.linalg.matrix_norm(x, "fro")
    high, low = frob * (1 + 1e-6), frob * (1 - 1e-6) / math.sqrt(n)
    for c, eps in zip(reversed(scales), reversed(errors)):
        high, low = torch.sqrt(c * high + eps), torch.sqrt((c * low - eps).clamp(min=0))
    e_s = _symbol_error(symbol, U64)
    return (low - e_s).clamp(min=0).amax(-1).cpu(), (high + e_s).amax(-1).cpu()
