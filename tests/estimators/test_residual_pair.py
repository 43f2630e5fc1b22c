"""Residual blocks and runs of them as one per-frequency LipSDP (docs/residual.md, "Several blocks jointly"): above
the attained Jacobian norms (identity and projection shortcuts, two blocks with the ReLU between them, Bottleneck,
inverted residual with a depthwise conv, random and trained weights), never above the product of the parts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph.errors import InputError
from lipgraph.estimators.dcp import Conv2dSpec
from lipgraph.estimators.residual_conv import ConvResidualBlock, residual_fft
from lipgraph.estimators.residual_pair import (ConvNet, Layer, PairLMI, compose, composed_bound, joint_bound,
                                               search)

from tests.fixtures.zoo import BasicBlock, _randomise_bn

RELU = (0.0, 1.0)


def _spec(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> Conv2dSpec:
    w = conv.weight.detach().double()
    if bn is not None:
        w = w * (bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps))[:, None, None, None]
    return Conv2dSpec(w, conv.stride, conv.padding, conv.dilation, conv.groups)


def _basic_net(b: BasicBlock, shape: tuple[int, int, int]) -> ConvNet:
    """x ↦ P x + bn2∘conv2∘relu∘bn1∘conv1(x), without the post-add ReLU."""
    shortcut = None if b.downsample is None else _spec(b.downsample[0], b.downsample[1])
    return ConvNet(shape, (Layer(((0, _spec(b.conv1, b.bn1)),), RELU),),
                   ((0, shortcut), (1, _spec(b.conv2, b.bn2))))


def _pre_activation(b: BasicBlock):
    def f(x):
        out = b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(x)))))
        return out + (x if b.downsample is None else b.downsample(x))
    return f


def attained_norm(f, shape: tuple[int, ...], points: int = 30) -> float:
    """max over random float64 points x (batch 1) of ‖J_f(x)‖₂: a lower bound on f's Lipschitz constant."""
    g = torch.Generator().manual_seed(0)
    best = 0.0
    for _ in range(points):
        x = torch.randn(1, *shape, generator=g, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(f, x).reshape(-1, x.numel())
        best = max(best, float(torch.linalg.matrix_norm(J, 2)))
    return best


def _pair(seed: int, trained: bool = False) -> tuple[BasicBlock, BasicBlock]:
    torch.manual_seed(seed)
    a = _randomise_bn(BasicBlock(2, 2)).double().eval()
    b = _randomise_bn(BasicBlock(2, 3, stride=2)).double().eval()
    if trained:  # a few steps towards a random smooth target: weights that are no longer i.i.d.
        net = nn.Sequential(a, b)
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        x = torch.randn(16, 2, 5, 5, dtype=torch.float64)
        target = torch.tanh(x[:, :1, ::2, ::2]).repeat(1, 3, 1, 1)
        for _ in range(15):
            opt.zero_grad()
            ((net(x) - target) ** 2).mean().backward()
            opt.step()
        net.eval()
    return a, b


@pytest.mark.parametrize("seed, trained", [(0, False), (1, False), (2, True)])
def test_two_blocks_jointly_sound_and_below_the_product(seed: int, trained: bool) -> None:
    a, b = _pair(seed, trained)
    net_a, net_b = _basic_net(a, (2, 5, 5)), _basic_net(b, (2, 5, 5))
    pair = composed_bound([net_a, net_b], [RELU]).value
    with torch.no_grad():
        single_a, single_b = joint_bound(net_a).value, joint_bound(net_b).value
    attained = attained_norm(lambda x: _pre_activation(b)(torch.relu(_pre_activation(a)(x))), (2, 5, 5))
    assert attained * (1 - 1e-9) <= pair <= single_a * single_b * (1 + 0.05)
    assert attained <= single_a * single_b


def test_single_block_matches_the_frequency_block_bound() -> None:
    """One BasicBlock as a ConvNet: the same LipSDP-Layer as residual_fft (one multiplier)."""
    _, b = _pair(3)
    spec = ConvResidualBlock(_spec(b.conv1, b.bn1), _spec(b.conv2, b.bn2), RELU, (2, 5, 5),
                             _spec(b.downsample[0], b.downsample[1]))
    assert joint_bound(_basic_net(b, (2, 5, 5))).value == pytest.approx(residual_fft(spec).value, rel=2e-3)


class _Bottleneck(nn.Module):
    """1×1 → 3×3 (stride 2) → 1×1 with BN and ReLU, 1×1 stride-2 conv + BN projection."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 2, 1, bias=False), nn.BatchNorm2d(2)
        self.c2, self.b2 = nn.Conv2d(2, 2, 3, 2, 1, bias=False), nn.BatchNorm2d(2)
        self.c3, self.b3 = nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.pc, self.pb = nn.Conv2d(3, 4, 1, 2, bias=False), nn.BatchNorm2d(4)

    def forward(self, x):
        h = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.b3(self.c3(h)) + self.pb(self.pc(x))

    def net(self, shape) -> ConvNet:
        return ConvNet(shape, (Layer(((0, _spec(self.c1, self.b1)),), RELU), Layer(((1, _spec(self.c2, self.b2)),), RELU)),
                       ((0, _spec(self.pc, self.pb)), (2, _spec(self.c3, self.b3))))


class _Inverted(nn.Module):
    """MobileNetV2's inverted residual: 1×1 expand → ReLU6 → 3×3 depthwise → ReLU6 → 1×1 project, identity."""

    def __init__(self) -> None:
        super().__init__()
        self.e, self.d = nn.Conv2d(2, 4, 1, bias=False), nn.Conv2d(4, 4, 3, 1, 1, groups=4, bias=False)
        self.p = nn.Conv2d(4, 2, 1, bias=False)

    def forward(self, x):
        return x + self.p(torch.clamp(self.d(torch.clamp(self.e(x), 0, 6)), 0, 6))

    def net(self, shape) -> ConvNet:
        return ConvNet(shape, (Layer(((0, _spec(self.e)),), RELU), Layer(((1, _spec(self.d)),), RELU)),
                       ((0, None), (2, _spec(self.p))))


@pytest.mark.parametrize("cls, shape", [(_Bottleneck, (3, 6, 6)), (_Inverted, (2, 5, 5))])
def test_three_conv_branches_are_sound(cls, shape) -> None:
    torch.manual_seed(0)
    block = _randomise_bn(cls()).double().eval() if cls is _Bottleneck else cls().double().eval()
    bound = joint_bound(block.net(shape)).value
    assert bound >= attained_norm(block, shape) * (1 - 1e-9)


def test_infeasible_multipliers_and_low_rho_are_rejected() -> None:
    a, _ = _pair(0)
    lmi = PairLMI(_basic_net(a, (2, 5, 5)))
    rho, lam = search(lmi)
    assert lmi.verify(lam, rho * 1.01)
    assert not lmi.verify(lam, rho * 0.9)  # below the optimum for these multipliers
    assert not lmi.verify([1e-9 * x for x in lam], rho * 10)  # λ ≈ 0: −H is not positive definite


def test_errors() -> None:
    a, b = _pair(0)
    net_a = _basic_net(a, (2, 5, 5))
    with pytest.raises(InputError, match="the terms of a layer disagree"):
        ConvNet((2, 5, 5), (Layer(((0, None), (0, _spec(b.conv1))), RELU),), ((1, None),)).shapes_and_strides()
    with pytest.raises(InputError, match="2 networks need 1 activations between them, got 0"):
        compose([net_a, net_a], [])
    with pytest.raises(InputError, match="joint LMI too large"):
        PairLMI(ConvNet((64, 32, 32), (Layer(((0, Conv2dSpec(torch.zeros(64, 64, 3, 3), padding=(1, 1))),), RELU),),
                        ((0, None), (1, Conv2dSpec(torch.zeros(64, 64, 3, 3), padding=(1, 1))))))


def test_pair_in_the_graph_tightens_and_stays_sound() -> None:
    """Two BasicBlocks with the ReLU between them: the residual pass records the pair, the formula uses it, the
    bound stays above the attained lower bound and below the per-block bound."""
    import lipgraph.passes.residual as residual_pass

    torch.manual_seed(0)
    model = nn.Sequential(_randomise_bn(BasicBlock(2, 2)), _randomise_bn(BasicBlock(2, 3, stride=2))).eval()
    x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    report = lipgraph.analyze(model, x, method="cp", quiet=True)
    assert "(pair)" in report.formula_text()
    assert report.lower.value <= report.bound.value
    pairs = residual_pass._tighten_pairs
    try:
        residual_pass._tighten_pairs = lambda *args: None
        blocks = lipgraph.analyze(model, x, method="cp", lower=False, quiet=True)
    finally:
        residual_pass._tighten_pairs = pairs
    assert report.bound.value < blocks.bound.value


class _Block(nn.Module):
    """A BasicBlock with any activation (inside the branch and after the add)."""

    def __init__(self, cin: int, cout: int, stride: int, act: nn.Module) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout)
        self.act = act
        self.down = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = self.b2(self.c2(self.act(self.b1(self.c1(x)))))
        return self.act(out + (x if self.down is None else self.down(x)))


@pytest.mark.parametrize("act", [nn.LeakyReLU(0.2), nn.Tanh(), nn.ELU()])
def test_pair_with_other_activations_is_sound(act: nn.Module, monkeypatch) -> None:
    """The pair bound the graph pass computes (used or not: here the dense per-block bounds often win) is above
    the attained ratio of the network, whose last activation has slope ≤ 1."""
    import lipgraph.passes.residual as residual_pass

    pairs = []
    compute = residual_pass.composed_bound
    monkeypatch.setattr(residual_pass, "composed_bound", lambda *args: pairs.append(compute(*args)) or pairs[-1])
    torch.manual_seed(1)
    model = _randomise_bn(nn.Sequential(_Block(2, 2, 1, act), _Block(2, 3, 2, act))).eval()
    x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    report = lipgraph.analyze(model, x, method="cp", quiet=True, lower_options={"starts": 8, "steps": 40})
    assert len(pairs) == 1
    assert report.lower.value <= min(report.bound.value, pairs[0].value)


def _pair_spec(seed: int) -> dict:
    """A fuzzer spec (tests/property/netgen.py) of two conv → activation → conv residual blocks with a random
    activation between and inside them, the second strided with a 1×1 projection (and BN) when drawn so."""
    import random

    from tests.property.netgen import RandomDraw, _act_spec

    d = RandomDraw(random.Random(seed))
    c, n = d.integer(1, 3), d.integer(4, 6)

    def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> dict:
        return {"op": "conv", "cin": cin, "cout": cout, "k": k, "stride": stride, "pad": k // 2, "dil": 1,
                "groups": 1, "bias": d.boolean(), "mode": "zeros"}

    first = {"op": "residual", "branch": [conv(c, c), {"op": "bn", "c": c}, _act_spec(d), conv(c, c)],
             "shortcut": None, "alpha": 1.0, "subtract": False}
    out, stride = d.integer(1, 3), d.choice([1, 2])
    shortcut = None if (out, stride) == (c, 1) else [conv(c, out, 1, stride), {"op": "bn", "c": out}]
    second = {"op": "residual", "branch": [conv(c, out, 3, stride), _act_spec(d), conv(out, out)],
              "shortcut": shortcut, "alpha": 1.0, "subtract": False}
    return {"seed": seed, "norm": "2", "input": [1, c, n, n], "body": [first, _act_spec(d), second], "head": None}


@pytest.mark.parametrize("seed", [1])
def test_fuzzer_pairs_of_blocks_every_method_sound(seed: int, monkeypatch) -> None:
    """The fuzzer's check (every certified method ≥ the attained ratio, none above AutoLip) on two random blocks
    in a row, with the pair bound computed (``python -m tests.fuzz`` draws such pairs too rarely)."""
    import lipgraph.passes.residual as residual_pass
    from tests.property.netgen import check

    calls = []
    compute = residual_pass.composed_bound
    monkeypatch.setattr(residual_pass, "composed_bound", lambda *args: calls.append(1) or compute(*args))
    _, uppers, violations = check(_pair_spec(seed))
    assert not violations
    assert calls and "best" in uppers
