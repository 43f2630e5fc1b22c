"""Soundness of the certified AutoLip bound: it must never fall below an attained Jacobian norm.

Any ‖J_f(x)‖ at a point where f is differentiable is a proven lower bound of the Lipschitz constant
(docs/mathematics.md §9); exact oracles (§10) pin the value where AutoLip is exact.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import lipgraph
from lipgraph import Kind
from tests.fixtures.jacobian import jacobian_norm
from tests.fixtures.zoo import ZOO

SLACK = 1e-7  # relative float slack when comparing a certified bound with a float64 Jacobian norm


# -- the lower-bound oracle ------------------------------------------------------------------------------
def lower_bound(model: nn.Module, x: Tensor, n: int = 8, p: float = 2, seed: int = 0) -> float:
    """max over ``n`` inputs (the example, random ones, scaled and shifted ones) of ‖J_f(x)‖_p: a lower bound of L."""
    m = copy.deepcopy(model).to(torch.float64).eval()
    g = torch.Generator().manual_seed(seed)
    x = x.detach().to(torch.float64)
    best = jacobian_norm(m, x, p)
    for i in range(n - 1):
        scale = (0.1, 1.0, 3.0, 10.0)[i % 4]
        shift = 0.0 if i % 2 == 0 else torch.randn((), generator=g, dtype=torch.float64).item()
        z = torch.randn(x.shape, generator=g, dtype=torch.float64) * scale + shift
        best = max(best, jacobian_norm(m, z, p))
    return best


def assert_sound(model: nn.Module, x: Tensor, p: float = 2, n: int = 8) -> lipgraph.Report:
    report = lipgraph.analyze(model, x, norm=p, lower=False)
    lo = lower_bound(model, x, n=n, p=p)
    assert report.kind is Kind.CERTIFIED, report.bound
    assert math.isfinite(report.bound.value), report.bound
    assert report.bound.value >= lo * (1 - SLACK), f"certified {report.bound.value} < attained {lo} (ℓ{p})"
    return report


# -- the fixture zoo -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_bound_is_above_attained_jacobian_norm(name: str) -> None:
    model, x = ZOO[name]()
    assert_sound(model, x)


@pytest.mark.parametrize("name", ["tiny_mlp", "tiny_cnn", "tiny_vgg", "shared_weights", "multi_output"])
@pytest.mark.parametrize("p", [1, math.inf], ids=["l1", "linf"])
def test_zoo_l1_linf_soundness(name: str, p: float) -> None:
    model, x = ZOO[name]()
    assert_sound(model, x, p=p, n=6)


def test_lower_bound_helper_is_a_real_lower_bound_and_not_trivial() -> None:
    """Sanity of the oracle itself: on a linear map it returns ‖W‖ exactly, for each norm."""
    torch.manual_seed(3)
    lin = nn.Linear(5, 4)
    W = lin.weight.detach().double()
    x = torch.randn(1, 5)
    assert lower_bound(lin, x, n=2) == pytest.approx(torch.linalg.matrix_norm(W, 2).item(), rel=1e-12)
    assert lower_bound(lin, x, n=2, p=math.inf) == pytest.approx(W.abs().sum(1).max().item(), rel=1e-12)
    assert lower_bound(lin, x, n=2, p=1) == pytest.approx(W.abs().sum(0).max().item(), rel=1e-12)


# -- residual nets: the graph walk matters ------------------------------------------------------------
def test_residual_add_is_one_plus_branch_not_a_product() -> None:
    model, x = ZOO["tiny_resnet"]()
    report = lipgraph.analyze(model, x, lower=False)
    add = report.find("layer1.add")  # identity shortcut: out += x
    assert add.op == "add" and add.formula, add
    # conv+bn pairs are fused (bounded as one operator), so the branch is at most the product of the four
    product = math.prod(report.find(f"layer1.{n}").bound.value for n in ("conv1", "bn1", "conv2", "bn2"))
    fused = math.prod(report.find(f"layer1.{n}").fused.bound.value for n in ("bn1", "bn2"))
    branch = min(product, fused)
    assert branch < product  # fusion helps on this net
    assert add.bound.value == pytest.approx(1.0 + branch, rel=1e-3)
    terms = [float(t) for t in re.split(r"\s*\+\s*", add.formula.split("=")[-1])]
    assert sorted(terms) == pytest.approx(sorted([1.0, branch]), rel=1e-3)
    assert "1" in [t.strip() for t in add.formula.split("=")[0].split("+")], add.formula
    # the reference implementation multiplied every layer's constant in module order; ours walks the graph
    naive = math.prod(n.bound.value for n in report.tree.walk() if n.op and not n.children and n.op != "add")
    assert not math.isclose(report.bound.value, naive, rel_tol=1e-3), (report.bound.value, naive)
    # and the block bound is the add's value (the final ReLU has constant 1)
    assert report.find("layer1").bound.value == pytest.approx(add.bound.value, rel=1e-9)


def test_downsample_add_sums_both_branches() -> None:
    model, x = ZOO["tiny_resnet"]()
    report = lipgraph.analyze(model, x, lower=False)
    add = next(n for n in report.find("layer2").children if n.op == "add")
    main = math.prod(report.find(f"layer2.{n}").bound.value for n in ("conv1", "bn1", "conv2", "bn2"))
    short = report.find("layer2.downsample").bound.value
    terms = [float(t) for t in re.split(r"\s*\+\s*", add.formula.split("=")[-1])]
    assert add.bound.value == pytest.approx(sum(terms), rel=1e-3)  # L(main) + L(shortcut)
    assert sorted(terms)[1] <= main * (1 + 1e-9)  # main branch: fused conv+bn pairs, at most the product
    assert any(t == pytest.approx(short, rel=1e-3) for t in terms)  # the shortcut module's bound (conv+bn fused)
    assert add.bound.value <= (main + short) * (1 + 1e-9)
    assert "downsample" in add.formula, add.formula


def test_densenet_cat_is_root_of_squares() -> None:
    model, x = ZOO["tiny_densenet"]()
    report = lipgraph.analyze(model, x, lower=False)
    layer = report.find("block.0")
    cat = next(n for n in layer.children if n.op == "cat")
    branch = math.prod(report.find(f"block.0.{n}").bound.value for n in ("norm", "relu", "conv"))
    assert cat.bound.value == pytest.approx(math.hypot(1.0, branch), rel=1e-9)


# -- exact oracles (docs/mathematics.md §10) ---------------------------------------------------------------
def test_single_linear_layer_is_exact() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(6, 4)
    report = lipgraph.analyze(lin, torch.randn(1, 6), lower=False)
    ref = torch.linalg.matrix_norm(lin.weight.detach().double(), 2).item()
    assert report.bound.value == pytest.approx(ref, rel=1e-5)
    assert report.bound.value >= ref * (1 - 1e-9)


@pytest.mark.parametrize("p", [1, math.inf], ids=["l1", "linf"])
def test_single_linear_layer_is_exact_l1_linf(p: float) -> None:
    torch.manual_seed(2)
    lin = nn.Linear(6, 4)
    W = lin.weight.detach().double()
    ref = (W.abs().sum(0) if p == 1 else W.abs().sum(1)).max().item()
    assert lipgraph.analyze(lin, torch.randn(1, 6), norm=p, lower=False).bound.value == pytest.approx(ref, rel=1e-5)


def test_single_conv_layer_is_exact() -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    report = lipgraph.analyze(conv, x, lower=False)
    assert report.bound.value == pytest.approx(lower_bound(conv, x, n=1), rel=1e-5)


def test_nonnegative_single_layer_relu_is_exact() -> None:
    """W ≥ 0, bias ≥ 0, ReLU: the all-active region is reachable, L = ‖W‖ (Perron–Frobenius)."""
    torch.manual_seed(5)
    lin = nn.Linear(6, 5)
    with torch.no_grad():
        lin.weight.abs_()
        lin.bias.abs_()
    model = nn.Sequential(lin, nn.ReLU()).eval()
    x = torch.rand(1, 6) + 0.1  # nonnegative input: every unit active
    report = lipgraph.analyze(model, x, lower=False)
    ref = torch.linalg.matrix_norm(lin.weight.detach().double(), 2).item()
    assert report.bound.value == pytest.approx(ref, rel=1e-5)
    assert jacobian_norm(copy.deepcopy(model).double(), x) == pytest.approx(ref, rel=1e-9)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(dims=st.lists(st.integers(1, 6), min_size=3, max_size=5), seed=st.integers(0, 2**16))
def test_deep_linear_chain_is_above_product_norm(dims: list[int], seed: int) -> None:
    """No activation: L = ‖W_K⋯W_1‖ exactly; AutoLip must be ≥ it (and ≤ the product of layer norms)."""
    torch.manual_seed(seed)
    layers = [nn.Linear(a, b) for a, b in zip(dims, dims[1:])]
    model = nn.Sequential(*layers).eval()
    prod = torch.eye(dims[0], dtype=torch.float64)
    for lin in layers:
        prod = lin.weight.detach().double() @ prod
    exact_l = torch.linalg.matrix_norm(prod, 2).item()
    per_layer = math.prod(torch.linalg.matrix_norm(lin.weight.detach().double(), 2).item() for lin in layers)
    bound = lipgraph.analyze(model, torch.randn(1, dims[0]), lower=False).bound.value
    assert bound >= exact_l * (1 - SLACK)
    assert bound <= per_layer * (1 + 1e-5)


# -- random architectures ----------------------------------------------------------------------------
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "leaky_relu_steep": lambda: nn.LeakyReLU(1.7),  # slope > 1 on the negative side: L = 1.7
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "elu_big_alpha": lambda: nn.ELU(alpha=2.5),  # slope α eˣ reaches 2.5 near 0⁻
}
FUNCTIONAL = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu, "silu": F.silu,
              "elu": F.elu}


class _Act(nn.Module):
    """An activation called functionally (``F.gelu(x)``), to exercise the functional spellings."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return FUNCTIONAL[self.name](x)


def _act(name: str, functional: bool) -> nn.Module:
    return _Act(name) if functional and name in FUNCTIONAL else ACTIVATIONS[name]()


def _bn(ch: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(ch)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.05, 2.0)
        bn.weight.uniform_(-2, 2)  # negative γ too
        bn.bias.uniform_(-0.5, 0.5)
    return bn


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.act = ACTIVATIONS[act]()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.act(out + (x if self.down is None else self.down(x)))


class _Dense(nn.Module):
    def __init__(self, cin: int, growth: int, act: str) -> None:
        super().__init__()
        self.bn = _bn(cin)
        self.act = ACTIVATIONS[act]()
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(self.act(self.bn(x)))], 1)


class _Net(nn.Module):
    def __init__(self, body: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.body(x), 1))


def _conv_out(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def mlps(draw) -> tuple[nn.Module, Tensor]:
    seed = draw(st.integers(0, 2**16))
    widths = draw(st.lists(st.integers(1, 8), min_size=2, max_size=5))
    acts = [draw(st.sampled_from(sorted(ACTIVATIONS))) for _ in widths[2:]]
    functional = draw(st.booleans())
    bias = draw(st.booleans())
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        if i:
            layers.append(_act(acts[i - 1], functional))
        layers.append(nn.Linear(a, b, bias=bias))
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(*layers).eval(), torch.randn(1, widths[0], generator=g)


@st.composite
def cnns(draw) -> tuple[nn.Module, Tensor]:
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    ch, size = draw(st.integers(1, 3)), draw(st.integers(5, 9))
    in_ch, in_size = ch, size
    body: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "conv", "maxpool", "avgpool", "res", "dense"]))
        act = draw(st.sampled_from(sorted(ACTIVATIONS)))
        if kind == "conv":
            groups = draw(st.sampled_from([g for g in (1, 2, 3) if ch % g == 0]))
            out = groups * draw(st.integers(1, max(1, 6 // groups)))
            k, s, p, d = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(
                st.integers(1, 2))
            if _conv_out(size, k, s, p, d) < 1:
                continue
            body.append(nn.Conv2d(ch, out, k, s, p, d, groups=groups, bias=draw(st.booleans())))
            ch, size = out, _conv_out(size, k, s, p, d)
            if draw(st.booleans()):
                body.append(_bn(ch))
            body.append(_act(act, draw(st.booleans())))
        elif kind in ("maxpool", "avgpool"):
            k, s = draw(st.sampled_from([(2, 2), (3, 2), (2, 1), (3, 1), (3, 3)]))
            if size < k:
                continue
            body.append(nn.MaxPool2d(k, s) if kind == "maxpool" else nn.AvgPool2d(k, s))
            size = _conv_out(size, k, s, 0, 1)
        elif kind == "res":
            out, stride = draw(st.integers(1, 6)), draw(st.integers(1, 2))
            body.append(_Residual(ch, out, stride, act))
            ch, size = out, _conv_out(size, 3, stride, 1, 1)
        else:
            growth = draw(st.integers(1, 3))
            if ch + growth > 8:
                continue
            body.append(_Dense(ch, growth, act))
            ch += growth
    head = nn.Linear(ch * size * size, draw(st.integers(1, 4)))
    g = torch.Generator().manual_seed(seed)
    return _Net(body, head).eval(), torch.randn(1, in_ch, in_size, in_size, generator=g)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(net=mlps())
def test_random_mlps_are_sound(net: tuple[nn.Module, Tensor]) -> None:
    assert_sound(*net, n=6)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(net=cnns())
def test_random_cnns_are_sound(net: tuple[nn.Module, Tensor]) -> None:
    assert_sound(*net, n=4)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(net=st.one_of(mlps(), cnns()), p=st.sampled_from([1, math.inf]))
def test_random_nets_l1_linf_sound(net: tuple[nn.Module, Tensor], p: float) -> None:
    assert_sound(*net, p=p, n=4)


def test_overlapping_maxpool_needs_more_than_one() -> None:
    """3×3 stride-2 max-pool: a pixel in 4 windows; the Jacobian attains 2 (the reference code used 1)."""
    pool = nn.MaxPool2d(3, 2)
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0  # the centre pixel is the max of all 4 windows
    report = lipgraph.analyze(pool, x, lower=False)
    assert jacobian_norm(pool.double(), x) == pytest.approx(2.0)
    assert report.bound.value >= 2.0 * (1 - SLACK)


# -- composition oracles: graphs where AutoLip is exact, so a wrong merge rule cannot hide --------------
class _Lambda(nn.Module):
    def __init__(self, fn: Callable[..., Tensor], **mods: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        for name, m in mods.items():
            self.add_module(name, m)

    def forward(self, x: Tensor):
        return self.fn(self, x)


def _scaled_identity(n: int, c: float, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(n, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(c * torch.eye(n))
    return lin


def _exact_case(name: str) -> tuple[nn.Module, Tensor, float]:
    """(model, input, exact L) for graphs whose Lipschitz constant is known in closed form."""
    torch.manual_seed(7)
    x = torch.randn(1, 5)
    if name == "residual_add":  # x + 3x: L = 4 (a max-merge would say 3)
        return _Lambda(lambda s, v: v + s.f(v), f=_scaled_identity(5, 3.0)), x, 4.0
    if name == "same_tensor_twice":  # y + y with y = 2x: a node fed twice counts twice, L = 4
        return _Lambda(lambda s, v: (lambda y: y + y)(s.f(v)), f=_scaled_identity(5, 2.0)), x, 4.0
    if name == "sub_branch":  # 3x - (-x) = 4x: AutoLip's L_a + L_b is exact here
        return _Lambda(lambda s, v: s.f(v) - s.g(v), f=_scaled_identity(5, 3.0), g=_scaled_identity(5, -1.0)), x, 4.0
    if name == "cat_branches":  # [x, 2x]: J = [I; 2I], L = √5 (a sum would say 3, a max 2)
        return _Lambda(lambda s, v: torch.cat([v, s.f(v)], 1), f=_scaled_identity(5, 2.0)), x, math.sqrt(5.0)
    if name == "stack_branches":
        return _Lambda(lambda s, v: torch.stack([s.f(v), s.g(v)], 1), f=_scaled_identity(5, 2.0),
                       g=_scaled_identity(5, 1.0)), x, math.sqrt(5.0)
    if name == "shared_weights":  # fc(relu(fc(x))) with fc = 2·I, x > 0: L = 4 (counted once it would be 2)
        return _Lambda(lambda s, v: s.fc(torch.relu(s.fc(v))), fc=_scaled_identity(5, 2.0, bias=False)), \
            x.abs() + 0.1, 4.0
    if name == "multi_output":  # (2x, x) as a tuple: the concatenated output has L = √5
        return _Lambda(lambda s, v: (s.f(v), s.g(v)), f=_scaled_identity(5, 2.0), g=_scaled_identity(5, 1.0)), x, \
            math.sqrt(5.0)
    if name == "constant_scale":  # -2.5 · (x / 2): L = 1.25
        return _Lambda(lambda s, v: -2.5 * (v / 2.0)), x, 1.25
    if name == "chunk_and_add":  # split in halves, add them: J = [I I], L = √2 (AutoLip: 1 + 1)
        return _Lambda(lambda s, v: (lambda a: a[0] + a[1])(torch.chunk(v, 2, dim=1))), torch.randn(1, 6), \
            math.sqrt(2.0)
    raise KeyError(name)


EXACT_CASES = ["residual_add", "same_tensor_twice", "sub_branch", "cat_branches", "stack_branches",
               "shared_weights", "multi_output", "constant_scale"]


@pytest.mark.parametrize("name", EXACT_CASES)
def test_autolip_is_exact_on_closed_form_graphs(name: str) -> None:
    model, x, exact_l = _exact_case(name)
    model.eval()
    report = lipgraph.analyze(model, x, lower=False)
    assert report.kind is Kind.CERTIFIED
    assert lower_bound(model, x, n=2) == pytest.approx(exact_l, rel=1e-9)  # the oracle attains it
    assert report.bound.value == pytest.approx(exact_l, rel=1e-5), report.to_dict()["tree"]


@pytest.mark.parametrize("p", [1, math.inf], ids=["l1", "linf"])
def test_cat_and_multi_output_combine_in_the_output_norm(p: float) -> None:
    """ℓ1: ‖(a, b)‖₁ = ‖a‖₁ + ‖b‖₁ → sum; ℓ∞: max (docs/mathematics.md §1)."""
    for name in ("cat_branches", "multi_output"):
        model, x, _ = _exact_case(name)
        expected = 3.0 if p == 1 else 2.0
        assert lipgraph.analyze(model.eval(), x, norm=p, lower=False).bound.value == pytest.approx(expected, rel=1e-5), name
        assert lower_bound(model, x, n=2, p=p) == pytest.approx(expected, rel=1e-9)


def test_chunk_then_add_is_sound_and_follows_autolip() -> None:
    """Projections ≤ 1 each, summed by the add: AutoLip gives 2 ≥ the true √2."""
    model, x, exact_l = _exact_case("chunk_and_add")
    report = lipgraph.analyze(model.eval(), x, lower=False)
    assert lower_bound(model, x, n=2) == pytest.approx(exact_l, rel=1e-9)
    assert report.bound.value == pytest.approx(2.0, rel=1e-5)


# -- graph constructs: in-place ops, broadcasting, reductions, splits ------------------------------------
def _lin() -> nn.Linear:
    return nn.Linear(4, 4)


CONSTRUCTS: dict[str, tuple[Callable, Callable[[], dict], float | None]] = {  # fn, modules, exact L or None
    "inplace_add_": (lambda s, v: s.f(v).add_(v), lambda: {"f": _lin()}, None),
    "inplace_relu": (lambda s, v: F.relu(s.f(v), inplace=True) + v, lambda: {"f": _lin()}, None),
    "mul_then_add": (lambda s, v: v * 2 + v, dict, 3.0),
    "add_alpha": (lambda s, v: torch.add(v, s.f(v), alpha=2.0), lambda: {"f": _lin()}, None),
    "rsub": (lambda s, v: 1.0 - v, dict, 1.0),
    "cat_same_tensor": (lambda s, v: torch.cat([v, v], 1), dict, math.sqrt(2.0)),
    "stack_then_sum": (lambda s, v: torch.stack([v, 2 * v], 0).sum(0), dict, None),
    "mean": (lambda s, v: v.mean(dim=1, keepdim=True), dict, 0.5),
    "sum": (lambda s, v: v.sum(dim=1), dict, 2.0),
    "broadcast_add": (lambda s, v: v[:, :1] + v, dict, None),
    "expand_add": (lambda s, v: v[:, :1].expand(1, 4) + v, dict, None),
    "div_const": (lambda s, v: v / 4.0, dict, 0.25),
    "mul_const_tensor": (lambda s, v: v * torch.tensor([1.0, -3.0, 2.0, 0.5], dtype=v.dtype), dict, 3.0),
    "repeat": (lambda s, v: v.repeat(1, 3), dict, math.sqrt(3.0)),
    "chunk_swap_cat": (lambda s, v: torch.cat(list(reversed(v.chunk(2, 1))), 1), dict, None),
    "unbind_sum": (lambda s, v: sum(v.unbind(1)), dict, None),
    "clamp_scale": (lambda s, v: torch.clamp(s.f(v), -1, 1) * 3, lambda: {"f": _lin()}, None),
}


@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_graph_constructs_are_sound(name: str) -> None:
    fn, mods, exact_l = CONSTRUCTS[name]
    torch.manual_seed(11)
    model = _Lambda(fn, **mods()).eval()
    x = torch.randn(1, 4)
    report = assert_sound(model, x, n=6)
    if exact_l is not None:
        assert report.bound.value == pytest.approx(exact_l, rel=1e-5)


# -- the export frontend gives the same bound ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny_mlp", "tiny_cnn", "tiny_resnet", "tiny_densenet", "shared_weights",
                                  "multi_output"])
def test_export_frontend_agrees_with_fx(name: str) -> None:
    model, x = ZOO[name]()
    fx_report = lipgraph.analyze(model, x, frontend="fx", lower=False)
    ex_report = lipgraph.analyze(model, x, frontend="export", lower=False)
    assert (fx_report.frontend, ex_report.frontend) == ("fx", "export")
    assert ex_report.kind is Kind.CERTIFIED
    assert ex_report.bound.value == pytest.approx(fx_report.bound.value, rel=1e-9)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_report_paths_are_unique(name: str) -> None:
    report = lipgraph.analyze(*ZOO[name](), lower=False)
    paths = [n.path for n in report.tree.walk()]
    assert len(paths) == len(set(paths)), sorted(p for p in paths if paths.count(p) > 1)


def test_input_independent_output_has_bound_zero() -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Parameter(torch.ones(2))

        def forward(self, x: Tensor) -> Tensor:
            return self.c * 2

    report = lipgraph.analyze(Constant().eval(), torch.randn(1, 3), lower=False)
    assert report.bound.value == 0.0 and report.kind is Kind.CERTIFIED and report.tree.children == []
