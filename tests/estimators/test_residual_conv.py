"""Frequency-domain bounds of whole convolutional residual blocks (docs/residual.md): above the attained Jacobian
norms (zero padding, strides, projection shortcuts, BatchNorm folded), never above the separate bound by much."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lipgraph.errors import InputError
from lipgraph.estimators.dcp import Conv2dSpec
from lipgraph.estimators.residual_conv import ConvResidualBlock, residual_fft, torus_sizes
from lipgraph.linalg import conv_norm

from tests.estimators.test_residual_pair import attained_norm
from tests.fixtures.zoo import BasicBlock, _randomise_bn


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Conv2dSpec:
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return Conv2dSpec(conv.weight.detach().double() * scale[:, None, None, None], conv.stride, conv.padding)


def _block(cin: int, cout: int, stride: int, hw: int, seed: int) -> tuple[BasicBlock, ConvResidualBlock]:
    torch.manual_seed(seed)
    b = _randomise_bn(BasicBlock(cin, cout, stride)).double().eval()
    shortcut = None if b.downsample is None else _folded(b.downsample[0], b.downsample[1])
    spec = ConvResidualBlock(_folded(b.conv1, b.bn1), _folded(b.conv2, b.bn2), (0.0, 1.0), (cin, hw, hw), shortcut)
    return b, spec


def _attained(b: BasicBlock, shape: tuple[int, ...], points: int = 40) -> float:
    """max over random points of ‖J‖ of x ↦ x (or P x) + branch(x), without the post-add ReLU."""
    def f(x):
        out = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))
        return out + (x if b.downsample is None else b.downsample(x))
    return attained_norm(f, shape, points)


@pytest.mark.parametrize("cin,cout,stride,hw", [(2, 2, 1, 5), (2, 3, 2, 6), (3, 3, 1, 4), (2, 4, 2, 5)])
def test_fft_block_bound_is_sound_and_beats_the_separate_bound(cin, cout, stride, hw) -> None:
    for seed in range(2):
        b, spec = _block(cin, cout, stride, hw, seed)
        bound = residual_fft(spec).value
        assert bound >= _attained(b, (cin, hw, hw)) * (1 - 1e-9)
        hidden = spec.conv0.out_shape(spec.input_shape)
        product = spec.conv0.norm(spec.input_shape).value * spec.conv1.norm(hidden).value
        shortcut = 1.0 if spec.shortcut is None else spec.shortcut.norm(spec.input_shape).value
        assert bound <= (shortcut + product) * 1.05  # circular norms are a few % above zero-padded ones


def test_torus_leaves_no_wrap_around() -> None:
    _, spec = _block(2, 3, 2, 6, 0)
    N1 = torus_sizes(spec)
    assert all(2 * n >= 6 + 1 for n in N1) and all(n >= 3 + 1 for n in N1)


def test_bad_blocks_are_refused() -> None:
    _, spec = _block(2, 3, 2, 6, 0)
    with pytest.raises(InputError, match="shortcut output"):
        ConvResidualBlock(spec.conv0, spec.conv1, (0.0, 1.0), (2, 6, 6), None)
    with pytest.raises(InputError, match="stride-1 last conv"):
        ConvResidualBlock(spec.conv0, Conv2dSpec(spec.conv1.weight, (2, 2), (1, 1)), (0.0, 1.0), (2, 6, 6), None)


def test_frequency_certificate_rejects_infeasible_multipliers_and_low_rho() -> None:
    """λ below ‖C̃_1‖²/2 makes −H(ω) indefinite (rejected); a ρ below ρ*(λ) fails the per-frequency proof."""
    from lipgraph.estimators.recertify import InfeasibleMultipliers, verified_psd
    from lipgraph.estimators.residual_conv import _lmi, _schur, spectra

    _, spec = _block(2, 3, 2, 6, 0)
    sp = spectra(spec)
    lam0 = float(torch.linalg.matrix_norm(sp.C1, 2).max()) ** 2 / 2
    ones = torch.ones(sp.C1.shape[2], dtype=torch.float64)
    with pytest.raises(InfeasibleMultipliers, match="not positive definite"):
        _schur(sp, 0.9 * lam0 * ones, 0.0, 1.0)
    lam = 2 * lam0 * ones
    lam[0] *= 3  # per-channel multipliers
    rho = float(torch.linalg.eigvalsh(_schur(sp, lam, 0.0, 1.0))[:, -1].max())
    frequencies = range(sp.C0.shape[0])
    assert all(verified_psd(*_lmi(sp, k, lam, rho * 1.01, 0.0, 1.0)) for k in frequencies)
    assert not all(verified_psd(*_lmi(sp, k, lam, rho * 0.99, 0.0, 1.0)) for k in frequencies)
