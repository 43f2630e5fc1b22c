import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipgraph.linalg import DENSE_LIMIT, dense_is_cheap, dense_norm, materialize, matrix_norm
from lipgraph.linalg import dense as dense_module

P_VALUES = [1, 2, math.inf]


def _conv_map(x: torch.Tensor) -> torch.Tensor:
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return F.conv2d(x, w, stride=2, padding=1)


@pytest.mark.parametrize("chunk_entries", [1, 50, 1 << 22])
def test_materialize_matches_jacobian(oracle, monkeypatch, chunk_entries):
    monkeypatch.setattr(dense_module, "_CHUNK_ENTRIES", chunk_entries)
    W = materialize(_conv_map, (2, 5, 4))
    assert W.dtype == torch.float64 and W.shape == (3 * 3 * 2, 2 * 5 * 4)
    np.testing.assert_allclose(W.numpy(), oracle.jacobian(_conv_map, (2, 5, 4)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 3), (3, 7), (5, 5), (1, 4)])
@pytest.mark.parametrize("p", P_VALUES)
def test_matrix_norm_exact(oracle, shape, p):
    W = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    b = matrix_norm(W, p)
    oracle.assert_exact(b, float(np.linalg.norm(W.numpy(), ord=p)))
    assert b.method == {1: "abs-col-sum", 2: "svd", math.inf: "abs-row-sum"}[p]


def test_matrix_norm_rejects_bad_input():
    with pytest.raises(ValueError):
        matrix_norm(torch.ones(2, 2, 2), 2)
    with pytest.raises(ValueError):
        matrix_norm(torch.ones(2, 2), 3)


@pytest.mark.parametrize("p", P_VALUES)
def test_dense_norm(oracle, p):
    b = dense_norm(_conv_map, (2, 5, 4), p)
    oracle.assert_exact(b, oracle.norm(_conv_map, (2, 5, 4), p))
    assert b.method.startswith("dense-")


def test_dense_is_cheap():
    assert dense_is_cheap(1000, 1000)
    assert not dense_is_cheap(64 * 32 * 32, 64 * 32 * 32)
    assert not dense_is_cheap(DENSE_LIMIT.max_min_dim + 1, DENSE_LIMIT.max_min_dim + 1)
    assert dense_is_cheap(DENSE_LIMIT.max_min_dim, 1)


def test_materialize_by_columns_when_outputs_outnumber_inputs(oracle):
    def upsample(x: torch.Tensor) -> torch.Tensor:
        return _conv_map(F.interpolate(x, scale_factor=3))  # (2, 3, 2) in, (3, 5, 3) out

    W = materialize(upsample, (2, 3, 2))
    np.testing.assert_allclose(W.numpy(), oracle.jacobian(upsample, (2, 3, 2)), rtol=0, atol=1e-12)


def test_materialize_by_rows_checks_the_vjp():
    """A map autograd cannot see through (its vjp is 0) is materialised by columns, not as the zero matrix."""
    A = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def opaque(x: torch.Tensor) -> torch.Tensor:
        return x.detach().reshape(x.shape[0], -1) @ A.T

    assert dense_module._rows(opaque, (2, 4), 3) is None
    np.testing.assert_allclose(materialize(opaque, (2, 4)).numpy(), A.numpy(), rtol=0, atol=1e-14)
    assert dense_norm(opaque, (2, 4), 2).value == pytest.approx(float(np.linalg.norm(A.numpy(), 2)), rel=2e-6)


@pytest.mark.parametrize("norm_of", [
    lambda W: matrix_norm(W, 2),
    lambda W: dense_norm(lambda x: x.reshape(len(x), -1) @ W.mT, (W.shape[1],), 2),
])
def test_dense_norms_run_on_one_thread_with_the_same_value(monkeypatch, norm_of):
    """The eigensolver runs on one torch thread (as in the norm pool), whatever torch's setting; the caller's
    setting is restored and the value is the same as with torch on one thread."""
    W = torch.randn(300, 260, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    seen = []
    eigvalsh = torch.linalg.eigvalsh

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return eigvalsh(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigvalsh", spy)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = norm_of(W).value
        torch.set_num_threads(2)
        several = norm_of(W).value
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    assert seen == [1, 1]
    assert several == single
    exact = float(torch.linalg.matrix_norm(W, 2))
    assert exact <= single <= exact * (1 + 1e-5)  # certified: σ_max with the rounding margin
