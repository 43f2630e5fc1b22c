import torch

from lipgraph.bound import Kind
from lipgraph.linalg import power_iteration


def _linear(seed: int, shape: tuple[int, int]):
    W = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return W, lambda x: x.flatten(1) @ W.T


def test_converges_from_below():
    W, fn = _linear(0, (12, 20))
    sigma = torch.linalg.matrix_norm(W, 2).item()
    prev = 0.0
    for iters in (1, 3, 10, 300):
        b, _ = power_iteration(fn, (4, 5), iters=iters, tol=0.0)
        assert b.kind is Kind.ESTIMATE and b.method == "power-iteration"
        assert prev - 1e-12 <= b.value <= sigma * (1 + 1e-12)
        prev = b.value
    assert abs(prev - sigma) <= 1e-9 * sigma


def test_warm_start_and_vector():
    W, fn = _linear(1, (8, 8))
    sigma = torch.linalg.matrix_norm(W, 2).item()
    b, v = power_iteration(fn, (8,), iters=1000, tol=1e-14)
    assert v.shape == (8,) and abs(v.norm().item() - 1) < 1e-12
    assert abs(torch.linalg.vector_norm(W @ v).item() - sigma) <= 1e-6 * sigma
    warm, _ = power_iteration(fn, (8,), iters=1, v0=v)
    assert abs(warm.value - b.value) <= 1e-6 * sigma


def test_seed_sets_the_start():
    _, fn = _linear(2, (6, 9))
    runs = [power_iteration(fn, (9,), seed=seed, iters=2, tol=0.0)[1] for seed in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_zero_map():
    b, _ = power_iteration(lambda x: 0 * x, (3,))
    assert b.value == 0.0
