"""Small networks and oracles shared by the estimator tests (docs/mathematics.md §10)."""
from __future__ import annotations

import torch
from torch import nn

import lipgraph
from lipgraph.estimators import DenseChain
from lipgraph.estimators.dcp import ConvChain

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def mlp(widths: tuple[int, ...], act: str = "relu", seed: int = 0, nonnegative: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ``act`` between them, float64, eval mode; nonnegative weights on
    request (then L = ‖W_K ⋯ W_1‖ exactly, §10). Biases are zero so the all-active region is reachable."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        lin = nn.Linear(n_in, n_out).double()
        w = torch.rand(n_out, n_in, generator=gen, dtype=torch.float64) if nonnegative else \
            torch.randn(n_out, n_in, generator=gen, dtype=torch.float64) / n_in ** 0.5
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.zero_()
        layers += [lin] + ([ACTIVATIONS[act]()] if k < len(widths) - 2 else [])
    return nn.Sequential(*layers).eval()


def chain_of(model: nn.Sequential, n_in: int) -> DenseChain:
    return ConvChain.from_sequential(model, (n_in,)).to_dense()


def product_norm(weights) -> float:
    """‖W_K ⋯ W_0‖₂ (the exact L of the linear chain)."""
    P = weights[0]
    for W in weights[1:]:
        P = W @ P
    return float(torch.linalg.matrix_norm(P, 2))


def lower(model: nn.Module, shape: tuple[int, ...]) -> float:
    """lipgraph's proven lower bound (an attained difference quotient)."""
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return lipgraph.lower_bound(model, x, starts=4, steps=30).value
