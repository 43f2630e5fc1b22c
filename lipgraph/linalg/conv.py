"""Certified ℓp operator norms of 1-D/2-D/3-D convolutions at their real input size (docs/mathematics.md §3).

Every strategy works on the *direct* convolution x ↦ conv(pad(x), w) (cross-correlation, torch layout). A
ConvTranspose with weight w is the adjoint of the convolution with the same weight, stride, dilation and groups,
taken at the transpose's output size with padding (p, p − output_padding) per dimension (a negative right pad
crops input columns that the transpose never writes); ‖Aᵀ‖₂ = ‖A‖₂ and ‖Aᵀ‖₁ = ‖A‖∞.

Strategies:
- ``dense`` (any p): materialise the exact operator with torch's own ``F.pad``/``F.conv*``; exact.
- ``fft`` (p = 2): norm of a circular convolution that contains the operator as a submatrix, times the norm of
  the padding or row-repetition map (Sedghi, Gupta & Long, ICLR 2019, for the circular norm); see
  :func:`_fft_norm`. Certified. ``gram``: the same with Gram iteration per frequency (an upper bound of the
  circular norm, matrix products only).
- ``pointwise`` (p = 2): 1×…×1 kernels with zero padding: max over groups of σ_max of the channel matrix; exact,
  and its cost does not depend on the spatial size (:func:`_pointwise_norm`).
- ``abs-sum`` (p = 1, inf): exact row/column sums of the entrywise |operator|; see :func:`_abs_sum_norm`.
- ``auto``: p = 2: fft when it is exact (circular padding without repeated rows), else dense when
  :func:`dense_is_cheap`, else pointwise when it applies, else fft.
  p = 1, inf: abs-sum for zero padding (exact), else dense when cheap, else abs-sum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F

from lipgraph.bound import FLOAT_MARGIN, Bound, Kind, certified
from lipgraph.cache import RECHECK_STEPS, memoised, tensor_digest
from lipgraph.linalg.attained import attained_norm, attained_steps, working_copy
from lipgraph.linalg.dense import LinearMap, batched_spectral_norm, dense_is_cheap, dense_norm
from lipgraph.linalg.nonneg import col_sum_max, row_sum_max
from lipgraph.linalg.device import norm_device
from lipgraph.linalg.lazy import LazyBound
from lipgraph.linalg.parallel import one_thread
from lipgraph.linalg.spectral import Symbol, gram_iteration_norm, max_singular_value

IntOrTuple = int | tuple[int, ...]
Strategy = Literal["auto", "dense", "fft", "gram", "pointwise", "abs-sum"]
STRATEGIES = ("auto", "dense", "fft", "gram", "pointwise", "abs-sum")

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PAD_MODES = ("zeros", "reflect", "replicate", "circular")
_DUAL = {1: math.inf, 2: 2, math.inf: 1}
#: Power steps of :func:`lazy_conv_norm`'s cheap attained value.
BELOW_STEPS = 6


@dataclass(frozen=True)
class _Geometry:
    """A direct convolution x ↦ conv(pad(x), w) in per-dimension form (pads are (left, right); < 0 crops)."""

    n: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    mode: str
    groups: int

    @property
    def span(self) -> tuple[int, ...]:
        """Effective (dilated) kernel extent K = d·(k − 1) + 1 per dimension."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def out(self) -> tuple[int, ...]:
        sizes = zip(self.n, self.pads, self.span, self.stride)
        return tuple((n + l + r - K) // s + 1 for n, (l, r), K, s in sizes)

    @property
    def pointwise(self) -> bool:
        """A 1×…×1 kernel with zero padding: each output pixel reads at most one input pixel."""
        return self.mode == "zeros" and all(k == 1 for k in self.kernel)

    def linear_map(self, weight: torch.Tensor) -> LinearMap:
        """The operator with this geometry and ``weight`` (c_out, c_in/groups, *k), batched on (B, c_in, *n)."""
        flat = [v for pair in reversed(self.pads) for v in pair]
        mode = "constant" if self.mode == "zeros" else self.mode
        conv = _CONV[len(self.n)]
        return lambda x: conv(
            F.pad(x, flat, mode=mode), weight, stride=self.stride, dilation=self.dilation, groups=self.groups
        )


def conv_norm(
    weight: torch.Tensor,
    in_spatial: tuple[int, ...],
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    transposed: bool = False,
    output_padding: IntOrTuple = 0,
    p: float = 2,
    strategy: Strategy = "auto",
) -> Bound:
    """Certified ℓp → ℓp norm (p ∈ {1, 2, inf}) of a convolution or ConvTranspose on inputs of spatial size
    ``in_spatial``. Arguments follow ``torch.nn.Conv{1,2,3}d`` / ``ConvTranspose{1,2,3}d``; the bias is
    irrelevant. See the module docstring for the strategies. Runs on the analysis' device
    (:func:`lipgraph.linalg.device.norm_device`); identical calls within an analysis, and across runs with the
    disk cache, are computed once (:mod:`lipgraph.cache`).
    """
    if p not in _DUAL:
        raise ValueError(f"p must be 1, 2 or inf, got {p!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    geo = _geometry(
        weight, in_spatial, stride, padding, dilation, groups, padding_mode, transposed, output_padding
    )
    key = ("conv_norm", tensor_digest(weight), geo, transposed, p, strategy, norm_device().type)
    q = _DUAL[p] if transposed else p

    def check() -> float:
        w = working_copy(weight)
        return attained_norm(geo.linear_map(w), (w.shape[1] * geo.groups, *geo.n), q, steps=RECHECK_STEPS,
                             dtype=w.dtype, device=w.device)

    return memoised(key, lambda: _conv_norm(weight.detach().to("cpu", torch.float64), geo, q, strategy), check)


def lazy_conv_norm(weight: torch.Tensor, in_spatial: tuple[int, ...], **options) -> Bound:
    """:func:`conv_norm`, for p = 2 computed on first read (:class:`lipgraph.linalg.lazy.LazyBound`): a conv
    fused with the BatchNorm after it is bounded by the fused operator, and its own norm only shown. Its ``below``
    gives, step by step, the largest ratio ‖Cx‖/‖x‖ of up to ``BELOW_STEPS`` power steps (float32, less 1e-4 for
    rounding, each on one torch thread): ≤ ‖C‖, and so ≤ the certified value. The weight is copied now: a norm read
    later is that of the weights analysed, even if the caller changed them since (a training step, an in-place
    edit)."""
    if options.get("p", 2) != 2:
        return conv_norm(weight, in_spatial, **options)
    weight = weight.detach().clone()
    geo = _geometry(weight, in_spatial, options.get("stride", 1), options.get("padding", 0),
                    options.get("dilation", 1), options.get("groups", 1), options.get("padding_mode", "zeros"),
                    options.get("transposed", False), options.get("output_padding", 0))

    def below() -> Iterator[float]:  # read outside the pool, by fusion's comparison: one thread, as the norms
        w = weight.detach().to("cpu", torch.float32)
        steps = attained_steps(geo.linear_map(w), (w.shape[1] * geo.groups, *geo.n), 2, steps=BELOW_STEPS,
                               dtype=torch.float32)
        while True:
            with one_thread():  # per step: a generator must not hold the thread setting while suspended
                value = next(steps, None)
            if value is None:
                return
            yield value * (1 - 1e-4)

    def compute() -> Bound:
        with one_thread():
            return conv_norm(weight, in_spatial, **options)

    return LazyBound(compute, Kind.CERTIFIED, below)


def _conv_norm(w: torch.Tensor, geo: _Geometry, q: float, strategy: str) -> Bound:
    """:func:`conv_norm` of the direct convolution ``geo`` with float64 weight ``w`` in the ℓq norm."""
    in_shape = (w.shape[1] * geo.groups, *geo.n)
    if strategy == "auto":
        cheap = dense_is_cheap(math.prod(in_shape), w.shape[0] * math.prod(geo.out))
        if q == 2 and (geo.mode == "circular" or not cheap):
            if not cheap and geo.pointwise:
                return _pointwise_norm(w, geo)
            b = _fft_norm(w, geo)
            if b.exact or not cheap:
                return b
        strategy = "dense" if cheap and (q == 2 or geo.mode != "zeros") else "abs-sum"
    if strategy == "dense":
        return dense_norm(geo.linear_map(w), in_shape, q)
    if strategy in ("fft", "gram") and q == 2:
        return _fft_norm(w, geo, gram=strategy == "gram")
    if strategy == "pointwise" and q == 2 and geo.pointwise:
        return _pointwise_norm(w, geo)
    if strategy == "abs-sum" and q != 2:
        return _abs_sum_norm(w, geo, in_shape, q)
    raise ValueError(f"strategy {strategy!r} does not compute the p={q} norm of this convolution (fft: p=2; "
                     "pointwise: p=2, 1×1 kernels with zero padding; abs-sum: p=1/inf)")


def _tuple(value: IntOrTuple, d: int, name: str) -> tuple[int, ...]:
    out = (value,) * d if isinstance(value, int) else tuple(value)
    if len(out) != d:
        raise ValueError(f"{name}={value!r} does not match a {d}-D convolution")
    return out


def _geometry(
    weight: torch.Tensor,
    in_spatial: tuple[int, ...],
    stride: IntOrTuple,
    padding: IntOrTuple | str,
    dilation: IntOrTuple,
    groups: int,
    mode: str,
    transposed: bool,
    output_padding: IntOrTuple,
) -> _Geometry:
    d = weight.ndim - 2
    if d not in _CONV:
        raise ValueError(f"conv weight must have 3, 4 or 5 dims, got shape {tuple(weight.shape)}")
    if mode not in _PAD_MODES:
        raise ValueError(f"padding_mode must be one of {_PAD_MODES}, got {mode!r}")
    n, k = _tuple(tuple(in_spatial), d, "in_spatial"), tuple(weight.shape[2:])
    s, dil = _tuple(stride, d, "stride"), _tuple(dilation, d, "dilation")
    if transposed:
        if mode != "zeros" or isinstance(padding, str):
            raise ValueError("ConvTranspose supports only zero padding given as int or tuple")
        pad, op = _tuple(padding, d, "padding"), _tuple(output_padding, d, "output_padding")
        # the transpose's output size = the input size of the convolution it is the adjoint of
        sizes = zip(n, s, pad, dil, k, op)
        n = tuple((ni - 1) * si - 2 * pi + di * (ki - 1) + oi + 1 for ni, si, pi, di, ki, oi in sizes)
        pads = tuple((pi, pi - oi) for pi, oi in zip(pad, op))
    elif padding == "valid":
        pads = ((0, 0),) * d
    elif padding == "same":
        if any(si != 1 for si in s):
            raise ValueError("padding='same' requires stride 1")
        pads = tuple((di * (ki - 1) // 2, di * (ki - 1) - di * (ki - 1) // 2) for di, ki in zip(dil, k))
    elif isinstance(padding, str):
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    else:
        pads = tuple((pi, pi) for pi in _tuple(padding, d, "padding"))
    geo = _Geometry(n, k, s, dil, pads, mode, groups)
    if min(n) < 1 or min(geo.out) < 1:
        raise ValueError(f"convolution has an empty input or output at input size {tuple(in_spatial)}")
    return geo


def _abs_sum_norm(w: torch.Tensor, geo: _Geometry, in_shape: tuple[int, ...], q: float) -> Bound:
    """ℓ∞ (q = inf) or ℓ1 (q = 1) bound: the exact norm of the nonnegative operator A₊ = C_|w| ∘ P.

    A = C_w ∘ P with P the padding map (0/1, one 1 per row) and C_w the valid strided convolution, each of whose
    entries is a single tap. Hence |A| ≤ |C_w| P = C_|w| P entrywise, and ‖A‖_q ≤ ‖A₊‖_q = max row sum (one
    forward pass on 1) or max column sum (one vjp). With zero padding P is an embedding and no two taps of one
    output meet the same input, so |A| = A₊ and the bound is exact. It never exceeds the kernel abs-sum bound
    (ℓ∞: max_o Σ|w_o|; ℓ1: max_c Σ|w_{·c}| times the max number of copies of a pixel made by P) and accounts for
    stride (it only drops terms) and border effects.
    """
    a_plus = geo.linear_map(w.abs())
    b = row_sum_max(a_plus, in_shape) if q == math.inf else col_sum_max(a_plus, in_shape)
    return certified(b.value, "abs-sum", exact=geo.mode == "zeros")


def _fft_norm(w: torch.Tensor, geo: _Geometry, gram: bool = False) -> Bound:
    """Certified ℓ2 bound from a circular convolution (per dimension, all arguments are tensor products).

    - zeros: the zero-padded strided operator is a submatrix of the stride-s circular convolution on any grid
      N ≥ n + min(l + r, K − 1) with s | N: if l + r ≤ K − 1 it is the valid convolution of the embedded padded
      signal (length n + l + r ≤ N, no wrap-around); otherwise every nonzero row is a row of the full linear
      convolution, which for N ≥ n + K − 1 coincides with the (shifted) circular one without aliasing.
      The circular norm at N = n is *not* a bound (kernel [−1, 2, −1], n = 5, padding 1: 3.732 > 3.618).
    - reflect / replicate: A = C ∘ P with C the valid convolution on length n + l + r (bounded as above) and P the
      padding map, a 0/1 matrix with one 1 per row, so PᵀP = diag(copies of each pixel) and
      ‖P‖₂ = √(max copies), a product over dimensions; the copies are counted on torch's own ``F.pad``.
    - circular: A = R ∘ C_n ∘ shift with C_n the stride-s' circular convolution on the input grid itself
      (s' = s when s | n, else 1 with the stride folded into R) and R a row selection whose rows may repeat:
      ‖R‖₂ = √(max repetitions). Exact when R is a permutation.
    The circular norm is the exact float64 max over frequencies (method ``fft-circular``, on any device), or
    (``gram=True``) the Gram iteration bound within ``GRAM_TOLERANCE`` of it (``fft-gram``). The float result
    carries the margin ``FLOAT_MARGIN``.
    """
    grid, strides, copies, exact = [], [], 1, geo.mode == "circular"
    for n, (l, r), K, s, out in zip(geo.n, geo.pads, geo.span, geo.stride, geo.out):
        if geo.mode == "zeros":
            n, r = n + min(r, 0), max(r, 0)  # a crop (r < 0, ConvTranspose) only removes zero columns
            grid.append(_round_up(n + min(l + r, K - 1), s))
            strides.append(s)
        elif geo.mode == "circular":
            s_used = s if n % s == 0 else 1
            rows = torch.bincount((s * torch.arange(out) - l) % n // s_used)
            copies *= int(rows.max())
            exact = exact and s_used == s and out * s == n and int(rows.max()) == 1
            grid.append(n)
            strides.append(s_used)
        else:
            grid.append(_round_up(n + l + r, s))
            strides.append(s)
            copies *= _max_copies(n, l, r, geo.mode)
    g = geo.groups
    symbol = _circular_symbol(w.reshape(g, w.shape[0] // g, *w.shape[1:]), geo.dilation, tuple(grid), tuple(strides))
    device = norm_device()
    if gram:
        value = gram_iteration_norm(symbol, device) * math.sqrt(copies)
        return certified(value, "fft-gram", margin=FLOAT_MARGIN)
    value = max_singular_value(symbol, device) * math.sqrt(copies)
    return certified(value, "fft-circular", exact=exact, margin=FLOAT_MARGIN)


def _pointwise_norm(w: torch.Tensor, geo: _Geometry) -> Bound:
    """Exact ℓ2 norm of a 1×…×1 convolution with zero padding (any stride, groups): output pixel i reads the one
    padded position s·i, distinct outputs read distinct pixels, so ‖Ax‖² = Σ_{pixels j read} ‖W_g x_j‖² ≤
    max_g σ_max(W_g)² ‖x‖², with equality for x on one read pixel along a top singular vector. The norm is
    max_g σ_max(W_g) when some output reads a real input pixel, else 0 (:func:`lipgraph.linalg.matrix_norm`).
    """
    if not all(_reads_input(n, l, r, s, out) for n, (l, r), s, out in zip(geo.n, geo.pads, geo.stride, geo.out)):
        return certified(0.0, "pointwise-svd", exact=True)
    mats = w.reshape(geo.groups, w.shape[0] // geo.groups, -1)
    return certified(batched_spectral_norm(mats), "pointwise-svd", exact=True, margin=FLOAT_MARGIN)


def _reads_input(n: int, left: int, right: int, s: int, out: int) -> bool:
    """Does an output index i < out read a real input pixel, i.e. left ≤ s·i < left + n + min(right, 0)?"""
    first = -(-left // s)  # the smallest i with s·i ≥ left
    return first < out and s * first < left + n + min(right, 0)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _max_copies(n: int, left: int, right: int, mode: str) -> int:
    """Max number of positions of a 1-D signal padded by torch's ``F.pad(mode)`` that copy one input pixel."""
    index = F.pad(torch.arange(n, dtype=torch.float64).view(1, 1, n), (left, right), mode=mode)
    return int(torch.bincount(index.flatten().long()).max())


def _circular_norm(
    w: torch.Tensor,
    dilation: tuple[int, ...],
    grid: tuple[int, ...],
    stride: tuple[int, ...],
    device: torch.device | str | None = None,
) -> float:
    """Exact ℓ2 norm of the grouped strided circular cross-correlation y_i = Σ_t w_t x_{(s·i + d·t) mod N}
    (:func:`_circular_symbol`), by :func:`lipgraph.linalg.spectral.max_singular_value`."""
    return max_singular_value(_circular_symbol(w, dilation, grid, stride), device)


def _circular_symbol(
    w: torch.Tensor, dilation: tuple[int, ...], grid: tuple[int, ...], stride: tuple[int, ...]
) -> Symbol:
    """The symbol of the circular cross-correlation y_i = Σ_t w_t x_{(s·i + d·t) mod N}; its ℓ2 norm is the max over
    groups and frequencies of σ_max of the symbol.

    ``w`` is (groups, c_out/g, c_in/g, *k); s divides N per dimension. Polyphase: writing d·t = s·u + r with
    0 ≤ r < s and x⁽ʳ⁾_m = x_{s·m + r} turns it into a stride-1 circular cross-correlation on M = N/s with one
    input-channel block per phase r; the DFT block-diagonalises that, so the norm is the max over groups and
    frequencies ω of σ_max(Ŵ(ω)), Ŵ(ω) = Σ_u W_u e^{−2πi ω·u/M} (c_out/g × (c_in/g)·#phases).
    """
    g, co, ci, *k = w.shape
    d = len(k)
    s = torch.tensor(stride)
    taps = torch.meshgrid(*[torch.arange(kk) * dd for kk, dd in zip(k, dilation)], indexing="ij")
    pos = torch.stack(taps, -1).reshape(-1, d)  # (T, d) tap offsets, C order like w's flattened kernel
    phase = (pos % s * torch.tensor([math.prod(stride[i + 1:]) for i in range(d)])).sum(-1)
    _, phase_index = phase.unique(return_inverse=True)
    return Symbol(taps=w.reshape(g, co, ci, -1).permute(3, 0, 1, 2).to(torch.float64), offsets=pos // s,
                  phase=phase_index, modulus=tuple(N // st for N, st in zip(grid, stride)))
