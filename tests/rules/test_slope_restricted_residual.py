"""y = A x − B σ(C x + b), σ' ∈ [0, 1]: the S-procedure bound of rules/_by_construction.py (one multiplier t)."""
from __future__ import annotations

import itertools

import pytest
import torch

from lipgraph.rules._by_construction import slope_restricted_residual


def sup_over_slopes(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> float:
    """max over D = diag(d), d ∈ [0, 1]^h, of ‖A − B D C‖₂: a convex function of d, so the max over the 2^h
    vertices; it is the block's exact Lipschitz constant over all slope-restricted σ."""
    h = B.shape[1]
    return max(float(torch.linalg.matrix_norm(A - B @ (torch.tensor(d, dtype=torch.float64)[:, None] * C), 2))
               for d in itertools.product((0.0, 1.0), repeat=h))


def orthogonal(n: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def test_sll_construction_is_certified_at_one() -> None:
    """A = PQ, B = 2PKᵀ, C = KQ with P, Q orthogonal and ‖K‖ = 1 (Araujo et al. 2023): J = P(I − 2KᵀDK)Q."""
    P, Q = orthogonal(4, 0), orthogonal(4, 1)
    K = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    K = K / torch.linalg.matrix_norm(K, 2)
    A, B, C = P @ Q, 2 * P @ K.T, K @ Q
    bound = slope_restricted_residual(A, B, C)
    truth = sup_over_slopes(A, B, C)
    assert truth == pytest.approx(1.0, abs=1e-9)
    assert truth <= bound.value <= 1.0 + 1e-4, bound


@pytest.mark.parametrize("seed", range(4))
def test_generic_blocks_are_bounded_soundly(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    A, B, C = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((3, 4), (3, 6), (6, 4)))
    bound = slope_restricted_residual(A, B, C)
    truth = sup_over_slopes(A, B, C)
    generic = float(torch.linalg.matrix_norm(A, 2) + torch.linalg.matrix_norm(B, 2) * torch.linalg.matrix_norm(C, 2))
    assert bound is not None and truth * (1 - 1e-9) <= bound.value, (bound, truth)
    assert bound.value <= 1.01 * generic  # a search over t finds at least the triangle bound's neighbourhood
