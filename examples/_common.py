"""Helpers shared by the example models (this folder is put on sys.path by `lipgraph explain`)."""
from __future__ import annotations

import torch
from torch import nn


def randomise_bn(model: nn.Module) -> None:
    """Perturb BatchNorm2d running stats and affine params (seeded by the caller) so BN is not the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.2)
                m.bias.uniform_(-0.1, 0.1)
