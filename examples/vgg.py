"""VGG in the torchvision style (``features`` / ``avgpool`` / ``classifier``), with or without BatchNorm.

Factories: ``build_model`` (CIFAR VGG-11-BN at half width, default), ``vgg11``, ``vgg11_bn``, ``vgg16``,
``vgg16_bn`` (full width, CIFAR size 32x32; VGG-16 takes minutes), ``tiny`` (a 6-conv VGG-BN with 4-8
channels, 16x16) and ``imagenet_vgg16`` (with ``imagenet_vgg16_input``, 224x224: slow).

Usage: ``lipgraph explain examples/vgg.py`` or ``lipgraph explain examples/vgg.py:vgg16_bn``.
"""
from typing import Dict, List, Union

import torch

from torch import Tensor, nn

from _common import randomise_bn

CFGS: Dict[str, List[Union[int, str]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],                       # VGG-11
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # VGG-16
    "tiny": [4, "M", 8, "M", 8, 8, "M", 8, 8, "M"],                                              # for tests
}


def make_layers(cfg: List[Union[int, str]], batch_norm: bool = False, width: float = 1.0) -> nn.Sequential:
    """conv3x3 (+ BN) + ReLU per number, 2x2 max-pool per "M"; ``width`` scales every channel count."""
    layers: List[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out = max(1, int(v * width))
            layers.append(nn.Conv2d(in_channels, out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` then adaptive average pool to ``pool`` x ``pool`` then a dropout MLP classifier."""

    def __init__(self, features: nn.Sequential, num_classes: int = 10, pool: int = 7,
                 hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        channels = [m.out_channels for m in features if isinstance(m, nn.Conv2d)][-1]
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool * pool, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _vgg(cfg: str, batch_norm: bool, num_classes: int = 10, width: float = 1.0, pool: int = 1,
         hidden: int = 512) -> VGG:
    torch.manual_seed(0)
    model = VGG(make_layers(CFGS[cfg], batch_norm, width), num_classes=num_classes, pool=pool, hidden=hidden)
    randomise_bn(model)
    return model.eval()


def _image(size: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=g)


# CIFAR variants: 32x32 inputs leave 1x1 features after five pools, so pool=1 and a 512-wide head.
def vgg11(num_classes: int = 10) -> VGG:
    """VGG-11 (configuration A), CIFAR size."""
    return _vgg("A", False, num_classes)


def vgg11_bn(num_classes: int = 10) -> VGG:
    """VGG-11 with BatchNorm, CIFAR size."""
    return _vgg("A", True, num_classes)


def vgg16(num_classes: int = 10) -> VGG:
    """VGG-16 (configuration D), CIFAR size."""
    return _vgg("D", False, num_classes)


def vgg16_bn(num_classes: int = 10) -> VGG:
    """VGG-16 with BatchNorm, CIFAR size."""
    return _vgg("D", True, num_classes)


def vgg11_input() -> Tensor:
    """Shape (1, 3, 32, 32); also the input of ``vgg11_bn``, ``vgg16`` and ``vgg16_bn``."""
    return _image(32)


vgg11_bn_input = vgg16_input = vgg16_bn_input = vgg11_input


def build_model(num_classes: int = 10) -> VGG:
    """Default model: CIFAR VGG-11-BN at half width (32-256 channels, 256-wide head).

    Full width (``vgg11_bn``) takes ~35 s single-threaded, mostly materialising the 512-channel 2x2 and 4x4
    convolutions exactly; half width keeps the default run short.
    """
    return _vgg("A", True, num_classes, width=0.5, hidden=256)


def example_input() -> Tensor:
    """A CIFAR-sized image, shape (1, 3, 32, 32)."""
    return _image(32)


def tiny() -> VGG:
    """VGG-BN with four pools and 4-8 channels, 16-wide head, for tests (16x16 inputs)."""
    return _vgg("tiny", True, num_classes=5, hidden=16)


def tiny_input() -> Tensor:
    """Shape (1, 3, 16, 16)."""
    return _image(16)


def imagenet_vgg16(num_classes: int = 1000) -> VGG:
    """torchvision's VGG-16 (7x7 adaptive pool, 4096-wide head)."""
    return _vgg("D", False, num_classes, pool=7, hidden=4096)


def imagenet_vgg16_input() -> Tensor:
    """An ImageNet-sized image, shape (1, 3, 224, 224)."""
    return _image(224)
