"""Linear relaxations with back-substitution (CROWN: Zhang et al., NeurIPS 2018) on sequential chains, to tighten
the pre-activation intervals of a region analysis (docs/local.md §2).

For a chain z_0 = W_0 x + b_0, z_k = W_k σ(z_{k−1}) + b_k with x in the chain's input set X, every activation is
bounded between two lines on its pre-activation interval [l, u] (per neuron):

- ReLU, unstable (l < 0 < u): upper u(z − l)/(u − l), lower λ z with λ = 1 if u > −l else 0; stable: exact.
- any other activation with slope range [α, β] on [l, u]: σ(l) + α(z − l) ≤ σ(z) ≤ σ(l) + β(z − l) (mean value).

To bound z_k from above, the row vector Λ = W_k is carried backwards: through σ each coefficient picks the upper
line where Λ_j ≥ 0 and the lower line where Λ_j < 0 (the reverse for a lower bound), then through W_{k−1};
at the input, max_{x ∈ X} Λ x = Λ c + r ‖Λ‖_q on an ℓp ball (q the dual exponent) or Λ c + |Λ| r on a box.
Each bound is intersected with the interval pass's (both are sound), layer by layer.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import fx

from ..ir import LipGraph
from ..linalg import dense_is_cheap, materialize
from ..region import Ball, Region
from .context import context
from .chains import sequential_chains
from .fuse import linear_part
from ..record import record

F64 = torch.float64
_DUAL = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}


def refine_chains(lg: LipGraph, region: Region, norm: float) -> None:
    """CROWN on every materialisable chain; writes the tightened pre-activation intervals and recomputes the
    local transfers of the chain's activations (``transfer``) from them."""
    for chain in sequential_chains(lg):
        affine = [_affine(lg, run, norm) for run in chain.runs]
        if any(a is None for a in affine):
            continue
        source = record(chain.first).inputs[0]
        lo, hi = (b.reshape(-1) for b in record(source).interval)
        ball = region if isinstance(region, Ball) and source.op == "placeholder" else None
        centre = ball.centre(lg.inputs[0]).reshape(-1) if ball is not None else (lo + hi) / 2
        radius = ball.radius if ball is not None else (hi - lo) / 2
        q = _DUAL[ball.norm] if ball is not None else None
        relax: list[tuple] = []
        for k, acts in enumerate(chain.activations):
            pre = chain.runs[k][-1]
            l, u = _bounds(affine[: k + 1], relax, centre, radius, q)
            old_lo, old_hi = (b.reshape(-1) for b in record(pre).interval)
            l, u = torch.maximum(l, old_lo), torch.minimum(u, old_hi)
            record(pre).interval = (l.reshape(record(pre).interval[0].shape),
                                        u.reshape(record(pre).interval[1].shape))
            for n in acts:
                record(n).transfer = record(n).rule.apply(context(lg, n, norm))
            relax.append(_relaxation(lg, acts, l, u, norm))


def _affine(lg: LipGraph, run: Sequence[fx.Node], norm: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W, b) of an affine run, float64, flattened per sample (None when it cannot be materialised)."""
    part = linear_part(lg, list(run), norm)
    if part is None or not dense_is_cheap(*part.size):
        return None
    W = materialize(part.fn, part.in_shape)
    zero = torch.zeros(1, *part.in_shape, dtype=F64)
    for ctx in [context(lg, n, norm) for n in run]:
        zero = ctx.apply(zero, dtype=F64)
    return W, zero.reshape(-1).detach()


def _relaxation(lg: LipGraph, acts: Sequence[fx.Node], l: torch.Tensor, u: torch.Tensor, norm: float) -> tuple:
    """(a_lo, b_lo, a_hi, b_hi): a_lo z + b_lo ≤ σ(z) ≤ a_hi z + b_hi on [l, u] (module docstring)."""
    if len(acts) == 1 and record(acts[0]).key == "relu":
        unstable = (l < 0) & (u > 0)
        active = l >= 0
        width = (u - l).clamp_min(1e-300)
        a_hi = torch.where(unstable, u / width, active.to(F64))
        b_hi = torch.where(unstable, -u * l / width, torch.zeros_like(l))
        a_lo = torch.where(unstable, (u > -l).to(F64), active.to(F64))
        return a_lo, torch.zeros_like(l), a_hi, b_hi
    # a composition of activations, or any other one: lines through (l, σ(l)) with the extreme slopes
    value = l.reshape(1, -1)
    for n in acts:
        value = context(lg, n, norm).apply(value.reshape(record(record(n).inputs[0]).info.shape),
                                           dtype=F64)
    value = value.reshape(-1)
    s_lo, s_hi = _slopes(acts, l.numel())
    return s_lo, value - s_lo * l, s_hi, value - s_hi * l


def _slopes(acts: Sequence[fx.Node], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .localchains import group_slopes

    return group_slopes(acts, width)


def _bounds(affine: list, relax: list, centre: torch.Tensor, radius, q: float | None):
    """Lower and upper bounds of the last affine output by back-substitution (module docstring)."""
    W, b = affine[-1]
    out = []
    for sign in (-1.0, 1.0):  # lower: minimise, i.e. maximise −z
        lam, const = sign * W, sign * b
        for (Wk, bk), (a_lo, b_lo, a_hi, b_hi) in zip(reversed(affine[:-1]), reversed(relax)):
            pos = lam >= 0
            slope = torch.where(pos, a_hi, a_lo)
            shift = torch.where(pos, b_hi, b_lo)
            const = const + (lam * shift).sum(1)
            lam = lam * slope
            const = const + lam @ bk
            lam = lam @ Wk
        if q is None:
            top = lam @ centre + lam.abs() @ radius
        else:
            top = lam @ centre + radius * torch.linalg.vector_norm(lam, q, dim=1)
        out.append(sign * (top + const))
    lo, hi = out
    return lo - 1e-12 * (1 + lo.abs()), hi + 1e-12 * (1 + hi.abs())
