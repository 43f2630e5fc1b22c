"""Small CNN for 1x28x28 (or 1x8x8) digit images.

Mixes module and functional spellings on purpose (``nn.ReLU`` / ``F.relu``,
``torch.flatten`` / ``x.view``), which the tool must normalise.

Usage: ``lipgraph explain examples/cnn.py`` (28x28) or
``lipgraph explain examples/cnn.py:small_cnn`` (8x8).
"""
import torch
import torch.nn.functional as F
from torch import nn

input_shape = (1, 1, 28, 28)


class SmallCNN(nn.Module):
    """conv-BN-ReLU-maxpool x2, then flatten + Linear head."""

    def __init__(self, image_size: int = 28, channels: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * channels)
        self.pool2 = nn.MaxPool2d(2)
        side = image_size // 4
        self.fc = nn.Linear(2 * channels * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu(self.bn1(self.conv1(x))))   # module spelling
        x = F.relu(self.bn2(self.conv2(x)))                  # functional spelling
        x = self.pool2(x)
        x = x.view(x.size(0), -1)                            # view-style flatten
        return self.fc(x)


class SmallCNNFlatten(SmallCNN):
    """Same network using ``torch.flatten`` and ``F.max_pool2d`` instead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), kernel_size=2)
        x = self.pool2(self.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        return self.fc(x)


def _randomise_bn(model: nn.Module) -> None:
    """Give BN layers non-trivial (seeded) running stats and affine params."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


def build_model(image_size: int = 28) -> nn.Module:
    """Deterministic eval-mode CNN for ``image_size`` x ``image_size`` inputs."""
    torch.manual_seed(0)
    model = SmallCNN(image_size=image_size)
    _randomise_bn(model)
    return model.eval()


def small_cnn() -> nn.Module:
    """The 8x8-digits variant, written with ``torch.flatten``."""
    torch.manual_seed(0)
    model = SmallCNNFlatten(image_size=8, channels=8)
    _randomise_bn(model)
    return model.eval()


def small_cnn_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 1, 8, 8, generator=g)


def example_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(*input_shape, generator=g)
