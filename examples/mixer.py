"""MLP-Mixer (Tolstikhin et al., 2021) at CIFAR size.

Patch embedding is a ``Conv2d`` with kernel = stride = patch size; the (N, C, h, w) grid is flattened to
(N, S, C) tokens. Each Mixer layer has a token-mixing MLP (LayerNorm, transpose to (N, C, S), Linear over the
S tokens - GELU - Linear, transpose back, residual add) and a channel-mixing MLP (LayerNorm, Linear - GELU -
Linear over C, residual add). The head is LayerNorm, global average pooling over tokens and a Linear layer.

LayerNorm is globally Lipschitz (its constant depends on eps: lipgraph's rule bounds it, and that bound is
large because eps is small - that is the honest worst case near constant inputs).

Factories: ``build_model`` (patch 4, 64 channels, 4 layers on 32x32, default), ``tiny`` (patch 4, 8
channels, 2 layers on 8x8).

Usage: ``lipgraph explain examples/mixer.py`` or ``lipgraph explain examples/mixer.py:tiny``.
"""
import torch
from torch import Tensor, nn


class MlpBlock(nn.Module):
    """Linear - GELU - Linear (on the last dimension)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MixerBlock(nn.Module):
    """Token mixing (across patches, via transpose) then channel mixing, each pre-norm with a residual."""

    def __init__(self, num_tokens: int, dim: int, tokens_hidden: int, channels_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixing = MlpBlock(num_tokens, tokens_hidden)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mixing = MlpBlock(dim, channels_hidden)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, S, C)."""
        y = self.norm1(x).transpose(1, 2)            # (N, C, S)
        x = x + self.token_mixing(y).transpose(1, 2)
        return x + self.channel_mixing(self.norm2(x))


class MlpMixer(nn.Module):
    """stem (patch conv) - Mixer blocks - LayerNorm - mean over tokens - head."""

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 3, dim: int = 64,
                 depth: int = 4, tokens_hidden: int = 32, channels_hidden: int = 256,
                 num_classes: int = 10) -> None:
        super().__init__()
        num_tokens = (image_size // patch_size) ** 2
        self.stem = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.Sequential(*[MixerBlock(num_tokens, dim, tokens_hidden, channels_hidden)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)                      # (N, C, h, w)
        x = x.flatten(2).transpose(1, 2)      # (N, S, C)
        x = self.blocks(x)
        x = self.norm(x)
        x = x.mean(dim=1)                     # global average pooling over tokens
        return self.head(x)


def _mixer(**kwargs) -> MlpMixer:
    torch.manual_seed(0)
    model = MlpMixer(**kwargs)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.2)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def build_model(num_classes: int = 10) -> MlpMixer:
    """Default model: 8x8 patches of 4x4 pixels (64 tokens), 64 channels, 4 Mixer layers."""
    return _mixer(num_classes=num_classes)


def example_input() -> Tensor:
    """A CIFAR-sized image, shape (1, 3, 32, 32)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 32, 32, generator=g)


def tiny() -> MlpMixer:
    """8x8 image, 4 tokens of 4x4 pixels, 8 channels, 2 layers, for tests."""
    return _mixer(image_size=8, patch_size=4, dim=8, depth=2, tokens_hidden=8, channels_hidden=16,
                  num_classes=5)


def tiny_input() -> Tensor:
    """Shape (1, 3, 8, 8)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 8, 8, generator=g)
