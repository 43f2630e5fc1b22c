"""SqueezeNet 1.1 in the torchvision style (``features.N.squeeze`` / ``expand1x1`` / ``expand3x3``).

A fire module squeezes with a 1x1 convolution + ReLU, then expands with a 1x1 and a 3x3 convolution (each +
ReLU) whose outputs are concatenated along channels; lipgraph combines the two branches of the ``torch.cat``
in l2. The classifier is dropout + 1x1 convolution + ReLU + adaptive average pool (no Linear layer).

Factories: ``build_model`` (SqueezeNet 1.1 with a CIFAR stem, 32x32, default), ``tiny`` (three fire modules,
4-8 channels, 16x16) and ``imagenet_squeezenet`` (with ``imagenet_squeezenet_input``).

Usage: ``lipgraph explain examples/squeezenet.py`` or ``lipgraph explain examples/squeezenet.py:tiny``.
"""
from typing import List

import torch
from torch import Tensor, nn


class Fire(nn.Module):
    """squeeze 1x1 -> ReLU -> cat(expand 1x1 -> ReLU, expand 3x3 -> ReLU)."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1: stem conv, overlapping 3x3/2 max-pools (ceil mode) between groups of fire modules.

    ``fires`` lists (squeeze, expand) per fire module; the string "M" inserts a max-pool.
    """

    def __init__(self, num_classes: int = 10, stem: int = 64, fires: List = None, cifar: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if fires is None:
            fires = [(16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256),
                     (64, 256)]
        layers: List[nn.Module] = [
            nn.Conv2d(3, stem, kernel_size=3, stride=1 if cifar else 2, padding=1 if cifar else 0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        ]
        channels = stem
        for f in fires:
            if f == "M":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            else:
                squeeze, expand = f
                layers.append(Fire(channels, squeeze, expand, expand))
                channels = 2 * expand
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


def _squeezenet(**kwargs) -> SqueezeNet:
    torch.manual_seed(0)
    return SqueezeNet(**kwargs).eval()


def _image(size: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=g)


def build_model(num_classes: int = 10) -> SqueezeNet:
    """Default model: SqueezeNet 1.1 with a 3x3 stride-1 stem for 32x32 inputs."""
    return _squeezenet(num_classes=num_classes)


def example_input() -> Tensor:
    """A CIFAR-sized image, shape (1, 3, 32, 32)."""
    return _image(32)


def tiny() -> SqueezeNet:
    """8-channel stem, three fire modules (squeeze 2-4, expand 4-8), for tests."""
    return _squeezenet(num_classes=5, stem=8, fires=[(2, 4), (4, 8), "M", (4, 8)])


def tiny_input() -> Tensor:
    """Shape (1, 3, 16, 16)."""
    return _image(16)


def imagenet_squeezenet(num_classes: int = 1000) -> SqueezeNet:
    """torchvision's SqueezeNet 1.1 (3x3 stride-2 stem)."""
    return _squeezenet(num_classes=num_classes, cifar=False)


def imagenet_squeezenet_input() -> Tensor:
    """An ImageNet-sized image, shape (1, 3, 224, 224)."""
    return _image(224)
