"""Every built-in rule against the dense Jacobian of the op it bounds.

A data table of tiny one-op (or few-op) networks. For each case and norm p ∈ {2, 1, ∞}:

- the rule's constant is ``lipgraph.analyze(model, x, norm=p).bound`` (for a one-op model, the op's constant);
- the true constant is the exact ℓp operator norm of the dense float64 Jacobian (LINEAR ops: at the example
  input), or the max of that norm over many probe inputs, including ones that hit the worst case
  (NONLINEAR ops), or the sup of |φ'| on a fine grid (elementwise activations);
- always ``rule ≥ true·(1 − 1e-6)`` (soundness); where the case is marked ``exact``, ``rule ≈ true`` (rtol 1e-5;
  activations: within 1e-3 of the grid sup).

Expectation per case: "exact" or "upper", or a dict norm -> expectation when it depends on the norm.
The harness (case constructors, Jacobians, probes, true norms) lives in ``oracle.py``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipgraph
from lipgraph.record import record
from tests.rules.oracle import (INF, L2, Case, act, analysis, annotated_ops, assert_table_covers, built, const,
                                derivative_range, fn, lin, nonlin, op_nodes, params, rnd, true_norm)

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


# -- the table ----------------------------------------------------------------------------------------------
class First(nn.Module):
    """The values of a module that returns (values, indices)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)[0]


def _bn(cls, c, affine=True):
    def make():
        m = cls(c, affine=affine)
        with torch.no_grad():
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.1, 2.0)
            if affine:
                m.weight.uniform_(-2, 2)
                m.bias.uniform_(-1, 1)
        return m
    return make


def _affine(module):
    def make():
        m = module()
        with torch.no_grad():
            for name in ("weight", "bias"):
                if getattr(m, name, None) is not None:
                    getattr(m, name).uniform_(-2, 2)
        return m
    return make


def _prelu(n, values):
    def make():
        m = nn.PReLU(n)
        with torch.no_grad():
            m.weight.copy_(torch.tensor(values))
        return m
    return make


# "upper" on ℓ1/ℓ2 but exact on ℓ∞ (cat of disjoint branches: max is exact, sums are not)
CAT_DISJOINT = {2: "upper", 1: "upper", INF: "exact"}
RMS_UPPER_L1_LINF = {2: "exact", 1: "upper", INF: "upper"}

CASES: list[Case] = [
    # ---- dense linear maps --------------------------------------------------------------------------------
    lin("linear", lambda: nn.Linear(4, 3), (1, 4)),
    lin("linear-nobias-rows", lambda: nn.Linear(3, 5, bias=False), (1, 2, 3)),
    lin("F.linear", fn(lambda m, x: F.linear(x, m.w, m.b), w=rnd(3, 4), b=rnd(3)), (1, 4)),
    # ---- conv1d ---------------------------------------------------------------------------------------
    lin("conv1d", lambda: nn.Conv1d(2, 3, 3), (1, 2, 8)),
    lin("conv1d-s2-p1", lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (1, 2, 8)),
    lin("conv1d-same-k4", lambda: nn.Conv1d(2, 2, 4, padding="same"), (1, 2, 7)),
    lin("conv1d-valid", lambda: nn.Conv1d(2, 2, 3, padding="valid"), (1, 2, 7)),
    lin("conv1d-dil2", lambda: nn.Conv1d(2, 3, 3, dilation=2, padding=1), (1, 2, 8)),
    lin("conv1d-depthwise", lambda: nn.Conv1d(3, 3, 3, groups=3, padding=1), (1, 3, 6)),
    lin("conv1d-reflect", lambda: nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect"), (1, 2, 6)),
    lin("conv1d-replicate-p2", lambda: nn.Conv1d(2, 2, 3, padding=2, padding_mode="replicate"), (1, 2, 6)),
    lin("conv1d-circular", lambda: nn.Conv1d(2, 2, 3, padding=1, padding_mode="circular"), (1, 2, 6)),
    lin("F.conv1d", fn(lambda m, x: F.conv1d(x, m.w, stride=2, padding=1), w=rnd(3, 2, 3)), (1, 2, 7)),
    # ---- conv2d ---------------------------------------------------------------------------------------
    lin("conv2d", lambda: nn.Conv2d(2, 3, 3), (1, 2, 6, 6)),
    lin("conv2d-p0-s1", lambda: nn.Conv2d(2, 2, 2, padding=0), (1, 2, 5, 5)),
    lin("conv2d-p1", lambda: nn.Conv2d(2, 3, 3, padding=1), (1, 2, 5, 5)),
    lin("conv2d-s2-p1", lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (1, 2, 6, 6)),
    lin("conv2d-s2-odd", lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1), (1, 2, 7, 5)),
    lin("conv2d-stride-2x1", lambda: nn.Conv2d(2, 2, (3, 2), stride=(2, 1), padding=(1, 0)), (1, 2, 6, 5)),
    lin("conv2d-same", lambda: nn.Conv2d(2, 2, 3, padding="same"), (1, 2, 5, 5)),
    lin("conv2d-same-k2x4", lambda: nn.Conv2d(2, 2, (2, 4), padding="same"), (1, 2, 5, 6)),
    lin("conv2d-same-dil2", lambda: nn.Conv2d(2, 2, 3, padding="same", dilation=2), (1, 2, 6, 6)),
    lin("conv2d-dil2-p2", lambda: nn.Conv2d(2, 2, 3, dilation=2, padding=2), (1, 2, 6, 6)),
    lin("conv2d-dil-2x1", lambda: nn.Conv2d(2, 2, 3, dilation=(2, 1), padding=1), (1, 2, 6, 5)),
    lin("conv2d-depthwise", lambda: nn.Conv2d(3, 3, 3, groups=3, padding=1), (1, 3, 5, 5)),
    lin("conv2d-groups2-mult2", lambda: nn.Conv2d(2, 4, 3, groups=2, padding=1), (1, 2, 5, 5)),
    lin("conv2d-1x1", lambda: nn.Conv2d(3, 2, 1), (1, 3, 4, 4)),
    lin("conv2d-reflect", lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (1, 2, 5, 5)),
    lin("conv2d-reflect-s2", lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="reflect"), (1, 2, 6, 6)),
    lin("conv2d-replicate", lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="replicate"), (1, 2, 5, 5)),
    lin("conv2d-replicate-p2", lambda: nn.Conv2d(1, 2, 3, padding=2, padding_mode="replicate"), (1, 1, 5, 5)),
    lin("conv2d-circular", lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), (1, 2, 5, 5)),
    lin("conv2d-circular-s2", lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="circular"),
        (1, 2, 6, 6)),
    lin("conv2d-circular-s2-odd", lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="circular"),
        (1, 2, 5, 5)),
    lin("conv2d-same-reflect-k4", lambda: nn.Conv2d(2, 2, 4, padding="same", padding_mode="reflect"), (1, 2, 5, 5)),
    lin("conv1d-same-circular-k2", lambda: nn.Conv1d(2, 2, 2, padding="same", padding_mode="circular"), (1, 2, 5)),
    lin("conv2d-same-replicate-dil2", lambda: nn.Conv2d(1, 2, 3, padding="same", dilation=2,
                                                        padding_mode="replicate"), (1, 1, 5, 5)),
    lin("conv2d-circular-p2", lambda: nn.Conv2d(1, 2, 3, padding=2, padding_mode="circular"), (1, 1, 4, 4)),
    lin("F.conv2d", fn(lambda m, x: F.conv2d(x, m.w, stride=2, padding=1), w=rnd(3, 2, 3, 3)), (1, 2, 6, 6)),
    lin("F.conv2d-groups-dil", fn(lambda m, x: F.conv2d(x, m.w, None, 1, 2, 2, 2), w=rnd(2, 1, 3, 3)),
        (1, 2, 6, 6)),
    # ---- conv3d ---------------------------------------------------------------------------------------
    lin("conv3d", lambda: nn.Conv3d(2, 2, 3, padding=1), (1, 2, 4, 4, 4)),
    lin("conv3d-s2", lambda: nn.Conv3d(2, 3, 2, stride=2), (1, 2, 4, 4, 4)),
    lin("conv3d-depthwise-circ", lambda: nn.Conv3d(2, 2, 3, groups=2, padding=1, padding_mode="circular"),
        (1, 2, 3, 4, 4)),
    # ---- transposed convolutions -----------------------------------------------------------------------
    lin("conv_t1d", lambda: nn.ConvTranspose1d(2, 3, 3), (1, 2, 5)),
    lin("conv_t1d-s2-p1-op1", lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1),
        (1, 2, 5)),
    lin("conv_t1d-dil2", lambda: nn.ConvTranspose1d(2, 2, 3, dilation=2, padding=1), (1, 2, 5)),
    lin("conv_t2d", lambda: nn.ConvTranspose2d(2, 2, 3), (1, 2, 4, 4)),
    lin("conv_t2d-s2-p1-op1", lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1),
        (1, 2, 4, 4)),
    lin("conv_t2d-k2-s2", lambda: nn.ConvTranspose2d(3, 2, 2, stride=2), (1, 3, 3, 3)),
    lin("conv_t2d-groups", lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, groups=2, padding=1), (1, 2, 4, 4)),
    lin("F.conv_transpose2d", fn(lambda m, x: F.conv_transpose2d(x, m.w, stride=2, padding=1, output_padding=1),
                                 w=rnd(2, 3, 3, 3)), (1, 2, 3, 3)),
    # ---- batch norm (eval) ----------------------------------------------------------------------------
    lin("batch_norm1d-vec", _bn(nn.BatchNorm1d, 3), (1, 3)),
    lin("batch_norm1d-seq", _bn(nn.BatchNorm1d, 3), (1, 3, 4)),
    lin("batch_norm2d", _bn(nn.BatchNorm2d, 3), (1, 3, 3, 3)),
    lin("batch_norm2d-noaffine", _bn(nn.BatchNorm2d, 2, affine=False), (1, 2, 3, 3)),
    lin("F.batch_norm", fn(lambda m, x: F.batch_norm(x, m.rm, m.rv, m.w, m.b, False, 0.1, 1e-3),
                           rm=rnd(3), rv=lambda: torch.rand(3) + 0.05, w=rnd(3), b=rnd(3)), (1, 3, 4)),
    # ---- feature normalisation (ℓ2 only; certified but loose) -----------------------------------------
    nonlin("layer_norm", lambda: nn.LayerNorm(4), (1, 3, 4), "upper", L2),
    nonlin("layer_norm-2d-affine", _affine(lambda: nn.LayerNorm([3, 4])), (1, 3, 4), "upper", L2),
    nonlin("layer_norm-eps1e-2", lambda: nn.LayerNorm(4, eps=1e-2), (1, 2, 4), "upper", L2),
    nonlin("F.layer_norm", fn(lambda m, x: F.layer_norm(x, (4,), m.w, None, 1e-3), w=rnd(4)), (1, 2, 4),
           "upper", L2),
    nonlin("group_norm", lambda: nn.GroupNorm(1, 2), (1, 2, 3, 3), "upper", L2),
    nonlin("group_norm-affine", _affine(lambda: nn.GroupNorm(3, 3, eps=1e-3)), (1, 3, 2, 2), "upper", L2),
    nonlin("instance_norm", _affine(lambda: nn.InstanceNorm2d(2, affine=True)), (1, 2, 3, 3), "upper", L2),
    # ---- RMSNorm: exact in ℓ2 (worst case x = 0); ℓ1/ℓ∞ exact for n ≤ 4, else a closed-form factor above ------
    nonlin("rms_norm", _affine(lambda: nn.RMSNorm(4, eps=1e-2)), (1, 3, 4), "exact"),
    nonlin("rms_norm-n5", _affine(lambda: nn.RMSNorm(5, eps=1e-2)), (1, 2, 5), RMS_UPPER_L1_LINF),
    nonlin("rms_norm-n2", _affine(lambda: nn.RMSNorm(2, eps=1e-3)), (1, 3, 2), "exact"),
    nonlin("rms_norm-2d-noaffine", lambda: nn.RMSNorm([2, 3], eps=1e-2, elementwise_affine=False), (1, 2, 3),
           RMS_UPPER_L1_LINF),
    nonlin("F.rms_norm", fn(lambda m, x: F.rms_norm(x, (4,), m.w, 1e-3), w=rnd(4)), (1, 2, 4), "exact"),
    # ---- elementwise activations ----------------------------------------------------------------------
    act("relu", nn.ReLU),
    act("leaky_relu-0.1", lambda: nn.LeakyReLU(0.1)),
    act("leaky_relu-2.0", lambda: nn.LeakyReLU(2.0)),
    act("leaky_relu-neg3", lambda: nn.LeakyReLU(-3.0)),
    act("F.leaky_relu-2.0", fn(lambda m, x: F.leaky_relu(x, 2.0))),
    act("prelu-shared", nn.PReLU),
    act("prelu-channels", _prelu(3, [0.2, 1.5, -0.7])),
    act("prelu-channels-small", _prelu(3, [0.2, 0.5, -0.3])),
    act("F.prelu", fn(lambda m, x: F.prelu(x, m.w), w=const([0.1, -2.5, 0.3]))),
    act("rrelu-eval", lambda: nn.RReLU(0.1, 0.3)),
    act("F.rrelu-eval", fn(lambda m, x: F.rrelu(x, 1.5, 2.5, training=False))),
    act("elu", nn.ELU),
    act("elu-0.5", lambda: nn.ELU(alpha=0.5)),
    act("elu-2", lambda: nn.ELU(alpha=2.0)),
    act("F.elu-2", fn(lambda m, x: F.elu(x, 2.0))),
    act("celu-0.5", lambda: nn.CELU(alpha=0.5)),
    act("celu-2", lambda: nn.CELU(alpha=2.0)),
    act("selu", nn.SELU),
    act("gelu", nn.GELU),
    act("gelu-tanh", lambda: nn.GELU(approximate="tanh")),
    act("F.gelu-tanh", fn(lambda m, x: F.gelu(x, approximate="tanh"))),
    act("silu", nn.SiLU),
    act("mish", nn.Mish),
    act("softplus", nn.Softplus),
    act("softplus-beta2-thr30", lambda: nn.Softplus(beta=2.0, threshold=30.0)),  # small thresholds jump: refused
    act("sigmoid", nn.Sigmoid),
    act("torch.sigmoid", fn(lambda m, x: torch.sigmoid(x))),
    act("tanh", nn.Tanh),
    act("hardtanh", nn.Hardtanh),
    act("hardtanh-2-3", lambda: nn.Hardtanh(-2.0, 3.0)),
    act("clamp", fn(lambda m, x: torch.clamp(x, -0.5, 1.0))),
    act("clamp-min", fn(lambda m, x: x.clamp(min=0.3))),
    act("relu6", nn.ReLU6),
    act("hardsigmoid", nn.Hardsigmoid),
    act("hardswish", nn.Hardswish),
    act("softsign", nn.Softsign),
    act("logsigmoid", nn.LogSigmoid),
    act("tanhshrink", nn.Tanhshrink),
    act("softshrink", lambda: nn.Softshrink(0.5)),
    act("threshold-eq", lambda: nn.Threshold(0.5, 0.5)),
    act("F.threshold-eq", fn(lambda m, x: F.threshold(x, -1.0, -1.0))),
    # ---- max pooling (nonlinear: probed with spikes at every pixel) ------------------------------------
    nonlin("max_pool1d-2", lambda: nn.MaxPool1d(2), (1, 2, 8)),
    nonlin("max_pool1d-3-s1", lambda: nn.MaxPool1d(3, 1), (1, 2, 6)),
    nonlin("max_pool1d-3-s2-p1", lambda: nn.MaxPool1d(3, 2, padding=1), (1, 2, 7)),
    nonlin("max_pool1d-dil2", lambda: nn.MaxPool1d(2, 1, dilation=2), (1, 1, 7)),
    nonlin("max_pool1d-ceil", lambda: nn.MaxPool1d(3, 2, ceil_mode=True), (1, 1, 6)),
    nonlin("max_pool2d-2", lambda: nn.MaxPool2d(2), (1, 2, 6, 6)),
    nonlin("max_pool2d-3-s2", lambda: nn.MaxPool2d(3, 2), (1, 1, 7, 7)),
    nonlin("max_pool2d-3-s1-p1", lambda: nn.MaxPool2d(3, 1, padding=1), (1, 1, 5, 5)),
    nonlin("max_pool2d-3-s2-p1", lambda: nn.MaxPool2d(3, 2, padding=1), (1, 2, 6, 6)),
    nonlin("max_pool2d-dil2", lambda: nn.MaxPool2d(2, 1, dilation=2), (1, 1, 5, 5)),
    nonlin("max_pool2d-ceil", lambda: nn.MaxPool2d(3, 2, ceil_mode=True), (1, 1, 6, 6)),
    nonlin("max_pool2d-rect", lambda: nn.MaxPool2d((3, 2), (2, 1)), (1, 1, 7, 5)),
    nonlin("F.max_pool2d", fn(lambda m, x: F.max_pool2d(x, 3, 2, 1)), (1, 1, 6, 6)),
    nonlin("adaptive_max_pool1d-3", lambda: nn.AdaptiveMaxPool1d(3), (1, 2, 5)),
    nonlin("adaptive_max_pool2d-global", lambda: nn.AdaptiveMaxPool2d(1), (1, 2, 4, 4)),
    nonlin("adaptive_max_pool2d-3x3-of-5", lambda: nn.AdaptiveMaxPool2d(3), (1, 1, 5, 5)),
    nonlin("adaptive_max_pool2d-2x3-of-7x5", lambda: nn.AdaptiveMaxPool2d((2, 3)), (1, 2, 7, 5)),
    nonlin("adaptive_max_pool2d-4-of-3", lambda: nn.AdaptiveMaxPool2d((4, 4)), (1, 1, 3, 3)),
    # return_indices=True: the op's output is a (values, indices) tuple
    nonlin("max_pool2d-3-s2-indices", lambda: First(nn.MaxPool2d(3, 2, return_indices=True)), (1, 1, 7, 7)),
    nonlin("F.max_pool1d-indices", fn(lambda m, x: F.max_pool1d(x, 3, 1, return_indices=True)[0]), (1, 2, 5)),
    nonlin("adaptive_max_pool2d-indices", lambda: First(nn.AdaptiveMaxPool2d(3, return_indices=True)),
           (1, 1, 5, 5)),
    nonlin("F.adaptive_max_pool1d-indices", fn(lambda m, x: F.adaptive_max_pool1d(x, 3, return_indices=True)[0]),
           (1, 2, 5)),
    # ---- average pooling (linear) ----------------------------------------------------------------------
    lin("avg_pool1d-3-s2", lambda: nn.AvgPool1d(3, 2), (1, 2, 8)),
    lin("avg_pool2d-2", lambda: nn.AvgPool2d(2), (1, 2, 6, 6)),
    lin("avg_pool2d-3-s2-p1-incl", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=True), (1, 2, 6, 6)),
    lin("avg_pool2d-3-s2-p1-excl", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (1, 2, 6, 6)),
    lin("avg_pool2d-3-s1-p1-excl", lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False), (1, 1, 5, 5)),
    lin("avg_pool2d-ceil", lambda: nn.AvgPool2d(2, 2, ceil_mode=True), (1, 1, 5, 5)),
    lin("avg_pool2d-ceil-p1-excl", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        (1, 1, 6, 6)),
    lin("avg_pool2d-divisor", lambda: nn.AvgPool2d(2, divisor_override=3), (1, 1, 4, 4)),
    lin("F.avg_pool2d", fn(lambda m, x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)), (1, 2, 4, 4)),
    lin("adaptive_avg_pool1d-3-of-7", lambda: nn.AdaptiveAvgPool1d(3), (1, 2, 7)),
    lin("adaptive_avg_pool2d-global", lambda: nn.AdaptiveAvgPool2d(1), (1, 2, 5, 5)),
    lin("adaptive_avg_pool2d-3-of-5", lambda: nn.AdaptiveAvgPool2d(3), (1, 2, 5, 5)),
    lin("adaptive_avg_pool2d-2x3-of-7x5", lambda: nn.AdaptiveAvgPool2d((2, 3)), (1, 1, 7, 5)),
    lin("adaptive_avg_pool2d-4-of-3", lambda: nn.AdaptiveAvgPool2d(4), (1, 1, 3, 3)),
    lin("F.adaptive_avg_pool2d", fn(lambda m, x: F.adaptive_avg_pool2d(x, (3, 2))), (1, 2, 5, 5)),
    # ---- upsampling ------------------------------------------------------------------------------------
    lin("upsample-nearest-2", lambda: nn.Upsample(scale_factor=2, mode="nearest"), (1, 2, 3, 3)),
    lin("upsample-nearest-1d-3", lambda: nn.Upsample(scale_factor=3), (1, 2, 4)),
    lin("upsample-nearest-size", fn(lambda m, x: F.interpolate(x, size=(5, 4))), (1, 2, 3, 3)),
    lin("upsample-nearest-2x1", lambda: nn.Upsample(scale_factor=(2, 1)), (1, 1, 3, 3)),
    lin("upsample-bilinear", lambda: nn.Upsample(scale_factor=2, mode="bilinear"), (1, 2, 3, 3)),
    lin("upsample-bilinear-ac", lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        (1, 1, 3, 4)),
    lin("UpsamplingNearest2d", lambda: nn.UpsamplingNearest2d(scale_factor=2), (1, 1, 3, 3)),
    lin("UpsamplingBilinear2d", lambda: nn.UpsamplingBilinear2d(size=(5, 5)), (1, 1, 3, 3)),
    lin("upsample-bicubic", lambda: nn.Upsample(scale_factor=2, mode="bicubic"), (1, 1, 3, 3)),
    lin("F.interpolate-bicubic-ac", fn(lambda m, x: F.interpolate(x, size=(5, 4), mode="bicubic", align_corners=True)),
        (1, 2, 3, 3)),
    lin("upsample-trilinear", lambda: nn.Upsample(scale_factor=2, mode="trilinear"), (1, 1, 2, 2, 2)),
    lin("F.interpolate-linear-1d", fn(lambda m, x: F.interpolate(x, scale_factor=2.5, mode="linear")), (1, 2, 3)),
    lin("F.interpolate-nearest-exact", fn(lambda m, x: F.interpolate(x, size=(5, 5), mode="nearest-exact")),
        (1, 1, 3, 3)),
    lin("F.interpolate-area", fn(lambda m, x: F.interpolate(x, size=(2, 3), mode="area")), (1, 1, 5, 5)),
    lin("F.interpolate-bilinear-size", fn(lambda m, x: F.interpolate(x, size=(4, 5), mode="bilinear")),
        (1, 2, 3, 3)),
    # ---- padding -------------------------------------------------------------------------------------
    lin("pad-zeros", fn(lambda m, x: F.pad(x, (1, 2))), (1, 2, 4)),
    lin("pad-value", fn(lambda m, x: F.pad(x, (1, 1, 2, 0), value=3.0)), (1, 2, 3, 3)),
    lin("pad-reflect", fn(lambda m, x: F.pad(x, (1, 1, 2, 0), mode="reflect")), (1, 2, 4, 4)),
    lin("pad-reflect-1d-3", fn(lambda m, x: F.pad(x, (3, 2), mode="reflect")), (1, 1, 5)),
    lin("pad-replicate", fn(lambda m, x: F.pad(x, (2, 1, 1, 2), mode="replicate")), (1, 2, 3, 3)),
    lin("pad-circular", fn(lambda m, x: F.pad(x, (2, 1), mode="circular")), (1, 2, 4)),
    lin("ZeroPad2d", lambda: nn.ZeroPad2d(1), (1, 2, 3, 3)),
    lin("ReflectionPad2d", lambda: nn.ReflectionPad2d(2), (1, 1, 4, 4)),
    lin("ReplicationPad1d", lambda: nn.ReplicationPad1d((3, 1)), (1, 2, 3)),
    lin("CircularPad2d", lambda: nn.CircularPad2d(1), (1, 1, 3, 3)),
    # ---- reshapes and permutations ---------------------------------------------------------------------
    lin("Flatten", nn.Flatten, (1, 2, 3, 3)),
    lin("torch.flatten", fn(lambda m, x: torch.flatten(x, 1)), (1, 2, 3, 3)),
    lin("view-size", fn(lambda m, x: x.view(x.size(0), -1)), (1, 2, 3, 3)),
    lin("reshape", fn(lambda m, x: x.reshape(1, -1, 2)), (1, 2, 3, 2)),
    lin("unflatten", fn(lambda m, x: x.unflatten(1, (2, 3))), (1, 6)),
    lin("permute", fn(lambda m, x: x.permute(0, 3, 1, 2)), (1, 2, 3, 3)),
    lin("transpose", fn(lambda m, x: x.transpose(1, 2)), (1, 2, 3)),
    # x.mT / x.T are not covered: fx records them as builtins.getattr(x, "mT"), which has no key (reported)
    lin("squeeze-unsqueeze", fn(lambda m, x: x.unsqueeze(1).squeeze(2)), (1, 1, 3)),
    lin("contiguous", fn(lambda m, x: x.transpose(1, 2).contiguous()), (1, 2, 3)),
    lin("pixel_shuffle", lambda: nn.PixelShuffle(2), (1, 4, 2, 2)),
    lin("pixel_unshuffle", lambda: nn.PixelUnshuffle(2), (1, 1, 4, 4)),
    lin("channel_shuffle", lambda: nn.ChannelShuffle(2), (1, 4, 2, 2)),
    lin("identity", nn.Identity, (1, 3)),
    # ---- indexing ------------------------------------------------------------------------------------
    lin("getitem-slice", fn(lambda m, x: x[:, 1:3]), (1, 3, 4)),
    lin("getitem-step", fn(lambda m, x: x[..., ::2]), (1, 2, 5)),
    lin("getitem-select", fn(lambda m, x: x[:, 0]), (1, 3, 4)),
    lin("getitem-none", fn(lambda m, x: x[:, None]), (1, 3)),
    lin("getitem-repeated", fn(lambda m, x: x[:, [0, 0, 1]]), (1, 3, 2)),
    lin("getitem-repeated-3x", fn(lambda m, x: x[:, [2, 0, 2, 2]]), (1, 3)),
    lin("getitem-buffer-index", fn(lambda m, x: x[:, m.idx], idx=const([1, 1, 0])), (1, 2, 3)),
    lin("getitem-mask", fn(lambda m, x: x[:, m.mask], mask=const([True, False, True])), (1, 3, 2)),
    lin("getitem-2d-adv", fn(lambda m, x: x[:, [0, 1, 1], [2, 2, 2]]), (1, 2, 3)),
    lin("narrow", fn(lambda m, x: torch.narrow(x, 2, 1, 2)), (1, 2, 4)),
    lin("index_select-rep", fn(lambda m, x: x.index_select(1, m.idx), idx=const([0, 2, 0, 0])), (1, 3, 2)),
    # ---- expand / repeat -----------------------------------------------------------------------------
    lin("expand", fn(lambda m, x: x.expand(1, 3, 4)), (1, 1, 4)),
    lin("expand_as", fn(lambda m, x: x.expand_as(m.t), t=rnd(1, 3, 2, 4)), (1, 1, 4)),
    lin("repeat", fn(lambda m, x: x.repeat(1, 2, 3)), (1, 2, 3)),
    lin("broadcast_to", fn(lambda m, x: torch.broadcast_to(x, (1, 2, 3))), (1, 1, 3)),
    # ---- concatenation of branches -------------------------------------------------------------------
    lin("cat-x-2x", fn(lambda m, x: torch.cat([x, 2 * x], 1)), (1, 2, 3)),
    lin("cat-x-x", fn(lambda m, x: torch.cat([x, x], -1)), (1, 2, 3)),
    lin("cat-const", fn(lambda m, x: torch.cat([x, m.c], 1), c=rnd(1, 1, 3)), (1, 2, 3)),
    lin("cat-disjoint", fn(lambda m, x: torch.cat([x[:, 1:], x[:, :1]], 1)), (1, 3, 2), CAT_DISJOINT),
    lin("stack-x-negx", fn(lambda m, x: torch.stack([x, -x], 1)), (1, 3)),
    lin("stack-x-3x-x", fn(lambda m, x: torch.stack([x, 3 * x, x], 0)), (1, 2)),
    # ---- sums and differences ------------------------------------------------------------------------
    lin("add-x-x", fn(lambda m, x: x + x), (1, 3)),
    lin("add-const", fn(lambda m, x: x + m.c, c=rnd(1, 3)), (1, 3)),
    lin("radd-scalar", fn(lambda m, x: 2.0 + x), (1, 3)),
    lin("sub-x-2x", fn(lambda m, x: x - 2 * x), (1, 3), "upper"),
    lin("rsub-scalar", fn(lambda m, x: 1.0 - x), (1, 3)),
    lin("torch.add-alpha", fn(lambda m, x: torch.add(x, x, alpha=2.0)), (1, 3)),
    lin("x.add-alpha", fn(lambda m, x: x.add(3 * x, alpha=-0.5)), (1, 3), "upper"),
    lin("torch.sub-alpha", fn(lambda m, x: torch.sub(x, x, alpha=-3.0)), (1, 3)),
    lin("add-broadcast-const", fn(lambda m, x: x + m.z, z=lambda: torch.zeros(1, 3, 4)), (1, 1, 4)),
    lin("add-broadcast-branch", fn(lambda m, x: x + x[:, :1]), (1, 3, 4), "upper"),
    lin("sub-broadcast-branch-1x1xW", fn(lambda m, x: x[:, :, :1] * 0.5 - x.mean(1, keepdim=True)), (1, 3, 4),
        "upper"),
    lin("add-broadcast-row", fn(lambda m, x: x.unsqueeze(2) + x.unsqueeze(1)), (1, 3), "upper"),
    lin("iadd", fn(lambda m, x: _iadd(x)), (1, 3)),
    lin("add-residual", fn(lambda m, x: x + F.linear(x, m.w), w=rnd(3, 3)), (1, 3), "upper"),
    # ---- scaling by constants -------------------------------------------------------------------------
    lin("mul-scalar", fn(lambda m, x: x * 2.5), (1, 3)),
    lin("rmul-neg-scalar", fn(lambda m, x: -3.0 * x), (1, 3)),
    lin("neg", fn(lambda m, x: -x), (1, 3)),
    lin("mul-channel", fn(lambda m, x: x * m.c, c=rnd(1, 3, 1, 1)), (1, 3, 2, 2)),
    lin("mul-full", fn(lambda m, x: m.c * x, c=rnd(1, 3, 2)), (1, 3, 2)),
    lin("mul-broadcast-grow", fn(lambda m, x: x * m.c, c=rnd(3, 1)), (1, 1, 4)),
    lin("mul-broadcast-grow-2", fn(lambda m, x: x * m.c, c=rnd(2, 3, 1)), (1, 3)),
    lin("mul-0d-tensor", fn(lambda m, x: torch.mul(x, m.c), c=const(-1.7)), (1, 3)),
    lin("mul-mask", fn(lambda m, x: x * m.mask, mask=const([True, False, True])), (1, 3)),
    lin("x.mul", fn(lambda m, x: x.mul(-2.0)), (1, 3)),
    lin("div-scalar", fn(lambda m, x: x / 4.0), (1, 3)),
    lin("div-channel", fn(lambda m, x: x / m.c, c=lambda: torch.rand(1, 3, 1) + 0.2), (1, 3, 2)),
    lin("div-broadcast-grow", fn(lambda m, x: torch.div(x, m.c), c=lambda: torch.rand(2, 1) + 0.2), (1, 3)),
    lin("x.div", fn(lambda m, x: x.div(-0.5)), (1, 3)),
    # ---- matrix products with a constant ----------------------------------------------------------------
    lin("matmul-right", fn(lambda m, x: x @ m.w, w=rnd(4, 3)), (1, 2, 4)),
    lin("matmul-left", fn(lambda m, x: m.a @ x, a=rnd(3, 2)), (1, 2, 4)),
    lin("matmul-vector", fn(lambda m, x: torch.matmul(x, m.v), v=rnd(4)), (1, 2, 4)),
    lin("matmul-2d", fn(lambda m, x: torch.matmul(x, m.w), w=rnd(3, 2)), (1, 3)),
    lin("mm", fn(lambda m, x: torch.mm(m.a, x), a=rnd(2, 1)), (1, 3)),
    lin("matmul-batched-paired", fn(lambda m, x: x @ m.w, w=rnd(2, 3, 2)), (1, 2, 2, 3)),
    lin("matmul-batched-broadcast-x", fn(lambda m, x: x @ m.w, w=rnd(2, 3, 2)), (1, 2, 3), "upper"),
    lin("matmul-batched-cross", fn(lambda m, x: x @ m.w, w=rnd(2, 1, 3, 2)), (1, 2, 2, 3), "upper"),
    lin("matmul-batched-cross-left", fn(lambda m, x: m.a @ x, a=rnd(2, 1, 2, 3)), (1, 2, 3, 2), "upper"),
    lin("addmm", fn(lambda m, x: torch.addmm(m.b, x, m.w), b=rnd(3), w=rnd(4, 3)), (1, 4)),
    lin("addmm-alpha", fn(lambda m, x: torch.addmm(m.b, x, m.w, alpha=-2.0), b=rnd(3), w=rnd(4, 3)), (2, 4)),
    # ---- reductions ------------------------------------------------------------------------------------
    lin("mean-hw", fn(lambda m, x: x.mean(dim=(2, 3))), (1, 2, 3, 3)),
    lin("mean-keepdim", fn(lambda m, x: x.mean(1, keepdim=True)), (1, 3, 4)),
    lin("mean-all", fn(lambda m, x: x.mean()), (1, 2, 3)),
    lin("torch.mean", fn(lambda m, x: torch.mean(x, -1)), (1, 2, 3)),
    lin("sum-last", fn(lambda m, x: x.sum(-1)), (1, 2, 3)),
    lin("sum-dims", fn(lambda m, x: torch.sum(x, dim=[1, 2])), (1, 2, 3, 2)),
    lin("sum-all", fn(lambda m, x: x.sum()), (1, 3)),
    # ---- chunk / split / unbind -----------------------------------------------------------------------
    lin("chunk-getitem", fn(lambda m, x: x.chunk(2, 1)[1]), (1, 2, 3)),
    lin("torch.chunk-getitem", fn(lambda m, x: torch.chunk(x, 3, -1)[0]), (1, 2, 3)),
    lin("split-getitem", fn(lambda m, x: x.split([1, 2], 1)[1]), (1, 3, 2)),
    lin("torch.split-getitem", fn(lambda m, x: torch.split(x, 2, dim=-1)[1]), (1, 2, 4)),
    lin("split-swap-cat", fn(lambda m, x: _swap(x)), (1, 3, 2), CAT_DISJOINT),
    lin("split-add", fn(lambda m, x: _halves_sum(x)), (1, 4), "upper"),
    lin("unbind-getitem", fn(lambda m, x: x.unbind(1)[2]), (1, 3, 2)),
    lin("tensor_split-getitem", fn(lambda m, x: torch.tensor_split(x, 2, dim=1)[0]), (1, 3)),
    # ---- dropout (eval) ---------------------------------------------------------------------------------
    lin("dropout", lambda: nn.Dropout(0.5), (1, 3)),
    lin("dropout2d", lambda: nn.Dropout2d(0.3), (1, 2, 2, 2)),
    lin("alpha_dropout", lambda: nn.AlphaDropout(0.2), (1, 3)),
    lin("F.dropout-eval", fn(lambda m, x: F.dropout(x, 0.3, training=m.training)), (1, 3)),
]


def _iadd(x: torch.Tensor) -> torch.Tensor:
    out = x * 2
    out += x
    return out


def _swap(x: torch.Tensor) -> torch.Tensor:
    a, b = x.split([1, 2], 1)
    return torch.cat([b, a], 1)


def _halves_sum(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, 1)
    return a + b


PARAMS = params(CASES)


MERGES = {"add", "sub", "cat", "stack", "addmm"}  # several inputs: the node shows a gain, not the combination


# -- the tests ------------------------------------------------------------------------------------------------
def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("case,p", PARAMS)
def test_rule_bounds_dense_jacobian(case: Case, p: float):
    report = analysis(case, p)
    bound = report.bound
    assert bound.kind is lipgraph.Kind.CERTIFIED, bound
    rule, true = bound.value, true_norm(case, p)
    assert rule >= true * (1 - 1e-6), f"UNSOUND: rule {rule!r} < true norm {true!r} ({case.id}, p={p})"
    if case.expectation(p) == "exact":
        tol = 1e-3 if case.kind == "act" else 1e-5 * true + 1e-12
        assert abs(rule - true) <= tol, f"not tight: rule {rule!r} vs true norm {true!r} ({case.id}, p={p})"
    nodes = op_nodes(report)
    if len(nodes) == 1 and nodes[0].op not in MERGES and nodes[0].bound.exact:  # one unary op claiming exactness
        assert abs(nodes[0].bound.value - true) <= max(1e-5 * true, 1e-3 if case.kind == "act" else 1e-12), (
            f"rule {nodes[0].op!r} claims exact={nodes[0].bound.value!r} but the true norm is {true!r}")


ACTS = [c for c in CASES if c.kind == "act"]


def _transfer(case: Case):
    (node,) = annotated_ops(case, 2.0)
    return record(node).key, record(node).transfer


@pytest.mark.parametrize("case", ACTS, ids=[c.id for c in ACTS])
def test_activation_slope_interval(case: Case):
    """The declared slope interval [lo, hi] (used by chain passes) contains φ' everywhere, tightly."""
    key, transfer = _transfer(case)
    assert transfer.slope is not None, key
    lo, hi = transfer.slope
    dmin, dmax, _ = derivative_range(case)
    tol = 1e-7  # torch's hardsigmoid backward uses a float32 1/6 even in float64
    assert lo <= dmin + tol and dmax <= hi + tol, (key, (lo, hi), (dmin, dmax))
    assert dmin - lo <= 1e-3 and hi - dmax <= 1e-3, (key, (lo, hi), (dmin, dmax))
    assert transfer.gains[0].value == pytest.approx(max(abs(lo), abs(hi)))


def test_max_pool_3x3_stride2_is_2():
    """docs/mathematics.md §2: 3×3 stride 2 max pooling has ℓ2 constant 2 (a pixel can win 4 windows)."""
    case = next(c for c in CASES if c.id == "max_pool2d-3-s2")
    node = analysis(case, 2).tree
    (leaf,) = op_nodes(analysis(case, 2))
    assert leaf.op == "max_pool2d"
    assert leaf.bound.value == pytest.approx(2.0, rel=1e-12)
    assert analysis(case, 1).bound.value == pytest.approx(4.0)
    assert analysis(case, INF).bound.value == pytest.approx(1.0)
    assert true_norm(case, 2) == pytest.approx(2.0)
    assert node.bound.value == pytest.approx(2.0)


# keys that the table must cover: every built-in rule that can appear in a network (softmax is not a rule yet)
COVERED_KEYS = {
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "batch_norm", "layer_norm",
    "group_norm", "instance_norm", "relu", "leaky_relu", "prelu", "rrelu", "elu", "celu", "selu", "gelu", "silu",
    "mish", "softplus", "sigmoid", "tanh", "hardtanh", "relu6", "hardsigmoid", "hardswish", "softsign",
    "logsigmoid", "tanhshrink", "softshrink", "threshold", "max_pool1d", "max_pool2d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "upsample",
    "pad", "flatten", "unflatten", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "contiguous",
    "identity", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "getitem", "expand", "cat", "stack", "add",
    "sub", "neg", "mul", "div", "matmul", "addmm", "mean", "sum", "chunk", "split", "unbind", "dropout",
    "rms_norm",
}


def test_table_covers_rule_keys():
    assert_table_covers(CASES, COVERED_KEYS)


# -- refusals: ops that look Lipschitz to a derivative test but are not ----------------------------------------
@pytest.mark.parametrize("make", [
    pytest.param(fn(lambda m, x: torch.div(x, 2.0, rounding_mode="floor")), id="div-floor"),
    pytest.param(fn(lambda m, x: torch.div(x, m.c, rounding_mode="trunc"), c=const([2.0, 3.0, 4.0])),
                 id="div-trunc"),
    pytest.param(lambda: nn.Threshold(0.5, 2.0), id="threshold-jump"),
    pytest.param(lambda: nn.Hardshrink(0.5), id="hardshrink"),
    pytest.param(fn(lambda m, x: x * x), id="mul-x-x"),
    pytest.param(fn(lambda m, x: x / (x.abs() + 1)), id="div-by-input"),
    pytest.param(fn(lambda m, x: x.unsqueeze(-1) @ x.unsqueeze(-2)), id="matmul-x-x"),
])
def test_not_lipschitz_ops_are_refused(make):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = make().eval()
    with pytest.raises(lipgraph.NotLipschitzError):
        lipgraph.analyze(model, torch.randn(1, 3), lower=False)


# -- keyword spellings of the second operand ---------------------------------------------------------------
KEYWORD_CASES = [
    lin("torch.add-other-kw-alpha", fn(lambda m, x: torch.add(x, other=3 * x, alpha=2.0)), (1, 3), "exact"),
    lin("torch.sub-other-kw-alpha", fn(lambda m, x: torch.sub(x, other=x, alpha=4.0)), (1, 3), "upper"),
    lin("torch.mul-other-kw", fn(lambda m, x: torch.mul(x, other=m.c), c=rnd(1, 3)), (1, 3)),
    lin("torch.rsub-alpha", fn(lambda m, x: torch.rsub(x, m.c, alpha=3.0), c=rnd(1, 3)), (1, 3)),
    lin("torch.rsub-alpha-branches", fn(lambda m, x: torch.rsub(x, 2 * x, alpha=-0.5)), (1, 3), "upper"),
    lin("torch.add-input-other-kw", fn(lambda m, x: torch.add(input=x, other=x, alpha=3.0)), (1, 3)),
    lin("torch.div-other-kw", fn(lambda m, x: torch.div(x, other=m.c), c=lambda: torch.rand(1, 3) + 0.2), (1, 3)),
]


@pytest.mark.parametrize("case,p", params(KEYWORD_CASES, (2, INF)))
def test_keyword_operands(case: Case, p: float):
    test_rule_bounds_dense_jacobian(case, p)


# -- the export frontend (aten spellings) on the cases where its ops differ from fx's ----------------------------
EXPORT_IDS = ["adaptive_max_pool2d-3x3-of-5", "adaptive_max_pool1d-3", "max_pool2d-3-s2", "max_pool2d-3-s2-indices",
              "adaptive_max_pool2d-indices", "upsample-nearest-1d-3", "upsample-bilinear", "upsample-trilinear",
              "F.interpolate-nearest-exact", "F.interpolate-linear-1d", "getitem-repeated", "getitem-mask",
              "alpha_dropout", "batch_norm2d", "torch.rsub-alpha", "div-channel", "matmul-batched-cross",
              "conv_t2d-s2-p1-op1", "pad-reflect", "rms_norm", "F.rms_norm"]
EXPORT_CASES = [c for c in CASES + KEYWORD_CASES if c.id in EXPORT_IDS]


@pytest.mark.parametrize("case,p", params(EXPORT_CASES, (2, 1)))
def test_export_frontend(case: Case, p: float):
    model, x = built(case)
    bound = lipgraph.analyze(model, x, norm=p, frontend="export", lower=False).bound
    true = true_norm(case, p)
    assert bound.kind is lipgraph.Kind.CERTIFIED, bound
    assert bound.value >= true * (1 - 1e-6), f"UNSOUND under export: {bound.value!r} < {true!r} ({case.id}, p={p})"
    if case.expectation(p) == "exact":
        assert bound.value == pytest.approx(true, rel=1e-5)


@pytest.mark.parametrize("p", [1, INF], ids=["l1", "linf"])
def test_feature_norm_is_l2_only(p: float):
    case = next(c for c in CASES if c.id == "layer_norm")
    model, x = built(case)
    with pytest.raises(lipgraph.UnsupportedOpsError):
        lipgraph.analyze(model, x, norm=p, lower=False)


def test_export_ids_exist():
    assert len(EXPORT_CASES) == len(EXPORT_IDS)
