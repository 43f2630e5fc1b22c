"""Linear-chain fusion (docs/mathematics.md §4): consecutive affine ops with nothing nonlinear between them are one
operator A_k⋯A_1. Its norm is bounded directly — ‖A_k⋯A_1‖ ≤ Π‖A_i‖ and is often much smaller (BatchNorm
folded into the convolution before it is the common case).

Writes ``lip.chain`` on the last op of each chain: ``(first op, fused Bound, product of the gains)``, and a
shortcut (:func:`lipgraph.passes.autolip.add_shortcut`): AutoLip then uses ``min(product path, fused · L(chain
input))``; both are certified upper bounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from ..bound import Bound, Kind, certified
from ..linalg import conv_norm, dense_is_cheap, dense_norm, matrix_norm
from ..linalg.lazy import is_pending, lazy_product, product_above
from ..ir import LipGraph
from .context import context
from .autolip import add_shortcut


def fuse(lg: LipGraph, norm: float) -> None:
    for chain in affine_chains(lg):
        fused = fused_bound(lg, chain, norm)
        gains = [n.meta["lip.transfer"].gains[0] for n in chain]  # a conv's own norm may be pending (linalg.lazy)
        if fused is not None and product_above(gains, lambda product: fused.value < product * (1 - 1e-6)):
            chain[-1].meta["lip.chain"] = (chain[0], fused, lazy_product(gains))  # tighter beyond rounding
            add_shortcut(chain[-1], chain[0], fused, "fusion")


def fused_members(node: fx.Node) -> list[fx.Node]:
    """The ops of the fused affine chain ending at ``node`` (which carries ``lip.chain``), first to last."""
    members = [node]
    while members[-1] is not node.meta["lip.chain"][0]:
        members.append(members[-1].meta["lip.inputs"][0])
    return members[::-1]


def is_affine_link(n: fx.Node) -> bool:
    """A single-input affine op with a certified gain: a possible member of an affine run."""
    t = n.meta.get("lip.transfer")
    return (n.op not in ("placeholder", "output") and t is not None and t.affine
            and len(n.meta["lip.inputs"]) == 1 and t.gains[0].kind is Kind.CERTIFIED)


def sole_consumer(lg: LipGraph, n: fx.Node) -> fx.Node | None:
    """The one op that consumes ``n``, if ``n`` has exactly one consumer and it has no other varying input."""
    users = list(lg.graph.successors(n))
    return users[0] if len(users) == 1 and len(users[0].meta.get("lip.inputs", ())) == 1 else None


def affine_runs(lg: LipGraph) -> list[list[fx.Node]]:
    """Maximal paths of single-input affine ops, each feeding only the next (length ≥ 1)."""
    runs, taken = [], set()
    for n in lg.ops():
        if n in taken or not is_affine_link(n):
            continue
        prev = n.meta["lip.inputs"][0]
        if is_affine_link(prev) and sole_consumer(lg, prev) is n:
            continue  # not the start of its run
        run = [n]
        while (nxt := sole_consumer(lg, run[-1])) is not None and is_affine_link(nxt):
            run.append(nxt)
        taken.update(run)
        runs.append(run)
    return runs


def affine_chains(lg: LipGraph) -> list[list[fx.Node]]:
    """Affine runs with ≥ 2 non-isometries: the ones fusion can tighten."""
    return [run for run in affine_runs(lg) if sum(not is_trivial(c) for c in run) >= 2]


def fused_bound(lg: LipGraph, chain: list[fx.Node], norm: float) -> Bound | None:
    """Norm of the composed operator: exact folding of structured ops, else the dense operator when small."""
    bound = _folded(chain, norm)
    if bound is None:
        bound = _dense(lg, chain, norm)
    return None if bound is None else Bound(bound.value, bound.kind, f"fused {bound.method}", exact=bound.exact)


_IDENTITIES = ("identity", "dropout", "contiguous")  # the identity map in eval mode (if affine at all)


def is_trivial(n: fx.Node) -> bool:
    """An affine op whose gain is exactly 1 (identity, dropout, reshape…): nothing to tighten."""
    g = n.meta["lip.transfer"].gains[0]
    return not is_pending(g) and g.exact and g.value == 1.0  # a norm not computed yet is not known to be 1


def folded_structure(chain: list[fx.Node]) -> tuple | None:
    """The structure (``("conv", weight, options)``, ``("matrix", W)`` or ``("channel_scale", s)``) of the
    composed operator of affine ops, folding channel scales into convolutions/matrices and multiplying matrices;
    None if the chain has ops without a structure or a pair that does not fold."""
    parts = [n.meta["lip.transfer"].structure for n in chain if n.meta["lip.key"] not in _IDENTITIES]
    if not parts or any(p is None for p in parts):
        return None
    acc = parts[0]
    for nxt in parts[1:]:
        acc = _fold_pair(acc, nxt)
        if acc is None:
            return None
    return acc


def _folded(chain: list[fx.Node], norm: float) -> Bound | None:
    """Exact norm of the folded structure (:func:`folded_structure`); None when the chain does not fold."""
    acc = folded_structure(chain)
    if acc is None:
        return None
    kind, *data = acc
    if kind == "conv":
        weight, options = data
        return conv_norm(weight, p=norm, **options)
    if kind == "matrix":
        return matrix_norm(data[0], norm)
    scale = data[0]  # float64 products of the scales: a relative rounding error of a few 1e-16
    return certified(float(scale.abs().max()), "diagonal", exact=True, margin=1e-12)


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


@dataclass(frozen=True)
class LinearPart:
    """The linear part x ↦ A x = f(x) − f(0) of a run of affine ops, per sample, batched on dim 0.

    ``fn`` takes float64 ``(B, *in_shape)`` and runs every op in float64 (constants, parameters and buffers cast),
    so the materialised matrix is the operator up to float64 rounding.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def size(self) -> tuple[int, int]:
        return math.prod(self.in_shape), math.prod(self.out_shape)


def linear_part(lg: LipGraph, nodes: list[fx.Node], norm: float = 2) -> LinearPart | None:
    """The composed linear map of affine ``nodes`` (each the only input of the next), or None when the ops
    cannot be replayed per sample (batched inputs, tuples, ops ``vmap`` cannot batch)."""
    first = nodes[0].meta["lip.inputs"][0].meta["lip.info"]
    out = nodes[-1].meta["lip.info"]
    if first.parts is not None or out.parts is not None or not first.shape or first.shape[0] != 1:
        return None
    contexts = [context(lg, n, norm) for n in nodes]

    def composed(x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(x)
        for ctx in contexts:  # the linear part of each affine op: A x = f(x) − f(0)
            x, zero = ctx.apply(x, dtype=torch.float64), ctx.apply(zero, dtype=torch.float64)
        return x - zero

    per_sample = torch.func.vmap(lambda x: composed(x.unsqueeze(0)).squeeze(0))
    run = lambda xs: per_sample(xs.to(torch.float64))  # noqa: E731
    try:
        run(torch.zeros(1, *first.shape[1:], dtype=torch.float64))
    except Exception:  # noqa: BLE001 - an op that cannot run in float64 or under vmap: no dense certificate
        return None
    return LinearPart(run, tuple(first.shape[1:]), tuple(out.shape[1:]))


def _dense(lg: LipGraph, chain: list[fx.Node], norm: float) -> Bound | None:
    """Materialise the composed linear map when small; exact."""
    part = linear_part(lg, chain, norm)
    if part is None or not dense_is_cheap(*part.size):
        return None
    b = dense_norm(part.fn, part.in_shape, norm)
    return certified(b.value, b.method, exact=b.exact)
