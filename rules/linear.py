"""Dense linear maps: exact operator norms (docs/mathematics.md §3: SVD for ℓ2, abs row/column sums for ℓ∞/ℓ1)."""
from __future__ import annotations

import math

import torch

from lipgraph.bound import Bound, certified, join_kinds
from lipgraph.linalg import matrix_norm
from lipgraph.registry import Registry
from lipgraph.ruleapi import Matrix, OpContext, Transfer, Var

from ._gains import broadcast_copies, copies_gain

_TRANSPOSED_NORM = {1: math.inf, 2: 2, math.inf: 1}  # ‖Bᵀ‖_p = ‖B‖_q


def linear(ctx: OpContext) -> Transfer:
    """y = W x + b: ‖W‖_p, exact (each sample/row is mapped independently by the same W)."""
    weight = ctx.arg("weight", 1).detach()
    flat = len(ctx.input.shape) == 2  # (N, features): channel scales (BatchNorm1d) act on the same axis
    return Transfer(gains=(matrix_norm(weight, ctx.norm),), affine=True,
                    structure=Matrix(weight) if flat else None)


def product_gain(var: Var, const: torch.Tensor, var_on_left: bool, p: float) -> Bound:
    """Gain of x ↦ x @ B (x on the left: rows map by Bᵀ) or x ↦ A @ x (columns map by A).

    Batched constants: the max over matrices when each applies to its own slice of x, else (x broadcast
    against several matrices) the ℓp stack of their norms, ‖(A_1x, …, A_kx)‖_p ≤ (Σ‖A_i‖^p)^{1/p}‖x‖.
    """
    c = const.detach().to(torch.float64)
    if c.ndim == 1:
        c = c[:, None] if var_on_left else c[None, :]
    q = _TRANSPOSED_NORM[p] if var_on_left else p
    mats = c.reshape(-1, *c.shape[-2:])
    norms = [matrix_norm(m, q) for m in mats]
    kind = join_kinds(b.kind for b in norms)
    values = [b.value for b in norms]
    # max only if no slice of x meets several matrices (x's batch dims are never broadcast against c's)
    var_batch = tuple(var.shape[:-2]) if len(var.shape) > 2 else ()
    n = max(len(var_batch), c.ndim - 2)
    vb, cb = (1,) * (n - len(var_batch)) + var_batch, (1,) * (n - c.ndim + 2) + tuple(c.shape[:-2])
    if len(values) == 1 or all(v != 1 or k == 1 for v, k in zip(vb, cb)):
        value = max(values)
    else:
        value = max(values) if math.isinf(p) else math.fsum(v ** p for v in values) ** (1 / p)
    return Bound(value, kind, norms[0].method, exact=len(values) == 1 and norms[0].exact)


def matmul(ctx: OpContext) -> Transfer:
    """x @ B or A @ x with one constant operand; x @ y of two input-dependent tensors (attention) is refused."""
    a, b = ctx.args[0], ctx.args[1]
    if isinstance(a, Var) and isinstance(b, Var):
        raise ctx.not_lipschitz("it multiplies two input-dependent tensors (as dot-product attention does; "
                                "Kim, Papamakarios & Mnih 2021)", product=True)
    var, const, left = (a, b, True) if isinstance(a, Var) else (b, a, False)
    return Transfer(gains=(product_gain(var, torch.as_tensor(const), left, ctx.norm),), affine=True)


def addmm(ctx: OpContext) -> Transfer:
    """bias + mat1 @ mat2 (how some exporters spell a linear layer); alpha/beta scale the two terms."""
    bias, mat1, mat2 = ctx.args[0], ctx.args[1], ctx.args[2]
    alpha, beta = abs(float(ctx.arg("alpha", None, 1.0))), abs(float(ctx.arg("beta", None, 1.0)))
    gains = []
    for v in ctx.inputs:
        if v is bias:
            g = copies_gain(broadcast_copies(v, ctx.output_shape), ctx.norm, "add")
            gains.append(certified(beta * g.value, "add", exact=True))
        elif isinstance(mat1, Var) and isinstance(mat2, Var):
            raise ctx.not_lipschitz("it multiplies two input-dependent tensors", product=True)
        else:
            g = product_gain(v, torch.as_tensor(mat2 if v is mat1 else mat1), v is mat1, ctx.norm)
            gains.append(Bound(alpha * g.value, g.kind, g.method, exact=g.exact))
    return Transfer(gains=tuple(gains), affine=len(gains) == 1)


def register(registry: Registry) -> None:
    registry.register("linear", linear, exact=True)
    registry.register("matmul", matmul, exact=True)
    registry.register("addmm", addmm, exact=True)
