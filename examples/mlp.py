"""MLP for 8x8 digit images (64-128-128-10, ReLU).

Usage: ``lipgraph explain examples/mlp.py``
"""
import torch
from torch import nn


def build_model(in_features: int = 64, hidden: int = 128, num_classes: int = 10) -> nn.Module:
    """Return a deterministic, eval-mode MLP."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
    return model.eval()


def example_input() -> torch.Tensor:
    """A flattened 8x8 image with a batch dimension of 1."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 64, generator=g)
