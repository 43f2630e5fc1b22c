"""Exact operator norms of explicitly materialised linear maps (algorithms.md §3, "Dense layers").

For a matrix W: ‖W‖₁ = max column abs sum, ‖W‖∞ = max row abs sum, ‖W‖₂ = σ_max(W) (standard, e.g.
Horn & Johnson, *Matrix Analysis*, §5.6). All three are computed in float64 and certified with the relative
margin ``FLOAT_MARGIN`` covering rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from lipgraph.bound import FLOAT_MARGIN, Bound, certified

LinearMap = Callable[[torch.Tensor], torch.Tensor]

#: Identity-basis chunks are sized so one chunk (inputs + outputs) holds about this many float64 entries.
_CHUNK_ENTRIES = 1 << 22


@dataclass(frozen=True)
class DenseLimit:
    """When materialising an ``out × in`` operator and taking its dense norm is cheap."""

    max_entries: int = 20_000_000  # 160 MB of float64
    max_min_dim: int = 2048  # eigvalsh of the smaller Gram matrix: O(min_dim³), ~1 s at 2048 on 2 cores

    def allows(self, in_numel: int, out_numel: int) -> bool:
        return in_numel * out_numel <= self.max_entries and min(in_numel, out_numel) <= self.max_min_dim


DENSE_LIMIT = DenseLimit()


def dense_is_cheap(in_numel: int, out_numel: int) -> bool:
    """True when ``DENSE_LIMIT`` allows materialising an ``out_numel × in_numel`` operator."""
    return DENSE_LIMIT.allows(in_numel, out_numel)


def materialize(fn: LinearMap, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The float64 matrix (out_numel × in_numel) of the linear map ``fn`` (batched: ``(B, *in_shape)`` in).

    Column j is ``fn(e_j)``; the identity basis is fed in chunks so that memory stays near one chunk plus the
    result. ``fn`` must accept float64 CPU inputs.
    """
    n = math.prod(in_shape)
    with torch.no_grad():
        first = fn(_basis(0, 1, in_shape)).reshape(-1)
        W = torch.empty(first.numel(), n, dtype=torch.float64)
        W[:, 0] = first
        chunk = max(1, _CHUNK_ENTRIES // (n + first.numel()))
        for start in range(1, n, chunk):
            stop = min(start + chunk, n)
            W[:, start:stop] = fn(_basis(start, stop, in_shape)).reshape(stop - start, -1).T
    return W


def _basis(start: int, stop: int, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Rows ``start:stop`` of the identity, shaped as a batch of inputs."""
    rows = torch.zeros(stop - start, math.prod(in_shape), dtype=torch.float64)
    rows[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return rows.reshape(stop - start, *in_shape)


_METHOD = {1: "abs-col-sum", 2: "svd", math.inf: "abs-row-sum"}


def matrix_norm(W: torch.Tensor, p: float) -> Bound:
    """Exact ℓp → ℓp norm of a 2-D matrix, p ∈ {1, 2, inf}; certified with margin ``FLOAT_MARGIN``.

    p = 2: σ_max = √λ_max of the smaller Gram matrix (W Wᵀ or Wᵀ W) by ``eigvalsh`` in float64; rounding of
    the Gram product and of the symmetric eigensolver is O(dim · ε_float64 · σ_max²), far below the margin.
    """
    if W.ndim != 2:
        raise ValueError(f"matrix_norm needs a 2-D matrix, got shape {tuple(W.shape)}")
    if p not in _METHOD:
        raise ValueError(f"p must be 1, 2 or inf, got {p!r}")
    W = W.detach().to(torch.float64)
    if W.numel() == 0:
        value = 0.0
    elif p == 1:
        value = W.abs().sum(0).max().item()
    elif p == math.inf:
        value = W.abs().sum(1).max().item()
    else:
        gram = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
        value = math.sqrt(max(torch.linalg.eigvalsh(gram)[-1].item(), 0.0))
    return certified(value, _METHOD[p], exact=True, margin=FLOAT_MARGIN)


def dense_norm(fn: LinearMap, in_shape: tuple[int, ...], p: float) -> Bound:
    """Exact ℓp norm of the linear map ``fn`` by materialising it (method ``dense-<matrix method>``)."""
    b = matrix_norm(materialize(fn, in_shape), p)
    return Bound(b.value, b.kind, f"dense-{b.method}", exact=b.exact)
