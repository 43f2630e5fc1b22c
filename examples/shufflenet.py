"""ShuffleNetV2 in the torchvision style (``conv1``, ``stage2.0.branch2.3``, ``conv5``, ``fc``).

A stride-1 unit splits the channels in two with ``chunk`` (one half passes through untouched), runs the other
half through 1x1 conv - 3x3 depthwise conv (``groups=channels``) - 1x1 conv, concatenates, and shuffles the
channels (view / transpose / view, or ``nn.ChannelShuffle``: a permutation, Lipschitz constant 1). A stride-2
unit runs both halves through a branch of its own.

Factories: ``build_model`` (ShuffleNetV2 0.5x with a CIFAR stem, 32x32, default), ``shufflenet_v2_x1_0``
(1.0x, 32x32), ``tiny`` (2 stages, 4-16 channels, 16x16), ``tiny_channel_shuffle`` (the same with
``nn.ChannelShuffle``) and ``imagenet_shufflenet_v2_x1_0`` (with its ``_input``).

Usage: ``lipgraph explain examples/shufflenet.py`` or ``lipgraph explain examples/shufflenet.py:tiny``.
"""
from typing import List, Sequence

import torch

from torch import Tensor, nn

from _common import randomise_bn


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g*c, H, W) -> view (N, g, c, H, W) -> transpose -> (N, c*g, H, W)."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


def depthwise_conv(i: int, o: int, kernel_size: int, stride: int = 1, padding: int = 0,
                   bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=i)


class InvertedResidual(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or duplicate (stride 2), branch, concatenate, shuffle."""

    def __init__(self, inp: int, oup: int, stride: int, shuffle_module: bool = False) -> None:
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                depthwise_conv(inp, inp, kernel_size=3, stride=stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, kernel_size=1, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            depthwise_conv(branch_features, branch_features, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )
        self.shuffle = nn.ChannelShuffle(2) if shuffle_module else None

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        if self.shuffle is not None:
            return self.shuffle(out)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """conv1 (+ max-pool on ImageNet) - stages - conv5 1x1 - global average pool - fc."""

    def __init__(self, stages_repeats: Sequence[int], stages_out_channels: Sequence[int], num_classes: int = 10,
                 cifar: bool = True, shuffle_module: bool = False) -> None:
        super().__init__()
        input_channels = 3
        output_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 3, 1 if cifar else 2, 1, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        input_channels = output_channels
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage_names: List[str] = []
        for i, (repeats, output_channels) in enumerate(zip(stages_repeats, stages_out_channels[1:-1])):
            seq = [InvertedResidual(input_channels, output_channels, 2, shuffle_module)]
            seq += [InvertedResidual(output_channels, output_channels, 1, shuffle_module)
                    for _ in range(repeats - 1)]
            name = f"stage{i + 2}"
            setattr(self, name, nn.Sequential(*seq))
            self.stage_names.append(name)
            input_channels = output_channels
        output_channels = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.maxpool(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # global average pool
        return self.fc(x)


def _shufflenet(*args, **kwargs) -> ShuffleNetV2:
    torch.manual_seed(0)
    model = ShuffleNetV2(*args, **kwargs)
    randomise_bn(model)
    return model.eval()


def _image(size: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=g)


def build_model(num_classes: int = 10) -> ShuffleNetV2:
    """Default model: ShuffleNetV2 0.5x ([4, 8, 4] units, widths 24-48-96-192-1024), CIFAR stem."""
    return _shufflenet([4, 8, 4], [24, 48, 96, 192, 1024], num_classes)


def example_input() -> Tensor:
    """A CIFAR-sized image, shape (1, 3, 32, 32)."""
    return _image(32)


def shufflenet_v2_x1_0(num_classes: int = 10) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x (widths 24-116-232-464-1024), CIFAR stem."""
    return _shufflenet([4, 8, 4], [24, 116, 232, 464, 1024], num_classes)


def shufflenet_v2_x1_0_input() -> Tensor:
    """Shape (1, 3, 32, 32)."""
    return _image(32)


def tiny() -> ShuffleNetV2:
    """Two stages of two units (one stride 2, one split), 4-16 channels, for tests."""
    return _shufflenet([2, 2], [4, 8, 16, 16], num_classes=5)


def tiny_input() -> Tensor:
    """Shape (1, 3, 16, 16)."""
    return _image(16)


def tiny_channel_shuffle() -> ShuffleNetV2:
    """``tiny`` with ``nn.ChannelShuffle`` instead of view / transpose / view."""
    return _shufflenet([2, 2], [4, 8, 16, 16], num_classes=5, shuffle_module=True)


tiny_channel_shuffle_input = tiny_input


def imagenet_shufflenet_v2_x1_0(num_classes: int = 1000) -> ShuffleNetV2:
    """torchvision's ShuffleNetV2 1.0x (stride-2 stem + 3x3/2 max-pool)."""
    return _shufflenet([4, 8, 4], [24, 116, 232, 464, 1024], num_classes, cifar=False)


def imagenet_shufflenet_v2_x1_0_input() -> Tensor:
    """An ImageNet-sized image, shape (1, 3, 224, 224)."""
    return _image(224)
