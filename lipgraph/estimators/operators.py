"""A chain's linear layers as operators, and the LipSDP matrix applied matrix-free (docs/mathematics.md §7, docs/sdp-conv.md).

Stable interface (used by :mod:`.lipsdp_fo`, :mod:`.blockcert`, ECLipsE and DCP):

- :class:`LayerOp`: one linear layer, ``forward(x)`` on a batch of flattened inputs (b, n_in) → (b, n_out),
  ``adjoint(y)`` (b, n_out) → (b, n_in), and ``dense()`` (the n_out × n_in matrix, float64, materialised only
  when asked). :func:`dense_op` wraps a matrix, :func:`conv_op` a 2-D convolution (any stride, padding, dilation,
  groups; BatchNorm already folded in by the chain pass) with ``F.conv2d`` forward and ``F.conv_transpose2d``
  adjoint, never materialised.
- :class:`OperatorChain`: layers W_0 … W_l and the slope interval [α_k, β_k] of each activation, built from a
  :class:`~lipgraph.estimators.DenseChain` or a DCP ``ConvChain``; device and dtype follow the weights.
- :func:`lipsdp_apply`: M(ρ, T)·z for the LipSDP-Neuron matrix of §7, one forward and one adjoint per layer;
  :func:`multiplier_gradient`: ∂(zᵀM z)/∂T; :func:`top_eigenpair`: λ_max and its eigenvector by restarted
  Lanczos (full reorthogonalisation) on any symmetric operator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Vector = torch.Tensor
Blocks = list[torch.Tensor]


@dataclass(frozen=True)
class LayerOp:
    """A linear map R^{n_in} → R^{n_out} acting on rows of a (batch, n) tensor."""

    n_in: int
    n_out: int
    forward: Callable[[torch.Tensor], torch.Tensor]
    adjoint: Callable[[torch.Tensor], torch.Tensor]
    dense: Callable[[], torch.Tensor]


def dense_op(W: torch.Tensor) -> LayerOp:
    """The matrix W (n_out × n_in) as an operator."""
    return LayerOp(W.shape[1], W.shape[0], lambda x: x @ W.T, lambda y: y @ W, lambda: W)


def conv_op(weight: torch.Tensor, in_shape: tuple[int, int, int], stride=(1, 1), padding=(0, 0), dilation=(1, 1),
            groups: int = 1) -> LayerOp:
    """A zero-padded 2-D convolution on maps of shape ``in_shape`` = (C, H, W), flattened in torch order.

    The adjoint is the transposed convolution with the output padding that restores (H, W) exactly (the rows and
    columns the forward never reads get zero), so ⟨conv x, y⟩ = ⟨x, adjoint y⟩."""
    c, h, w = in_shape
    out = F.conv2d(torch.zeros(1, c, h, w, dtype=weight.dtype, device=weight.device), weight, stride=stride,
                   padding=padding, dilation=dilation, groups=groups)
    out_shape = tuple(out.shape[1:])
    extra = [n - ((m - 1) * s - 2 * p + d * (k - 1) + 1)
             for n, m, s, p, d, k in zip((h, w), out_shape[1:], stride, padding, dilation, weight.shape[2:])]

    def forward(x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x.reshape(-1, c, h, w), weight, stride=stride, padding=padding, dilation=dilation,
                     groups=groups)
        return y.reshape(x.shape[0], -1)

    def adjoint(y: torch.Tensor) -> torch.Tensor:
        x = F.conv_transpose2d(y.reshape(-1, *out_shape), weight, stride=stride, padding=padding,
                               output_padding=tuple(extra), groups=groups, dilation=dilation)
        return x.reshape(y.shape[0], -1)

    n_in, n_out = c * h * w, math.prod(out_shape)

    def dense() -> torch.Tensor:
        eye = torch.eye(n_in, dtype=weight.dtype, device=weight.device)
        return torch.cat([forward(eye[i:i + 1024]) for i in range(0, n_in, 1024)]).T.contiguous()

    return LayerOp(n_in, n_out, forward, adjoint, dense)


@dataclass(frozen=True)
class OperatorChain:
    """W_0, φ_1, W_1, …, φ_l, W_l: ``layers`` (l + 1 operators) and ``slopes`` (l intervals [α_k, β_k])."""

    layers: tuple[LayerOp, ...]
    slopes: tuple[tuple[float, float], ...]
    dtype: torch.dtype = torch.float64
    device: torch.device | str = "cpu"

    @property
    def widths(self) -> list[int]:
        """n_0 (input), n_1 … n_l (hidden), n_{l+1} (output)."""
        return [self.layers[0].n_in] + [op.n_out for op in self.layers]

    @classmethod
    def from_dense(cls, chain) -> "OperatorChain":
        """From a :class:`~lipgraph.estimators.DenseChain` (matrices kept as they are)."""
        W = chain.weights[0]
        return cls(tuple(dense_op(W) for W in chain.weights), tuple(chain.slopes), W.dtype, W.device)

    @classmethod
    def from_conv(cls, chain, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float64) -> "OperatorChain":
        """From a DCP ``ConvChain`` (``Conv2dSpec`` / ``LinearSpec`` layers), in ``dtype`` on ``device`` (default:
        where the weights are)."""
        layers = []
        for layer, shape in zip(chain.layers, chain.shapes):
            weight = layer.weight.to(device=device or layer.weight.device, dtype=dtype)
            if hasattr(layer, "stride"):
                layers.append(conv_op(weight, tuple(shape), layer.stride, layer.padding, layer.dilation,
                                      layer.groups))
            else:
                layers.append(dense_op(weight))
        return cls(tuple(layers), tuple(chain.slopes), dtype, weight.device)

    def split(self, z: torch.Tensor) -> Blocks:
        """A (batch, n_0 + … + n_l) tensor cut into the blocks (Δx_0, …, Δx_l) of the LipSDP variables."""
        return list(torch.split(z, self.widths[:-1], dim=1))


def lipsdp_apply(chain: OperatorChain, multipliers: Sequence[torch.Tensor], rho: float, z: torch.Tensor
                 ) -> torch.Tensor:
    """M(ρ, T) z for the LipSDP-Neuron matrix (docs/mathematics.md §7; Fazlyab et al. 2019, Thm 2), z of shape
    (batch, n_0 + … + n_l). With u_k = W_{k−1} z_{k−1}, T_k = diag(t_k), a_k = α_kβ_k, s_k = α_k + β_k:

        (Mz)_{k−1} += W_{k−1}ᵀ T_k (s_k z_k − 2a_k u_k),   (Mz)_k += T_k (s_k u_k − 2 z_k),
        (Mz)_0 += −ρ z_0,   (Mz)_l += W_lᵀ W_l z_l.
    """
    blocks = chain.split(z)
    out = [torch.zeros_like(b) for b in blocks]
    out[0] = -rho * blocks[0]
    for k, ((lo, hi), t) in enumerate(zip(chain.slopes, multipliers), start=1):
        op = chain.layers[k - 1]
        u = op.forward(blocks[k - 1])
        out[k - 1] = out[k - 1] + op.adjoint(t * ((lo + hi) * blocks[k] - 2 * lo * hi * u))
        out[k] = out[k] + t * ((lo + hi) * u - 2 * blocks[k])
    last = chain.layers[-1]
    out[-1] = out[-1] + last.adjoint(last.forward(blocks[-1]))
    return torch.cat(out, dim=1)


def multiplier_gradient(chain: OperatorChain, z: torch.Tensor) -> list[torch.Tensor]:
    """∂(zᵀ M(ρ, T) z)/∂t_k = −2 (z_k − α_k u_k)(z_k − β_k u_k) elementwise (u_k = W_{k−1} z_{k−1}), for one
    vector z of shape (1, N)."""
    blocks = chain.split(z)
    grads = []
    for k, (lo, hi) in enumerate(chain.slopes, start=1):
        u = chain.layers[k - 1].forward(blocks[k - 1])
        grads.append((-2 * (blocks[k] - lo * u) * (blocks[k] - hi * u)).reshape(-1))
    return grads


def top_eigenpair(apply: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int = 40,
                  restarts: int = 30, tol: float = 1e-9) -> tuple[float, torch.Tensor]:
    """(λ_max, unit eigenvector) of the symmetric operator ``apply`` (acting on (1, N) rows) by restarted Lanczos
    with full reorthogonalisation, starting from ``start`` (e.g. the previous eigenvector). Stops when the
    residual ‖Av − λv‖ ≤ tol·‖A‖ (‖A‖ estimated by the largest Ritz value in magnitude). Unverified: used by the
    optimiser only; certificates never rely on it."""
    v = start.reshape(1, -1).clone()
    v = v / v.norm()
    theta = 0.0
    for _ in range(restarts):
        basis = [v]
        alphas, betas = [], []
        w = apply(v)
        for j in range(steps):
            alpha = float((w * basis[-1]).sum())
            alphas.append(alpha)
            Q = torch.cat(basis)
            w = w - (w @ Q.T) @ Q
            w = w - (w @ Q.T) @ Q
            beta = float(w.norm())
            if j == steps - 1 or beta < 1e-14 * max(abs(a) for a in alphas):
                break
            betas.append(beta)
            basis.append(w / beta)
            w = apply(basis[-1])
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tri += torch.diag(off, 1) + torch.diag(off, -1)
        vals, vecs = torch.linalg.eigh(tri)
        theta = float(vals[-1])
        y = vecs[:, -1].to(v.dtype).to(v.device)
        v = (y @ torch.cat(basis[:len(alphas)])).reshape(1, -1)
        v = v / v.norm()
        scale = max(abs(float(vals[0])), abs(theta), 1e-300)
        if float((apply(v) - theta * v).norm()) <= tol * scale:
            break
    return theta, v
