"""ρ*(T) and its gradient by the Schur recursion with the layers applied as operators (docs/sdp-conv.md).

Stable interface: :class:`OperatorSchur` — ``evaluate(log_t, β)`` → (soft ρ, exact ρ*(T), ∂soft/∂log t), the
objective of :func:`~.lipsdp_fo.optimise` (mode ``operator-schur`` of the first-order solver).

**Recursion** (the one of :mod:`.blockcert`, δ = 0). With a_k = α_kβ_k, s_k = α_k + β_k and Z_l = 2T_l − W_lᵀW_l,

    X_{k−1} = s_k² W_{k−1}ᵀ (T_k Z_k⁻¹ T_k) W_{k−1},   Z_{k−1} = 2T_{k−1} + 2a_k W_{k−1}ᵀT_kW_{k−1} − X_{k−1},
    ρ*(T) = λ_max(G),   G = X_0 − 2a_1 W_0ᵀT_1W_0.

Each Z_k is dense (n_k × n_k: one Cholesky and one inverse per hidden layer), but every product with a layer is
a batched operator call (``LayerOp.forward`` / ``adjoint``: a convolution and its transpose), never a dense
GEMM with the n_k × n_{k−1} matrix: for a 3×3 convolution the sandwich Wᵀ A W costs O(n² · 9c) instead of O(n³).
On the 4-conv 16-channel 16×16 CNN of benchmarks/cnn.py (three hidden layers of 4,096) one evaluation takes
~40 s on the loaded shared 2-core machine in float64 (the dense autograd recursion: ~100 s), ~1.5× less in
float32. A thin last layer needs no n_l × n_l factorisation (Woodbury, :meth:`OperatorSchur._last_stage`).

**Gradient** without autograd (Danskin / envelope theorem). For an eigenvector v of G, vᵀ(ρI − G)v is the
minimum over z_1 … z_l of the quadratic form of −M(ρ, T) at (v, z_1, …, z_l), attained at the back-substitution
z_0 = v, z_k = s_k Z_k⁻¹ T_k W_{k−1} z_{k−1}; so ∂λ(G)/∂t_k = ∂(zᵀMz)/∂t_k = −2 (z_k − α_k u_k)(z_k − β_k u_k)
(u_k = W_{k−1} z_{k−1}, :func:`~.operators.multiplier_gradient`). The soft maximum (1/β) log Σ exp(βλ_i) of the
eigenvalues (smooth where λ_max is multiple) has the softmax-weighted sum of these gradients.

Unverified: only the optimiser uses it; the returned multipliers are certified by :mod:`.blockcert` or
:mod:`.recertify`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from lipgraph.estimators.operators import LayerOp, OperatorChain
from lipgraph.estimators.recertify import InfeasibleMultipliers

#: rows per batched operator call (bounds the memory of one conv batch)
CHUNK = 1024
#: eigenvectors whose softmax weight is below this fraction of the largest do not enter the gradient
WEIGHT_FLOOR = 1e-12


def _rows(fn, A: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(A[i:i + CHUNK]) for i in range(0, A.shape[0], CHUNK)])


def sandwich(op: LayerOp, A: torch.Tensor) -> torch.Tensor:
    """Wᵀ A W (n_in × n_in, symmetrised) for a symmetric n_out × n_out A, by two batched adjoints."""
    B = _rows(op.adjoint, A)  # A W
    X = _rows(op.adjoint, B.T.contiguous())  # Wᵀ A W
    return (X + X.T) / 2


class OperatorSchur:
    """The objective ρ*(T) of a chain of operators, evaluated by the recursion of the module docstring in the
    chain's dtype (float32 halves the time of a large chain; the optimiser needs no more, the certificate is
    float64 anyway)."""

    def __init__(self, chain: OperatorChain) -> None:
        self.chain = chain
        last = chain.layers[-1]
        self.W_last = last.adjoint(torch.eye(last.n_out, dtype=chain.dtype, device=chain.device))
        self.low_rank = 4 * last.n_out <= last.n_in
        self.last_gram = None if self.low_rank else self.W_last.T @ self.W_last

    def __call__(self, log_t: Sequence[torch.Tensor], beta: float | None) -> tuple[float, float, list[torch.Tensor]]:
        chain, t = self.chain, [s.to(self.chain.dtype).exp() for s in log_t]
        l = len(chain.slopes)
        inverses: list = [None] * (l + 1)  # Z_k⁻¹ as a function on rows
        X = self._last_stage(t[l - 1], inverses) if self.low_rank else None
        for k in range(l - 1 if self.low_rank else l, 0, -1):
            Z = torch.diag(2 * t[k - 1]) - (self.last_gram if k == l else X)
            if k < l:
                a = chain.slopes[k][0] * chain.slopes[k][1]
                if a != 0:
                    Z = Z + 2 * a * sandwich(chain.layers[k], torch.diag(t[k]))
            inverse = _inverse((Z + Z.T) / 2, k)
            inverses[k] = inverse.__rmatmul__
            del Z
            s = sum(chain.slopes[k - 1])
            X = sandwich(chain.layers[k - 1], (s * s) * t[k - 1][:, None] * inverse * t[k - 1][None, :])
            del inverse
        lo, hi = chain.slopes[0]
        G = X - 2 * lo * hi * sandwich(chain.layers[0], torch.diag(t[0])) if lo * hi != 0 else X
        eigs, vecs = torch.linalg.eigh(G)
        top = float(eigs[-1])
        if beta is None:
            weights = torch.zeros_like(eigs)
            weights[-1] = 1.0
            soft = top
        else:
            weights = torch.softmax(beta * (eigs - top), 0)
            soft = top + float(torch.logsumexp(beta * (eigs - top), 0)) / beta
        keep = weights >= WEIGHT_FLOOR * float(weights.max())
        grads = self._gradient(t, inverses, vecs[:, keep].T.contiguous(), weights[keep])
        return soft, top, [(g * x).to(y.dtype) for g, x, y in zip(grads, t, log_t)]

    def _last_stage(self, t: torch.Tensor, inverses: list) -> torch.Tensor:
        """X_{l−1} when W_l has few rows (r ≤ n_l / 4): Z_l = D − UᵀU (D = 2T_l, U = W_l) is inverted by the
        Woodbury identity Z_l⁻¹ = D⁻¹ + V C⁻¹ Vᵀ, V = D⁻¹Uᵀ, C = I − U D⁻¹ Uᵀ (Z_l ≻ 0 ⟺ C ≻ 0): no n_l × n_l
        factorisation, and X_{l−1} = s²(Wᵀ T²D⁻¹ W + (WᵀTV) C⁻¹ (WᵀTV)ᵀ) by operator calls."""
        U, layer, l = self.W_last, self.chain.layers[-2], len(self.chain.slopes)
        d_inv = 1 / (2 * t)
        V = d_inv[:, None] * U.T
        C = torch.eye(U.shape[0], dtype=U.dtype, device=U.device) - U @ V
        C_inv = _inverse(C, l)
        inverses[l] = lambda y: y * d_inv + ((y @ V) @ C_inv) @ V.T
        s = sum(self.chain.slopes[-1])
        B = _rows(layer.adjoint, (t[:, None] * V).T.contiguous()).T  # Wᵀ T V
        X = (s * s) * (sandwich(layer, torch.diag(t * t * d_inv)) + B @ C_inv @ B.T)
        return (X + X.T) / 2

    def _gradient(self, t, inverses, v: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
        """Σ_i w_i ∂λ_i/∂t_k by the back-substitution of the module docstring (rows of v: eigenvectors)."""
        z, grads = v, []
        for k, (lo, hi) in enumerate(self.chain.slopes, start=1):
            u = self.chain.layers[k - 1].forward(z)
            z = inverses[k]((lo + hi) * (t[k - 1] * u))
            grads.append(-2 * (weights[:, None] * (z - lo * u) * (z - hi * u)).sum(0))
        return grads



def _inverse(C: torch.Tensor, k: int) -> torch.Tensor:
    """C⁻¹ by Cholesky; C not positive definite: T is infeasible (the Schur complement of hidden layer k)."""
    L, info = torch.linalg.cholesky_ex(C)
    if int(info) != 0:
        raise InfeasibleMultipliers(f"hidden layer {k}: Schur complement not positive definite")
    return torch.cholesky_inverse(L)
