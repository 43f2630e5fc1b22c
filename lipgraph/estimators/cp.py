"""Combettes–Pesquet / LipLT bound (Combettes & Pesquet 2020, Prop. 3.6; Fazlyab et al., LipLT, NeurIPS 2023;
docs/mathematics.md §6) — certified, any ℓp norm.

Write each activation as φ_i = m_i·Id + r_i·N_i with N_i elementwise of slope in [−1, 1] (so 1-Lipschitz in
every ℓp norm), m_i = (α_i + β_i)/2, r_i = (β_i − α_i)/2. Expanding f = W_K φ_{K−1} ⋯ φ_1 W_1 layer by layer,
with L_k the bound of x ↦ W_k φ_{k−1}(⋯):

    L_1 = ‖W_1‖,   L_k = |m_1 ⋯ m_{k−1}|·‖W_k ⋯ W_1‖ + Σ_{j=2}^{k} r_{j−1}·|m_j ⋯ m_{k−1}|·‖W_k ⋯ W_j‖·L_{j−1}.

Always ≤ the AutoLip product Π‖W_i‖·Π max(|α_i|, |β_i|), and as good as its partial-product norms are tight:
those must be certified for the result to be.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from lipgraph.bound import Bound, certified
from lipgraph.estimators import ChainEstimator, DenseChain, register_estimator
from lipgraph.linalg import matrix_norm


def cp_value(norm_of: Callable[[int, int], Any], slopes: Sequence[tuple[float, float]]) -> Any:
    """The DP above; ``norm_of(j, k)`` bounds ‖W_k ⋯ W_j‖ (0-based, inclusive). Plain arithmetic: floats give a
    float (certified when the norms are), torch scalars a differentiable value (``lipschitz_penalty``)."""
    mids = [(lo + hi) / 2 for lo, hi in slopes]
    rads = [(hi - lo) / 2 for lo, hi in slopes]
    L: list[float] = []
    for k in range(len(slopes) + 1):
        total = abs(math.prod(mids[:k])) * norm_of(0, k)
        for j in range(1, k + 1):
            total += rads[j - 1] * abs(math.prod(mids[j:k])) * norm_of(j, k) * L[j - 1]
        L.append(total)
    return L[-1]


def partial_product_norms(weights: Sequence, p: float = 2) -> Callable[[int, int], float]:
    """``norm_of(j, k)`` = exact certified ‖W_k ⋯ W_j‖_p of explicit matrices (O(K²) products, memoised)."""
    table: dict[tuple[int, int], float] = {}
    for j in range(len(weights)):
        product = weights[j]
        for k in range(j, len(weights)):
            if k > j:
                product = weights[k] @ product
            table[j, k] = matrix_norm(product, p).value
    return lambda j, k: table[j, k]


def cp(chain: DenseChain, p: float = 2) -> Bound:
    """Certified CP/LipLT bound of a dense chain in the ℓp norm."""
    return certified(cp_value(partial_product_norms(chain.weights, p), chain.slopes), "cp-liplt")


register_estimator(ChainEstimator(
    "cp", cp, certified=True, any_norm=cp, limits="larger chains: structured partial products",
    description="Combettes–Pesquet / LipLT: certified norms of the K² partial products"))
