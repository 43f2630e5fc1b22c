"""Dot-product attention on a region (docs/local.md §3): ``F.scaled_dot_product_attention`` and
``nn.MultiheadAttention`` (op key ``multihead_attention``). Not globally Lipschitz (Kim, Papamakarios & Mnih 2021):
refused by a global analysis, bounded in a region analysis from the intervals of Q, K, V.

Per attention matrix (one per batch × head slice b): S = s·QKᵀ (+ mask), P = softmax(S) row-wise, O = PV.
**Intervals**: S by the centre/radius interval product, P by the softmax interval, O = PV likewise.
**Local gains** (ℓ2, Frobenius over all slices; the slices are independent, so a per-slice operator norm bound
is a max over slices): dO = dP V + P dV, dP = J_softmax dS with ‖J‖ ≤ g = max 2p(1 − p) over the P intervals
(≤ 1/2), dS = s(dQ Kᵀ + Q dKᵀ); with ‖X‖ ≤ ‖|X|_max‖₂ for X in an interval matrix (Perron–Frobenius):
    gain_Q = s·g·max_b‖K_b‖·max_b‖V_b‖,  gain_K = s·g·max_b‖Q_b‖·max_b‖V_b‖,  gain_V = max_b‖P_b‖.
nn.MultiheadAttention wraps this between input projections W_q, W_k, W_v (gains ×‖W‖) and the output projection
W_o (×‖W_o‖); its second output, the head-averaged P, adds s·g·‖K‖·‖W_q‖ (query) and s·g·‖Q‖·‖W_k‖ (key).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lipgraph.bound import certified
from lipgraph.errors import NormNotSupported
from lipgraph.linalg import matrix_norm
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer, Var

from .intervals import softmax_interval

F64 = torch.float64
Interval = tuple[torch.Tensor, torch.Tensor]


def _matmul(a: Interval, b: Interval) -> Interval:
    ac, ar = (a[0] + a[1]) / 2, (a[1] - a[0]) / 2
    bc, br = (b[0] + b[1]) / 2, (b[1] - b[0]) / 2
    centre, radius = ac @ bc, ac.abs() @ br + ar @ bc.abs() + ar @ br
    return centre - radius, centre + radius


def _linear(x: Interval, weight: torch.Tensor, bias: torch.Tensor | None) -> Interval:
    c, r = (x[0] + x[1]) / 2, (x[1] - x[0]) / 2
    w = weight.detach().to(F64)
    centre = F.linear(c, w, None if bias is None else bias.detach().to(F64))
    radius = F.linear(r, w.abs())
    return centre - radius, centre + radius


def _abs_max(x: Interval) -> torch.Tensor:
    return torch.maximum(x[0].abs(), x[1].abs())


def _slice_norm(x: Interval) -> float:
    """max over slices b of ‖|X_b|_max‖₂ (≥ ‖X_b‖₂ for every X_b in the interval)."""
    m = _abs_max(x)
    return max(matrix_norm(s, 2).value for s in m.reshape(-1, *m.shape[-2:]))


def attention(q: Interval, k: Interval, v: Interval, scale: float, mask: Any = None, causal: bool = False) -> dict:
    """Intervals of S, P, O and the local gains (module docstring) of one attention."""
    if not (q[0].shape[:-2] == k[0].shape[:-2] == v[0].shape[:-2]):
        raise NormNotSupported("attention with broadcast batch or head dimensions has no local rule")
    kt = (k[0].transpose(-1, -2), k[1].transpose(-1, -2))
    s_lo, s_hi = _matmul(q, kt)
    s_lo, s_hi = s_lo * scale, s_hi * scale
    allowed = None
    if causal:
        allowed = torch.ones(s_lo.shape[-2:], dtype=torch.bool).tril()
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        allowed = mask if allowed is None else allowed & mask
    elif mask is not None:
        s_lo, s_hi = s_lo + mask.to(F64), s_hi + mask.to(F64)
    if allowed is not None:
        s_lo = s_lo.masked_fill(~allowed, -math.inf)
        s_hi = s_hi.masked_fill(~allowed, -math.inf)
    p = softmax_interval(s_lo, s_hi, -1)
    p = (torch.nan_to_num(p[0]), torch.nan_to_num(p[1]))
    out = _matmul(p, v)
    peak = torch.where((p[0] <= 0.5) & (p[1] >= 0.5), torch.full_like(p[0], 0.25),
                       torch.maximum(p[0] * (1 - p[0]), p[1] * (1 - p[1])))
    g = min(0.5, 2 * float(peak.max()))
    nq, nk, nv, np_ = _slice_norm(q), _slice_norm(k), _slice_norm(v), _slice_norm(p)
    return {"out": out, "p": p, "gain_q": scale * g * nk * nv, "gain_k": scale * g * nq * nv, "gain_v": np_,
            "weights_q": scale * g * nk, "weights_k": scale * g * nq}


def _sdpa_args(ctx: OpContext) -> tuple:
    q, k, v = ctx.args[:3]
    mask = ctx.arg("attn_mask", 3, None)
    if float(ctx.arg("dropout_p", 4, 0.0)) != 0.0:
        raise NormNotSupported(f"{ctx.describe()}: attention dropout is random; no local rule")
    scale = ctx.arg("scale", 6, None)
    d = (q.shape if isinstance(q, Var) else q.shape)[-1]
    return q, k, v, mask, bool(ctx.arg("is_causal", 5, False)), float(scale) if scale is not None else 1 / math.sqrt(d)


def _interval(ctx: OpContext, arg: Any) -> Interval:
    if isinstance(arg, Var):
        return ctx.bounds[arg.index]
    t = torch.as_tensor(arg, dtype=F64)
    return t, t


def _mha(ctx: OpContext) -> tuple[dict, dict]:
    """The attention of an ``nn.MultiheadAttention`` module: (attention dict, projection norms)."""
    m: nn.MultiheadAttention = ctx.module
    if m is None:
        raise NormNotSupported(f"{ctx.describe()}: only nn.MultiheadAttention and F.scaled_dot_product_attention "
                               "have local rules (not F.multi_head_attention_forward)")
    if m.bias_k is not None or m.add_zero_attn:
        raise NormNotSupported(f"{ctx.describe()}: add_bias_kv / add_zero_attn have no local rule")
    for name, index in (("key_padding_mask", 3), ("attn_mask", 5)):
        if ctx.arg(name, index, None) is not None or ctx.kwargs.get("is_causal"):
            raise NormNotSupported(f"{ctx.describe()}: masked nn.MultiheadAttention has no local rule")
    args = [_interval(ctx, a) for a in ctx.args[:3]]
    if not m.batch_first and args[0][0].ndim == 3:
        args = [(a.transpose(0, 1), b.transpose(0, 1)) for a, b in args]
    e, h = m.embed_dim, m.num_heads
    if m.in_proj_weight is not None:
        weights = m.in_proj_weight.chunk(3)
    else:
        weights = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    biases = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None,) * 3
    heads = []
    for x, w, b in zip(args, weights, biases):
        lo, hi = _linear(x, w, b)
        shape = (*lo.shape[:-1], h, e // h)
        heads.append((lo.reshape(shape).transpose(-2, -3), hi.reshape(shape).transpose(-2, -3)))
    att = attention(*heads, scale=1 / math.sqrt(e // h))
    norms = {name: matrix_norm(w.detach().to(F64), 2).value for name, w in zip("qkv", weights)}
    norms["o"] = matrix_norm(m.out_proj.weight.detach().to(F64), 2).value
    return att, norms


def interval(ctx: OpContext) -> Any:
    if ctx.module is None and ctx.key == "multihead_attention" and len(ctx.args) >= 3 \
            and getattr(ctx.target, "__name__", "") == "scaled_dot_product_attention":
        q, k, v, mask, causal, scale = _sdpa_args(ctx)
        return attention(_interval(ctx, q), _interval(ctx, k), _interval(ctx, v), scale, mask, causal)["out"]
    att, _ = _mha(ctx)
    m: nn.MultiheadAttention = ctx.module
    lo, hi = att["out"]
    lo, hi = lo.transpose(-2, -3).flatten(-2), hi.transpose(-2, -3).flatten(-2)
    out = _linear((lo, hi), m.out_proj.weight, m.out_proj.bias)
    if not m.batch_first and out[0].ndim == 3:
        out = (out[0].transpose(0, 1), out[1].transpose(0, 1))
    weights = att["p"] if not ctx.arg("average_attn_weights", 6, True) else (att["p"][0].mean(-3), att["p"][1].mean(-3))
    return out, (weights if ctx.arg("need_weights", 4, True) else None)


def local(ctx: OpContext) -> Transfer:
    """Gains per input-dependent argument (module docstring), ℓ2."""
    if ctx.norm != 2:
        raise NormNotSupported(f"{ctx.describe()}: attention has a local bound in ℓ2 only (ℓ1 and ℓ∞ are not "
                               "implemented); analyse this region with norm=2")
    if ctx.module is None:
        q, k, v, mask, causal, scale = _sdpa_args(ctx)
        att = attention(_interval(ctx, q), _interval(ctx, k), _interval(ctx, v), scale, mask, causal)
        named = {"q": (q, att["gain_q"]), "k": (k, att["gain_k"]), "v": (v, att["gain_v"])}
    else:
        att, n = _mha(ctx)
        q, k, v = ctx.args[:3]
        need = ctx.arg("need_weights", 4, True)
        named = {"q": (q, n["o"] * att["gain_q"] * n["q"] + (att["weights_q"] * n["q"] if need else 0.0)),
                 "k": (k, n["o"] * att["gain_k"] * n["k"] + (att["weights_k"] * n["k"] if need else 0.0)),
                 "v": (v, n["o"] * att["gain_v"] * n["v"])}
    gains = {id(var): 0.0 for var in ctx.inputs}
    for var, gain in named.values():
        if isinstance(var, Var):
            gains[id(var)] += gain
    return Transfer(gains=tuple(certified(gains[id(var)], "local attention") for var in ctx.inputs))


def register(registry: Registry) -> None:
    # the global rule (refused where attention is not Lipschitz) is rules/nonlipschitz.py's
    registry.register_interval("multihead_attention", interval)
    registry.register_local("multihead_attention", local)
