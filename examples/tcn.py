"""Temporal convolutional network (Bai, Kolter & Koltun, 2018) for sequences.

Each residual block holds two dilated *causal* ``Conv1d`` layers: the input is padded on the left only with
``F.pad(x, (dilation * (k - 1), 0))``, so output step t sees inputs up to t. Conv - ReLU - dropout twice, then
a residual addition (identity, or a 1x1 conv when the width changes) and a ReLU. Dilations double per block
(1, 2, 4, ...). The head is a Linear layer on the last time step.

Factories: ``build_model`` (4 blocks of 32 channels, 3 input channels, length 64, default), ``tiny``
(2 blocks of 4 channels, length 16).

Usage: ``lipgraph explain examples/tcn.py`` or ``lipgraph explain examples/tcn.py:tiny``.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalConv1d(nn.Conv1d):
    """Conv1d with left-only padding (so it is causal); ``forward`` pads with ``F.pad`` then convolves."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, padding=0)
        self.left_pad = dilation * (kernel_size - 1)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class TemporalBlock(nn.Module):
    """Two causal dilated convs with ReLU + dropout, plus a residual (1x1 conv when widths differ)."""

    def __init__(self, n_inputs: int, n_outputs: int, kernel_size: int, dilation: int,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1 = CausalConv1d(n_inputs, n_outputs, kernel_size, dilation)
        self.relu1 = nn.ReLU()
        self.dropout1 = nn.Dropout(dropout)
        self.conv2 = CausalConv1d(n_outputs, n_outputs, kernel_size, dilation)
        self.relu2 = nn.ReLU()
        self.dropout2 = nn.Dropout(dropout)
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
        self.relu = nn.ReLU()
        for conv in (self.conv1, self.conv2, self.downsample):
            if conv is not None:
                nn.init.normal_(conv.weight, 0, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout1(self.relu1(self.conv1(x)))
        out = self.dropout2(self.relu2(self.conv2(out)))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TCN(nn.Module):
    """Stack of temporal blocks (dilation 2**i) and a Linear head on the last time step."""

    def __init__(self, num_inputs: int, num_channels: Sequence[int], num_classes: int = 10,
                 kernel_size: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        layers = []
        for i, out in enumerate(num_channels):
            inp = num_inputs if i == 0 else num_channels[i - 1]
            layers.append(TemporalBlock(inp, out, kernel_size, dilation=2 ** i, dropout=dropout))
        self.network = nn.Sequential(*layers)
        self.linear = nn.Linear(num_channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C_in, L) -> (N, num_classes) from the last step."""
        y = self.network(x)
        return self.linear(y[:, :, -1])


def _tcn(*args, **kwargs) -> TCN:
    torch.manual_seed(0)
    return TCN(*args, **kwargs).eval()


def build_model(num_classes: int = 10) -> TCN:
    """Default model: 3 input channels, 4 blocks of 32 channels (receptive field 61 steps)."""
    return _tcn(3, [32, 32, 32, 32], num_classes)


def example_input() -> Tensor:
    """Shape (1, 3, 64): 64 time steps of a 3-channel signal."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 64, generator=g)


def tiny() -> TCN:
    """2 input channels, 2 blocks of 4 channels, for tests."""
    return _tcn(2, [4, 4], num_classes=3)


def tiny_input() -> Tensor:
    """Shape (1, 2, 16)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 2, 16, generator=g)
