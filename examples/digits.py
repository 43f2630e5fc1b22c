"""scikit-learn's 8×8 digits as torch tensors, two small classifiers, and a minimal training loop.

    x_train, y_train, x_test, y_test = load_digits_tensors()      # images (N, 1, 8, 8) in [0, 1], labels int64
    model = train(mlp(), x_train, y_train, epochs=30, lr=3e-3)    # returned in eval mode
    accuracy(model, x_test, y_test)

The data ships with scikit-learn (no download): ``pip install "lipgraph[examples]"``.
Usage with the CLI: ``lipgraph certify examples/digits.py:cnn --weights cnn.pt --data digits_test.pt``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Penalty = Callable[[nn.Module], Tensor]


def load_digits_tensors(seed: int = 0, test_fraction: float = 0.25) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test): float32 images (N, 1, 8, 8) scaled to [0, 1] and int64 labels,
    split at random (``seed``) with ``test_fraction`` of the 1797 images held out."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError('the digits examples need scikit-learn: pip install "lipgraph[examples]"') from None
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    test, train_ = order[:n_test], order[n_test:]
    return x[train_], y[train_], x[test], y[test]


def flat(x: Tensor) -> Tensor:
    """Images (N, 1, 8, 8) -> vectors (N, 64)."""
    return x.reshape(len(x), -1)


def mlp(hidden: int = 64, seed: int = 0) -> nn.Module:
    """Flatten, 64-hidden-hidden-10 with ReLU (eval mode; ``train`` switches it)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10)).eval()


def cnn(channels: int = 8, seed: int = 0) -> nn.Module:
    """conv3×3-BN-ReLU-maxpool, conv3×3-ReLU-maxpool, Linear: 8×8 -> 4×4 -> 2×2 -> 10 (eval mode)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * 4, 10),
    ).eval()


def build_model() -> nn.Module:
    """For ``lipgraph explain|certify examples/digits.py``: the MLP (load trained weights with ``--weights``)."""
    return mlp()


def example_input() -> Tensor:
    return torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def train(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, lr: float, penalty: Penalty | None = None,
          weight: float = 0.0, seed: int = 0, batch_size: int = 64) -> nn.Module:
    """Adam on cross-entropy ``+ weight · penalty(model)`` (e.g. ``lambda m: lipgraph.lipschitz_penalty(m, x0)``),
    minibatches shuffled with ``seed``; returns ``model`` in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            if penalty is not None and weight:
                loss = loss + weight * penalty(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` that ``model`` (put in eval mode) classifies as ``y``."""
    return (model.eval()(x).argmax(1) == y).float().mean().item()
