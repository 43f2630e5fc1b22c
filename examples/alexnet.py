"""AlexNet in the torchvision style (``features`` / ``avgpool`` / ``classifier``).

Overlapping 3x3 stride-2 max-pools (each has Lipschitz constant 2 in l2, not 1: every input pixel can sit in
up to 2x2 windows), dropout (the identity in eval mode) and an adaptive average pool before the classifier.

Factories: ``build_model`` (CIFAR-sized AlexNet, 32x32, default), ``tiny`` (8 channels, 16x16) and
``imagenet_alexnet`` (torchvision's sizes, with ``imagenet_alexnet_input``).

Usage: ``lipgraph explain examples/alexnet.py`` or ``lipgraph explain examples/alexnet.py:tiny``.
"""
from typing import Sequence

import torch
from torch import Tensor, nn


class AlexNet(nn.Module):
    """Five convolutions, three overlapping max-pools, then a dropout MLP head.

    ``widths`` are the five convolution widths (torchvision: 64, 192, 384, 256, 256); ``cifar`` uses a 3x3
    stride-1 stem instead of the 11x11 stride-4 one.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (64, 192, 384, 256, 256),
                 hidden: int = 4096, pool: int = 6, cifar: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        stem = (nn.Conv2d(3, c1, kernel_size=3, stride=1, padding=1) if cifar
                else nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2))
        self.features = nn.Sequential(
            stem,
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(c5 * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _alexnet(**kwargs) -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(**kwargs).eval()


def _image(size: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=g)


def build_model(num_classes: int = 10) -> AlexNet:
    """Default model: a CIFAR AlexNet (3x3 stem, halved widths, 1024-wide head, 2x2 pooled features)."""
    return _alexnet(num_classes=num_classes, widths=(32, 96, 192, 128, 128), hidden=1024, pool=2, cifar=True)


def example_input() -> Tensor:
    """A CIFAR-sized image, shape (1, 3, 32, 32)."""
    return _image(32)


def tiny() -> AlexNet:
    """A few channels, for tests."""
    return _alexnet(num_classes=5, widths=(4, 8, 8, 8, 8), hidden=16, pool=1, cifar=True)


def tiny_input() -> Tensor:
    """Shape (1, 3, 16, 16)."""
    return _image(16)


def imagenet_alexnet(num_classes: int = 1000) -> AlexNet:
    """torchvision's AlexNet (11x11/4 stem, 6x6 adaptive pool, 4096-wide head)."""
    return _alexnet(num_classes=num_classes)


def imagenet_alexnet_input() -> Tensor:
    """An ImageNet-sized image, shape (1, 3, 224, 224)."""
    return _image(224)
