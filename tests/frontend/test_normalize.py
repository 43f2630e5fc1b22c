"""Op normalisation: every torch spelling of an op maps to one key and one bound.

Also: the export frontend agrees with fx; a module class with a rule is an fx leaf; a subclass of a known
module that overrides ``forward`` is traced through (and bounded correctly), not mistaken for its base.
"""
from __future__ import annotations

import math
import operator
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipgraph
import lipgraph.registry
from lipgraph.registry import default_registry

INF = math.inf


def _seeded(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make().eval()


def _input(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def op_keys(report: lipgraph.Report) -> list[str]:
    return [n.op for n in report.tree.walk() if n.op is not None]


def dense_norm(model: nn.Module, x: torch.Tensor, p: float = 2) -> float:
    """Exact ℓp norm of the Jacobian of ``model`` at ``x`` in float64 (the model is copied)."""
    import copy

    m = copy.deepcopy(model).double()
    x = x.double()
    jac = torch.autograd.functional.jacobian(lambda v: m(v.reshape(x.shape)).reshape(-1), x.reshape(-1))
    return float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), {2: 2, 1: 1, INF: INF}[p]))


class Spelled(nn.Module):
    """``post(spelling(pre(x)))``: one op spelled a given way, between two fixed linear layers."""

    def __init__(self, spelling: Callable, pre: nn.Module, post: nn.Module) -> None:
        super().__init__()
        self.spelling = spelling
        self.pre, self.post = pre, post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.spelling(self.pre(x)))


# -- relu ------------------------------------------------------------------------------------------------------
RELU_SPELLINGS = {
    "nn.ReLU": nn.ReLU(),
    "nn.ReLU-inplace": nn.ReLU(inplace=True),
    "F.relu": F.relu,
    "F.relu-inplace": lambda x: F.relu(x, inplace=True),
    "F.relu_": F.relu_,
    "torch.relu": torch.relu,
    "torch.relu_": torch.relu_,
    "x.relu()": lambda x: x.relu(),
    "x.relu_()": lambda x: x.relu_(),
}


def _relu_net(spelling) -> nn.Module:
    return _seeded(lambda: Spelled(spelling, nn.Linear(4, 3), nn.Linear(3, 2)))


@pytest.mark.parametrize("p", [2, 1, INF], ids=["l2", "l1", "linf"])
@pytest.mark.parametrize("name", list(RELU_SPELLINGS))
def test_relu_spellings(name: str, p: float):
    x = _input(1, 4)
    report = lipgraph.analyze(_relu_net(RELU_SPELLINGS[name]), x, norm=p)
    reference = lipgraph.analyze(_relu_net(nn.ReLU()), x, norm=p)
    assert op_keys(report) == ["linear", "relu", "linear"], op_keys(report)
    assert report.bound.value == pytest.approx(reference.bound.value, rel=1e-12)
    (relu,) = [n for n in report.tree.walk() if n.op == "relu"]
    assert relu.bound.value == 1.0 and relu.bound.exact


# -- flatten / reshape -------------------------------------------------------------------------------------------
FLATTEN_SPELLINGS = {
    "nn.Flatten": (nn.Flatten(), "flatten"),
    "torch.flatten": (lambda x: torch.flatten(x, 1), "flatten"),
    "x.flatten(1)": (lambda x: x.flatten(1), "flatten"),
    "x.flatten(start_dim=1)": (lambda x: x.flatten(start_dim=1), "flatten"),
    "x.view(size(0), -1)": (lambda x: x.view(x.size(0), -1), "reshape"),
    "x.view(shape[0], -1)": (lambda x: x.view(x.shape[0], -1), "reshape"),
    "x.reshape(size(0), -1)": (lambda x: x.reshape(x.size(0), -1), "reshape"),
    "torch.reshape": (lambda x: torch.reshape(x, (1, 18)), "reshape"),
    "x.view(-1, 18)": (lambda x: x.view(-1, 18), "reshape"),
}


def _flatten_net(spelling) -> nn.Module:
    return _seeded(lambda: Spelled(spelling, nn.Conv2d(2, 2, 3, padding=1), nn.Linear(18, 3)))


@pytest.mark.parametrize("p", [2, INF], ids=["l2", "linf"])
@pytest.mark.parametrize("name", list(FLATTEN_SPELLINGS))
def test_flatten_spellings(name: str, p: float):
    spelling, key = FLATTEN_SPELLINGS[name]
    x = _input(1, 2, 3, 3)
    report = lipgraph.analyze(_flatten_net(spelling), x, norm=p)
    reference = lipgraph.analyze(_flatten_net(nn.Flatten()), x, norm=p)
    assert op_keys(report) == ["conv2d", key, "linear"], op_keys(report)
    assert report.bound.value == pytest.approx(reference.bound.value, rel=1e-12)


# -- add ---------------------------------------------------------------------------------------------------------
def _iadd(a, b):
    out = a * 1.0
    out += b
    return out


def _iadd_inplace(a, b):
    a += b
    return a


ADD_SPELLINGS = {
    "a + b": lambda a, b: a + b,
    "torch.add": lambda a, b: torch.add(a, b),
    "torch.add-kw": lambda a, b: torch.add(a, other=b),
    "a.add(b)": lambda a, b: a.add(b),
    "a.add_(b)": lambda a, b: a.add_(b),
    "operator.add": operator.add,
    "out += b": _iadd_inplace,
}


class Residual(nn.Module):
    def __init__(self, add: Callable) -> None:
        super().__init__()
        self.add = add
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.add(self.a(x), self.b(x))


@pytest.mark.parametrize("p", [2, 1, INF], ids=["l2", "l1", "linf"])
@pytest.mark.parametrize("name", list(ADD_SPELLINGS))
def test_add_spellings(name: str, p: float):
    x = _input(1, 3)
    model = _seeded(lambda: Residual(ADD_SPELLINGS[name]))
    report = lipgraph.analyze(model, x, norm=p)
    reference = lipgraph.analyze(_seeded(lambda: Residual(ADD_SPELLINGS["a + b"])), x, norm=p)
    assert sorted(op_keys(report)) == ["add", "linear", "linear"], op_keys(report)
    assert report.bound.value == pytest.approx(reference.bound.value, rel=1e-12)
    assert report.bound.value >= dense_norm(model, x, p) * (1 - 1e-6)


def test_iadd_after_scale_is_add():
    x = _input(1, 3)
    report = lipgraph.analyze(_seeded(lambda: Residual(_iadd)), x)
    reference = lipgraph.analyze(_seeded(lambda: Residual(ADD_SPELLINGS["a + b"])), x)
    assert "add" in op_keys(report)
    assert report.bound.value == pytest.approx(reference.bound.value, rel=1e-12)


# -- conv2d: module vs functional --------------------------------------------------------------------------------
class FunctionalConv(nn.Module):
    def __init__(self, conv: nn.Conv2d, positional: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        self.conv, self.positional = conv, positional

    def forward(self, x):
        c = self.conv
        if self.positional:
            return F.conv2d(x, self.weight, self.bias, c.stride, c.padding, c.dilation, c.groups)
        return F.conv2d(x, self.weight, bias=self.bias, stride=c.stride, padding=c.padding, dilation=c.dilation,
                        groups=c.groups)


CONVS = {
    "plain": lambda: nn.Conv2d(2, 3, 3),
    "s2-p1": lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1),
    "dil2-groups2": lambda: nn.Conv2d(2, 2, 3, dilation=2, padding=2, groups=2, bias=False),
    "same": lambda: nn.Conv2d(2, 2, 3, padding="same"),
}


@pytest.mark.parametrize("p", [2, 1, INF], ids=["l2", "l1", "linf"])
@pytest.mark.parametrize("positional", [True, False], ids=["positional", "keywords"])
@pytest.mark.parametrize("name", list(CONVS))
def test_conv2d_module_vs_functional(name: str, positional: bool, p: float):
    conv = _seeded(CONVS[name])
    x = _input(1, 2, 6, 6)
    module = lipgraph.analyze(nn.Sequential(conv), x, norm=p)
    functional = lipgraph.analyze(nn.Sequential(FunctionalConv(conv, positional)), x, norm=p)
    assert op_keys(module) == ["conv2d"] and op_keys(functional) == ["conv2d"]
    assert functional.bound.value == pytest.approx(module.bound.value, rel=1e-9)
    assert module.bound.value == pytest.approx(dense_norm(conv, x, p), rel=1e-5)


# -- export frontend agrees with fx ---------------------------------------------------------------------------
class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = F.relu(self.bn1(self.stem(x)))
        y = self.bn2(self.conv(x))
        x = F.relu(x + y)
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet() -> nn.Module:
    def make():
        m = SmallResNet()
        with torch.no_grad():
            for bn in (m.bn1, m.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.3, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
        return m
    return _seeded(make)


@pytest.mark.parametrize("p", [2, 1, INF], ids=["l2", "l1", "linf"])
def test_export_matches_fx(p: float):
    model, x = _resnet(), _input(1, 2, 5, 5)
    fx_report = lipgraph.analyze(model, x, norm=p, frontend="fx")
    ex_report = lipgraph.analyze(model, x, norm=p, frontend="export")
    assert fx_report.frontend == "fx" and ex_report.frontend == "export"
    assert ex_report.bound.kind is lipgraph.Kind.CERTIFIED
    assert ex_report.bound.value == pytest.approx(fx_report.bound.value, rel=1e-6)
    keys = set(op_keys(ex_report))
    assert {"conv2d", "batch_norm", "relu", "add", "linear"} <= keys, keys
    for path in ("stem", "bn1", "conv", "bn2", "fc"):
        assert ex_report.find(path).bound.value == pytest.approx(fx_report.find(path).bound.value, rel=1e-6), path


# -- registered module classes are fx leaves --------------------------------------------------------------------
def _untraceable_act():
    class MyAct(nn.Module):
        """Data-dependent control flow: fx cannot trace into it, so it must be a leaf."""

        def forward(self, x):
            if bool((x > 0).any()):
                return torch.where(x > 0, x, 0.5 * x)
            return 0.5 * x

    return MyAct


def _act_net(act_cls) -> nn.Module:
    return _seeded(lambda: nn.Sequential(nn.Linear(3, 3), act_cls(), nn.Linear(3, 2)))


def test_registered_class_is_leaf_per_call():
    MyAct = _untraceable_act()
    x = _input(1, 3)
    with pytest.raises(lipgraph.TraceError):
        lipgraph.analyze(_act_net(MyAct), x, frontend="fx")
    report = lipgraph.analyze(_act_net(MyAct), x, rules={MyAct: lipgraph.elementwise(slope=(0.5, 1))})
    node = report.find("1")
    assert node.type == "MyAct" and node.children == []
    assert node.op is not None and node.bound.value == 1.0
    assert default_registry().alias(MyAct) is None  # per-call rules do not leak into the global registry


def test_registered_class_is_leaf_global(monkeypatch):
    # a private copy of the default registry, so that lipgraph.register does not pollute other tests
    monkeypatch.setattr(lipgraph.registry, "_DEFAULT", default_registry().copy())
    MyAct = _untraceable_act()
    lipgraph.register(MyAct, lipgraph.elementwise(slope=(0, 2)))
    x = _input(1, 3)
    report = lipgraph.analyze(_act_net(MyAct), x)
    node = report.find("1")
    assert node.type == "MyAct" and node.children == [] and node.bound.value == 2.0
    # it also becomes a leaf when it is the op of a nested module
    nested = _seeded(lambda: nn.Sequential(nn.Sequential(nn.Linear(3, 3), MyAct())))
    assert lipgraph.analyze(nested, x).find("0.1").op == node.op


def test_registered_key_and_subclass_inherit():
    """A subclass that keeps the registered class's forward is the same op; one that overrides it is not."""
    MyAct = _untraceable_act()

    class Same(MyAct):
        pass

    class Other(MyAct):
        def forward(self, x):
            return 3.0 * torch.tanh(x)

    rules = {MyAct: lipgraph.elementwise(slope=(0, 1))}
    x = _input(1, 3)
    same = lipgraph.analyze(_act_net(Same), x, rules=rules)
    assert same.find("1").children == [] and same.find("1").bound.value == 1.0
    other = lipgraph.analyze(_act_net(Other), x, rules=rules)
    assert [c.op for c in other.find("1").children] == ["tanh", "mul"]
    assert other.find("1").bound.value == pytest.approx(3.0)


# -- a subclass of nn.Conv2d that overrides forward is traced through ------------------------------------------
class DoubledConv(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, 2.0 * self.weight, self.bias)


class StandardisedConv(nn.Conv2d):
    """Weight standardisation (as in BiT / NFNets): a different linear map than nn.Conv2d's."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PlainSubclass(nn.Conv2d):
    pass


@pytest.mark.parametrize("p", [2, 1, INF], ids=["l2", "l1", "linf"])
@pytest.mark.parametrize("cls", [DoubledConv, StandardisedConv], ids=lambda c: c.__name__)
def test_conv_subclass_overriding_forward_is_traced(cls, p: float):
    conv = _seeded(lambda: cls(2, 3, 3, padding=1))
    x = _input(1, 2, 5, 5)
    report = lipgraph.analyze(nn.Sequential(conv), x, norm=p)
    node = report.find("0")
    # traced through: its one op is the functional conv2d with the *modified* weight (a module holding a single
    # op is shown collapsed, with that op's key); the bound below tells it apart from nn.Conv2d's rule
    assert node.type == cls.__name__ and op_keys(report) == ["conv2d"]
    true = dense_norm(conv, x, p)
    assert report.bound.value >= true * (1 - 1e-6)
    assert report.bound.value == pytest.approx(true, rel=1e-5)  # one functional conv: exact
    if cls is DoubledConv:
        base = _seeded(lambda: nn.Conv2d(2, 3, 3, padding=1))
        plain = lipgraph.analyze(nn.Sequential(base), x, norm=p).bound.value
        assert report.bound.value == pytest.approx(2 * plain, rel=1e-6)


def test_conv_subclass_without_forward_is_conv2d():
    conv = _seeded(lambda: PlainSubclass(2, 3, 3, padding=1))
    x = _input(1, 2, 5, 5)
    report = lipgraph.analyze(nn.Sequential(conv), x)
    node = report.find("0")
    assert node.op == "conv2d" and node.children == []
    assert report.bound.value == pytest.approx(dense_norm(conv, x), rel=1e-5)
