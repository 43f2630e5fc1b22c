"""Exact operator norms of explicitly materialised linear maps (docs/mathematics.md §3, "Dense layers").

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
from lipgraph.cache import FINGERPRINT_SETTINGS, RECHECK_STEPS, memoised, tensor_digest
from lipgraph.linalg.attained import attained_norm, working_copy
from lipgraph.linalg.device import norm_device
from lipgraph.linalg.parallel import one_thread

LinearMap = Callable[[torch.Tensor], torch.Tensor]

#: Matrices with fewer entries are cheaper to recompute than to look up.
_MEMO_ENTRIES = 1 << 16
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
FINGERPRINT_SETTINGS["DENSE_LIMIT"] = lambda: DENSE_LIMIT  # cached norms depend on it (lipgraph.cache)


def dense_is_cheap(in_numel: int, out_numel: int) -> bool:
    """True when ``DENSE_LIMIT`` allows materialising an ``out_numel × in_numel`` operator."""
    return DENSE_LIMIT.allows(in_numel, out_numel)


def materialize(fn: LinearMap, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The float64 matrix (out_numel × in_numel) of the linear map ``fn`` (batched: ``(B, *in_shape)`` in).

    From its smaller side: column j is ``fn(e_j)``, or, when there are fewer outputs than inputs, row i is Aᵀe_i
    (one batched backward pass), checked against ``fn`` on a random vector (a map that autograd cannot see
    through falls back to columns). Basis vectors are fed in chunks so that memory stays near one chunk plus the
    result. ``fn`` must accept float64 CPU inputs.
    """
    n = math.prod(in_shape)
    with torch.no_grad():
        first = fn(_basis(0, 1, in_shape)).reshape(-1)
    if first.numel() < n:
        W = _rows(fn, in_shape, first.numel())
        if W is not None:
            return W
    with torch.no_grad():
        W = torch.empty(first.numel(), n, dtype=torch.float64)
        W[:, 0] = first
        chunk = max(1, _CHUNK_ENTRIES // (n + first.numel()))
        for start in range(1, n, chunk):
            stop = min(start + chunk, n)
            W[:, start:stop] = fn(_basis(start, stop, in_shape)).reshape(stop - start, -1).T
    return W


def _rows(fn: LinearMap, in_shape: tuple[int, ...], m: int) -> torch.Tensor | None:
    """The matrix of ``fn`` row by row (rows of Aᵀ by backward passes), or None when they do not reproduce ``fn``."""
    n = math.prod(in_shape)
    try:
        with torch.no_grad():
            out_shape = tuple(fn(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
        W = torch.empty(m, n, dtype=torch.float64)
        chunk = max(1, _CHUNK_ENTRIES // (n + m))
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            W[start:stop] = _pullbacks(fn, in_shape, _basis(start, stop, out_shape)).reshape(stop - start, n)
        v = torch.randn(1, *in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = fn(v).reshape(-1)
    except Exception:  # noqa: BLE001 - an op without a backward: materialise by columns instead
        return None
    ok = torch.allclose(W @ v.reshape(-1), expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))
    return W if ok else None


def _pullbacks(fn: LinearMap, in_shape: tuple[int, ...], cotangents: torch.Tensor) -> torch.Tensor:
    """Aᵀd for each d of a batch, as the gradient of Σ_b ⟨fn(x_b), d_b⟩ at x = 0 (``fn`` maps each sample on its
    own): one batched backward pass, no ``torch.func`` (whose batched pullback imports torch._dynamo and sympy on
    first use, seconds in a fresh process)."""
    x = torch.zeros(len(cotangents), *in_shape, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        return torch.autograd.grad((fn(x) * cotangents).sum(), x)[0].detach()


def _basis(start: int, stop: int, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Rows ``start:stop`` of the identity, shaped as a batch of inputs."""
    rows = torch.zeros(stop - start, math.prod(in_shape), dtype=torch.float64)
    rows[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return rows.reshape(stop - start, *in_shape)


_METHOD = {1: "abs-col-sum", 2: "svd", math.inf: "abs-row-sum"}


def matrix_norm(W: torch.Tensor, p: float) -> Bound:
    """Exact ℓp → ℓp norm of a 2-D matrix, p ∈ {1, 2, inf}; certified with margin ``FLOAT_MARGIN``.

    p = 2: σ_max by :func:`batched_spectral_norm`. Large matrices go through the analysis' memo and disk cache
    (:mod:`lipgraph.cache`) and run on its device.
    """
    if W.ndim != 2:
        raise ValueError(f"matrix_norm needs a 2-D matrix, got shape {tuple(W.shape)}")
    if p not in _METHOD:
        raise ValueError(f"p must be 1, 2 or inf, got {p!r}")
    if W.numel() < _MEMO_ENTRIES:
        return _matrix_norm(W, p)

    def check() -> float:
        M = working_copy(W)
        return attained_norm(lambda x: x @ M.mT, (M.shape[1],), p, steps=RECHECK_STEPS, dtype=M.dtype,
                             device=M.device)

    return memoised(("matrix_norm", tensor_digest(W), p), lambda: _matrix_norm(W, p), check)


def _matrix_norm(W: torch.Tensor, p: float) -> Bound:
    W = W.detach()
    if W.numel() == 0:
        value = 0.0
    elif p == 1:
        value = W.to(torch.float64).abs().sum(0).max().item()
    elif p == math.inf:
        value = W.to(torch.float64).abs().sum(1).max().item()
    else:
        value = batched_spectral_norm(W[None])
    return certified(value, _METHOD[p], exact=True, margin=FLOAT_MARGIN)


def batched_spectral_norm(mats: torch.Tensor) -> float:
    """max_i σ_max(mats[i]) of a (B, m, n) batch: √λ_max of the smaller Gram matrix (W Wᵀ or Wᵀ W) by ``eigvalsh``
    in float64 on the analysis' device; rounding of the Gram product and of the symmetric eigensolver is
    O(dim · ε_float64 · σ_max²), far below ``FLOAT_MARGIN``. The Gram matrix is summed over column blocks converted
    to float64 one at a time, so a large float32 matrix (a 25088 × 4096 classifier) is never copied whole. On one
    torch thread (:func:`lipgraph.linalg.parallel.one_thread`), as in the norm pool: the same rounding wherever it
    runs, and no eigensolver waiting on spinning threads on a busy machine."""
    W = mats.detach()
    if W.numel() == 0:
        return 0.0
    if W.shape[-2] > W.shape[-1]:
        W = W.mT
    device = norm_device()
    with one_thread():
        if W.dtype == torch.float64 and W.device == torch.device(device):  # nothing to convert: one product
            return math.sqrt(max(torch.linalg.eigvalsh(W @ W.mT)[..., -1].max().item(), 0.0))
        gram = torch.zeros(W.shape[0], W.shape[-2], W.shape[-2], dtype=torch.float64, device=device)
        step = max(1, _CHUNK_ENTRIES // (W.shape[0] * W.shape[-2]))
        for start in range(0, W.shape[-1], step):
            part = W[..., start:start + step].to(device=device, dtype=torch.float64)
            gram += part @ part.mT
        return math.sqrt(max(torch.linalg.eigvalsh(gram)[..., -1].max().item(), 0.0))


def dense_norm(fn: LinearMap, in_shape: tuple[int, ...], p: float) -> Bound:
    """Exact ℓp norm of the linear map ``fn`` by materialising it (method ``dense-<matrix method>``), on one torch
    thread like :func:`batched_spectral_norm`."""
    if p not in _METHOD:
        raise ValueError(f"p must be 1, 2 or inf, got {p!r}")
    with one_thread():
        b = _matrix_norm(materialize(fn, in_shape), p)  # a matrix built for this call: nothing to look up
    return Bound(b.value, b.kind, f"dense-{b.method}", exact=b.exact)
