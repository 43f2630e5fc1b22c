"""Whole residual blocks (docs/residual.md): y = P x + branch(x) bounded jointly, used by AutoLip where tighter.

A block is an ``add`` of two tensors computed from one tensor x: a sequential chain (:mod:`.chains`) starting at x
and ending at the add, and either x itself (identity shortcut) or an affine run from x (a projection shortcut,
e.g. 1×1 conv + BN). A post-add activation (BasicBlock's ``relu(x + branch)``) stays outside: AutoLip multiplies
by its slope. The joint estimators (:data:`lipgraph.estimators.residual.RESIDUAL_ESTIMATORS`) run on the block's
explicit float64 matrices when they are small enough, else (conv → activation → conv branches, BatchNorm folded)
the frequency-domain LipSDP of :mod:`lipgraph.estimators.residual_conv`; the smallest certified value becomes a shortcut
``L(add) ≤ joint · L(x)`` (:func:`.autolip.add_shortcut`), compared by AutoLip with ``‖P‖-path + L(branch)``.
Writes ``residual`` (a :class:`ResidualResult`) in the add node's record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from torch import fx

from ..bound import Bound, Kind
from ..estimators import DenseChain, budget
from ..errors import InputError
from ..estimators.dcp import Conv2dSpec
from ..estimators.residual import RESIDUAL_ESTIMATORS, ResidualBlock
from ..estimators.residual_conv import ConvResidualBlock, residual_fft
from ..ir import LipGraph
from ..linalg import dense_is_cheap, materialize
from ..estimators.residual_pair import ConvNet, Layer, composed_bound, joint_bound
from .autolip import add_shortcut
from .chains import SeqChain, is_activation
from .fuse import affine_runs, linear_part
from .seqlip import ChainResult
from ..record import record

#: largest LipSDP side (n_0 + hidden widths) of a block bounded with dense matrices
MAX_DENSE_LMI = 1200
#: chain estimators whose request also runs the joint LipSDP of the block (an interior-point solve)
SDP_TRIGGERS = ("lipsdp-neuron", "lipsdp-layer", "eclipse")


@dataclass
class ResidualResult:
    """The joint bounds of one block; ``separate`` is ‖P‖ + L(branch) with the chain's best certified value."""

    chain: ChainResult
    shortcut: tuple[fx.Node, ...]  # the affine run of a projection shortcut; () for the identity
    separate: float
    results: dict[str, Bound] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    #: the block as a small conv network (frequency domain), when it is one; and the joint bound of the previous
    #: block, the activation after it and this block (``pair``, from ``pair_first``'s input; docs/residual.md)
    net: ConvNet | None = None
    pair: Bound | None = None
    pair_first: fx.Node | None = None

    @property
    def best(self) -> Bound | None:
        certified = [b for b in self.results.values() if b.kind is Kind.CERTIFIED]
        return min(certified, key=lambda b: b.value, default=None)


def residual_blocks(lg: LipGraph) -> list[tuple[fx.Node, ChainResult, tuple[fx.Node, ...]]]:
    """(add node, chain result of its branch, shortcut run) for every residual add whose branch is a chain that
    :func:`.seqlip.tighten_chains` bounded."""
    results = {n: record(n).chain for n in lg.ops() if record(n).chain is not None}
    return [(node, results[chain.last], run)
            for node, chain, run in residual_adds(lg, {n: r.chain for n, r in results.items()})]


def residual_adds(lg: LipGraph, chains: Mapping[fx.Node, SeqChain]
                  ) -> list[tuple[fx.Node, SeqChain, tuple[fx.Node, ...]]]:
    """(add node, branch, shortcut run) for every ``add`` of a chain of ``chains`` (by its last op) that only the
    add reads, and either the chain's input x (shortcut ``()``) or an affine run from x."""
    run_ending = {run[-1]: tuple(run) for run in affine_runs(lg)}
    blocks = []
    for node in lg.ops():
        if record(node).key != "add" or len(record(node).inputs) != 2:
            continue
        for branch_end, other in (record(node).inputs, record(node).inputs[::-1]):
            chain = chains.get(branch_end)
            if chain is None or list(lg.graph.successors(branch_end)) != [node]:
                continue
            x = record(chain.first).inputs[0]
            if other is x:
                blocks.append((node, chain, ()))
                break
            run = run_ending.get(other)
            if run is not None and record(run[0]).inputs[0] is x:
                blocks.append((node, chain, run))
                break
    return blocks


def tighten_residuals(lg: LipGraph, norm: float, estimators: Sequence[str]) -> list[ResidualResult]:
    """Bound every residual block jointly (ℓ2) and record a shortcut where it beats the separate bound."""
    if norm != 2:
        return []
    out = []
    for node, chain, shortcut in residual_blocks(lg):
        result = bound_block(lg, chain, shortcut, estimators)
        record(node).residual = result
        best = result.best
        if best is not None and best.value < result.separate * (1 - 1e-9):
            add_shortcut(node, chain.chain.first, best, "residual")
        out.append((node, result))
    _tighten_pairs(lg, out)
    return [result for _, result in out]


def _tighten_pairs(lg: LipGraph, blocks: list[tuple[fx.Node, ResidualResult]]) -> None:
    """Consecutive blocks A → φ → B (φ an activation whose only input is A's add and whose users are B's) bounded
    jointly (:func:`~lipgraph.estimators.residual_pair.composed_bound`); a shortcut ``L(B) ≤ pair · L(x_A)`` where
    that beats the product of the two blocks' own bounds and φ's slope."""
    by_input = {record(result.chain.chain.first).inputs[0]: (node, result) for node, result in blocks}
    for add_a, a in blocks:
        users = list(lg.graph.successors(add_a))
        post = users[0] if len(users) == 1 else None
        if post is None or post not in by_input or not is_activation(post) or a.net is None:
            continue
        add_b, b = by_input[post]
        transfer = record(post).transfer
        allowed = {b.chain.chain.first, add_b, *b.shortcut[:1]}
        if b.net is None or transfer.neuron_slopes is not None or not set(lg.graph.successors(post)) <= allowed:
            continue
        _timed(b, "residual-pair", lambda: composed_bound([a.net, b.net], [transfer.slope]))
        pair = b.results.pop("residual-pair", None)
        slope = max(abs(v) for v in transfer.slope)
        separate = _block_value(a) * slope * _block_value(b)
        if pair is not None and pair.kind is Kind.CERTIFIED and pair.value < separate * (1 - 1e-9):
            b.pair, b.pair_first = pair, a.chain.chain.first
            add_shortcut(add_b, a.chain.chain.first, pair, "residual-pair")


def _block_value(result: ResidualResult) -> float:
    best = result.best
    return result.separate if best is None else min(best.value, result.separate)


def bound_block(lg: LipGraph, chain: ChainResult, shortcut: tuple[fx.Node, ...],
                estimators: Sequence[str]) -> ResidualResult:
    """The joint estimators on one block's dense matrices (a note says why when they cannot run)."""
    shortcut_gain = _shortcut_gain(shortcut)
    result = ResidualResult(chain, shortcut, shortcut_gain + chain.best.value)
    block = _dense_block(lg, chain, shortcut, result)
    result.net = _conv_net(chain, shortcut)
    if block is None:
        conv = _conv_block(chain, shortcut, result)
        if conv is not None:
            _timed(result, "residual-fft", lambda: residual_fft(conv))
        elif result.net is not None:
            _timed(result, "residual-joint", lambda: joint_bound(result.net))
        return result
    wanted = [name for name in RESIDUAL_ESTIMATORS
              if name != "residual-lipsdp" or any(e in estimators for e in SDP_TRIGGERS)]
    for name in wanted:
        estimator, applies = RESIDUAL_ESTIMATORS[name]
        why = applies(block)
        if why is not None:
            result.notes.append(f"{name}: {why}")
            continue
        _timed(result, name, lambda: estimator(block))
    return result


def _timed(result: ResidualResult, name: str, compute) -> None:
    """Run one block estimator unless the time budget skips it; it may be stopped at the budget's deadline
    (:mod:`lipgraph.estimators.budget`)."""
    previous = min([result.separate] + [b.value for b in result.results.values() if b.kind is Kind.CERTIFIED])
    outcome = budget.timed(name, compute, previous)
    result.notes += outcome.notes
    if outcome.finished:
        result.results[name] = outcome.bound
        result.seconds[name] = outcome.seconds


def _conv_block(chain: ChainResult, shortcut: tuple[fx.Node, ...], result: ResidualResult) -> ConvResidualBlock | None:
    """The block as convolutions (BN folded) for the frequency-domain bound, or None (with a note)."""
    from .seqlip import _dcp_layer

    layers = [_dcp_layer(run) for run in chain.chain.runs]
    projection = _dcp_layer(shortcut) if shortcut else None
    shape = record(record(chain.chain.first).inputs[0]).info.shape
    if (len(layers) != 2 or not all(isinstance(c, Conv2dSpec) for c in layers) or len(shape) != 4
            or (shortcut and not isinstance(projection, Conv2dSpec))):
        result.notes.append("residual-fft: only conv → activation → conv branches (BN folded) with an identity "
                            "or convolutional shortcut")
        return None
    try:
        return ConvResidualBlock(layers[0], layers[1], chain.chain.slopes[0], tuple(shape[1:]), projection)
    except InputError as err:
        result.notes.append(f"residual-fft: {err}")
        return None


def _conv_net(chain: ChainResult, shortcut: tuple[fx.Node, ...]) -> ConvNet | None:
    """The block as a :class:`~lipgraph.estimators.residual_pair.ConvNet` (any number of 2-D convolutions, BN
    folded, groups expanded), or None when a layer is not one."""
    from .seqlip import _dcp_layer

    layers = [_dcp_layer(run) for run in chain.chain.runs]
    projection = _dcp_layer(shortcut) if shortcut else None
    shape = record(record(chain.chain.first).inputs[0]).info.shape
    if (len(shape) != 4 or not all(isinstance(c, Conv2dSpec) for c in layers)
            or (shortcut and not isinstance(projection, Conv2dSpec))):
        return None
    net = ConvNet(tuple(shape[1:]), tuple(Layer(((k, conv),), slope) for k, (conv, slope)
                                          in enumerate(zip(layers, chain.chain.slopes))),
                  ((0, projection), (len(layers) - 1, layers[-1])))
    try:
        net.shapes_and_strides()
    except InputError:
        return None
    return net


def _shortcut_gain(shortcut: tuple[fx.Node, ...]) -> float:
    """Certified gain of the shortcut path as AutoLip sees it (1 for the identity; the fused run's bound)."""
    from .seqlip import run_gain

    return run_gain(shortcut).value if shortcut else 1.0


def _dense_block(lg: LipGraph, chain: ChainResult, shortcut: tuple[fx.Node, ...],
                 result: ResidualResult) -> ResidualBlock | None:
    """The block's explicit float64 matrices, or None (with a note) when they are too large or not replayable."""
    runs = [list(run) for run in chain.chain.runs] + ([list(shortcut)] if shortcut else [])
    parts = [linear_part(lg, run) for run in runs]
    if any(p is None for p in parts):
        result.notes.append("residual: a layer cannot be replayed per sample")
        return None
    widths = [parts[0].size[0]] + [p.size[1] for p in parts[:len(chain.chain.runs)]]
    if not all(dense_is_cheap(*p.size) for p in parts) or sum(widths[:-1]) > MAX_DENSE_LMI:
        result.notes.append(f"residual: block too large for dense matrices (LipSDP side {sum(widths[:-1])}, "
                            f"limit {MAX_DENSE_LMI})")
        return None
    mats = [materialize(p.fn, p.in_shape) for p in parts]
    branch = DenseChain.of(mats[:len(chain.chain.runs)], chain.chain.slopes)
    return ResidualBlock(branch, mats[-1] if shortcut else None)
