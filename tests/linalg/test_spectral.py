"""lipgraph.linalg.spectral against an independent numpy evaluation of the symbol in complex128.

The oracle builds S(ω) = Σ_t A_t e^{−2πi⟨ω, u_t⟩/M} with numpy over the *full* frequency grid and takes numpy's
SVD: it shares no code with the module (not its frequency half-grid, its chunks, its float32 screening or its
recheck order).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipgraph.linalg import spectral
from lipgraph.linalg.spectral import Symbol, frequencies, gram_iteration_norm, max_singular_value


def oracle_sigmas(sym: Symbol) -> dict[tuple[int, ...], float]:
    """max over groups of σ_max(S(ω)) for every ω of the full grid, by numpy."""
    taps = sym.taps.numpy()
    T, g, co, ci = taps.shape
    P = sym.n_phases
    out = {}
    for omega in itertools.product(*(range(m) for m in sym.modulus)):
        S = np.zeros((g, co, ci * P), dtype=np.complex128)
        for t in range(T):
            angle = sum(o * int(u) / m for o, u, m in zip(omega, sym.offsets[t], sym.modulus))
            p = int(sym.phase[t])
            S[:, :, p * ci:(p + 1) * ci] += taps[t] * np.exp(-2j * np.pi * angle)
        out[omega] = max(np.linalg.norm(S[i], 2) for i in range(g))
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


def test_frequencies_hold_one_of_each_conjugate_pair():
    for modulus in [(1,), (2,), (7,), (4, 1), (3, 4), (5, 6), (2, 3, 4), (4, 4, 2)]:
        freqs = {tuple(f) for f in frequencies(modulus).tolist()}
        full = set(itertools.product(*(range(m) for m in modulus)))
        negated = {tuple((-o) % m for o, m in zip(f, modulus)) for f in freqs}
        assert freqs | negated == full, modulus
        assert all(tuple((-o) % m for o, m in zip(f, modulus)) not in freqs or
                   tuple((-o) % m for o, m in zip(f, modulus)) == f for f in freqs), modulus  # no pair twice
        assert len(freqs) == (len(full) + sum(f == tuple((-o) % m for o, m in zip(f, modulus)) for f in full)) // 2


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


@settings(max_examples=220, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(symbols())
def test_max_singular_value_is_the_exact_max(always_screen, sym):
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
