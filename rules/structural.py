"""Ops that move, copy, select, concatenate or average coordinates (docs/mathematics.md §1–§2)."""
from __future__ import annotations

import math

from lipgraph.bound import Bound, exact
from lipgraph.errors import NormNotSupported
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer, Var, isometry

from ._gains import copies_gain, max_copies

ISOMETRIES = ("flatten", "unflatten", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "contiguous",
              "identity", "channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "chunk", "split", "unbind")


def dropout(ctx: OpContext) -> Transfer:
    """Identity in eval mode; functional dropout left in training mode scales kept units by 1/(1 − p)."""
    if not ctx.arg("training", 2, True):  # module: its .training flag; F.dropout/aten.dropout: the argument
        return Transfer(gains=(exact(1.0, "eval-identity"),), slope=(1.0, 1.0), affine=True)
    p = float(ctx.arg("p", 1, 0.5))
    return Transfer(gains=(exact(1.0 / (1.0 - p), "dropout-scale"),),
                    notes=(f"dropout is active (training=True): random mask scaled by 1/(1-{p:g})",))


def cast(ctx: OpContext) -> Transfer:
    """A change of dtype or device (``x.float()``, ``x.to(torch.float64)``, ``x.cpu()``): the identity on the values
    when the result is floating point (rounding to the new precision is floating-point error, as in every op). A
    cast to an integer or bool dtype rounds or thresholds the values, a step function; the network may still be
    Lipschitz (a mask that selects between Lipschitz branches), so it is declined, not called unbounded. In
    ``x.to(y)`` the output does not depend on y's values: gain 0 in y."""
    like = len(ctx.inputs) == 2 and ctx.args[:2] == ctx.inputs  # x.to(y): y's dtype and device, not its values
    if not like:
        ctx.input  # noqa: B018 - raises unless exactly one argument depends on the input
    _refuse_rounding(ctx, "a cast")
    if like:
        return Transfer(gains=(exact(1.0, "cast"), exact(0.0, "x.to(y) reads y's dtype and device only")))
    return Transfer(gains=(exact(1.0, "cast"),), slope=(1.0, 1.0), affine=True)


def _refuse_rounding(ctx: OpContext, what: str) -> None:
    """An output of integer or bool dtype rounds or thresholds the values written into it: declined."""
    dtype = ctx.output.dtype if isinstance(ctx.output, Var) else None
    if dtype is None or not (dtype.is_floating_point or dtype.is_complex):
        raise NormNotSupported(f"{ctx.describe()}: {what} to {dtype} rounds or thresholds the values (a step "
                               "function); no rule bounds what uses it")


def _broadcast_gain(ctx: OpContext, source: Var) -> Bound:
    """The output is ``source`` broadcast to the output's shape: each of its coordinates is copied
    numel(out) / numel(source) times (broadcasting repeats every coordinate equally often): ``copies_gain``."""
    return copies_gain(ctx.output.numel / source.numel, ctx.norm, "broadcast")


def full(ctx: OpContext) -> Transfer:
    """``torch.full(size, t)`` (and ``full_like(x, t)``, ``x.new_full(size, t)``: frontend/shape_args.py) with an
    input-dependent one-element t: every output coordinate is t, t ↦ t·1 with ‖1‖_p = numel^{1/p} (ℓ2 √numel,
    ℓ1 numel, ℓ∞ 1; exact). torch reads the fill value as a number (its autograd does not see the dependence);
    the values do depend on t, and the rule says how."""
    _refuse_rounding(ctx, "a fill")
    return Transfer(gains=(_broadcast_gain(ctx, ctx.input),), affine=True)


def copy(ctx: OpContext) -> Transfer:
    """``dst.copy_(src)`` (the "preallocate, then fill" pattern ``out = torch.zeros_like(x); out.copy_(f(x))``): the
    result is src broadcast to dst's shape, cast to dst's dtype, whatever dst held: gain ``_broadcast_gain`` in
    src (exact), 0 in dst. A copy into a view is refused before (frontend/inplace.py), into an integer tensor here
    (it rounds)."""
    _refuse_rounding(ctx, "a copy")
    src = ctx.arg("src", 1)
    return Transfer(gains=tuple(_broadcast_gain(ctx, v) if v is src else exact(0.0, "overwritten")
                                for v in ctx.inputs))


def gather(ctx: OpContext) -> Transfer:
    """Indexing, slicing, expand/repeat, padding: each output copies one input coordinate (or a constant).

    The copy count of every input coordinate is measured exactly (one vjp); see ``copies_gain``.
    """
    source, *rest = ctx.inputs
    if rest:
        raise ctx.not_lipschitz("it indexes with an input-dependent index (a data-dependent selection)")
    if source.parts is not None:  # picking one tensor out of chunk/split's tuple: a projection
        if isinstance(ctx.output, Var) and not ctx.output.dtype.is_floating_point:
            raise ctx.not_lipschitz("it selects integer indices (e.g. of a max), which jump as the input moves")
        return Transfer(gains=(exact(1.0, "projection"),), affine=True)
    return Transfer(gains=(copies_gain(max_copies(ctx, source), ctx.norm, "copy-count"),), affine=True)


def concatenate(ctx: OpContext) -> Transfer:
    """cat/stack: ‖(Δa, Δb)‖_p = (‖Δa‖_p^p + ‖Δb‖_p^p)^{1/p}, so the branch bounds combine in ℓp."""
    return Transfer(gains=tuple(exact(1.0, "concat") for _ in ctx.inputs), combine=ctx.norm,
                    affine=len(ctx.inputs) == 1, joint=True)


def reduce(ctx: OpContext) -> Transfer:
    """sum/mean over m coordinates per output: ‖·‖₂ = √m (sum) or 1/√m (mean); ℓ1: 1 or 1/m; ℓ∞: m or 1."""
    var: Var = ctx.input
    out = ctx.output.numel if isinstance(ctx.output, Var) else 1
    m = var.numel / max(out, 1)
    p = ctx.norm
    if ctx.key == "sum":
        value = m if math.isinf(p) else (math.sqrt(m) if p == 2 else 1.0)
    else:
        value = 1.0 if math.isinf(p) else (1 / math.sqrt(m) if p == 2 else 1 / m)
    return Transfer(gains=(exact(value, f"{ctx.key} of {m:g}"),), affine=True)


def register(registry: Registry) -> None:
    for key in ISOMETRIES:
        registry.register(key, isometry(name=key))
    registry.register("dropout", dropout, exact=True)
    registry.register("cast", cast, exact=True)
    for key in ("getitem", "expand", "pad"):
        registry.register(key, gather, key=key, exact=True)
    registry.register("full", full, exact=True)
    registry.register("copy", copy, exact=True)
    for key in ("cat", "stack"):
        registry.register(key, concatenate, exact=True)
    for key in ("sum", "mean"):
        registry.register(key, reduce, exact=True)
