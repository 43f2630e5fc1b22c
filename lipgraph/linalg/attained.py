"""A few steps of the p-norm power method: a norm the operator *attains*, to re-check a cached certified norm.

For any x ≠ 0, ‖A x‖_p / ‖x‖_p ≤ ‖A‖_p, so the largest ratio seen is a lower bound on ‖A‖_p (up to rounding).
The steps follow Boyd's p-norm power method (Boyd 1974; Higham, *Accuracy and Stability of Numerical
Algorithms*, 2002, §15.2): x ← ∂‖·‖_p*(Aᵀ ∂‖A x‖_p), i.e.

- p = 2: x ← AᵀA x / ‖AᵀA x‖₂ (power iteration, Scaman & Virmaux 2018, Alg. 1);
- p = 1: y = A x, z = Aᵀ sign(y), x ← e_j with j = argmax |z_j| (Higham's ‖A‖₁ estimator, Alg. 15.4);
- p = ∞: y = A x, i = argmax |y_i|, x ← sign(Aᵀ e_i) (the same on Aᵀ, since ‖A‖_∞ = ‖Aᵀ‖₁);

and each pullback Aᵀ d attains a dual ratio too (:func:`_dual_ratio`).

Used by :mod:`lipgraph.cache`: a cached *certified* value below what a few steps attain is inconsistent.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from lipgraph.linalg.device import norm_device


def working_copy(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the analysis' device, in float64 if it is float64, else float32 (fast, and exact enough for a
    re-check)."""
    return t.detach().to(norm_device(), torch.float64 if t.dtype == torch.float64 else torch.float32)


def attained_norm(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...], p: float, *,
                  steps: int = 3, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                  seed: int = 0) -> float:
    """max over ``steps`` steps of ‖A x‖_p / ‖x‖_p for the linear map ``fn`` (batched on ``(B, *in_shape)``,
    computing on ``device`` in ``dtype``)."""
    best = 0.0
    for best in attained_steps(fn, in_shape, p, steps=steps, dtype=dtype, device=device, seed=seed):
        pass
    return best


def attained_steps(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...], p: float, *,
                   steps: int = 3, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                   seed: int = 0) -> Iterator[float]:
    """:func:`attained_norm` step by step: the largest ratio so far after each of the (at most) ``steps`` steps, so
    that a caller that needs only a value above some threshold stops as soon as one is."""
    n = math.prod(in_shape)
    if p == 1:
        x = torch.full(in_shape, 1.0 / n, dtype=dtype, device=device)
    else:
        x = torch.randn(in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
        x = x.sign() if p == math.inf else x
    best = 0.0
    for _ in range(steps):
        y, pullback = _vjp(fn, x.unsqueeze(0))
        y = y.squeeze(0)
        best = max(best, (torch.linalg.vector_norm(y, p) / torch.linalg.vector_norm(x, p)).item())
        if p == math.inf:
            direction = torch.zeros_like(y).reshape(-1)
            i = y.abs().argmax()
            direction[i] = y.reshape(-1)[i].sign()
            direction = direction.reshape(y.shape)
        else:
            direction = y.sign() if p == 1 else y
        g = pullback(direction.unsqueeze(0)).squeeze(0)
        best = max(best, _dual_ratio(g, x, p))
        yield best
        if not bool(g.any()):
            break
        if p == 2:
            x = g / g.norm()
        elif p == 1:
            x = torch.zeros_like(g).reshape(-1)
            x[g.abs().argmax()] = 1.0
            x = x.reshape(g.shape)
        else:
            x = torch.where(g >= 0, 1.0, -1.0).to(dtype)


def _vjp(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
         ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """y = fn(x) and the pullback d ↦ Aᵀd as the gradient of ⟨y, d⟩ (the same backward pass, same values): plain
    autograd with no seed tensor, since ``torch.func.vjp`` (like ``autograd.grad`` with ``grad_outputs``) imports
    sympy on its first use, ≈ 0.8 s of a fresh process."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)

    def pullback(d: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return torch.autograd.grad((y * d).sum(), x)[0]

    return y.detach(), pullback


def _dual_ratio(g: torch.Tensor, x: torch.Tensor, p: float) -> float:
    """What the pullback g = Aᵀ d attains too: p = 2, d = A x: ‖g‖₂ = ‖AᵀA x‖₂ ≤ ‖A‖₂² ‖x‖₂; p = 1, ‖d‖_∞ ≤ 1:
    ‖g‖_∞ ≤ ‖Aᵀ‖_∞ = ‖A‖₁; p = ∞, d = ±e_i: ‖g‖₁ = ‖row i‖₁ ≤ ‖A‖_∞."""
    if p == 2:
        return math.sqrt(g.norm().item() / x.norm().item())
    return torch.linalg.vector_norm(g, math.inf if p == 1 else 1).item()
