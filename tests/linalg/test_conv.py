"""conv_norm against the exact norm of the Jacobian of the corresponding torch.nn module."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from lipgraph.linalg import conv_norm
from lipgraph.linalg import conv as conv_module
from lipgraph.linalg import spectral

INF = math.inf
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")


@dataclass(frozen=True)
class Case:
    cin: int
    cout: int
    k: int | tuple[int, ...]
    n: tuple[int, ...]
    kw: dict = field(default_factory=dict)  # nn.Conv*/ConvTranspose* keyword arguments
    transposed: bool = False
    fft_slack: float = 1.3  # allowed looseness of the fft bound on these tiny sizes

    def module(self, seed: int = 0) -> nn.Module:
        d = len(self.n)
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) if self.transposed else (
            nn.Conv1d, nn.Conv2d, nn.Conv3d)
        m = cls[d - 1](self.cin, self.cout, self.k, bias=False, **self.kw).double()
        with torch.no_grad():
            m.weight.copy_(torch.randn(m.weight.shape, generator=torch.Generator().manual_seed(seed)))
        return m

    def norm(self, m: nn.Module, p: float, strategy: str):
        kw = dict(self.kw)
        return conv_norm(m.weight, self.n, transposed=self.transposed, p=p, strategy=strategy, **kw)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.cin, *self.n)




def copying(max_copies: int) -> float:
    """fft slack for reflect/replicate: 1.3 times the padding map's norm √(max copies of one pixel)."""
    return 1.3 * math.sqrt(max_copies)


CASES = {
    "1d-k3-p1": Case(2, 3, 3, (8,), dict(padding=1)),
    "1d-k4-same": Case(2, 2, 4, (7,), dict(padding="same")),
    "1d-s2-p1": Case(2, 3, 3, (9,), dict(stride=2, padding=1)),
    "1d-s3-p2-d2": Case(2, 2, 3, (11,), dict(stride=3, padding=2, dilation=2)),
    "1d-valid-d2": Case(1, 2, 3, (9,), dict(padding="valid", dilation=2)),
    "1d-p2-k5": Case(2, 1, 5, (6,), dict(padding=2)),
    "1d-reflect-p2": Case(2, 2, 5, (7,), dict(padding=2, padding_mode="reflect"), fft_slack=copying(2)),
    "1d-replicate-s2": Case(2, 2, 3, (8,), dict(stride=2, padding=2, padding_mode="replicate"),
                            fft_slack=copying(3)),
    "1d-circular-p1": Case(2, 3, 3, (6,), dict(padding=1, padding_mode="circular")),
    "1d-circular-s2-odd": Case(2, 2, 3, (7,), dict(stride=2, padding=1, padding_mode="circular")),
    "1d-circular-same-k5": Case(1, 2, 5, (4,), dict(padding="same", padding_mode="circular")),
    "1d-circular-p2-repeat": Case(2, 2, 3, (5,), dict(padding=2, padding_mode="circular"), fft_slack=1.5),
    "1d-T-s2-op1": Case(3, 2, 3, (5,), dict(stride=2, padding=1, output_padding=1), transposed=True),
    "1d-T-s3-p1-op2": Case(2, 2, 4, (4,), dict(stride=3, padding=1, output_padding=2), transposed=True),
    "1d-T-op-ge-stride": Case(2, 2, 3, (4,), dict(stride=2, dilation=3, output_padding=2), transposed=True),
    "2d-k3-p1": Case(3, 4, 3, (5, 6), dict(padding=1)),
    "2d-s2-p1-g2": Case(4, 4, 3, (6, 6), dict(stride=2, padding=1, groups=2)),
    "2d-depthwise-s2": Case(3, 3, 3, (6, 5), dict(stride=2, padding=1, groups=3)),
    "2d-depthwise-mult2": Case(2, 4, 3, (5, 5), dict(padding=1, groups=2)),
    "2d-same-d2": Case(2, 2, 3, (9, 8), dict(padding="same", dilation=2)),
    "2d-tuples": Case(2, 3, (2, 3), (9, 8), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    "2d-s3-p0": Case(2, 2, 3, (7, 8), dict(stride=3)),
    "2d-reflect-p1": Case(2, 3, 3, (5, 5), dict(padding=1, padding_mode="reflect"), fft_slack=copying(4)),
    "2d-replicate-p2-s2": Case(2, 2, 3, (6, 5), dict(stride=2, padding=2, padding_mode="replicate"),
                               fft_slack=copying(9)),
    "2d-circular-p1-s2": Case(2, 3, 3, (6, 4), dict(stride=2, padding=1, padding_mode="circular")),
    "2d-circular-g2": Case(4, 2, 3, (4, 5), dict(padding=1, groups=2, padding_mode="circular")),
    "2d-T-s2-p1-op1-g2": Case(4, 2, 3, (3, 4), dict(stride=2, padding=1, output_padding=1, groups=2),
                              transposed=True),
    "2d-T-d2": Case(2, 3, 3, (8, 7), dict(dilation=2, padding=1), transposed=True),
    "3d-k3-p1-s2": Case(2, 2, 3, (6, 6, 5), dict(stride=2, padding=1)),
    "3d-same-depthwise": Case(2, 2, 3, (6, 5, 6), dict(padding="same", groups=2)),
    "3d-reflect-p1": Case(1, 2, 3, (3, 3, 4), dict(padding=1, padding_mode="reflect"), fft_slack=copying(8)),
    "3d-circular": Case(2, 2, 3, (3, 4, 4), dict(padding=1, padding_mode="circular")),
    "3d-T-s2-op1": Case(2, 2, 2, (3, 2, 3), dict(stride=2, output_padding=1), transposed=True),
}
P_VALUES = [1, 2, INF]


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    c = CASES[request.param]
    return c, c.module()


@pytest.mark.parametrize("p", P_VALUES)
def test_dense_is_exact(oracle, case, p):
    c, m = case
    b = c.norm(m, p, "dense")
    assert b.method == {1: "dense-abs-col-sum", 2: "dense-svd", INF: "dense-abs-row-sum"}[
        p if not c.transposed else {1: INF, 2: 2, INF: 1}[p]]
    oracle.assert_exact(b, oracle.norm(m, c.in_shape, p))


def test_fft_is_certified_and_tight(oracle, case):
    c, m = case
    b = c.norm(m, 2, "fft")
    ref = oracle.norm(m, c.in_shape, 2)
    assert b.method == "fft-circular"
    if b.exact:
        oracle.assert_exact(b, ref)
    else:
        oracle.assert_upper(b, ref, c.fft_slack)


@pytest.mark.parametrize("p", [1, INF])
def test_abs_sum(oracle, case, p):
    c, m = case
    b = c.norm(m, p, "abs-sum")
    ref = oracle.norm(m, c.in_shape, p)
    assert b.method == "abs-sum" and b.exact == (c.kw.get("padding_mode", "zeros") == "zeros")
    if b.exact:
        oracle.assert_exact(b, ref)
    else:
        oracle.assert_upper(b, ref, 2.0 ** len(c.n))


@pytest.mark.parametrize("p", P_VALUES)
def test_auto_is_exact_on_small_inputs(oracle, case, p):
    c, m = case
    oracle.assert_exact(c.norm(m, p, "auto"), oracle.norm(m, c.in_shape, p))


@pytest.mark.parametrize("name, exact", [
    ("1d-circular-p1", True), ("2d-circular-p1-s2", True), ("3d-circular", True),
    ("1d-circular-p2-repeat", False), ("1d-circular-s2-odd", False),
])
def test_circular_fft_exactness(name, exact):
    c = CASES[name]
    m = c.module()
    assert c.norm(m, 2, "fft").exact is exact
    assert c.norm(m, 2, "auto").method == ("fft-circular" if exact else "dense-svd")


# --- the zero-padding pitfall (docs/mathematics.md §3) ----------------------------------------------------------------
LAPLACE = torch.tensor([[[-1.0, 2.0, -1.0]]], dtype=torch.float64)


def test_same_size_circular_grid_is_not_a_bound(oracle):
    m = nn.Conv1d(1, 1, 3, padding=1, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(LAPLACE)
    exact = oracle.norm(m, (1, 5), 2)
    assert exact == pytest.approx(2 + math.sqrt(3), rel=1e-12)  # 3.732
    same_size = conv_module._circular_norm(LAPLACE.reshape(1, 1, 1, 3), (1,), (5,), (1,))
    assert same_size == pytest.approx((5 + math.sqrt(5)) / 2, rel=1e-12)  # 3.618 < 3.732
    assert same_size < exact
    b = conv_norm(LAPLACE, (5,), padding=1, strategy="fft")
    enlarged = conv_module._circular_norm(LAPLACE.reshape(1, 1, 1, 3), (1,), (7,), (1,))  # N = 5 + min(2, 2)
    assert b.value == pytest.approx(enlarged, rel=2e-6) and exact <= b.value <= 1.03 * exact


def test_same_size_grid_would_be_caught(oracle, monkeypatch):
    """Mutation check: with the enlargement removed the suite's property fails on the doc's counterexample."""
    real = conv_module._round_up
    monkeypatch.setattr(conv_module, "_round_up", lambda x, m: real(x - 2, m))  # drops min(2p, K-1) = 2
    b = conv_norm(LAPLACE, (5,), padding=1, strategy="fft")
    assert b.value < 2 + math.sqrt(3)


# --- property test ----------------------------------------------------------------------------------------------
@st.composite
def conv_cases(draw):
    d = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 4)) for _ in range(d))
    n = tuple(draw(st.integers(2, 7)) for _ in range(d))
    transposed = draw(st.booleans())
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    kw = dict(stride=stride, dilation=dilation, groups=groups)
    if transposed:
        kw.update(padding=draw(st.integers(0, 2)), output_padding=draw(st.integers(0, max(stride, dilation) - 1)))
    else:
        kw.update(padding_mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
                  padding=draw(st.sampled_from([0, 1, 2, "same", "valid"])))
    return Case(cin, cout, k, n, kw, transposed), draw(st.integers(0, 2**16))


def _module_or_reject(c, seed: int):
    """The case's module, or a hypothesis rejection for a configuration torch itself rejects."""
    try:
        m = c.module(seed)
        m(torch.zeros(1, *c.in_shape, dtype=torch.float64))
    except (RuntimeError, ValueError):
        assume(False)
    return m


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv_cases())
def test_certified_at_least_exact(oracle, drawn):
    c, seed = drawn
    m = _module_or_reject(c, seed)
    for p, strategy in [(2, "fft"), (1, "abs-sum"), (INF, "abs-sum")]:
        b = c.norm(m, p, strategy)
        ref = oracle.norm(m, c.in_shape, p)
        assert b.value >= ref * (1 - 1e-9) - 1e-12, (c, p, b, ref)
        if b.exact:
            oracle.assert_exact(b, ref)


# --- argument checking ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(p=3),
    dict(p=1, strategy="fft"),
    dict(p=2, strategy="abs-sum"),
    dict(strategy="svd"),
    dict(padding="same", stride=2),
    dict(padding="full"),
    dict(padding_mode="mirror"),
    dict(transposed=True, padding_mode="reflect"),
    dict(stride=(1, 2, 3)),
])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        conv_norm(torch.ones(2, 2, 3, 3), (6, 6), **kwargs)


def test_rejects_wrong_in_spatial():
    with pytest.raises(ValueError):
        conv_norm(torch.ones(2, 2, 3, 3), (6,))


# --- fast paths: float32 screening, Gram iteration, pointwise kernels ------------------------------------------
@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv_cases())
def test_screened_and_gram_are_certified(oracle, monkeypatch, drawn):
    """The 250 random configurations again, with the float32 screening forced on every size and with Gram
    iteration: both stay ≥ the exact norm; the screened value equals the float64 one."""
    monkeypatch.setattr(spectral, "SCREEN_MIN_DIM", 1)
    monkeypatch.setattr(spectral, "MAX_WINDOW", math.inf)
    c, seed = drawn
    m = _module_or_reject(c, seed)
    ref = oracle.norm(m, c.in_shape, 2)
    screened, gram = c.norm(m, 2, "fft"), c.norm(m, 2, "gram")
    assert screened.value >= ref * (1 - 1e-9) - 1e-12, (c, screened, ref)
    assert gram.value >= ref * (1 - 1e-9) - 1e-12 and gram.method == "fft-gram" and not gram.exact, (c, gram, ref)
    monkeypatch.setattr(spectral, "SCREEN_MIN_DIM", 10**9)  # the same operator in float64 only
    assert screened.value == pytest.approx(c.norm(m, 2, "fft").value, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("cin, cout, n, kw", [
    (24, 24, (4, 4), dict(padding=1)),
    (32, 24, (5, 4), dict(padding=1, stride=2)),
    (24, 40, (6, 6), dict(padding=2, dilation=2)),
    (48, 48, (4, 3), dict(padding=1, groups=2)),
    (30, 26, (12,), dict(padding=2)),
])
def test_screening_at_real_channel_counts(oracle, cin, cout, n, kw):
    """Channel counts where the screening runs by default (≥ SCREEN_MIN_DIM), against the dense Jacobian."""
    c = Case(cin, cout, 3, n, kw)
    m = c.module()
    oracle.assert_upper(c.norm(m, 2, "fft"), oracle.norm(m, c.in_shape, 2), 1.3)


@st.composite
def pointwise_cases(draw):
    d = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    n = tuple(draw(st.integers(1, 5 if d < 3 else 3)) for _ in range(d))
    transposed = draw(st.booleans())
    stride = draw(st.integers(1, 3))
    kw = dict(stride=stride, groups=groups, padding=draw(st.integers(0, 2)))
    if transposed:
        kw["output_padding"] = draw(st.integers(0, stride - 1))
    return Case(cin, cout, 1, n, kw, transposed), draw(st.integers(0, 2**16))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(pointwise_cases())
def test_pointwise_is_exact(oracle, drawn):
    c, seed = drawn
    m = _module_or_reject(c, seed)
    b = c.norm(m, 2, "pointwise")
    assert b.method == "pointwise-svd"
    oracle.assert_exact(b, oracle.norm(m, c.in_shape, 2))


def test_auto_uses_pointwise_when_dense_is_not_cheap(oracle, monkeypatch):
    c = Case(4, 6, 1, (5, 6), dict(stride=2, padding=1))
    m = c.module()
    monkeypatch.setattr(conv_module, "dense_is_cheap", lambda *sizes: False)
    b = c.norm(m, 2, "auto")
    assert b.method == "pointwise-svd"
    oracle.assert_exact(b, oracle.norm(m, c.in_shape, 2))


def test_pointwise_rejects_other_kernels():
    with pytest.raises(ValueError):
        conv_norm(torch.ones(2, 2, 3, 3), (6, 6), strategy="pointwise")
    with pytest.raises(ValueError):
        conv_norm(torch.ones(2, 2, 1, 1), (6, 6), padding=1, padding_mode="reflect", strategy="pointwise")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", ["fft", "gram", "pointwise", "auto"])
def test_cuda_matches_cpu(strategy):
    from lipgraph.linalg.device import on_device

    w = torch.randn(64, 64, 1 if strategy == "pointwise" else 3, 1 if strategy == "pointwise" else 3)
    cpu = conv_norm(w, (14, 14), padding=0 if strategy == "pointwise" else 1, strategy=strategy)
    with on_device("cuda"):
        gpu = conv_norm(w, (14, 14), padding=0 if strategy == "pointwise" else 1, strategy=strategy)
    assert gpu.value == pytest.approx(cpu.value, rel=1e-6)
