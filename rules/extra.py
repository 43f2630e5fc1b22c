"""abs, flip/roll/rot90, clamp, elementwise max/min of two tensors, max/min reductions, sort/topk, vector norms.

Proofs, for the ℓp norm p ∈ {1, 2, ∞} on inputs and outputs:

- **abs**: slopes in {−1, 1}: L = 1, exact (``elementwise`` with slope [−1, 1]).
- **flip, roll, rot90**: coordinate permutations: L = 1, exact.
- **clamp(x, lo, hi)** = min(max(x, lo), hi), lo/hi scalars, constant tensors or input-dependent tensors, all
  broadcast to the output. min/max are nonexpansive in the ℓ∞ norm of their arguments, so per output coordinate
  |Δout_i| ≤ max(|Δx_{π(i)}|, |Δlo_{π'(i)}|, |Δhi_{π''(i)}|) with π the broadcast index maps. Raising to the p-th
  power and summing: ‖Δout‖_p^p ≤ Σ_v c_v ‖Δv‖_p^p, c_v = the broadcast copy count of operand v. So each operand
  gets gain c_v^{1/p} (ℓ∞: 1) and the terms combine in ℓp, like a concatenation. With constant bounds only, the
  gain of x is exact iff some x_j can be strictly inside (max lo, min hi) over all its copies (then all copies
  move with slope 1); otherwise it is only an upper bound (e.g. lo > hi everywhere: the output is constant).
  The slope interval is [0, 1]. Note clamp *broadcasts* x against tensor bounds (x: 1×3, lo: 2×3 -> 2×3 copies
  each x_j twice: ℓ2 gain √2), which the plain hardtanh rule (gain 1) did not account for.
- **maximum/minimum/fmax/fmin**, and ``torch.max(a, b)``/``torch.min(a, b)`` of two tensors: the same bound as
  clamp with one bound (|max(a, b) − max(a', b')| ≤ max(|Δa|, |Δb|)); two input-dependent operands combine in
  ℓp (gain per operand exact: hold the other one far below).
- **max/min/amax/amin over dims** (values only; ``torch.max(x)`` without dim too): output g is the max of a
  group G_g, the groups are disjoint. |max_G a − max_G b| ≤ max_{i∈G}|a_i − b_i|, so
  ‖Δout‖_p^p ≤ Σ_g max_{i∈G_g} |Δx_i|^p ≤ ‖Δx‖_p^p (ℓ∞: directly). L = 1, exact (move the argmax alone).
  ``torch.max(x, dim)`` returns (values, indices): taking ``[0]`` or ``.values`` is a projection (1). The indices
  (``.indices``, ``argmax``, ``argmin``) are piecewise constant with jumps: not Lipschitz, refused.
- **sort, topk** (values): sorting is nonexpansive in every ℓp, p ≥ 1: for convex φ, Σ φ(x_(i) − y_(i)) ≤
  Σ φ(x_i − y_σ(i)) for every permutation σ (the sorted pairing is optimal, a rearrangement inequality); take
  φ = |·|^p and σ = id; p = ∞ by the limit. topk keeps k sorted coordinates: a projection of sort. L = 1, exact.
- **vector norms** y_g = ‖x_G‖_q over groups G of m coordinates (torch.norm, Tensor.norm, linalg.vector_norm,
  linalg.norm on a vector or with ord=None/'fro'): by the reverse triangle inequality |‖a‖_q − ‖b‖_q| ≤ ‖a − b‖_q,
  and ‖v‖_q ≤ m^{max(0, 1/q − 1/p)} ‖v‖_p on ℝ^m (Hölder), so summing over the disjoint groups
  L ≤ c = m^{max(0, 1/q − 1/p)}: q = 2 gives 1 in ℓ1 and ℓ2 and √m in ℓ∞; q = 1 gives √m (ℓ2), m (ℓ∞), 1 (ℓ1);
  q = ∞: 1. Exact: at y = 0, x ∝ the maximiser of ‖v‖_q/‖v‖_p in one group. q = −∞ (min |x_i|): 1, exact.
  q = 0 (a count) jumps and 0 < q < 1 has unbounded slope near 0 (m ≥ 2): not Lipschitz. Matrix norms
  (ord='nuc', 2, … over two dims) and negative finite q are not covered (reported as unsupported).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from lipgraph.bound import certified, exact
from lipgraph.errors import NormNotSupported
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer, Var, elementwise, isometry, not_lipschitz

from ._gains import broadcast_copies, copies_gain


# -- helpers ------------------------------------------------------------------------------------------------
def _target_name(ctx: OpContext) -> str:
    t = ctx.target
    return t if isinstance(t, str) else str(getattr(t, "__name__", t))


def _operand(ctx: OpContext, index: int, *names: str) -> Any:
    """Positional argument ``index`` or the first keyword in ``names``; ``None`` when absent."""
    if index < len(ctx.args):
        return ctx.args[index]
    for name in names:
        if name in ctx.kwargs:
            return ctx.kwargs[name]
    return None


def _reduce_to(t: torch.Tensor, shape: tuple[int, ...], reducer: str) -> torch.Tensor:
    """Reduce a tensor of the output's shape onto the shape of a broadcast operand (amax/amin over its copies)."""
    lead = t.dim() - len(shape)
    if lead > 0:
        t = getattr(t, reducer)(dim=tuple(range(lead)))
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1)
    if dims:
        t = getattr(t, reducer)(dim=dims, keepdim=True)
    return t


def _bounded(ctx: OpContext, x: Var, lo: Any, hi: Any) -> Transfer:
    """clamp(x, lo, hi) with constant (or absent) lo/hi: gain = broadcast copy count^{1/p}, slope [0, 1]."""
    out = ctx.output_shape
    gain = copies_gain(broadcast_copies(x, out), ctx.norm, "clamp")
    lo_t = torch.as_tensor(-math.inf if lo is None else lo, dtype=torch.float64).broadcast_to(out)
    hi_t = torch.as_tensor(math.inf if hi is None else hi, dtype=torch.float64).broadcast_to(out)
    active = _reduce_to(lo_t, x.shape, "amax") < _reduce_to(hi_t, x.shape, "amin")
    if not bool(active.any()):  # no x_j can have all its copies strictly inside [lo, hi]: keep it as a bound
        gain = certified(gain.value, "clamp (bounds may never let every copy pass)")
    return Transfer(gains=(gain,), slope=(0.0, 1.0))


def _branches(ctx: OpContext) -> Transfer:
    """Elementwise max/min/clamp of several input-dependent operands: per-operand copy gains, ℓp combination."""
    out = ctx.output_shape
    gains = tuple(copies_gain(broadcast_copies(v, out), ctx.norm, "max-branch") for v in ctx.inputs)
    return Transfer(gains=gains, combine=ctx.norm, joint=True)


# -- clamp, maximum, minimum ------------------------------------------------------------------------------
def clamp(ctx: OpContext) -> Transfer:
    """min(max(x, lo), hi), bounds broadcast: gain c^{1/p} per operand (c = copies), combined in ℓp; slope [0, 1]."""
    name = _target_name(ctx)
    if "clamp_min" in name:
        x, lo, hi = _operand(ctx, 0, "input", "self"), _operand(ctx, 1, "min"), None
    elif "clamp_max" in name:
        x, lo, hi = _operand(ctx, 0, "input", "self"), None, _operand(ctx, 1, "max")
    else:
        x, lo, hi = _operand(ctx, 0, "input", "self"), _operand(ctx, 1, "min"), _operand(ctx, 2, "max")
    if len(ctx.inputs) == 1 and isinstance(x, Var):
        return _bounded(ctx, x, lo, hi)
    return _branches(ctx)


def _elementwise_pair(ctx: OpContext, largest: bool) -> Transfer:
    a, b = _operand(ctx, 0, "input", "self"), _operand(ctx, 1, "other")
    if len(ctx.inputs) == 1:
        x, c = (a, b) if isinstance(a, Var) else (b, a)
        return _bounded(ctx, x, c, None) if largest else _bounded(ctx, x, None, c)
    return _branches(ctx)


def maximum(ctx: OpContext) -> Transfer:
    """max(a, b) elementwise: |Δ| ≤ max(|Δa|, |Δb|): gain c^{1/p} per operand, combined in ℓp."""
    return _elementwise_pair(ctx, largest=True)


def minimum(ctx: OpContext) -> Transfer:
    """min(a, b) elementwise: as maximum."""
    return _elementwise_pair(ctx, largest=False)


# -- reductions -------------------------------------------------------------------------------------------
def _is_binary(ctx: OpContext) -> bool:
    other = _operand(ctx, 1, "other")
    return isinstance(other, (Var, torch.Tensor))


def extremum(ctx: OpContext) -> Transfer:
    """max/min/amax/amin over dims: 1 (disjoint groups, |max a − max b| ≤ max |a − b|); torch.max(a, b): maximum."""
    if ctx.key in ("max", "min") and _is_binary(ctx):
        return _elementwise_pair(ctx, largest=ctx.key == "max")
    return Transfer(gains=(exact(1.0 if ctx.input.numel else 0.0, f"{ctx.key} of disjoint groups"),))


def order_statistics(ctx: OpContext) -> Transfer:
    """sort/topk values: sorting is nonexpansive in every ℓp; topk is a projection of it."""
    return Transfer(gains=(exact(1.0, f"{ctx.key} (nonexpansive)"),))


def tuple_values(ctx: OpContext) -> Transfer:
    """``.values`` of a (values, indices) result: a projection (1)."""
    if ctx.input.parts is None:
        raise NormNotSupported(f"{ctx.describe()}: .values of a plain tensor (sparse tensors are not supported)")
    return Transfer(gains=(exact(1.0, "projection"),))


# -- vector norms ------------------------------------------------------------------------------------------
def _order(ctx: OpContext) -> Any:
    """The norm order q of torch.norm (``p``, default 'fro') or linalg.vector_norm/linalg.norm (``ord``)."""
    if ctx.key == "norm":
        return _operand(ctx, 1, "p") if _operand(ctx, 1, "p") is not None else "fro"
    q = _operand(ctx, 1, "ord")
    return q


def _group_order(ctx: OpContext) -> float:
    """q as a number; refuses the matrix norms of torch.norm / linalg.norm."""
    q = _order(ctx)
    dim = _operand(ctx, 2, "dim")
    if ctx.key == "linalg_norm":
        vector = isinstance(dim, int) or (dim is None and len(ctx.input.shape) == 1) or (
            isinstance(dim, (tuple, list)) and len(dim) == 1)
        if q is None or q == "fro":
            return 2.0
        if not vector:
            raise NormNotSupported(f"{ctx.describe()}: matrix norm ord={q!r} is not supported (only ord=None/'fro')")
        return float(q)
    if ctx.key == "linalg_vector_norm" and q is None:
        return 2.0
    if q == "fro":
        return 2.0
    if isinstance(q, str):  # 'nuc'
        raise NormNotSupported(f"{ctx.describe()}: matrix norm {q!r} is not supported")
    return float(q)


def vector_norm(ctx: OpContext) -> Transfer:
    """‖x_G‖_q over groups of m: m^{max(0, 1/q − 1/p)} (reverse triangle inequality + Hölder); exact."""
    x = ctx.input
    out = ctx.output.numel if isinstance(ctx.output, Var) else 1
    m = max(1, round(x.numel / max(out, 1)))
    q, p = _group_order(ctx), ctx.norm
    method = f"ℓ{q:g}-norm of {m}"
    if q == -math.inf or m == 1 and q != 0:
        return Transfer(gains=(exact(1.0, method),))  # min |x_i| (1-Lipschitz in ℓ∞ hence in every ℓp) or |x|
    if q == 0:
        raise ctx.not_lipschitz("the ℓ0 'norm' counts nonzero entries (it jumps)")
    if 0 < q < 1:
        raise ctx.not_lipschitz(f"(Σ|x_i|^{q:g})^(1/{q:g}) has unbounded slope as one entry nears 0")
    if q < 0:
        raise NormNotSupported(f"{ctx.describe()}: negative order {q:g} is not supported")
    exponent = max(0.0, (0.0 if math.isinf(q) else 1.0 / q) - (0.0 if math.isinf(p) else 1.0 / p))
    return Transfer(gains=(exact(m ** exponent, method),))


# -- registration -----------------------------------------------------------------------------------------
def register(registry: Registry) -> None:
    registry.register("abs", elementwise(slope=(-1.0, 1.0), name="abs"))
    for key in ("flip", "roll", "rot90"):
        registry.register(key, isometry(name=key, description=f"{key}: a coordinate permutation, Lipschitz 1"))
    registry.register("clamp", clamp, exact=True)
    registry.register("maximum", maximum, exact=True)
    registry.register("minimum", minimum, exact=True)
    for key in ("max", "min", "amax", "amin"):
        registry.register(key, extremum, key=key, exact=True)
    for key in ("sort", "topk"):
        registry.register(key, order_statistics, key=key, exact=True)
    registry.register("values", tuple_values, exact=True)
    for key in ("indices", "argmax", "argmin"):
        registry.register(key, not_lipschitz("argmax/argmin indices are piecewise constant and jump", name=key))
    for key in ("norm", "linalg_vector_norm", "linalg_norm"):
        registry.register(key, vector_norm, key=key, exact=True)
