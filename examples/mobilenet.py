"""MobileNetV2 in the torchvision style (``features.N.conv.M``, ``classifier``).

Inverted residual blocks: 1x1 expansion (BN + ReLU6), 3x3 depthwise convolution (``groups=channels``, BN +
ReLU6), then a *linear* 1x1 bottleneck (BN, no activation), with an identity shortcut when the stride is 1
and the widths match.

Factories: ``build_model`` (MobileNetV2 at width 0.5 on CIFAR 32x32, default), ``mobilenet_v2`` (width 1.0,
CIFAR 32x32), ``tiny`` (width 0.25, 3 stages, 8x8) and ``imagenet_mobilenet_v2`` (with
``imagenet_mobilenet_v2_input``).

Usage: ``lipgraph explain examples/mobilenet.py`` or ``lipgraph explain examples/mobilenet.py:tiny``.
"""
from typing import List, Optional, Sequence

import torch

from torch import Tensor, nn

from _common import randomise_bn

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat)
INVERTED_RESIDUAL_SETTING: List[List[int]] = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def _make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (not going down by more than 10 %)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """conv (no bias) + BN + ReLU6."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise 3x3 -> linear project 1x1 (+ identity when stride 1 and inp == oup)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers += [
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),  # depthwise
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),                                # linear bottleneck
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2; ``cifar`` makes the stem stride 1 (and the second stage stride 1) for 32x32 inputs."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0,
                 setting: Sequence[Sequence[int]] = INVERTED_RESIDUAL_SETTING, last_channel: int = 1280,
                 cifar: bool = True, dropout: float = 0.2) -> None:
        super().__init__()
        input_channel = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult))
        features: List[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=1 if cifar else 2)]
        for i, (t, c, n, s) in enumerate(setting):
            if cifar and i == 1:
                s = 1
            output_channel = _make_divisible(c * width_mult)
            for j in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if j == 0 else 1, t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _mobilenet(**kwargs) -> MobileNetV2:
    torch.manual_seed(0)
    model = MobileNetV2(**kwargs)
    randomise_bn(model)
    return model.eval()


def _image(size: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=g)


def build_model(num_classes: int = 10) -> MobileNetV2:
    """Default model: MobileNetV2 at width 0.5 with the CIFAR stem (last layer 1280 wide)."""
    return _mobilenet(num_classes=num_classes, width_mult=0.5)


def example_input() -> Tensor:
    """A CIFAR-sized image, shape (1, 3, 32, 32)."""
    return _image(32)


def mobilenet_v2(num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2 at width 1.0 with the CIFAR stem."""
    return _mobilenet(num_classes=num_classes)


def mobilenet_v2_input() -> Tensor:
    """Shape (1, 3, 32, 32)."""
    return _image(32)


def tiny() -> MobileNetV2:
    """Width 0.25, three stages (one repeated, so one identity shortcut), 32-wide last layer, for tests."""
    return _mobilenet(num_classes=5, width_mult=0.25, setting=[[1, 16, 1, 1], [2, 24, 2, 2], [2, 32, 1, 2]],
                      last_channel=32)


def tiny_input() -> Tensor:
    """Shape (1, 3, 8, 8) (at 16x16 the exact dense norms of the 2048-dim layers take ~15 s)."""
    return _image(8)


def imagenet_mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """torchvision's MobileNetV2 (stride-2 stem)."""
    return _mobilenet(num_classes=num_classes, cifar=False)


def imagenet_mobilenet_v2_input() -> Tensor:
    """An ImageNet-sized image, shape (1, 3, 224, 224)."""
    return _image(224)
