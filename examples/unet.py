"""U-Net (Ronneberger et al., 2015) for dense prediction, at a small size.

Down path: (conv3x3-BN-ReLU) x2 then a 2x2 max-pool, doubling the channels; up path: a 2x2 stride-2
``ConvTranspose2d`` halving them, ``torch.cat`` with the skip connection from the same level, then
(conv3x3-BN-ReLU) x2; a 1x1 conv gives per-pixel class scores. Module names follow the common
``inc`` / ``down1`` / ``up1`` / ``outc`` layout.

Factories: ``build_model`` (base width 16, depth 3, 1x3x32x32, default), ``tiny`` (base width 2, depth 2,
1x1x8x8).

Usage: ``lipgraph explain examples/unet.py`` or ``lipgraph explain examples/unet.py:tiny``.
"""
import torch

from torch import Tensor, nn

from _common import randomise_bn


class DoubleConv(nn.Sequential):
    """(conv3x3 => BN => ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """ConvTranspose2d (2x2, stride 2) upsampling, concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Encoder-decoder with ``depth`` down/up levels and skip concatenations."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.inc = DoubleConv(in_channels, base)
        self.downs = nn.ModuleList(Down(base * 2 ** i, base * 2 ** (i + 1)) for i in range(depth))
        self.ups = nn.ModuleList(Up(base * 2 ** (i + 1), base * 2 ** i) for i in reversed(range(depth)))
        self.outc = nn.Conv2d(base, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inc(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def _unet(**kwargs) -> UNet:
    torch.manual_seed(0)
    model = UNet(**kwargs)
    randomise_bn(model)
    return model.eval()


def build_model(num_classes: int = 2) -> UNet:
    """Default model: base width 16, three levels (16-32-64-128 channels), RGB in."""
    return _unet(num_classes=num_classes)


def example_input() -> Tensor:
    """Shape (1, 3, 32, 32)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 32, 32, generator=g)


def tiny() -> UNet:
    """Base width 2, two levels, one input channel, for tests."""
    return _unet(in_channels=1, num_classes=2, base=2, depth=2)


def tiny_input() -> Tensor:
    """Shape (1, 1, 8, 8): the Jacobian is then a 128 x 64 matrix."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 1, 8, 8, generator=g)
