"""lipgraph.linalg.spectral against an independent numpy evaluation of the symbol in complex128.

The oracle builds S(ω) = Σ_t A_t e^{−2πi⟨ω, u_t⟩/M} with numpy over the *full* frequency grid and takes numpy's
SVD: it shares no code with the module (not its frequency half-grid, its chunks, its float32 screening or its
recheck order).
"""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipgraph.linalg import spectral
from lipgraph.linalg.spectral import Symbol, frequencies, gram_iteration_norm, max_singular_value


def oracle_symbol(sym: Symbol, omega: tuple[int, ...]) -> np.ndarray:
    """S(ω) (g, c_out, width) by numpy in complex128."""
    taps = sym.taps.numpy()
    T, g, co, ci = taps.shape
    S = np.zeros((g, co, ci * sym.n_phases), dtype=np.complex128)
    for t in range(T):
        angle = sum(o * int(u) / m for o, u, m in zip(omega, sym.offsets[t], sym.modulus))
        p = int(sym.phase[t])
        S[:, :, p * ci:(p + 1) * ci] += taps[t] * np.exp(-2j * np.pi * angle)
    return S


def oracle_sigmas(sym: Symbol) -> dict[tuple[int, ...], float]:
    """max over groups of σ_max(S(ω)) for every ω of the full grid, by numpy."""
    out = {}
    for omega in itertools.product(*(range(m) for m in sym.modulus)):
        S = oracle_symbol(sym, omega)
        out[omega] = max(np.linalg.norm(S[i], 2) for i in range(S.shape[0]))
    return out


@st.composite
def symbols(draw):
    d = draw(st.integers(1, 3))
    modulus = tuple(draw(st.integers(1, 5 if d < 3 else 3)) for _ in range(d))
    T, g = draw(st.integers(1, 6)), draw(st.integers(1, 2))
    co, ci = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    phases = draw(st.integers(1, min(T, 3)))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    taps = torch.randn(T, g, co, ci, generator=gen, dtype=torch.float64)
    kind = draw(st.sampled_from(["gaussian", "nonnegative", "rank-one", "equal-taps", "tiny", "huge", "sparse"]))
    if kind == "nonnegative":  # |S| = S at ω = 0: the worst case of the Gram matrix's rounding bound
        taps = taps.abs()
    elif kind == "rank-one":
        taps = torch.einsum("ti,tj->tij", torch.randn(T, co, generator=gen, dtype=torch.float64),
                            torch.randn(T, ci, generator=gen, dtype=torch.float64))[:, None].expand(T, g, co, ci)
    elif kind == "equal-taps":  # a flat spectrum: many frequencies tie for the maximum
        taps = taps[:1].expand(T, g, co, ci) / T
    elif kind in ("tiny", "huge"):
        taps = taps * (1e-30 if kind == "tiny" else 1e30)
    elif kind == "sparse":
        taps = taps * (torch.rand(T, g, co, ci, generator=gen) < 0.1)
    offsets = torch.randint(0, 4, (T, d), generator=gen)
    phase = torch.arange(T) % phases
    return Symbol(taps.contiguous(), offsets, phase, modulus)


@pytest.fixture
def always_screen(monkeypatch):
    """Run the float32 screening on every size (it is skipped below SCREEN_MIN_DIM) and never drop it."""
    monkeypatch.setattr(spectral, "SCREEN_MIN_DIM", 1)
    monkeypatch.setattr(spectral, "MAX_WINDOW", math.inf)


@pytest.fixture
def always_test(monkeypatch):
    """Run the Cholesky tests (Lanczos order, float64 Cholesky exclusion) on every size and never drop them."""
    monkeypatch.setattr(spectral, "SCREEN_MIN_DIM", 1)
    monkeypatch.setattr(spectral, "CHOLESKY_MIN_DIM", 1)
    monkeypatch.setattr(spectral, "MAX_WINDOW", math.inf)


def test_frequencies_hold_one_of_each_conjugate_pair():
    for modulus in [(1,), (2,), (7,), (4, 1), (3, 4), (5, 6), (2, 3, 4), (4, 4, 2)]:
        freqs = {tuple(f) for f in frequencies(modulus).tolist()}
        full = set(itertools.product(*(range(m) for m in modulus)))
        negated = {tuple((-o) % m for o, m in zip(f, modulus)) for f in freqs}
        assert freqs | negated == full, modulus
        assert all(tuple((-o) % m for o, m in zip(f, modulus)) not in freqs or
                   tuple((-o) % m for o, m in zip(f, modulus)) == f for f in freqs), modulus  # no pair twice
        assert len(freqs) == (len(full) + sum(f == tuple((-o) % m for o, m in zip(f, modulus)) for f in full)) // 2


@settings(max_examples=150, deadline=None, derandomize=True)
@given(symbols())
def test_symbol_matches_numpy_within_its_rounding_bound(sym):
    """Symbol.at (taps converted once per symbol and dtype): complex128 equals numpy's S(ω) to rounding, and complex64
    is within the module docstring's step 1 bound c_S·u·B entrywise (normalised taps, as the screen uses them)."""
    normalised = _normalised(sym)
    if normalised is None:
        return
    freqs = frequencies(sym.modulus)
    exact = np.stack([oracle_symbol(normalised, tuple(f)) for f in freqs.tolist()])
    bound = (2 * sym.taps.shape[0] + 8) * spectral.U32 * normalised.abs_sum.numpy() + 1e-30
    s64 = normalised.at(freqs, torch.complex128, torch.device("cpu")).numpy()
    s32 = normalised.at(freqs, torch.complex64, torch.device("cpu")).numpy().astype(np.complex128)
    assert np.abs(s64 - exact).max() <= 1e-13 * max(np.abs(exact).max(), 1e-300) + 1e-300
    assert (np.abs(s32 - exact) <= bound).all()


@settings(max_examples=250, deadline=None, derandomize=True)
@given(symbols())
def test_screening_encloses_every_frequency(sym):
    """The float32 enclosures hold the exact σ_max at every frequency (module docstring, steps 1–3)."""
    exact = oracle_sigmas(sym)
    scale = sym.taps.abs().max().item()
    if scale == 0:
        return
    normalised = Symbol(sym.taps / scale, sym.offsets, sym.phase, sym.modulus)
    freqs = frequencies(sym.modulus)
    low, high = spectral._screen(normalised, freqs, torch.device("cpu"))
    for f, lo, hi in zip(freqs.tolist(), low.tolist(), high.tolist()):
        value = exact[tuple(f)] / scale
        assert lo <= value * (1 + 1e-12) + 1e-300 and value <= hi * (1 + 1e-12), (f, lo, value, hi)


@pytest.mark.parametrize("path", ["always_screen", "always_test"])
@settings(max_examples=220, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(symbols())
def test_max_singular_value_is_the_exact_max(request, path, sym):
    """Through the float32 screen, or the Cholesky tests in Lanczos order, on every size."""
    request.getfixturevalue(path)
    expected = max(oracle_sigmas(sym).values())
    value = max_singular_value(sym)
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert value >= expected * (1 - 1e-12)  # with FLOAT_MARGIN added by callers: an upper bound


@settings(max_examples=200, deadline=None, derandomize=True)
@given(symbols())
def test_gram_iteration_is_an_upper_bound_within_tolerance(sym):
    expected = max(oracle_sigmas(sym).values())
    value = gram_iteration_norm(sym)
    assert expected * (1 - 1e-12) <= value <= expected * (1 + spectral.GRAM_TOLERANCE) + 1e-300


def _normalised(sym: Symbol) -> Symbol | None:
    scale = sym.taps.abs().max().item()
    return Symbol(sym.taps / scale, sym.offsets, sym.phase, sym.modulus) if scale else None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(symbols())
def test_gram_iteration_encloses_every_frequency_and_the_recheck_finds_the_max(sym):
    """The GPU screen: Gram-iteration enclosures [l, h] hold σ_max at every frequency, and the float64 recheck over
    them gives the exact maximum (what max_singular_value does on a GPU, run here on the CPU)."""
    normalised = _normalised(sym)
    if normalised is None:
        return
    exact, scale = oracle_sigmas(sym), sym.taps.abs().max().item()
    freqs = frequencies(sym.modulus)
    low, high = spectral._gram_iteration_bounds(normalised, freqs, torch.device("cpu"))
    for f, lo, hi in zip(freqs.tolist(), low.tolist(), high.tolist()):
        value = exact[tuple(f)] / scale
        assert lo <= value * (1 + 1e-12) + 1e-300 and value <= hi * (1 + 1e-12), (f, lo, value, hi)
    found = spectral._recheck(normalised, freqs, low, high, torch.device("cpu")) * scale
    assert found == pytest.approx(max(exact.values()), rel=1e-9, abs=1e-300)


def test_gram_enclosures_are_narrow():
    """Not vacuous: within twice GRAM_TOLERANCE, so the recheck sees only frequencies near the maximum."""
    taps = torch.randn(9, 1, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sym = Symbol(taps / taps.abs().max(), torch.randint(0, 3, (9, 2), generator=torch.Generator().manual_seed(3)),
                 torch.zeros(9, dtype=torch.long), (6, 6))
    low, high = spectral._gram_iteration_bounds(sym, frequencies((6, 6)), torch.device("cpu"))
    assert ((high - low) / high).max() < 2 * spectral.GRAM_TOLERANCE and (high >= low.max()).sum() <= 3


def test_enclosures_are_narrow():
    """Not vacuous: on a generic symbol the enclosures leave only frequencies near the maximum to recheck."""
    taps = torch.randn(9, 1, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sym = Symbol(taps / taps.abs().max(), torch.randint(0, 3, (9, 2), generator=torch.Generator().manual_seed(3)),
                 torch.zeros(9, dtype=torch.long), (6, 6))
    low, high = spectral._screen(sym, frequencies((6, 6)), torch.device("cpu"))
    assert ((high - low) / high).max() < 1e-3 and (high >= low.max()).sum() <= 3


def test_float64_decides_between_close_frequencies(always_screen):
    """Two frequencies whose σ differ by less than the float32 enclosures: the float64 recheck picks the max."""
    base = torch.randn(1, 1, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    base = base / base.abs().max()
    taps = torch.cat([base, base * 1e-7])  # S(ω) = A (1 + 1e-7 e^{-2πiω/M}): max at ω = 0 by a relative 1e-7
    sym = Symbol(taps, torch.tensor([[0], [1]]), torch.zeros(2, dtype=torch.long), (4,))
    low, high = spectral._screen(sym, frequencies((4,)), torch.device("cpu"))
    assert (high >= low.max()).sum() > 1  # the screening alone cannot tell them apart
    expected = max(oracle_sigmas(sym).values())
    assert max_singular_value(sym) == pytest.approx(expected, rel=1e-12)
    assert max_singular_value(sym) >= expected * (1 - 1e-13)


def test_flat_spectrum_skips_the_screening(monkeypatch):
    """Enclosures wider than MAX_WINDOW: every frequency goes to float64 directly (same value)."""
    monkeypatch.setattr(spectral, "SCREEN_MIN_DIM", 1)
    calls = []
    real = spectral._top_eigenvalues
    monkeypatch.setattr(spectral, "_top_eigenvalues", lambda s, f, d: calls.append(len(f)) or real(s, f, d))
    monkeypatch.setattr(spectral, "MAX_WINDOW", 0.0)
    sym = Symbol(torch.randn(3, 1, 30, 30, dtype=torch.float64), torch.tensor([[0], [1], [2]]),
                 torch.zeros(3, dtype=torch.long), (6,))
    value = max_singular_value(sym)
    assert calls == [len(frequencies((6,)))]
    assert value == pytest.approx(max(oracle_sigmas(sym).values()), rel=1e-12)


def _hermitian(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """U diag(λ) Uᴴ in complex64 (rounded from complex128) for a random unitary U."""
    n = len(eigenvalues)
    gen = torch.Generator().manual_seed(seed)
    z = torch.complex(torch.randn(n, n, generator=gen, dtype=torch.float64),
                      torch.randn(n, n, generator=gen, dtype=torch.float64))
    q, _ = torch.linalg.qr(z)
    return ((q * eigenvalues.to(torch.complex128)) @ q.mH).to(torch.complex64)


@pytest.mark.parametrize("n", [1, 2, 5, 40, 300])
@pytest.mark.parametrize("spectrum", ["generic", "near-tie", "rank-one", "psd-gram"])
def test_cholesky_test_is_sound_and_sharp(n, spectrum):
    """_below(G, b) holds only when λ_max(G) ≤ b (here: never for b a relative 1e-9 below λ_max, computed in
    float64 from the float32 matrix itself), and does hold 1e-9 above it (the rounding shift is ≈ n²·2⁻⁵³)."""
    gen = torch.Generator().manual_seed(n)
    if spectrum == "psd-gram":
        s = torch.randn(n, 2 * n, generator=gen, dtype=torch.complex64)
        gram = s @ s.mH
    else:
        lam = torch.rand(n, generator=gen, dtype=torch.float64) * 3
        if spectrum == "near-tie":
            lam[:2] = torch.tensor([4.0, 4.0 * (1 - 1e-12)])[:n]
        elif spectrum == "rank-one":
            lam = torch.zeros(n, dtype=torch.float64)
            lam[0] = 2.5
        gram = _hermitian(lam, n)
    top = torch.linalg.eigvalsh(gram.to(torch.complex128))[-1].item()
    bound = torch.tensor([top], dtype=torch.float64)
    assert spectral._below(gram[None], bound * (1 + 1e-9))
    assert not spectral._below(gram[None], bound * (1 - 1e-9))
    assert not spectral._below(gram[None], bound * 0)


def test_lanczos_estimates_order_and_degenerate_matrices():
    """Estimates within 1 % of λ_max from below on a generic batch; zero and rank-one matrices give finite values."""
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(6, 2, 50, 80, generator=gen, dtype=torch.complex64)
    gram = s @ s.mH
    top = torch.linalg.eigvalsh(gram)[..., -1].double()
    estimate = spectral._lanczos_estimates(gram)
    assert estimate.shape == (6, 2)
    assert (estimate <= top * (1 + 1e-5)).all() and (estimate >= top * 0.99).all()
    v = torch.randn(1, 30, 1, generator=gen, dtype=torch.complex64)
    degenerate = torch.cat([torch.zeros(1, 30, 30, dtype=torch.complex64), v @ v.mH])
    estimate = spectral._lanczos_estimates(degenerate)
    assert estimate[0] == 0 and estimate[1] == pytest.approx((v.abs() ** 2).sum().item(), rel=1e-5)


def _tested_symbol() -> Symbol:
    taps = torch.randn(9, 1, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return Symbol(taps, torch.randint(0, 3, (9, 2), generator=torch.Generator().manual_seed(6)),
                  torch.zeros(9, dtype=torch.long), (6, 6))


def test_cholesky_tests_skip_all_but_the_top_frequencies(always_test, monkeypatch):
    """Not vacuous: on a generic symbol the tests leave one or two of 20 frequencies to float64 values."""
    calls = []
    real = spectral._top_eigenvalues
    monkeypatch.setattr(spectral, "_top_eigenvalues", lambda s, f, d: calls.append(len(f)) or real(s, f, d))
    sym = _tested_symbol()
    assert max_singular_value(sym) == pytest.approx(max(oracle_sigmas(sym).values()), rel=1e-12)
    assert 1 <= sum(calls) <= 2


@pytest.mark.parametrize("order", ["reversed", "chunks of one"])
def test_a_wrong_lanczos_order_or_small_chunks_only_cost_time(always_test, monkeypatch, order):
    """Frequencies met in increasing order of σ (estimates reversed), or one per chunk: every test fails until the
    top, each failure is computed in float64, and the result is still the exact max."""
    if order == "reversed":
        real = spectral._lanczos_estimates
        monkeypatch.setattr(spectral, "_lanczos_estimates", lambda g: -real(g))
    else:
        monkeypatch.setattr(spectral, "CHUNK_ENTRIES", 1)
    sym = _tested_symbol()
    assert max_singular_value(sym) == pytest.approx(max(oracle_sigmas(sym).values()), rel=1e-12)


def test_wide_windows_skip_the_cholesky_tests(always_test, monkeypatch):
    """Enclosures wider than MAX_WINDOW: every frequency goes to float64 directly (same value)."""
    monkeypatch.setattr(spectral, "MAX_WINDOW", 0.0)
    calls = []
    real = spectral._top_eigenvalues
    monkeypatch.setattr(spectral, "_top_eigenvalues", lambda s, f, d: calls.append(len(f)) or real(s, f, d))
    sym = _tested_symbol()
    assert max_singular_value(sym) == pytest.approx(max(oracle_sigmas(sym).values()), rel=1e-12)
    assert calls == [len(frequencies((6, 6)))]


def test_zero_symbol():
    sym = Symbol(torch.zeros(2, 1, 3, 3, dtype=torch.float64), torch.tensor([[0], [1]]),
                 torch.zeros(2, dtype=torch.long), (5,))
    assert max_singular_value(sym) == 0.0 and gram_iteration_norm(sym) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    sym = Symbol(torch.randn(9, 2, 64, 48, dtype=torch.float64), torch.randint(0, 3, (9, 2)),
                 torch.arange(9) % 2, (7, 6))
    assert max_singular_value(sym, "cuda") == pytest.approx(max_singular_value(sym, "cpu"), rel=1e-12)
    assert gram_iteration_norm(sym, "cuda") == pytest.approx(gram_iteration_norm(sym, "cpu"), rel=1e-9)


@pytest.mark.parametrize("best, e_s, e_g", [
    (0.5607265672711663, 9.65464886361917e-07, 0.3144132005210145),  # e_G ≈ (τ − e_S)²: b is tiny
    (1.9516999923802572, 3.580493746949883e-07, 3.8091314626472625),
    (1.2570302837260854, 2.8183784439970384e-07, 1.580124425646993),
    (3.0, 1e-6, 1e-5), (1.0, 0.0, 0.0), (2.0 ** 300, 2.0 ** 250, 2.0 ** 590)])
def test_the_skip_bound_is_rounded_down(best, e_s, e_g):
    """b = (τ − e_S)² − e_G as computed never exceeds its exact rational value, also when e_G ≈ (τ − e_S)² (there
    a relative margin taken on the difference, as before, was 1e-17 too large: 3.33e-16 for 3.17e-16)."""
    b = spectral._skip_bound(best, e_s, torch.tensor([e_g], dtype=torch.float64))
    assert Fraction(b.item()) <= (Fraction(best) - Fraction(e_s)) ** 2 - Fraction(e_g)
