"""Linear-chain fusion (docs/mathematics.md §4): consecutive affine ops with nothing nonlinear between them are one
operator A_k⋯A_1. Its norm is bounded directly — ‖A_k⋯A_1‖ ≤ Π‖A_i‖ and is often much smaller (BatchNorm
folded into the convolution before it is the common case).

Writes ``fused`` (a :class:`~lipgraph.record.FusedRun`: first op, fused Bound, product of the gains) on the last op
of each chain, and a
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
from ..ruleapi import AffineStructure, ChannelMean, ChannelScale, Conv, Matrix
from .context import context
from .autolip import add_shortcut
from ..record import FusedRun, record


def fuse(lg: LipGraph, norm: float) -> None:
    """Record each affine chain whose fused norm beats the product of its members' gains beyond rounding (1e-6),
    with its shortcut. Soundness does not rest on this comparison: it only chooses between two certified bounds of
    the same sub-network (AutoLip takes the smaller anyway). Its answer is the one the computed gains give: the
    pending conv norms' attained values (:func:`lipgraph.linalg.lazy.product_above`) are below those gains, so
    a product of them that passes proves the real product passes; when none does, the gains are computed."""
    for chain in affine_chains(lg):
        fused = record(chain[-1]).fused_norm  # computed by annotate (in the norm pool) when the chain folds
        fused = fused_bound(lg, chain, norm) if fused is None else fused
        gains = [record(n).transfer.gains[0] for n in chain]  # a conv's own norm may be pending (linalg.lazy)
        if fused is not None and product_above(gains, lambda product: fused.value < product * (1 - 1e-6)):
            record(chain[-1]).fused = FusedRun(chain[0], fused, lazy_product(gains))  # tighter beyond rounding
            add_shortcut(chain[-1], chain[0], fused, "fusion")


def fused_members(node: fx.Node) -> list[fx.Node]:
    """The ops of the fused affine chain ending at ``node`` (whose record carries ``fused``), first to last."""
    members = [node]
    while members[-1] is not record(node).fused.first:
        members.append(record(members[-1]).inputs[0])
    return members[::-1]


def is_affine_link(n: fx.Node) -> bool:
    """A single-input affine op with a certified gain, whose input is a tensor (not the tuple of a split, which
    its getitem picks from: a composed operator needs an input shape): a possible member of an affine run."""
    t = record(n).transfer
    return (n.op not in ("placeholder", "output") and t is not None and t.affine and len(record(n).inputs) == 1
            and t.gains[0].kind is Kind.CERTIFIED and record(record(n).inputs[0]).info.parts is None)


def sole_consumer(lg: LipGraph, n: fx.Node) -> fx.Node | None:
    """The one op that consumes ``n``, if ``n`` has exactly one consumer and it has no other varying input."""
    users = list(lg.graph.successors(n))
    return users[0] if len(users) == 1 and len(record(users[0]).inputs) == 1 else None


def affine_runs(lg: LipGraph) -> list[list[fx.Node]]:
    """Maximal paths of single-input affine ops, each feeding only the next (length ≥ 1)."""
    runs, taken = [], set()
    for n in lg.ops():
        if n in taken or not is_affine_link(n):
            continue
        prev = record(n).inputs[0]
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


def fused_bound(lg: LipGraph, chain: list[fx.Node], norm: float,
                structure: AffineStructure | None = None) -> Bound | None:
    """Norm of the composed operator: exact folding of structured ops (``structure``: the chain's
    :func:`folded_structure`, when the caller has it), else the dense operator when small."""
    bound = _folded(folded_structure(chain) if structure is None else structure, norm)
    if bound is None:
        bound = _dense(lg, chain, norm)
    return None if bound is None else Bound(bound.value, bound.kind, f"fused {bound.method}", exact=bound.exact)


_IDENTITIES = ("identity", "dropout", "contiguous")  # the identity map in eval mode (if affine at all)


def is_trivial(n: fx.Node) -> bool:
    """An affine op whose gain is exactly 1 (identity, dropout, reshape…): nothing to tighten."""
    g = record(n).transfer.gains[0]
    return not is_pending(g) and g.exact and g.value == 1.0  # a norm not computed yet is not known to be 1


def folded_structure(chain: list[fx.Node]) -> AffineStructure | None:
    """The structure (:class:`~lipgraph.ruleapi.Conv`, :class:`~lipgraph.ruleapi.Matrix` or
    :class:`~lipgraph.ruleapi.ChannelScale`) of the composed operator of affine ops, folding channel scales into
    convolutions/matrices and multiplying matrices; None if the chain has ops without a structure or a pair that
    does not fold."""
    parts = [record(n).transfer.structure for n in chain
             if record(n).key not in _IDENTITIES and not _drops_unit_dims(n)]
    if not parts or any(p is None for p in parts):
        return None
    acc = parts[0]
    for nxt in parts[1:]:
        acc = _fold_pair(acc, nxt)
        if acc is None:
            return None
    return acc


def _drops_unit_dims(n: fx.Node) -> bool:
    """A reshape (N, C, 1, …, 1) → (N, C): the identity on the channel index (as after global pooling)."""
    if record(n).key not in ("flatten", "reshape", "squeeze"):
        return False
    source, out = record(record(n).inputs[0]).info.shape, record(n).info.shape
    return bool(source) and len(source) > 2 and tuple(source[:2]) == tuple(out or ()) and all(
        m == 1 for m in source[2:])


@dataclass(frozen=True)
class _MeanThenMatrix:
    """x ↦ W·mean(x): :class:`~lipgraph.ruleapi.ChannelMean` over ``size`` positions, then the matrix W."""

    weight: torch.Tensor
    size: int

    def norm(self, p: float) -> Bound:
        """Exact: the mean is M = (I_C ⊗ 1ᵀ)/size with MMᵀ = I/size, so ‖WM‖₂ = ‖W‖₂/√size; the entries of |WM|
        are |w_ic|/size, so ‖WM‖_∞ = ‖W‖_∞ (rows) and ‖WM‖₁ = ‖W‖₁/size (columns). The margin covers the
        float division (a few ulps) on top of ``matrix_norm``'s."""
        b = matrix_norm(self.weight, p)
        factor = 1 / math.sqrt(self.size) if p == 2 else 1.0 if math.isinf(p) else 1 / self.size
        return certified(b.value * factor, f"{b.method} of the channel means", exact=b.exact, margin=1e-15)


def _folded(acc: AffineStructure | None, norm: float) -> Bound | None:
    """Exact norm of a chain's folded structure (:func:`folded_structure`); None when the chain does not fold."""
    if isinstance(acc, Conv):
        return conv_norm(acc.weight, p=norm, **acc.options)
    if isinstance(acc, Matrix):
        return matrix_norm(acc.weight, norm)
    if isinstance(acc, _MeanThenMatrix):
        return acc.norm(norm)
    if isinstance(acc, ChannelScale):  # float64 products of the scales: a relative rounding error of a few 1e-16
        return certified(float(acc.scale.abs().max()), "diagonal", exact=True, margin=1e-12)
    return None


def _fold_pair(first: AffineStructure, second: AffineStructure) -> AffineStructure | None:
    """The structure of ``second ∘ first``, or None when it has no structured form here."""
    match first, second:
        case ChannelScale(), ChannelScale():
            return ChannelScale(first.scale * second.scale)
        case Matrix(), Matrix():
            return Matrix(second.weight.double() @ first.weight.double())
        case Matrix(), ChannelScale() if first.weight.shape[0] == second.scale.numel():
            return Matrix(second.scale[:, None] * first.weight.double())
        case ChannelScale(), Matrix() if second.weight.shape[1] == first.scale.numel():
            return Matrix(second.weight.double() * first.scale[None, :])
        case Conv(), ChannelScale():
            return Conv(_scale_conv(first.weight, first.options, second.scale, output=True), first.options)
        case ChannelScale(), Conv():
            return Conv(_scale_conv(second.weight, second.options, first.scale, output=False), second.options)
        case ChannelMean(), Matrix() if second.weight.shape[1] == first.channels:
            return _MeanThenMatrix(second.weight.double(), first.size)
        case _MeanThenMatrix(), Matrix():
            return _MeanThenMatrix(second.weight.double() @ first.weight, first.size)
        case _MeanThenMatrix(), ChannelScale() if first.weight.shape[0] == second.scale.numel():
            return _MeanThenMatrix(second.scale[:, None] * first.weight, first.size)
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
    first = record(record(nodes[0]).inputs[0]).info
    out = record(nodes[-1]).info
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
