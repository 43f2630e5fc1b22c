"""Tighten every sequential chain of the graph (docs/mathematics.md §5–§7) and hand the result to AutoLip.

For each chain W_K ∘ φ ∘ ⋯ ∘ φ ∘ W_1 (:mod:`lipgraph.passes.chains`) the pass computes:

- ``autolip``: the product of the runs' certified gains (fused where tighter) and the activations' slopes;
- for each estimator asked for that takes a conv chain (:data:`lipgraph.estimators.ESTIMATORS`, ``input="conv"``:
  DCP), the chain's :class:`~lipgraph.estimators.dcp.ConvChain` when it is one;
- when every run is small enough to materialise (``DENSE_LIMIT``), its exact float64 matrix, and every dense
  estimator asked for (``cp``, ``seqlip``, ``seqlip-greedy``, and the SDP family when installed) on that
  :class:`DenseChain`;
- otherwise ``cp`` with the certified norm of each partial product W_k⋯W_j where fusion can bound it (folded
  structure or a dense operator) and the product of the runs' gains where not (still certified, never worse
  than AutoLip), and the greedy SeqLip *estimate* on top-k singular vectors (randomised SVD of each run).

The smallest certified value wins and becomes a shortcut for AutoLip (``L(last) ≤ best · L(chain input)``), so
residual blocks use it inside ``1 + L(branch)``. Writes ``chain`` (a :class:`ChainResult`) in the record of the chain's
last node. Estimates are reported beside, never used for the bound.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

from torch import fx

from ..bound import Bound, Kind, certified, exact
from ..estimators import ESTIMATORS, ChainEstimator, DenseChain, EstimatorCatalogue, budget
from ..estimators.cp import cp_value
from ..estimators.seqlip import Factors, greedy_bound
from ..ir import LipGraph
from ..ruleapi import Conv, Matrix
from ..linalg import dense_is_cheap, materialize
from ..linalg.lowrank import top_singular
from .autolip import add_shortcut, combine
from .chains import SeqChain, sequential_chains
from .fuse import LinearPart, folded_structure, fused_bound, linear_part
from ..record import record

#: Singular triplets per run for the truncated greedy estimate of chains too large to materialise.
TOP_K = 32


@dataclass
class ChainResult:
    """Everything computed for one chain; ``best`` is the smallest certified value (``winner`` names it)."""

    chain: SeqChain
    product: Bound
    results: dict[str, Bound] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Bound:
        return min(self.certified().values(), key=lambda b: b.value)

    @property
    def winner(self) -> str:
        return min(self.certified().items(), key=lambda item: item[1].value)[0]

    def certified(self) -> dict[str, Bound]:
        return {"autolip": self.product, **{k: b for k, b in self.results.items() if b.kind is Kind.CERTIFIED}}


#: The former list of estimators that are not dense-chain estimators (now ``ESTIMATORS.of_input("conv")``).
GRAPH_ESTIMATORS = tuple(ESTIMATORS.of_input("conv"))


def tighten_chains(lg: LipGraph, norm: float, estimators: Sequence[str], top_k: int = TOP_K,
                   catalogue: EstimatorCatalogue = ESTIMATORS) -> list[ChainResult]:
    """Run ``estimators`` (names in ``catalogue``) on every chain of ``lg`` and record shortcuts where they beat
    AutoLip."""
    unknown = [e for e in estimators if e not in catalogue]
    if unknown:
        raise ValueError(f"unknown chain estimators {unknown}; available: {sorted(catalogue)}")
    results = []
    for chain in sequential_chains(lg):
        result = bound_chain(lg, chain, norm, estimators, top_k, catalogue)
        record(chain.last).chain = result
        if result.best.value < result.product.value * (1 - 1e-9):
            add_shortcut(chain.last, chain.first, result.best, result.winner)
        for name, bound in result.results.items():
            if bound.kind is Kind.ESTIMATE:  # used only by network_estimate, never for the bound
                add_shortcut(chain.last, chain.first, bound, name)
        results.append(result)
    return results


def bound_chain(lg: LipGraph, chain: SeqChain, norm: float, estimators: Sequence[str],
                top_k: int = TOP_K, catalogue: EstimatorCatalogue = ESTIMATORS) -> ChainResult:
    """All requested bounds of one chain (see the module docstring)."""
    gains = [run_gain(run) for run in chain.runs]
    product = _product(gains + [exact(max(abs(lo), abs(hi)), "slope") for lo, hi in chain.slopes])
    result = ChainResult(chain, Bound(product.value, product.kind, "autolip"))
    parts = [linear_part(lg, list(run), norm) for run in chain.runs]
    if all(p is not None and dense_is_cheap(*p.size) for p in parts):
        _dense_estimators(result, parts, norm, [catalogue[e] for e in estimators if catalogue[e].input == "dense"])
    else:
        result.notes.append("layers too large to materialise: chain estimators other than cp and the "
                            "truncated greedy SeqLip are skipped")
        if "cp" in estimators:
            _timed(result, "cp", lambda: _cp_structured(lg, chain, gains, norm))
        if "seqlip-greedy" in estimators and norm == 2 and all(p is not None for p in parts):
            _timed(result, "seqlip-greedy", lambda: greedy_bound([_top(p, top_k) for p in parts],
                                                                 list(chain.slopes)))
    conv = [e for e in estimators if catalogue[e].input == "conv"]  # after the dense ones: the cheap bounds first
    if conv:
        _conv_estimators(result, chain, norm, [catalogue[e] for e in conv])
    return result


def run_gain(run: Sequence[fx.Node]) -> Bound:
    """Certified gain of an affine run: its fused bound when fusion recorded one, else the product."""
    fused = record(run[-1]).fused
    product = _product([record(n).transfer.gains[0] for n in run])
    if fused is not None and fused.first is run[0] and fused.bound.value < product.value:
        return fused.bound
    return product


def _conv_estimators(result: ChainResult, chain: SeqChain, norm: float, estimators: list[ChainEstimator]) -> None:
    """Estimators of conv chains (DCP) on the chain as a :class:`ConvChain` of 2-D zero-padded convolutions (BN
    folded in) and linear layers, when it is one."""
    from ..estimators.dcp import ConvChain

    layers = [_dcp_layer(run) for run in chain.runs]
    conv = None
    if all(layer is not None for layer in layers):
        info = record(record(chain.runs[0][0]).inputs[0]).info
        shape = tuple(info.shape[1:]) if len(info.shape) == 4 else (math.prod(info.shape[1:]), 1, 1)
        conv = ConvChain(tuple(layers), chain.slopes, shape)
    for est in estimators:
        why = ("ℓ2 only" if not est.supports(norm) else
               "only chains of 2-D zero-padded convolutions (BatchNorm folded in) and linear layers" if conv is None
               else est.applies(conv))
        if why is not None:
            result.notes.append(f"{est.name}: {why}")
            continue
        _timed(result, est.name, lambda: est.run(conv, norm))


def _dcp_layer(run: Sequence[fx.Node]):
    """The DCP layer spec of an affine run: a folded 2-D convolution, or a matrix (after an optional flatten)."""
    from ..estimators.dcp import Conv2dSpec, LinearSpec

    nodes = [n for n in run if record(n).key not in ("flatten", "reshape")] if record(run[-1]).key == "linear" \
        else list(run)
    while len(nodes) > 1 and record(nodes[-1]).key == "flatten":  # conv → flatten: the same vector (C·H·W)
        nodes.pop()
    structure = folded_structure(nodes)
    if isinstance(structure, Matrix):
        return LinearSpec(structure.weight)
    if not isinstance(structure, Conv):
        return None
    weight, options = structure.weight, structure.options
    pad = options.get("padding", 0)
    if (weight.ndim != 4 or options.get("transposed") or options.get("padding_mode", "zeros") != "zeros"
            or isinstance(pad, str)):
        return None
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    return Conv2dSpec(weight, pair(options.get("stride", 1)), pair(pad), pair(options.get("dilation", 1)),
                      int(options.get("groups", 1)))


def _product(gains: Sequence[Bound]) -> Bound:
    """Π gains, as AutoLip composes them along a path (kinds joined)."""
    total = exact(1.0)
    for g in gains:
        total = combine([(g, total)], 1)
    return total


def _dense_estimators(result: ChainResult, parts: list[LinearPart], norm: float,
                      estimators: Sequence[ChainEstimator]) -> None:
    start = time.perf_counter()
    chain = DenseChain.of([materialize(p.fn, p.in_shape) for p in parts], result.chain.slopes)
    result.seconds["materialise"] = time.perf_counter() - start
    for est in estimators:
        why = "ℓ2 only" if not est.supports(norm) else est.applies(chain)
        if why is not None:
            result.notes.append(f"{est.name}: {why}")
            continue
        _timed(result, est.name, lambda: est.run(chain, norm))


def _timed(result: ChainResult, name: str, compute) -> None:
    """Run one estimator, record its bound and seconds (a failure becomes a note); under a time budget it may be
    skipped or stopped at the deadline (:mod:`lipgraph.estimators.budget`)."""
    outcome = budget.timed(name, compute, result.best.value)
    result.notes += outcome.notes
    if outcome.finished:
        result.results[name] = outcome.bound
        result.seconds[name] = outcome.seconds


def _cp_structured(lg: LipGraph, chain: SeqChain, gains: list[Bound], norm: float) -> Bound:
    """CP/LipLT with partial-product norms from fusion where it can bound them, else products of run gains."""

    def norm_of(j: int, k: int) -> float:
        product = math.prod(g.value for g in gains[j:k + 1])
        if j == k:
            return product
        fused = fused_bound(lg, [n for run in chain.runs[j:k + 1] for n in run], norm)
        return min(product, fused.value) if fused is not None and fused.kind is Kind.CERTIFIED else product

    return certified(cp_value(norm_of, chain.slopes), "cp-liplt (structured partial products)")


def _top(part: LinearPart, k: int) -> Factors:
    U, S, V = top_singular(part.fn, part.in_shape, k)
    return Factors(U, S, V, truncated=True)
