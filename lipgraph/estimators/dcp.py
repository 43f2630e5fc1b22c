"""DCP — Dynamic Convolutional Partition (Sulehman & Mu, arXiv 2403.18613), certified (docs/mathematics.md §8).

Dense estimators (LipSDP, ECLipsE) on convolutional chains, by cutting the chain into small dense pieces.

**Layer-wise.** A chain of layers 0…K−1 with activations between is cut into consecutive blocks; with L_b a bound
of block b and L(φ) = max(|α|, |β|) for each activation at a cut, L ≤ Π_b L_b · Π_cuts L(φ). A one-layer block
is a linear map: its certified operator norm (:func:`lipgraph.linalg.conv_norm`).

**Spatial.** The output map of a block is tiled into rectangles g_i (all channels). Tile i depends only on its
receptive field P_i x: the crop of the block's input found by walking the tile back through each layer
(rectangle → stride/dilation/kernel window → clipped to the map). The piece x_i ↦ g_i is a small dense chain:
each layer unrolled from its crop to the next one, with the zero padding at the borders exact (positions that fall
in the padding are constants and drop out). With L_i a certified bound of piece i:

    ‖g(x) − g(y)‖² = Σ_i ‖g_i(P_i x) − g_i(P_i y)‖² ≤ Σ_i L_i² ‖P_i δ‖² = δᵀ (Σ_i L_i² P_iᵀP_i) δ
                   ≤ max_p (Σ_{i: p ∈ crop i} L_i²) ‖δ‖²

so L(block) ≤ √(max over input pixels p of Σ_{i ∋ p} L_i²). This is ≤ both forms of the paper: (Σ_i L_i²)^{1/2}
(every pixel in every crop) and max_i L_i · √c (c = the most crops covering one pixel). Conditions: the tiles
cover every output coordinate (a partition gives the first equality; overlapping tiles keep "≤"), each crop holds
the whole receptive field of its tile (so g_i really is a function of P_i x), and the P_i are coordinate
restrictions (P_iᵀP_i diagonal 0/1, hence Σ_i L_i² P_iᵀP_i is the diagonal of the pixel sums).

**Dynamic search.** Every block of consecutive layers is tiled with the coarsest t×t grid whose pieces fit an LMI
of side ``max_piece`` (more tiles: smaller pieces, but more overlap); identical pieces (interior tiles are
translates) are solved once, in a process pool. Blocks are evaluated shortest first until ``seconds`` is spent;
the best cut into evaluated blocks is then found by dynamic programming over the product above. Blocks whose maps
are small (≤ ``WHOLE_MAX`` neurons each; the whole chain first) are also bounded untiled by the cheap certified
chain estimators ECLipsE-Fast and CP, and the smaller value is kept (labelled ``untiled <estimator>``): the tiles'
overlap costs up to √c per block, so on small CNNs the untiled cheap bound often wins, and DCP is then never
looser than ECLipsE-Fast or CP on the whole chain.
"""
from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from lipgraph.bound import Bound, certified
from lipgraph.errors import InputError
from lipgraph.estimators import CHAIN_ESTIMATORS, ChainEstimator, DenseChain, register_estimator
from lipgraph.estimators.budget import BudgetExpired, expired
from lipgraph.estimators.recertify import UNIT_ROUNDOFF
from lipgraph.estimators.lmi import cvxpy_missing, lmi_size
from lipgraph.linalg import conv_norm, materialize, matrix_norm

T = TypeVar("T")
#: rows [r0, r1) and columns [c0, c1) of a feature map
Region = tuple[int, int, int, int]
#: default largest LMI side of one piece (CVXOPT: a few seconds)
MAX_PIECE = 200
#: default time budget (seconds) of the partition search
SECONDS = 60.0
#: time budget (seconds) of the partition search per chain when the chain pass runs DCP (``--method dcp``)
PASS_SECONDS = 20.0


@dataclass(frozen=True)
class Conv2dSpec:
    """A 2-D convolution (cross-correlation, torch layout, zero padding); weight (c_out, c_in/groups, kh, kw)."""

    weight: torch.Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", self.weight.detach().to(torch.float64))

    def out_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, *hw = shape
        if c != self.weight.shape[1] * self.groups:
            raise InputError(f"a conv with {self.weight.shape[1] * self.groups} input channels got {c}")
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
               zip(hw, self.padding, self.dilation, self.weight.shape[2:], self.stride)]
        if min(out) < 1:
            raise InputError(f"conv kernel {tuple(self.weight.shape[2:])} does not fit the map {tuple(hw)}")
        return (self.weight.shape[0], out[0], out[1])

    def window(self, out: Region, shape: tuple[int, int, int]) -> Region:
        """Input rows/columns read by the output region ``out`` (unclipped: may reach into the padding)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.weight.shape[2:], self.stride, self.padding, self.dilation
        r0, r1, c0, c1 = out
        return (r0 * sh - ph, (r1 - 1) * sh - ph + dh * (kh - 1) + 1,
                c0 * sw - pw, (c1 - 1) * sw - pw + dw * (kw - 1) + 1)

    def matrix(self, shape: tuple[int, int, int], crop: Region, out: Region) -> torch.Tensor:
        """The dense map from the input restricted to ``crop`` (⊇ the clipped window of ``out``) to the output
        restricted to ``out``: inputs outside the crop are zero padding (outside the map) or never read."""
        win = self.window(out, shape)
        r0, r1, c0, c1 = crop
        top, left = r0 - win[0], c0 - win[2]
        size = (win[1] - win[0], win[3] - win[2])

        def fn(x: torch.Tensor) -> torch.Tensor:
            local = x.new_zeros(x.shape[0], x.shape[1], *size)
            local[:, :, top:top + r1 - r0, left:left + c1 - c0] = x
            return F.conv2d(local, self.weight, stride=self.stride, dilation=self.dilation, groups=self.groups)

        return materialize(fn, (shape[0], r1 - r0, c1 - c0))

    def norm(self, shape: tuple[int, int, int]) -> Bound:
        return conv_norm(self.weight, shape[1:], stride=self.stride, padding=self.padding, dilation=self.dilation,
                         groups=self.groups)


@dataclass(frozen=True)
class LinearSpec:
    """A dense layer on the flattened map (C·H·W, torch order); its output is the map (n_out, 1, 1)."""

    weight: torch.Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", self.weight.detach().to(torch.float64))

    def out_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if math.prod(shape) != self.weight.shape[1]:
            raise InputError(f"a linear layer with {self.weight.shape[1]} inputs got a map of shape {shape}")
        return (self.weight.shape[0], 1, 1)

    def window(self, out: Region, shape: tuple[int, int, int]) -> Region:
        return (0, shape[1], 0, shape[2])

    def matrix(self, shape: tuple[int, int, int], crop: Region, out: Region) -> torch.Tensor:
        return self.weight

    def norm(self, shape: tuple[int, int, int]) -> Bound:
        return matrix_norm(self.weight, 2)


Layer = Conv2dSpec | LinearSpec


@dataclass(frozen=True)
class ConvChain:
    """layers[0], φ_0, layers[1], …, layers[K−1] on inputs of shape ``input_shape`` = (C, H, W); ``slopes[i]`` is
    the slope interval of the activation after layers[i]. Weights are float64; biases are irrelevant."""

    layers: tuple[Layer, ...]
    slopes: tuple[tuple[float, float], ...]
    input_shape: tuple[int, int, int]
    #: what the estimators of one analysis computed on this chain (:meth:`cached`)
    memo: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.slopes) != len(self.layers) - 1:
            raise InputError(f"{len(self.layers)} layers need {len(self.layers) - 1} slope intervals, "
                             f"got {len(self.slopes)}")
        self.shapes  # validates that the layers chain

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """The map shape entering each layer, then the output shape."""
        shapes = [tuple(self.input_shape)]
        for layer in self.layers:
            shapes.append(layer.out_shape(shapes[-1]))
        return shapes

    def to_dense(self) -> DenseChain:
        """Every layer unrolled on its whole map (for chains small enough: n = C·H·W per layer), once."""
        return self.cached("dense", lambda: _piece(self, 0, len(self.layers), _whole(self.shapes[-1]))[0])

    def cached(self, key: object, compute: Callable[[], T]) -> T:
        """``compute()`` once per chain: the estimators that share it (DCP, lipsdp-conv) share its dense form and
        ECLipsE-Fast's multipliers and bound (minutes each on maps of 4,096)."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @classmethod
    def from_sequential(cls, model: nn.Sequential, input_shape: Sequence[int]) -> "ConvChain":
        """Conv2d / Linear layers alternating with elementwise activations (slopes as in lipgraph's rules;
        LeakyReLU(a): [min(a, 1), max(a, 1)]); Flatten before a Linear is implicit. Input shape without batch:
        (C, H, W), or (n,) for an MLP."""
        from lipgraph.rules.activations import FIXED_SLOPES

        layers: list[Layer] = []
        slopes: list[tuple[float, float]] = []
        for name, module in model.named_children():
            if isinstance(module, nn.Flatten):
                continue
            is_layer = isinstance(module, (nn.Conv2d, nn.Linear))
            if is_layer == (len(layers) > len(slopes)):
                raise InputError(f"{name} ({type(module).__name__}): layers and activations must alternate")
            if isinstance(module, nn.Conv2d):
                if module.padding_mode != "zeros" or isinstance(module.padding, str):
                    raise InputError(f"{name}: only numeric zero padding is supported")
                layers.append(Conv2dSpec(module.weight, module.stride, module.padding, module.dilation,
                                         module.groups))
            elif isinstance(module, nn.Linear):
                layers.append(LinearSpec(module.weight))
            elif isinstance(module, nn.LeakyReLU):
                a = float(module.negative_slope)
                slopes.append((min(a, 1.0), max(a, 1.0)))
            elif type(module).__name__.lower() in FIXED_SLOPES:
                slopes.append(FIXED_SLOPES[type(module).__name__.lower()])
            else:
                raise InputError(f"{name} ({type(module).__name__}) is not a Conv2d, Linear or known activation")
        shape = tuple(input_shape) if len(input_shape) == 3 else (math.prod(input_shape), 1, 1)
        return cls(tuple(layers), tuple(slopes), shape)


def _whole(shape: tuple[int, int, int]) -> Region:
    return (0, shape[1], 0, shape[2])


def _clip(region: Region, shape: tuple[int, int, int]) -> Region:
    r0, r1, c0, c1 = region
    return (max(r0, 0), min(r1, shape[1]), max(c0, 0), min(c1, shape[2]))


def _crops(chain: ConvChain, i: int, j: int, tile: Region) -> list[Region]:
    """Regions of the maps entering layers i…j−1, then the tile (output of layer j−1): receptive fields."""
    shapes, regions = chain.shapes, [tile]
    for k in range(j - 1, i - 1, -1):
        regions.insert(0, _clip(chain.layers[k].window(regions[0], shapes[k]), shapes[k]))
    return regions


def _piece_widths(chain: ConvChain, i: int, j: int, tile: Region) -> list[int]:
    shapes = chain.shapes
    return [shapes[k][0] * (r[1] - r[0]) * (r[3] - r[2]) for k, r in zip(range(i, j + 1), _crops(chain, i, j, tile))]


def _piece(chain: ConvChain, i: int, j: int, tile: Region) -> tuple[DenseChain, Region]:
    """The dense chain of layers i…j−1 restricted to ``tile`` of the output, and its crop of the input."""
    shapes, regions = chain.shapes, _crops(chain, i, j, tile)
    weights = [chain.layers[k].matrix(shapes[k], regions[k - i], regions[k - i + 1]) for k in range(i, j)]
    return DenseChain(tuple(weights), chain.slopes[i:j - 1]), regions[0]


def _tiles(shape: tuple[int, int, int], t: int) -> list[Region]:
    """A t×t grid (capped at the map size) of near-equal rectangles covering the map."""
    rows = [round(k * shape[1] / min(t, shape[1])) for k in range(min(t, shape[1]) + 1)]
    cols = [round(k * shape[2] / min(t, shape[2])) for k in range(min(t, shape[2]) + 1)]
    return [(r0, r1, c0, c1) for r0, r1 in zip(rows, rows[1:]) for c0, c1 in zip(cols, cols[1:])]


def coarsest_tiling(chain: ConvChain, i: int, j: int, max_piece: int) -> int | None:
    """Smallest t whose t×t tiles of block [i, j) all have LMI side ≤ ``max_piece`` (None: not even 1×1)."""
    out = chain.shapes[j]
    for t in range(1, max(out[1], out[2]) + 1):
        if all(lmi_size(_piece_widths(chain, i, j, tile)) <= max_piece for tile in _tiles(out, t)):
            return t
    return None


@dataclass(frozen=True)
class BlockBound:
    """A certified bound of layers [start, stop) and how it was obtained."""

    start: int
    stop: int
    value: float
    tiles: int  # t of the t×t grid (0: one layer, operator norm)
    pieces: int
    distinct: int
    whole: str = ""  # the cheap estimator that bounded the untiled block (then tiles = 1), if it won


def _key(piece: DenseChain) -> bytes:
    digest = hashlib.sha1(repr(piece.slopes).encode())
    for w in piece.weights:
        digest.update(repr(tuple(w.shape)).encode())
        digest.update(w.contiguous().numpy().tobytes())
    return digest.digest()


def _bound_piece(args: tuple[tuple[torch.Tensor, ...], tuple[tuple[float, float], ...], str]) -> float:
    weights, slopes, estimator = args
    return CHAIN_ESTIMATORS[estimator].fn(DenseChain(weights, slopes)).value


def _init_worker() -> None:
    torch.set_num_threads(1)


def spawn_can_start() -> bool:
    """Whether spawned workers can re-create ``__main__``: they import it by name (``python -m``) or run its file.
    A main program read from stdin (``python - <<EOF``) or from a file that is gone has neither; its workers would
    die with FileNotFoundError tracebacks, so the pieces are solved in this process instead."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None):
        return True
    path = getattr(main, "__file__", None)
    return path is None or os.path.isfile(path)


def solve_pieces(pieces: Sequence[DenseChain], estimator: str, workers: int) -> list[float]:
    """Certified bounds of the pieces, in a process pool of ``workers`` (serial when 1, or if the pool fails)."""
    jobs = [(p.weights, p.slopes, estimator) for p in pieces]
    if workers > 1 and len(jobs) > 1 and spawn_can_start():
        try:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_init_worker) as pool:
                return list(pool.map(_bound_piece, jobs))
        except (OSError, BrokenProcessPool, RuntimeError):
            pass  # no pool here (sandbox, frozen interpreter, …): solve in this process
    return [_bound_piece(job) for job in _until_expired(jobs)]


def _until_expired(jobs: Sequence) -> Iterator:
    """``jobs`` one by one; :class:`~.budget.BudgetExpired` once the analysis's budget has expired (some pieces of
    a block bound nothing: DCP then contributes nothing)."""
    for job in jobs:
        if expired():
            raise BudgetExpired
        yield job


def block_bound(chain: ConvChain, i: int, j: int, *, estimator: str, max_piece: int, workers: int) -> BlockBound | None:
    """Certified bound of layers [i, j) by its spatial partition (module docstring); None if no tiling fits."""
    shapes = chain.shapes
    if j - i == 1:
        return BlockBound(i, j, chain.layers[i].norm(shapes[i]).value, 0, 1, 1)
    t = coarsest_tiling(chain, i, j, max_piece)
    if t is None:
        return None
    pieces = [_piece(chain, i, j, tile) for tile in _tiles(shapes[j], t)]
    keys = [_key(dense) for dense, _ in pieces]
    uniques = dict(zip(keys, (dense for dense, _ in pieces)))  # translated interior tiles coincide
    values = dict(zip(uniques, solve_pieces(list(uniques.values()), estimator, workers)))
    sums = torch.zeros(shapes[i][1], shapes[i][2], dtype=torch.float64)
    for key, (_, (r0, r1, c0, c1)) in zip(keys, pieces):
        sums[r0:r1, c0:c1] += values[key] ** 2
    value = math.sqrt(float(sums.max()) * (1 + (len(pieces) + 2) * UNIT_ROUNDOFF)) * (1 + 2 * UNIT_ROUNDOFF)
    return BlockBound(i, j, value, t, len(pieces), len(uniques))


#: blocks whose maps all have at most this many neurons are also bounded untiled by :data:`WHOLE_ESTIMATORS`
WHOLE_MAX = 2048
#: the same for the whole chain (one block; ECLipsE-Fast there uses the block-tridiagonal certificate): the
#: 4-conv 16-channel 16×16 CNN of benchmarks/cnn.py (maps of 4,096) takes minutes on 2 cores
WHOLE_CHAIN_MAX = 4096
#: cheap certified chain estimators run on untiled blocks: DCP is never looser than them where they run
WHOLE_ESTIMATORS = ("eclipse-fast", "cp")


def whole_block_bound(chain: ConvChain, i: int, j: int) -> BlockBound | None:
    """The best of :data:`WHOLE_ESTIMATORS` on layers [i, j) unrolled on their whole maps (no spatial cut, so no
    overlap loss); None above :data:`WHOLE_MAX` neurons per map (:data:`WHOLE_CHAIN_MAX` for the whole chain)."""
    limit = WHOLE_CHAIN_MAX if (i, j) == (0, len(chain.layers)) else WHOLE_MAX
    if max(math.prod(shape) for shape in chain.shapes[i:j + 1]) > limit:
        return None
    if (i, j) == (0, len(chain.layers)):  # shared with lipsdp-conv's fallback: computed once per chain
        from lipgraph.estimators.lipsdp_fo import conv_eclipse_fast

        dense = chain.to_dense()
        bounds = {"eclipse-fast": conv_eclipse_fast(chain), "cp": CHAIN_ESTIMATORS["cp"].fn(dense)}
    else:
        dense = _piece(chain, i, j, _whole(chain.shapes[j]))[0]
        bounds = {n: CHAIN_ESTIMATORS[n].fn(dense) for n in WHOLE_ESTIMATORS}
    name, bound = min(bounds.items(), key=lambda nb: nb[1].value)
    return BlockBound(i, j, bound.value, 1, 1, 1, whole=name)


def _smaller(a: BlockBound | None, b: BlockBound | None) -> BlockBound | None:
    return min((x for x in (a, b) if x is not None), key=lambda x: x.value, default=None)


def _default_estimator() -> str:
    return "eclipse-fast" if cvxpy_missing() else "lipsdp-neuron"


def dcp(chain: ConvChain, *, estimator: str | None = None, max_piece: int = MAX_PIECE, seconds: float = SECONDS,
        workers: int | None = None, max_block: int | None = None) -> Bound:
    """Certified DCP bound of a conv chain (module docstring). ``estimator``: the chain estimator for the pieces
    (default lipsdp-neuron, eclipse-fast without cvxpy); ``max_piece``: largest LMI side of a piece;
    ``seconds``: budget of the search (one-layer blocks are always evaluated); ``workers``: process pool size
    (default: CPU count); ``max_block``: longest block tried (default: the whole chain). Past the analysis's
    deadline (:func:`~.budget.expired`, checked per block and per piece solved here) the search stops: a block
    stopped halfway is dropped (some of its pieces bound nothing), the best cut into the blocks finished so far is
    the bound, as for a finished search, and :class:`~.budget.BudgetExpired` when they do not cut the chain."""
    estimator = estimator or _default_estimator()
    if estimator not in CHAIN_ESTIMATORS:
        raise InputError(f"unknown chain estimator {estimator!r}; known: {', '.join(sorted(CHAIN_ESTIMATORS))}")
    if CHAIN_ESTIMATORS[estimator].input != "dense":
        raise InputError(f"DCP bounds its pieces with a dense chain estimator; {estimator!r} is not one")
    if not CHAIN_ESTIMATORS[estimator].certified:
        raise InputError(f"DCP combines certified piece bounds; {estimator!r} is an estimate")
    workers = workers or os.cpu_count() or 1
    K = len(chain.layers)
    start = time.perf_counter()
    blocks: dict[tuple[int, int], BlockBound] = {}
    if expired():  # started past the deadline (a cheap earlier run lets it start): nothing to materialise
        raise BudgetExpired
    if K > 1 and (max_block or K) >= K:  # the whole chain untiled first: cheap, and often the best single block
        whole = whole_block_bound(chain, 0, K)
        if whole is not None:
            blocks[0, K] = whole
    try:
        for length in range(1, min(K, max_block or K) + 1):
            if length > 1 and time.perf_counter() - start > seconds:
                break
            for i in _until_expired(range(K - length + 1)):
                block = block_bound(chain, i, i + length, estimator=estimator, max_piece=max_piece, workers=workers)
                if length > 1:
                    block = _smaller(block, whole_block_bound(chain, i, i + length))
                block = _smaller(block, blocks.get((i, i + length)))
                if block is not None:
                    blocks[i, i + length] = block
    except BudgetExpired:  # the finished blocks bound the chain when they cut it completely
        bound = _best_cut(chain, blocks, estimator)
        if not math.isfinite(bound.value):
            raise
        return bound
    return _best_cut(chain, blocks, estimator)


def _best_cut(chain: ConvChain, blocks: dict[tuple[int, int], BlockBound], estimator: str) -> Bound:
    """min over cuts into evaluated blocks of Π L_b · Π L(φ at the cuts), by dynamic programming."""
    K = len(chain.layers)
    best: list[tuple[float, list[BlockBound]]] = [(1.0, [])] + [(math.inf, [])] * K
    for j in range(1, K + 1):
        for i in range(j):
            if (i, j) in blocks and best[i][0] < math.inf:
                lo, hi = chain.slopes[i - 1] if i else (1.0, 1.0)
                value = best[i][0] * max(abs(lo), abs(hi)) * blocks[i, j].value
                if value < best[j][0]:
                    best[j] = (value, best[i][1] + [blocks[i, j]])
    value, used = best[K]
    value *= 1 + 2 * (2 * len(used) + 1) * UNIT_ROUNDOFF
    parts = " ".join(f"[{b.start}:{b.stop}]" + (f" untiled {b.whole}" if b.whole else
                                                 f"{b.tiles}x{b.tiles}" if b.tiles else "") for b in used)
    return certified(value, f"dcp ({estimator}; blocks {parts})")


def _applies(chain: object) -> str | None:
    return None if isinstance(chain, ConvChain) else "needs a ConvChain (built by the chain pass from the graph)"


register_estimator(ChainEstimator(
    "dcp", lambda chain: dcp(chain, seconds=PASS_SECONDS), certified=True, applies=_applies, input="conv",
    description="DCP: conv chains cut into small dense pieces (docs/mathematics.md §8)",
    limits="2-D zero-padded convolutions (BatchNorm folded in) and linear layers, any size"))
