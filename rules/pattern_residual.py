"""Patterns of residual blocks: y = x ± A σ(B x + b) + c (SLL, CPL) and y = x ± L(x) + c, L affine (LiResNet).

**Affine residual** (LiResNet, Hu et al. 2023: x + conv(x)): the whole block is affine; AutoLip bounds it by
1 + ‖L‖, the construction by ‖I ± L‖, computed here exactly from the dense matrix (materialised when matching,
float64, only while ``DENSE_LIMIT`` allows; L a chain of linear/conv/pad/pooling/reshaping/constant-scaling ops).

**One hidden layer** (SLL, Araujo et al. 2023: y = x − 2 W T⁻¹ σ(Wᵀ x + b); CPL, Meunier et al. 2022:
y = x − (2/‖W‖²) W σ(Wᵀ x + b)). Op by op AutoLip gives 1 + ‖A‖‖B‖ ≈ 3. Matched on 2-D inputs (N, d) when the branch
from x is a chain of affine ops (``linear``, ``matmul`` by a constant, ``mul``/``div`` by constants, ``add``/``sub``
of constants, ``neg``; ``div`` and ``matmul`` with the branch on the left), one elementwise σ with σ' ∈ [0, 1]
(relu, relu6, hardtanh, tanh, sigmoid, leaky_relu with slope ≤ 1), then affine ops again. A and B are materialised
when matching (float64, from the layer's constants; a branch that cannot be run row by row does not match) and
split as s·A = −(Bᵀ Λ + E), Λ ⪰ 0 diagonal fitted column by column, E the remainder:

J = I − Bᵀ Λ D B − E D B with D = diag σ' ∈ [0, 1]. The first part is symmetric with 0 ⪯ Bᵀ Λ D B ⪯ Bᵀ Λ B, so its
spectrum lies in [1 − λ, 1], λ = ‖Λ^{1/2} B‖₂²; hence L₂ ≤ max(1, λ − 1) + ‖E‖₂‖B‖₂ (SLL's Theorem 3 is the case
E = 0, λ ≤ 2). The generic 1 + ‖A‖₂‖B‖₂ also holds; the rule takes the smaller. ℓ1/ℓ∞: 1 + ‖A‖_p‖B‖_p.

Both patterns match only where the compound is at least ``MIN_GAIN`` tighter in ℓ2 than its parts, and the
one-hidden-layer one only for the symmetric constructions (‖E‖ ≤ ``SYMMETRY_TOLERANCE``·‖A‖; the rule still adds
‖E‖‖B‖): an ordinary residual block keeps its layers in the tree, and ``lipschitz_penalty`` keeps training them
(a compound that is not affine has a constant gain there).
"""
from __future__ import annotations

import math

import torch
from torch import fx

from lipgraph.bound import Bound, certified, join_kinds
from lipgraph.patternapi import Chain, GraphView, Match, Pattern, binary_operands
from lipgraph.linalg import dense_is_cheap, materialize, matrix_norm
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer

AFFINE = frozenset({"linear", "matmul", "mul", "div", "add", "sub", "neg"})
AFFINE_LAYERS = AFFINE | {"conv1d", "conv2d", "conv3d", "pad", "reshape", "flatten", "unflatten", "permute",
                          "transpose", "contiguous", "identity", "squeeze", "unsqueeze", "avg_pool1d", "avg_pool2d",
                          "avg_pool3d"}
MONOTONE_CONTRACTIONS = frozenset({"relu", "relu6", "hardtanh", "tanh", "sigmoid", "leaky_relu"})
MAX_FEATURES = 2048
#: a compound hides its layers from the tree: it is matched only when it bounds the block at least this much tighter
MIN_GAIN = 1e-3
#: the one-hidden-layer pattern is for the symmetric constructions (SLL, CPL): ‖E‖₂ ≤ this · ‖A‖₂
SYMMETRY_TOLERANCE = 1e-4


def _chain(h: fx.Node, x: fx.Node, view: GraphView) -> list[fx.Node] | None:
    """The ops from ``x`` to ``h`` (in order) when each has one input-dependent argument, the previous op, used once
    (and, for div and matmul, on the left)."""
    chain = []
    node = h
    while node is not x:
        deps = view.dep_args(node)
        if len(deps) != 1:
            return None
        if view.key(node) in ("mul", "div", "matmul") and len([a for a in node.args if a is deps[0]]) != 1:
            return None
        if view.key(node) in ("div", "matmul") and (not node.args or node.args[0] is not deps[0]
                                                    or "rounding_mode" in node.kwargs):
            return None  # c / h is not affine; C @ h mixes the rows of the batch
        chain.insert(0, node)
        node = deps[0]
    return chain


def _branch(h: fx.Node, x: fx.Node, view: GraphView) -> tuple[list[fx.Node], fx.Node] | None:
    """The chain from ``x`` to ``h`` and its activation, if it has the shape above."""
    chain = _chain(h, x, view)
    if chain is None:
        return None
    activations = [n for n in chain if view.key(n) in MONOTONE_CONTRACTIONS]
    if len(activations) != 1 or any(view.key(n) not in AFFINE for n in chain if n is not activations[0]):
        return None
    act = activations[0]
    if view.key(act) == "leaky_relu":
        slope = act.args[1] if len(act.args) > 1 else act.kwargs.get("negative_slope", 0.01)
        module = view.module(act)
        slope = module.negative_slope if module is not None else view.value(slope)
        if not isinstance(slope, (int, float)) or not 0 <= slope <= 1:
            return None
    if view.key(act) == "hardtanh" and view.module(act) is None and (len(act.args) > 1 or act.kwargs):
        return None  # hardtanh(x, lo, hi) with custom bounds: still slope in [0, 1], but keep the matcher simple
    return chain, act


def _residual_sign(anchor: fx.Node, view: GraphView) -> tuple[fx.Node, fx.Node, float] | None:
    """(x, h, s) for y = x + s·h with s = ±1."""
    key = view.key(anchor)
    if key not in ("add", "sub") or "alpha" in anchor.kwargs:
        return None
    a, b = binary_operands(anchor)
    if not (view.dep(a) and view.dep(b)) or a is b:
        return None
    for x, h, sign in ((a, b, 1.0 if key == "add" else -1.0), (b, a, 1.0 if key == "add" else None)):
        if sign is not None and x in _ancestors_of(h):
            return x, h, sign
    return None


def _ancestors_of(node: fx.Node, limit: int = 32) -> set[fx.Node]:
    seen, frontier = set(), [node]
    while frontier and len(seen) < limit:
        n = frontier.pop()
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                frontier.append(a)
    return seen


def match_residual(anchor: fx.Node, view: GraphView) -> Match | None:
    found = _residual_sign(anchor, view)
    if found is None:
        return None
    x, h, sign = found
    shape = view.shape(x)
    if shape is None or len(shape) != 2 or shape[1] > MAX_FEATURES or view.shape(anchor) != shape:
        return None
    branch = _branch(h, x, view)
    if branch is None:
        return None
    chain, act = branch
    i = chain.index(act)
    hidden = view.shape(act)
    if hidden is None or len(hidden) != 2 or hidden[1] > MAX_FEATURES:
        return None
    with torch.no_grad():
        B = _affine_matrix(Chain(view.gm, chain[:i], x), shape[1])
        A = _affine_matrix(Chain(view.gm, chain[i + 1:], act), hidden[1])
    if B is None or A is None or B.shape != (hidden[1], shape[1]) or A.shape != (shape[1], hidden[1]):
        return None
    _, lam, E = _symmetric_split(A, B, sign)
    norm_a, norm_b = _spectral(A), _spectral(B)
    if _spectral(E) > SYMMETRY_TOLERANCE * norm_a or max(1.0, _spectral(lam.sqrt()[:, None] * B) ** 2 - 1.0) > (
            1 - MIN_GAIN) * (1.0 + norm_a * norm_b):
        return None  # an ordinary residual block: its layers stay in the tree (and train under lipschitz_penalty)
    return Match(nodes=[*chain, anchor], params={"sign": sign, "A": A, "B": B})


def _affine_matrix(chain: Chain, width: int) -> torch.Tensor | None:
    """The (out × width) float64 matrix of the affine ``chain`` applied to rows of width ``width``."""
    basis = torch.cat([torch.zeros(1, width, dtype=torch.float64), torch.eye(width, dtype=torch.float64)])
    try:
        out = chain(basis, dtype=torch.float64)
    except Exception:  # noqa: BLE001 - an op that needs the example's batch size: the rule refuses the compound
        return None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != width + 1:
        return None
    return (out[1:] - out[:1]).T


def _symmetric_split(A: torch.Tensor, B: torch.Tensor, sign: float) -> tuple[torch.Tensor, ...]:
    """M = −s·A = Bᵀ diag(λ) + E with λ ≥ 0 fitted column by column (λ_j = ⟨M_{:j}, B_{j:}⟩ / ‖B_{j:}‖², clamped)."""
    M = -sign * A  # d × n
    rows = (B * B).sum(1)
    lam = torch.where(rows > 0, (M * B.T).sum(0) / rows.clamp_min(1e-300), torch.zeros_like(rows)).clamp_min(0)
    return M, lam, M - B.T * lam[None, :]


def _spectral(W: torch.Tensor) -> float:
    """‖W‖₂ in float64, to decide whether a compound is worth matching (the rule certifies its own numbers)."""
    return float(torch.linalg.matrix_norm(W, 2)) if W.numel() else 0.0


def residual_block(ctx: OpContext) -> Bound:
    """y = x ± A σ(B x + b): min(max(1, ‖Λ^{1/2}B‖² − 1) + ‖E‖‖B‖, 1 + ‖A‖‖B‖) in ℓ2 (proof in the module)."""
    prm = ctx.target.params
    A, B = prm["A"], prm["B"]
    p = ctx.norm
    norm_a, norm_b = matrix_norm(A, p), matrix_norm(B, p)
    generic = Bound(1.0 + norm_a.value * norm_b.value, join_kinds([norm_a.kind, norm_b.kind]), "residual 1 + ‖A‖‖B‖")
    if p != 2:
        return generic
    M, lam, E = _symmetric_split(A, B, prm["sign"])
    inner = matrix_norm(lam.sqrt()[:, None] * B, 2)
    rest = matrix_norm(E, 2)
    frobenius_b = float(torch.linalg.matrix_norm(B))
    slack = 1e-10 * frobenius_b * (float(torch.linalg.matrix_norm(M)) + frobenius_b * (float(lam.max()) if lam.numel() else 0.0))
    value = max(1.0, inner.value ** 2 - 1.0) + (rest.value + slack) * norm_b.value
    if value >= generic.value:
        return generic
    return certified(value, f"symmetric residual (λ = {inner.value ** 2:.6g}, ‖E‖ = {rest.value:.2g})")


def match_affine_residual(anchor: fx.Node, view: GraphView) -> Match | None:
    """y = x ± L(x) + c with L a chain of affine layers (LiResNet's linear residual): the matrix of I ± L."""
    found = _residual_sign(anchor, view)
    if found is None:
        return None
    x, h, sign = found
    shape = view.shape(x)
    chain = _chain(h, x, view)
    if shape is None or view.shape(h) != shape or chain is None or any(view.key(n) not in AFFINE_LAYERS for n in chain):
        return None
    in_shape = shape[1:]
    if not dense_is_cheap(math.prod(in_shape), math.prod(in_shape)):
        return None
    branch = Chain(view.gm, chain, x)
    try:
        with torch.no_grad():
            zero = branch(torch.zeros(1, *in_shape, dtype=torch.float64), dtype=torch.float64)
            matrix = materialize(lambda z: branch(z, dtype=torch.float64) - zero, in_shape)
    except Exception:  # noqa: BLE001 - a branch that needs the example's batch size: no match
        return None
    n = math.prod(in_shape)
    if matrix.shape != (n, n) or _spectral(torch.eye(n, dtype=torch.float64) + sign * matrix) > (1 - MIN_GAIN) * (
            1.0 + _spectral(matrix)):
        return None  # not tighter than 1 + ‖L‖: the layers stay in the tree
    return Match(nodes=[*chain, anchor], params={"matrix": torch.eye(n, dtype=torch.float64) + sign * matrix})


def affine_residual(ctx: OpContext) -> Transfer:
    """x ± L(x) + c, L affine: the exact ℓp norm of the matrix of I ± L (LiResNet, Hu et al. 2023), not 1 + ‖L‖."""
    return Transfer(gains=(matrix_norm(ctx.target.params["matrix"], ctx.norm),), affine=True)


AFFINE_PATTERN = Pattern("affine_residual", "AffineResidual", match_affine_residual, affine_residual,
                         "x ± L(x), L affine (LiResNet): ‖I ± L‖ exactly (dense)")

PATTERN = Pattern("residual_sigma", "ResidualBlock", match_residual, residual_block,
                  "x ± A σ(Bx + b), σ' ∈ [0, 1]: symmetric part (SLL/CPL) bounded exactly", exact=False)


def register(registry: Registry) -> None:
    registry.register_pattern(PATTERN)
    registry.register_pattern(AFFINE_PATTERN)
