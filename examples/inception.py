"""A small Inception-style network in the torchvision ``GoogLeNet`` style (``inception3a.branch2.1.conv``).

Each Inception block runs four branches on the same input and concatenates them along channels:
1x1 conv | 1x1 reduce -> 3x3 conv | 1x1 reduce -> 3x3 conv (torchvision's "5x5" branch) | 3x3/1 max-pool ->
1x1 conv. Every conv is conv + BN + ReLU (``BasicConv2d``). lipgraph combines the four branch bounds of the
``torch.cat`` in l2, and bounds the stride-1 3x3 max-pool (a window count of 9 per pixel) by 3.

Factories: ``build_model`` (stem + inception3a/3b + pool + inception4a, CIFAR 32x32, default), ``tiny``
(two blocks with 2-4 channel branches, 16x16).

Usage: ``lipgraph explain examples/inception.py`` or ``lipgraph explain examples/inception.py:tiny``.
"""
from typing import Sequence

import torch

from torch import Tensor, nn

from _common import randomise_bn


class BasicConv2d(nn.Module):
    """conv (no bias) + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four parallel branches concatenated along channels."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),  # 3x3 here, as in torchvision
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(outputs, 1)

    @staticmethod
    def out_channels(cfg: Sequence[int]) -> int:
        return cfg[0] + cfg[2] + cfg[4] + cfg[5]


class SmallGoogLeNet(nn.Module):
    """conv1 - conv2 - inception3a - inception3b - maxpool3 - inception4a - avgpool - dropout - fc."""

    def __init__(self, num_classes: int = 10, stem: int = 64,
                 cfg3a: Sequence[int] = (64, 96, 128, 16, 32, 32),
                 cfg3b: Sequence[int] = (128, 128, 192, 32, 96, 64),
                 cfg4a: Sequence[int] = (192, 96, 208, 16, 48, 64), dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(3, stem, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(2, stride=2)
        self.conv2 = BasicConv2d(stem, stem, kernel_size=3, padding=1)
        self.inception3a = Inception(stem, *cfg3a)
        self.inception3b = Inception(Inception.out_channels(cfg3a), *cfg3b)
        self.maxpool3 = nn.MaxPool2d(2, stride=2)
        self.inception4a = Inception(Inception.out_channels(cfg3b), *cfg4a)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(Inception.out_channels(cfg4a), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.maxpool1(x)
        x = self.conv2(x)
        x = self.inception3a(x)
        x = self.inception3b(x)
        x = self.maxpool3(x)
        x = self.inception4a(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.fc(x)


def _googlenet(**kwargs) -> SmallGoogLeNet:
    torch.manual_seed(0)
    model = SmallGoogLeNet(**kwargs)
    randomise_bn(model)
    return model.eval()


def _image(size: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=g)


def build_model(num_classes: int = 10) -> SmallGoogLeNet:
    """Default model: GoogLeNet's inception3a/3b/4a at half width on 32x32 inputs."""
    return _googlenet(num_classes=num_classes, stem=32, cfg3a=(32, 48, 64, 8, 16, 16),
                      cfg3b=(64, 64, 96, 16, 48, 32), cfg4a=(96, 48, 104, 8, 24, 32))


def example_input() -> Tensor:
    """A CIFAR-sized image, shape (1, 3, 32, 32)."""
    return _image(32)


def tiny() -> SmallGoogLeNet:
    """4-channel stem, three blocks with 2-4 channel branches, for tests."""
    return _googlenet(num_classes=5, stem=4, cfg3a=(2, 2, 4, 2, 2, 2), cfg3b=(2, 2, 4, 2, 2, 2),
                      cfg4a=(2, 2, 2, 2, 2, 2))


def tiny_input() -> Tensor:
    """Shape (1, 3, 16, 16)."""
    return _image(16)
