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
- ``vertices-local``: the max of ``cp-local`` over σ_j ∈ {α_j, β_j} for the ``VERTEX_LIMIT`` most influential
  unstable neurons (α_j < β_j): the bound is convex in each σ_j separately (the norm of a map affine in σ_j), so
  its max over the slope box sits at a vertex; with every unstable neuron enumerated it is the exact sup over the
  box of ‖W_K diag(σ) ⋯ diag(σ) W_0‖.
The smallest certified value becomes a shortcut for AutoLip, as in :mod:`.seqlip`.
"""
from __future__ import annotations

import hashlib
import math
import threading
from typing import Sequence

import torch
from torch import fx

from ..bound import Bound, Kind, certified
from ..cache import tensor_digest
from ..estimators import ESTIMATORS, DenseChain, EstimatorCatalogue
from ..ir import LipGraph
from ..bound import FLOAT_MARGIN
from ..linalg import dense_is_cheap, materialize
from .autolip import add_shortcut
from .chains import SeqChain, sequential_chains
from .fuse import affine_runs, linear_part, sole_consumer
from .seqlip import ChainResult, _timed, run_gain
from ..record import FusedRun, record

Slopes = tuple[torch.Tensor, torch.Tensor]


def fold_slopes(lg: LipGraph, norm: float) -> None:
    """For every activation with per-neuron slopes fed by an affine run A (alone): ‖diag(c) A‖_p with
    c_j = max(|α_j|, |β_j|) bounds the pair, since |Δy_j| ≤ c_j |(A Δx)_j| and ℓp norms are monotone; recorded
    as a shortcut where tighter than ‖A‖ · max c (exact when the slopes are constant)."""
    ends = {run[-1]: run for run in affine_runs(lg)}
    for node in lg.ops():
        t = record(node).transfer
        run = ends.get(record(node).inputs[0]) if t is not None and t.neuron_slopes is not None else None
        if run is None or sole_consumer(lg, run[-1]) is not node:
            continue
        part = linear_part(lg, list(run), norm)
        if part is None or not dense_is_cheap(*part.size):
            continue
        a, b = t.neuron_slopes
        c = torch.maximum(a.abs(), b.abs()).reshape(-1)
        folded = certified(float(_norms((c[:, None] * materialize(part.fn, part.in_shape))[None], norm)[0]),
                           "local-slope-fold")
        product = math.prod(record(n).transfer.gains[0].value for n in [*run, node])
        if folded.value < product * (1 - 1e-6):  # recorded like a fused affine run (report, formulas)
            record(node).fused = FusedRun(run[0], folded, product)
            add_shortcut(node, run[0], folded, "fusion")


def tighten_local_chains(lg: LipGraph, norm: float, estimators: Sequence[str], target: float | None = None,
                         catalogue: EstimatorCatalogue = ESTIMATORS) -> None:
    """Per-neuron chain bounds on every chain whose activations carry neuron slopes (``estimators``: names in
    ``catalogue``); shortcuts where tighter.

    ``target`` (a decision ``bound < target`` is all the caller needs, e.g. a certified radius test): on a chain
    that is the whole network, ``vertices-local`` is skipped when ``cp-local`` is already below it and stops as
    soon as it exceeds it (every value stays certified; only a useless tightening is saved)."""
    fold_slopes(lg, norm)
    for chain in sequential_chains(lg):
        if not any(record(n).transfer.neuron_slopes is not None for acts in chain.activations for n in acts):
            continue
        parts = [linear_part(lg, list(run), norm) for run in chain.runs]
        result = record(chain.last).chain or ChainResult(chain, _product(chain))
        record(chain.last).chain = result
        if not all(p is not None and dense_is_cheap(*p.size) for p in parts):
            result.notes.append("local: layers too large to materialise, per-neuron slopes used as their maximum")
            continue
        weights = [materialize(p.fn, p.in_shape) for p in parts]
        slopes = [group_slopes(acts, w.shape[0]) for acts, w in zip(chain.activations, weights)]
        _timed(result, "cp-local", lambda: local_cp(weights, slopes, norm))
        stop = target if target is not None and _is_whole(lg, chain) else None
        if any(bool((b > a).any()) for a, b in slopes) and not (stop is not None and result.best.value < stop):
            _timed(result, "vertices-local", lambda: vertex_bound(weights, slopes, norm, stop_above=stop))
            if result.results.get("vertices-local", 0) is None:
                del result.results["vertices-local"]
                result.notes.append("vertices-local: stopped above the target")
        reduced = reduce_chain(weights, slopes)
        for name in estimators:
            est = catalogue[name]
            if est.input != "dense" or name == "cp":  # cp-local above is cp with per-neuron slopes
                continue
            why = "ℓ2 only" if not est.supports(norm) else est.applies(reduced)
            if why is None:
                _timed(result, f"{name}-local", lambda: est.run(reduced, norm))
            else:
                result.notes.append(f"{name}-local: {why}")
        if result.best.value < result.product.value * (1 - 1e-9):
            add_shortcut(chain.last, chain.first, result.best, result.winner)


#: unstable neurons enumerated exactly by :func:`vertex_bound` (2^n CP recursions)
VERTEX_LIMIT = 12
#: vertices evaluated per batch by :func:`vertex_bound` (between batches it may stop early)
VERTEX_BATCH = 256
#: work budget of :func:`vertex_bound` in flops (:func:`_vertex_cost` per vertex): fewer neurons on wide chains
VERTEX_FLOPS = 8e10


def vertex_bound(weights: Sequence[torch.Tensor], slopes: Sequence[Slopes], p: float,
                 limit: int = VERTEX_LIMIT, stop_above: float | None = None) -> Bound | None:
    """max over σ_j ∈ {α_j, β_j} for the ``limit`` most influential unstable neurons (largest (β_j − α_j)·‖column j
    of the next matrix‖) of :func:`local_cp` with those slopes fixed. The bound is multi-convex in the slopes, so
    the max over their box sits at a vertex; with every unstable neuron enumerated this is the exact sup over the
    slope box of ‖W_K D_{K−1} ⋯ D_0 W_0‖. Neurons of slope {0} are dropped first (:func:`drop_dead`); on wide
    chains ``limit`` shrinks to keep 2^limit recursions within ``VERTEX_FLOPS``.

    ``stop_above``: the vertices run in batches of ``VERTEX_BATCH`` (the upper slopes of the less influential
    neurons first) and the search returns None as soon as one exceeds it (the max would too). Results are
    remembered per (chain, slopes) for the process (``_VERTEX_MEMO``): a bisection over radii meets the same
    slope box many times."""
    weights, slopes = drop_dead(weights, slopes)
    limit = min(limit, int(math.log2(max(VERTEX_FLOPS / _vertex_cost(weights), 1.0))))
    key = _digest(p, limit, *weights, *(t for pair in slopes for t in pair))
    with _MEMO_LOCK:
        known, complete, source = _VERTEX_MEMO.get(key, (-math.inf, False, ""))
    if stop_above is not None and known > stop_above:
        return None
    if complete:
        return certified(known, source)
    scored = []
    for i, (a, b) in enumerate(slopes):
        weight = torch.linalg.vector_norm(weights[i + 1], dim=0) * (b - a)
        scored += [(float(weight[j]), i, j) for j in torch.nonzero(b > a).flatten().tolist()]
    chosen = [(i, j) for _, i, j in sorted(scored, reverse=True)[:limit]]
    best = -math.inf
    for first in range(0, 1 << len(chosen), VERTEX_BATCH):
        vertex = torch.arange(first, min(first + VERTEX_BATCH, 1 << len(chosen)))
        batched = [(a.expand(len(vertex), -1).clone(), b.expand(len(vertex), -1).clone()) for a, b in slopes]
        for k, (i, j) in enumerate(chosen):
            lower = (vertex >> k & 1).bool()
            value = torch.where(lower, slopes[i][0][j], slopes[i][1][j])
            batched[i][0][:, j] = batched[i][1][:, j] = value
        best = max(best, float(_cp_values(weights, batched, p).max()))
        if stop_above is not None and best > stop_above:
            _remember(key, max(best, known), False, "")
            return None
    exact = len(chosen) == len(scored)
    source = ("exact over the slope vertices" if exact else
              f"cp-liplt, {len(chosen)} of {len(scored)} unstable neurons enumerated")
    _remember(key, best, True, source)
    return certified(best, source)


def _vertex_cost(weights: Sequence[torch.Tensor]) -> float:
    """Rough flops of one CP recursion: per term (k, j) a Gram matrix of the m_k × n_j head and its eigenvalues."""
    total = 0.0
    for k, w in enumerate(weights):
        for j in range(k + 1):
            m, n = w.shape[0], weights[j].shape[1]
            g = min(m, n)
            total += 2.0 * (m * n * g + 10 * g ** 3)
    return total


#: :func:`vertex_bound` results by digest of its arguments: (value, complete, source) — a value reached before an
#: early stop is a lower bound of the complete one; at most ``MEMO_SIZE`` entries
_VERTEX_MEMO: dict[bytes, tuple[float, bool, str]] = {}
MEMO_SIZE = 256
_MEMO_LOCK = threading.Lock()


def _digest(*parts) -> bytes:
    """One key for the vertex memo: the content digests of the tensors, the repr of the rest."""
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update((tensor_digest(part) if isinstance(part, torch.Tensor) else repr(part)).encode())
    return h.digest()


def _remember(key: bytes, value: float, complete: bool, source: str) -> None:
    with _MEMO_LOCK:  # analyses may run on threads (certify's executor)
        if len(_VERTEX_MEMO) >= MEMO_SIZE:
            _VERTEX_MEMO.pop(next(iter(_VERTEX_MEMO)))
        _VERTEX_MEMO[key] = (value, complete, source)


def _is_whole(lg: LipGraph, chain: SeqChain) -> bool:
    """The chain maps the network's only input to its only output (its bound is the network's)."""
    source = record(chain.first).inputs[0]
    return source.op == "placeholder" and list(record(lg.output).inputs) == [chain.last]


def drop_dead(weights: Sequence[torch.Tensor], slopes: Sequence[Slopes]) -> tuple[list, list]:
    """The chain without its neurons of slope {0} (row j of W_i, column j of W_{i+1}): every product
    W_K D_{K−1} ⋯ D_0 W_0 with D_i in the slope box is unchanged (one neuron kept in a dead layer)."""
    ws, kept = list(weights), []
    for i, (a, b) in enumerate(slopes):
        keep = (a != 0) | (b != 0)
        keep[0] = keep[0] | ~keep.any()
        ws[i], ws[i + 1] = ws[i][keep], ws[i + 1][:, keep]
        kept.append((a[keep], b[keep]))
    return ws, kept


def _product(chain: SeqChain) -> Bound:
    gains = [run_gain(run) for run in chain.runs]
    slopes = [max(abs(lo), abs(hi)) for lo, hi in chain.slopes]
    return Bound(math.prod(g.value for g in gains) * math.prod(slopes), Kind.CERTIFIED, "autolip")


def group_slopes(acts: Sequence[fx.Node], width: int) -> Slopes:
    """Per-neuron slope intervals of consecutive elementwise activations (interval products), flattened."""
    lo, hi = torch.ones(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64)
    for n in acts:
        t = record(n).transfer
        a, b = t.neuron_slopes if t.neuron_slopes is not None else (torch.tensor(t.slope[0]), torch.tensor(t.slope[1]))
        a = a.to(torch.float64).reshape(-1).broadcast_to(width)
        b = b.to(torch.float64).reshape(-1).broadcast_to(width)
        ends = torch.stack([lo * a, lo * b, hi * a, hi * b])
        lo, hi = ends.min(0).values, ends.max(0).values
    return lo, hi


def local_cp(weights: Sequence[torch.Tensor], slopes: Sequence[Slopes], p: float) -> Bound:
    """The diagonal-slope CP recursion of the module docstring, with exact certified norms of each product."""
    return certified(float(_cp_values(weights, slopes, p).max()), "cp-liplt (per-neuron local slopes)")


def _cp_values(weights: Sequence[torch.Tensor], slopes: Sequence[Slopes], p: float) -> torch.Tensor:
    """The CP recursion for a batch of slope assignments: slopes (n,) or (B, n) per layer -> (B,) bounds. L_k reads
    the slopes of layers < k only, so it is computed once per distinct assignment of those (a vertex enumeration
    repeats each prefix 2^(later choices) times)."""
    mids = [((a + b) / 2).reshape(-1, a.shape[-1]) for a, b in slopes]
    rads = [((b - a) / 2).reshape(-1, a.shape[-1]) for a, b in slopes]
    batch = max([m.shape[0] for m in mids], default=1)
    L: list[torch.Tensor] = []  # each (batch,)
    for k in range(len(weights)):
        reps, inverse = _distinct([*mids[:k], *rads[:k]], batch)
        mid = [m[reps] if m.shape[0] > 1 else m for m in mids[:k]]
        rad = [r[reps] if r.shape[0] > 1 else r for r in rads[:k]]
        head = weights[k][None]  # W_k M_{k−1} W_{k−1} ⋯ M_j W_j, built for j = k, k−1, …, 0
        total = torch.zeros(1, dtype=torch.float64)
        for j in range(k, -1, -1):
            if j < k:
                head = (head * mid[j][:, None, :]) @ weights[j]
            if j >= 1 and bool((rad[j - 1] > 0).any()):
                total = total + _norms(head * rad[j - 1][:, None, :], p) * L[j - 1][reps]
        L.append((_norms(head, p) + total).expand(len(reps))[inverse])
    return L[-1]


def _distinct(parts: Sequence[torch.Tensor], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(one row index per distinct row of the (B, n_i) or (1, n_i) ``parts`` side by side, each row's group)."""
    varying = [t for t in parts if t.shape[0] > 1]
    if not varying:
        return torch.zeros(1, dtype=torch.long), torch.zeros(batch, dtype=torch.long)
    _, inverse = torch.unique(torch.cat(varying, 1), dim=0, return_inverse=True)
    reps = torch.zeros(int(inverse.max()) + 1, dtype=torch.long).scatter_(0, inverse, torch.arange(batch))
    return reps, inverse


def _norms(W: torch.Tensor, p: float) -> torch.Tensor:
    """Certified ‖W_b‖_p of a batch (B, m, n) of small dense matrices: σ_max as √λ_max of the smaller Gram matrix
    by ``eigvalsh`` in float64 (as ``linalg.batched_spectral_norm``), abs row/column sums for ℓ∞/ℓ1; times
    1 + ``FLOAT_MARGIN``."""
    if p == 2:
        W = W.mT if W.shape[-2] > W.shape[-1] else W
        value = torch.linalg.eigvalsh(W @ W.mT)[..., -1].clamp_min(0).sqrt()
    else:
        value = W.abs().sum(-2 if p == 1 else -1).amax(-1)
    return value * (1 + FLOAT_MARGIN)


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
