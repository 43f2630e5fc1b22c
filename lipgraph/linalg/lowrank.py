"""Top-k singular triplets of a linear map given only as a function (randomised subspace iteration, Halko,
Martinsson & Tropp 2011, Alg. 4.4 + 5.1). Used for estimates only (truncated greedy SeqLip on convolutions):
a truncated SVD can miss mass, so nothing computed from it is certified.
"""
from __future__ import annotations

import math

import torch
from torch.func import vjp

from lipgraph.linalg.dense import LinearMap


def top_singular(fn: LinearMap, in_shape: tuple[int, ...], k: int, *, oversample: int = 8, iters: int = 3,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Approximate U (m×k), S (k), V (n×k) of the map ``fn`` (batched, float64 ``(B, *in_shape)`` in).

    The adjoint Aᵀy comes from one vector-Jacobian product of ``fn`` (linear, so evaluated at 0).
    """
    n = math.prod(in_shape)
    width = min(k + oversample, n)
    zero = torch.zeros(width, *in_shape, dtype=torch.float64)
    out, pullback = vjp(fn, zero)
    m = out[0].numel()
    width = min(width, m)

    def forward(X: torch.Tensor) -> torch.Tensor:  # (n, w) -> (m, w)
        return fn(X.T.reshape(-1, *in_shape)).reshape(X.shape[1], m).T.detach()

    def adjoint(Y: torch.Tensor) -> torch.Tensor:  # (m, w) -> (n, w)
        cot = torch.zeros_like(out)
        cot[: Y.shape[1]] = Y.T.reshape(Y.shape[1], *out.shape[1:])
        return pullback(cot)[0][: Y.shape[1]].reshape(Y.shape[1], n).T.detach()

    omega = torch.randn(n, width, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    Q = torch.linalg.qr(forward(omega)).Q
    for _ in range(iters):
        Q = torch.linalg.qr(forward(torch.linalg.qr(adjoint(Q)).Q)).Q
    Bt = adjoint(Q)  # (n, w) = (Qᵀ A)ᵀ
    V, S, Uh = torch.linalg.svd(Bt, full_matrices=False)
    k = min(k, S.numel())
    return (Q @ Uh.T)[:, :k], S[:k], V[:, :k]
