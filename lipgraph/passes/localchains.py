"""Sequential chains with per-neuron slopes (docs/local.md §4): the local counterpart of :mod:`.seqlip`.

In a region analysis each activation carries the slope range [α_j, β_j] of every neuron over the region
(``Transfer.neuron_slopes``). For a chain W_K φ_{K−1} ⋯ φ_0 W_0 small enough to materialise:

- ``cp-local``: Combettes–Pesquet with diagonal slopes. Write φ_i = M_i + R_i N_i with M_i = diag((α+β)/2),
  R_i = diag((β−α)/2) and N_i diagonal with entries in [−1, 1] (so ‖N_i v‖_p ≤ ‖v‖_p). Expanding the last
  activation first, L_k = ‖W_k M_{k−1} W_{k−1} ⋯ M_0 W_0‖ + Σ_{j=1}^{k} ‖W_k M_{k−1} ⋯ M_j W_j R_{j−1}‖ · L_{j−1}.
  When every neuron is stable (R = 0) this is ‖W_K M ⋯ M W_0‖, the exact local constant.
- every other chain estimator asked for (``<name>-local``) on the *reduced* chain: neurons with slope range
  {0} are removed, the others scaled by c_j = max(|α_j|, |β_j|) into the preceding matrix (σ_j = c_j t_j),
  leaving one slope interval per layer, [min α_j/c_j, max β_j/c_j] ⊆ [−1, 1]; the sup over that box of
  ‖W diag(t) ⋯‖ contains every local Jacobian, so any certified estimator stays certified.
- ``vertices-local``: when at most ``VERTEX_LIMIT`` neurons are unstable (α_j < β_j), the exact
  max over σ_j ∈ {α_j, β_j} of ‖W_K diag(σ) ⋯ diag(σ) W_0‖: the norm of a map affine in each σ_j separately is
  convex in each, so its max over the slope box sits at a vertex — the exact sup of the local Jacobian bound.
The smallest certified value becomes a shortcut for AutoLip, as in :mod:`.seqlip`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import fx

from ..bound import Bound, Kind, certified
from ..estimators import CHAIN_ESTIMATORS, DenseChain
from ..ir import LipGraph
from ..linalg import dense_is_cheap, materialize, matrix_norm
from .autolip import add_shortcut
from .chains import SeqChain, sequential_chains
from .fuse import linear_part
from .seqlip import GRAPH_ESTIMATORS, ChainResult, _timed, run_gain

Slopes = tuple[torch.Tensor, torch.Tensor]


def tighten_local_chains(lg: LipGraph, norm: float, estimators: Sequence[str]) -> None:
    """Per-neuron chain bounds on every chain whose activations carry neuron slopes; shortcuts where tighter."""
    for chain in sequential_chains(lg):
        if not any(n.meta["lip.transfer"].neuron_slopes is not None for acts in chain.activations for n in acts):
            continue
        parts = [linear_part(lg, list(run), norm) for run in chain.runs]
        result = chain.last.meta.get("lip.seqlip") or ChainResult(chain, _product(chain))
        chain.last.meta["lip.seqlip"] = result
        if not all(p is not None and dense_is_cheap(*p.size) for p in parts):
            result.notes.append("local: layers too large to materialise, per-neuron slopes used as their maximum")
            continue
        weights = [materialize(p.fn, p.in_shape) for p in parts]
        slopes = [group_slopes(acts, w.shape[0]) for acts, w in zip(chain.activations, weights)]
        _timed(result, "cp-local", lambda: local_cp(weights, slopes, norm))
        if sum(int((b > a).sum()) for a, b in slopes) <= VERTEX_LIMIT:
            _timed(result, "vertices-local", lambda: vertex_bound(weights, slopes, norm))
        if norm == 2:
            reduced = reduce_chain(weights, slopes)
            for name in estimators:
                if name in GRAPH_ESTIMATORS or name == "cp":
                    continue
                why = CHAIN_ESTIMATORS[name].applies(reduced)
                if why is None:
                    _timed(result, f"{name}-local", lambda: CHAIN_ESTIMATORS[name].fn(reduced))
                else:
                    result.notes.append(f"{name}-local: {why}")
        if result.best.value < result.product.value * (1 - 1e-9):
            add_shortcut(chain.last, chain.first, result.best, result.winner)


#: most unstable neurons for the exact vertex enumeration (2^n products)
VERTEX_LIMIT = 10


def vertex_bound(weights: Sequence[torch.Tensor], slopes: Sequence[Slopes], p: float) -> Bound:
    """max over the vertices of the per-neuron slope box of ‖W_K D_{K−1} W_{K−1} ⋯ D_0 W_0‖ (module docstring)."""
    unstable = [(i, j) for i, (a, b) in enumerate(slopes) for j in torch.nonzero(b > a).flatten().tolist()]
    best = 0.0
    for bits in range(1 << len(unstable)):
        diag = [a.clone() for a, _ in slopes]
        for k, (i, j) in enumerate(unstable):
            if bits >> k & 1:
                diag[i][j] = slopes[i][1][j]
        product = weights[0]
        for d, w in zip(diag, weights[1:]):
            product = w @ (d[:, None] * product)
        best = max(best, matrix_norm(product, p).value)
    return certified(best, "exact over the slope vertices (per-neuron local slopes)")


def _product(chain: SeqChain) -> Bound:
    gains = [run_gain(run) for run in chain.runs]
    slopes = [max(abs(lo), abs(hi)) for lo, hi in chain.slopes]
    return Bound(math.prod(g.value for g in gains) * math.prod(slopes), Kind.CERTIFIED, "autolip")


def group_slopes(acts: Sequence[fx.Node], width: int) -> Slopes:
    """Per-neuron slope intervals of consecutive elementwise activations (interval products), flattened."""
    lo, hi = torch.ones(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64)
    for n in acts:
        t = n.meta["lip.transfer"]
        a, b = t.neuron_slopes if t.neuron_slopes is not None else (torch.tensor(t.slope[0]), torch.tensor(t.slope[1]))
        a = a.to(torch.float64).reshape(-1).broadcast_to(width)
        b = b.to(torch.float64).reshape(-1).broadcast_to(width)
        ends = torch.stack([lo * a, lo * b, hi * a, hi * b])
        lo, hi = ends.min(0).values, ends.max(0).values
    return lo, hi


def local_cp(weights: Sequence[torch.Tensor], slopes: Sequence[Slopes], p: float) -> Bound:
    """The diagonal-slope CP recursion of the module docstring, with exact certified norms of each product."""
    mids = [(a + b) / 2 for a, b in slopes]
    rads = [(b - a) / 2 for a, b in slopes]
    L: list[float] = []
    for k in range(len(weights)):
        head = weights[k]  # W_k M_{k−1} W_{k−1} ⋯ M_j W_j, built for j = k, k−1, …, 0
        terms = []
        for j in range(k, -1, -1):
            if j < k:
                head = (head * mids[j][None, :]) @ weights[j]
            if j >= 1 and bool((rads[j - 1] > 0).any()):
                terms.append(matrix_norm(head * rads[j - 1][None, :], p).value * L[j - 1])
        L.append(matrix_norm(head, p).value + math.fsum(terms))
    return certified(L[-1], "cp-liplt (per-neuron local slopes)")


def reduce_chain(weights: Sequence[torch.Tensor], slopes: Sequence[Slopes]) -> DenseChain:
    """Drop neurons of slope {0}, fold c_j = max(|α_j|, |β_j|) into the matrix before (module docstring)."""
    ws = [w.clone() for w in weights]
    layer_slopes = []
    for i, (a, b) in enumerate(slopes):
        c = torch.maximum(a.abs(), b.abs())
        keep = c > 0
        if not bool(keep.any()):  # a dead layer: the chain is constant; keep one neuron of slope 0
            keep[0] = True
            c = torch.ones_like(c)
            a, b = torch.zeros_like(a), torch.zeros_like(b)
        ws[i] = ws[i][keep] * c[keep][:, None]
        ws[i + 1] = ws[i + 1][:, keep]
        layer_slopes.append((float((a[keep] / c[keep]).min()), float((b[keep] / c[keep]).max())))
    return DenseChain.of(ws, layer_slopes)
