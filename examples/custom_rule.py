"""Registering a Lipschitz rule for a custom activation.

``ScaledSoftsign`` computes x -> a * x / (1 + |x|) with a = 2. Its derivative
a / (1 + |x|)^2 lies in [0, a], so it is an elementwise map with slope range
[0, 2]; one line at module level tells lipgraph so.

Usage: ``lipgraph explain examples/custom_rule.py``
"""
import torch
from torch import nn

import lipgraph


class ScaledSoftsign(nn.Module):
    """x -> a * x / (1 + |x|); elementwise, slope in [0, a]."""

    def __init__(self, a: float = 2.0) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x / (1 + x.abs())


# One line: every ScaledSoftsign (a = 2.0) is elementwise with slopes in [0, 2].
lipgraph.register(ScaledSoftsign, lipgraph.elementwise(slope=(0.0, 2.0)))

# Decorator form, for ops that need a hand-written rule (sketch only; the exact
# context API may change):
#
#     class MyOp(nn.Module):
#         def forward(self, x):
#             return 0.5 * torch.sin(x)
#
#     @lipgraph.rule(MyOp)
#     def my_rule(ctx) -> lipgraph.Transfer | lipgraph.Bound:
#         # |d/dx 0.5 sin x| <= 0.5 in every lp norm (elementwise)
#         return lipgraph.certified(0.5, "derivative bound", exact=True)


def build_model() -> nn.Module:
    """Small MLP (64-64-64-10) using ScaledSoftsign activations."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64),
        ScaledSoftsign(2.0),
        nn.Linear(64, 64),
        ScaledSoftsign(2.0),
        nn.Linear(64, 10),
    )
    return model.eval()


def example_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 64, generator=g)
