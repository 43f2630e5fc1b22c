"""Linear-chain fusion (algorithms.md §4): consecutive affine ops with nothing nonlinear between them are one
operator A_k⋯A_1. Its norm is bounded directly — ‖A_k⋯A_1‖ ≤ Π‖A_i‖ and is often much smaller (BatchNorm
folded into the convolution before it is the common case).

Writes ``lip.chain`` on the last op of each chain: ``(first op, fused Bound, product of the gains)``.
AutoLip then uses ``min(product path, fused · L(chain input))``; both are certified upper bounds.
"""
from __future__ import annotations

import math

import torch
from torch import fx

from ..bound import Bound, Kind, certified
from ..linalg import conv_norm, dense_is_cheap, dense_norm, matrix_norm
from ..ir import LipGraph
from .annotate import context


def fuse(lg: LipGraph, norm: float) -> None:
    for chain in affine_chains(lg):
        fused = fused_bound(lg, chain, norm)
        product = math.prod(n.meta["lip.transfer"].gains[0].value for n in chain)
        if fused is not None and fused.value < product:
            chain[-1].meta["lip.chain"] = (chain[0], fused, product)


def affine_chains(lg: LipGraph) -> list[list[fx.Node]]:
    """Maximal paths of single-input affine ops, each feeding only the next, with ≥ 2 non-isometries."""

    def link(n: fx.Node) -> bool:
        t = n.meta.get("lip.transfer")
        return (n.op not in ("placeholder", "output") and t is not None and t.affine
                and len(n.meta["lip.inputs"]) == 1 and t.gains[0].kind is Kind.CERTIFIED)

    def only_user(n: fx.Node) -> fx.Node | None:
        users = [u for u in n.users if u.meta.get("lip.dep") or u.op == "output"]
        return users[0] if len(users) == 1 and len(users[0].meta.get("lip.inputs", ())) == 1 else None

    chains, taken = [], set()
    for n in lg.ops():
        if n in taken or not link(n):
            continue
        prev = n.meta["lip.inputs"][0]
        if link(prev) and only_user(prev) is n:
            continue  # not the start of its chain
        chain = [n]
        while (nxt := only_user(chain[-1])) is not None and link(nxt):
            chain.append(nxt)
        taken.update(chain)
        if sum(not _trivial(c) for c in chain) >= 2:
            chains.append(chain)
    return chains


def fused_bound(lg: LipGraph, chain: list[fx.Node], norm: float) -> Bound | None:
    """Norm of the composed operator: exact folding of structured ops, else the dense operator when small."""
    bound = _folded(chain, norm)
    if bound is None:
        bound = _dense(lg, chain, norm)
    return None if bound is None else Bound(bound.value, bound.kind, f"fused {bound.method}", exact=bound.exact)


_IDENTITIES = ("identity", "dropout", "contiguous")  # the identity map in eval mode (if affine at all)


def _trivial(n: fx.Node) -> bool:
    g = n.meta["lip.transfer"].gains[0]
    return g.exact and g.value == 1.0


def _folded(chain: list[fx.Node], norm: float) -> Bound | None:
    """Fold channel scales into convolutions/matrices and multiply matrices; None if the chain has other ops."""
    parts = [n.meta["lip.transfer"].structure for n in chain if n.meta["lip.key"] not in _IDENTITIES]
    if any(p is None for p in parts):
        return None
    acc = parts[0]
    for nxt in parts[1:]:
        acc = _fold_pair(acc, nxt)
        if acc is None:
            return None
    kind, *data = acc
    if kind == "conv":
        weight, options = data
        return conv_norm(weight, p=norm, **options)
    if kind == "matrix":
        return matrix_norm(data[0], norm)
    scale = data[0]
    return Bound(float(scale.abs().max()), Kind.CERTIFIED, "diagonal", exact=True)


def _fold_pair(first: tuple, second: tuple) -> tuple | None:
    """The structure of ``second ∘ first``, or None when it has no structured form here."""
    a, b = first[0], second[0]
    if a == b == "channel_scale":
        return ("channel_scale", first[1] * second[1])
    if a == b == "matrix":
        return ("matrix", second[1].double() @ first[1].double())
    if a == "matrix" and b == "channel_scale" and first[1].shape[0] == second[1].numel():
        return ("matrix", second[1][:, None] * first[1].double())
    if a == "channel_scale" and b == "matrix" and second[1].shape[1] == first[1].numel():
        return ("matrix", second[1].double() * first[1][None, :])
    if a == "conv" and b == "channel_scale":
        return ("conv", _scale_conv(first[1], first[2], second[1], output=True), first[2])
    if a == "channel_scale" and b == "conv":
        return ("conv", _scale_conv(second[1], second[2], first[1], output=False), second[2])
    return None


def _scale_conv(weight: torch.Tensor, options: dict, scale: torch.Tensor, *, output: bool) -> torch.Tensor:
    """Fold a per-channel scale into a conv weight: on its output channels (scale after the conv) or its input
    channels (scale before). Layouts: conv (c_out, c_in/g, *k); transpose (c_in, c_out/g, *k)."""
    w = weight.detach().double()
    g = int(options.get("groups", 1))
    extra = (1,) * (w.ndim - 2)
    # the axis that indexes whole channels (dim 0) vs the per-group axis (dim 1)
    whole_axis_is_output = not options.get("transposed", False)
    if output == whole_axis_is_output:
        return w * scale.view(-1, 1, *extra)
    per_group = w.shape[1]
    s = scale.view(g, per_group)  # channel = group · per_group + j
    group_of_row = torch.arange(w.shape[0]) // (w.shape[0] // g)
    return w * s[group_of_row].view(w.shape[0], per_group, *extra)


def _dense(lg: LipGraph, chain: list[fx.Node], norm: float) -> Bound | None:
    """Materialise the composed linear map (per sample, via vmap) when small; exact."""
    first = chain[0].meta["lip.inputs"][0].meta["lip.info"]
    out = chain[-1].meta["lip.info"]
    if first.parts is not None or out.parts is not None or not first.shape or first.shape[0] != 1:
        return None
    sample = first.shape[1:]
    if not dense_is_cheap(math.prod(sample), math.prod(out.shape[1:])):
        return None
    contexts = [context(lg, n, norm) for n in chain]

    def composed(x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(x)
        for ctx in contexts:  # the linear part of each affine op: A x = f(x) − f(0)
            x, zero = ctx.apply(x), ctx.apply(zero)
        return x - zero

    def batched(xs: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(lambda x: composed(x.unsqueeze(0)).squeeze(0))(xs)

    dtype = first.dtype
    try:
        b = dense_norm(lambda xs: batched(xs.to(dtype)).double(), sample, norm)
    except Exception:  # noqa: BLE001 - an op vmap cannot batch: keep the product bound, which is sound
        return None
    # the matrix was computed in the network's own precision: widen the margin to its rounding error
    margin = 0.0 if dtype == torch.float64 else 1e-5
    return certified(b.value, b.method, exact=b.exact, margin=margin)
