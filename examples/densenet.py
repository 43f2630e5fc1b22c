"""DenseNet in the torchvision style (``features.denseblock1.denselayer1.conv1`` ...).

Each dense layer is BN-ReLU-conv1x1-BN-ReLU-conv3x3 on the concatenation (``torch.cat``) of every earlier
feature map in its block; transitions are BN-ReLU-conv1x1 + 2x2 average pool. lipgraph combines the branches
of a concatenation in l2 (sqrt of the sum of squares), so the bound grows with the block's depth, not its
product.

Factories: ``build_model`` (a small CIFAR DenseNet: growth 12, blocks (4, 4, 4), default), ``densenet121``
(growth 32, blocks (6, 12, 24, 16), CIFAR 32x32; slow), ``tiny`` (growth 4, blocks (2, 2), 8x8) and
``imagenet_densenet121`` (with ``imagenet_densenet121_input``).

Usage: ``lipgraph explain examples/densenet.py`` or ``lipgraph explain examples/densenet.py:tiny``.
"""
from collections import OrderedDict
from typing import List, Tuple

import torch

import torch.nn.functional as F
from torch import Tensor, nn

from _common import randomise_bn


class _DenseLayer(nn.Module):
    """Bottleneck dense layer: concat(inputs) -> BN-ReLU-conv1x1 (bn_size*k) -> BN-ReLU-conv3x3 (k)."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, features: List[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        x = self.conv2(self.relu2(self.norm2(x)))
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; each sees every earlier output; the block returns their concatenation."""

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
                 drop_rate: float) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-conv1x1 (compression) + 2x2 average pool."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """DenseNet-BC with a CIFAR (3x3 conv) or ImageNet (7x7/2 conv + 3x3/2 max-pool) stem."""

    def __init__(self, growth_rate: int = 32, block_config: Tuple[int, ...] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0.0,
                 num_classes: int = 10, cifar: bool = True) -> None:
        super().__init__()
        if cifar:
            stem = [("conv0", nn.Conv2d(3, num_init_features, kernel_size=3, padding=1, bias=False))]
        else:
            stem = [
                ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ]
        self.features = nn.Sequential(OrderedDict(stem))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def _densenet(**kwargs) -> DenseNet:
    torch.manual_seed(0)
    model = DenseNet(**kwargs)
    randomise_bn(model)
    return model.eval()


def _image(size: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=g)


def build_model(num_classes: int = 10) -> DenseNet:
    """Default model: a small CIFAR DenseNet-BC (growth 12, three blocks of 4 layers, 24 stem channels)."""
    return _densenet(growth_rate=12, block_config=(4, 4, 4), num_init_features=24, num_classes=num_classes)


def example_input() -> Tensor:
    """A CIFAR-sized image, shape (1, 3, 32, 32)."""
    return _image(32)


def densenet121(num_classes: int = 10) -> DenseNet:
    """DenseNet-121 layout (growth 32, blocks (6, 12, 24, 16)) with a CIFAR stem; takes minutes."""
    return _densenet(num_classes=num_classes)


def densenet121_input() -> Tensor:
    """Shape (1, 3, 32, 32)."""
    return _image(32)


def tiny() -> DenseNet:
    """Growth 4, two blocks of 2 layers, 8 stem channels, for tests."""
    return _densenet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=5)


def tiny_input() -> Tensor:
    """Shape (1, 3, 8, 8) (at 16x16 the exact dense norms of the 2048-dim layers take ~10 s)."""
    return _image(8)


def imagenet_densenet121(num_classes: int = 1000) -> DenseNet:
    """torchvision's DenseNet-121 (7x7/2 stem + 3x3/2 max-pool)."""
    return _densenet(num_classes=num_classes, cifar=False)


def imagenet_densenet121_input() -> Tensor:
    """An ImageNet-sized image, shape (1, 3, 224, 224)."""
    return _image(224)
