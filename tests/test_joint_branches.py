"""Joint ops on functions of disjoint selections of one tensor (lipgraph/passes/joint.py, docs/by-construction.md
§1): ``cat(x₁, f(x₂))`` is bounded by max(1, L(f))·L(x), not √(1 + L(f)²). Each case against the dense Jacobian's
exact norm; look-alikes that read an input by another route (additive coupling, overlapping or repeated selections,
selections of different tensors) keep the generic bound; a random property test over small graphs."""
from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph import ir
from lipgraph.passes.annotate import annotate
from lipgraph.passes.joint import joint_split
from lipgraph.record import record
from tests.rules.oracle import op_norm
from tests.fixtures.jacobian import jacobian_norm
from tests.test_autolip_soundness import lower_bound
from tests.test_by_construction import worst_jacobian

NORMS = (2, 1, math.inf)
SLACK = 1e-7


def linear(n_in: int, n_out: int, scale: float, seed: int) -> nn.Linear:
    """A linear map with random weights of ℓ2 norm ``scale``."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=True)
    with torch.no_grad():
        w = torch.randn(n_out, n_in, generator=g)
        layer.weight.copy_(w * (scale / torch.linalg.matrix_norm(w, 2)))
        layer.bias.copy_(torch.randn(n_out, generator=g))
    return layer


class Coupled(nn.Module):
    """One of the two-halves blocks: ``kind`` names how the halves a, b of the input are recombined."""

    def __init__(self, kind: str, scale: float = 2.0) -> None:
        super().__init__()
        self.kind = kind
        self.f = linear(4, 4, scale, 1)
        self.g = linear(4, 4, 0.5, 2)
        self.h = linear(2, 2, 3.0, 3)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        if self.kind == "concat":  # orthogonium's ConcatResidual: cat(a, f(b))
            return torch.cat([a, self.f(b)], dim=1)
        if self.kind == "both":  # each half through its own branch
            return torch.cat([self.g(a), self.f(torch.relu(b))], dim=1)
        if self.kind == "maximum":
            return torch.maximum(self.g(a), self.f(b))
        if self.kind == "nested":  # the second half split again inside its branch
            c, d = self.g(b).chunk(2, dim=1)
            return torch.cat([a, torch.cat([self.h(d), c.neg()], 1)], dim=1)
        if self.kind == "additive":  # additive coupling: the second input reads both halves
            return torch.cat([a, b + self.f(a)], dim=1)
        if self.kind == "overlap":  # overlapping selections
            return torch.cat([x[:, :4], self.f(x[:, 3:])], dim=1)
        if self.kind == "repeated":  # one half used by both inputs
            return torch.cat([b, self.f(b)], dim=1)
        if self.kind == "other-tensor":  # selections of x and of a function of all of x
            y = torch.relu(torch.cat([self.g(a), self.g(b)], 1))
            return torch.cat([a, self.f(y[:, 4:])], dim=1)
        raise ValueError(self.kind)


def analyze(model: nn.Module, x: torch.Tensor, p: float) -> lipgraph.Report:
    return lipgraph.analyze(model, x, norm=p, lower=False, quiet=True, cache=False)


def dense_norm(model: nn.Module, x: torch.Tensor, p: float) -> float:
    """The exact ℓp norm of the Jacobian at ``x`` (float64)."""
    return jacobian_norm(copy.deepcopy(model).double().eval(), x.double(), p)


@pytest.mark.parametrize("scale", [0.5, 2.0])
@pytest.mark.parametrize("p", NORMS)
def test_concat_of_a_half_and_a_linear_map_of_the_other_is_the_larger_norm(scale: float, p: float) -> None:
    """cat(a, W b + c): the Jacobian is block-diagonal diag(I, W), whose ℓp norm is max(1, ‖W‖_p), exactly."""
    model, x = Coupled("concat", scale).eval(), torch.randn(1, 8)
    report = analyze(model, x, p)
    w = model.f.weight.detach().double()
    expected = max(1.0, op_norm(w, p))
    assert dense_norm(model, x, p) == pytest.approx(expected, rel=1e-12)
    assert report.bound.value == pytest.approx(expected, rel=1e-5)
    assert report.bound.value >= expected * (1 - SLACK)
    if p == 2:  # the generic bound √(1 + ‖W‖²) is what this beats
        assert report.find("cat").bound.method == "autolip+joint-branches"
        assert report.find("cat").formula  # shown: min(generic, L(cat(joint-branches)))
        assert report.formulas.evaluate(report.tree.expr) == pytest.approx(report.bound.value, rel=1e-12)
        assert report.with_constant("f", 3.0).bound.value == pytest.approx(3.0)  # what-if: max(1, 3), not √10
        assert report.top()[0].name == "cat(joint-branches)"  # the constant the bound is read from


@pytest.mark.parametrize("kind", ["both", "maximum", "nested"])
@pytest.mark.parametrize("p", NORMS)
def test_branches_on_both_halves_are_sound_and_at_their_bound(kind: str, p: float) -> None:
    model, x = Coupled(kind).eval(), torch.randn(1, 8)
    report = analyze(model, x, p)
    attained = lower_bound(model, x, n=8, p=p)
    assert report.bound.value >= attained * (1 - SLACK)
    split = joint_split(next(n for n in report_graph(model, x, p) if record(n).key in ("cat", "maximum")))
    assert split is not None and not split.plain
    norm = {name: op_norm(layer.weight.detach().double(), p) for name, layer in model.named_children()}
    if kind in ("both", "maximum"):  # cat(g(a), f(relu(b))), max(g(a), f(b)): max(‖g‖, ‖f‖)
        assert report.bound.value <= max(norm["f"], norm["g"]) * (1 + 1e-5)
    if kind == "nested":  # cat(a, cat(h(d), −c)), (c, d) the halves of g(b): max(1, ‖g‖·max(‖h‖, 1))
        assert report.bound.value <= max(1.0, norm["g"] * max(norm["h"], 1.0)) * (1 + 1e-5)


def report_graph(model: nn.Module, x: torch.Tensor, p: float) -> list:
    """The ops of the model's graph, traced and annotated as the analysis does, in order."""
    registry = lipgraph.default_registry()
    lg = ir.build(model, (x,), registry)
    annotate(lg, registry, p)
    return lg.ops()


@pytest.mark.parametrize("kind", ["additive", "overlap", "repeated", "other-tensor"])
@pytest.mark.parametrize("p", NORMS)
def test_inputs_reading_the_source_by_another_route_keep_the_generic_bound(kind: str, p: float) -> None:
    """cat(a, b + f(a)) has Jacobian [[I, 0], [W, I]], of ℓ2 norm > max(1, ‖W‖): no branch bound may apply."""
    model, x = Coupled(kind).eval(), torch.randn(1, 8)
    if kind == "overlap":
        model.f = linear(5, 3, 2.0, 1)
    report = analyze(model, x, p)
    assert report.bound.value >= dense_norm(model, x, p) * (1 - SLACK)
    assert report.bound.value >= lower_bound(model, x, n=8, p=p) * (1 - SLACK)
    cat = [n for n in report_graph(model, x, p) if record(n).key == "cat"][-1]
    assert joint_split(cat) is None
    assert "joint" not in report.find(record(cat).path).bound.method
    if kind == "additive" and p == 2:
        assert dense_norm(model, x, p) > max(1.0, op_norm(model.f.weight.detach().double(), p)) * 1.01


class Shuffle(nn.Module):
    """A channel shuffle of (1, 8): view, transpose, reshape (selections, as ShuffleNet's)."""

    def forward(self, x):
        return x.view(1, 2, 4).transpose(1, 2).reshape(1, 8)


def test_a_block_after_a_shuffle_gets_the_bound_in_its_own_call() -> None:
    """The tree's value of the block (its call, input at 1) uses the branch bound too: the pieces are selections of
    the block's own input, although the walk from them continues through the shuffle before it."""
    model, x = nn.Sequential(linear(8, 8, 1.0, 4), Shuffle(), Coupled("concat")).eval(), torch.randn(1, 8)
    report = analyze(model, x, 2)
    assert report.find("2").bound.value == pytest.approx(2.0, rel=1e-5)  # max(1, ‖f‖), not √5
    assert report.bound.value == pytest.approx(2.0, rel=1e-5)


class TwoInputs(nn.Module):
    """cat(half of x, f(y)): the second input of the cat reads another network input, not a piece of x."""

    def __init__(self) -> None:
        super().__init__()
        self.f = linear(4, 4, 2.0, 1)

    def forward(self, x, y):
        a, _ = x.chunk(2, dim=1)
        return torch.cat([a, self.f(y)], dim=1)


def test_an_input_reading_another_network_input_keeps_the_generic_bound() -> None:
    model, inputs = TwoInputs().eval(), (torch.randn(1, 8), torch.randn(1, 4))
    report = lipgraph.analyze(model, inputs, lower=False, quiet=True, cache=False)
    assert report.bound.value == pytest.approx(math.sqrt(1 + 2.0 ** 2), rel=1e-5)  # √(1 + ‖W‖²), generic
    assert report.find("cat").bound.method == "autolip"


def test_orthogonium_concat_residual_is_one() -> None:
    """orthogonium's ConcatResidual(f) = cat(x₁, f(x₂)) with an orthogonal convolution f: 1-Lipschitz in ℓ2
    (was √2)."""
    AOC = pytest.importorskip("orthogonium.layers.conv.AOC")
    residual = pytest.importorskip("orthogonium.layers.residual")
    torch.manual_seed(0)
    model = residual.ConcatResidual(AOC.AdaptiveOrthoConv2d(2, 2, 3, padding=1)).eval()
    x = torch.randn(1, 4, 6, 6)
    report = analyze(model, x, 2)
    assert report.kind is lipgraph.Kind.CERTIFIED
    assert 1.0 <= report.bound.value <= 1.0 + 1e-5
    assert report.bound.value >= worst_jacobian(model, x, 2, points=4) * (1 - SLACK)


# -- random small graphs -----------------------------------------------------------------------------------------
class RandomGraph(nn.Module):
    """A random block on (1, 8) inputs: the input cut into pieces (chunks, or slices that may overlap), each piece
    through a random branch (linear maps, ReLU, negation, a cat or maximum of its own halves), some branches also
    reading another piece (a leak: the generic bound must stay), recombined by cat or maximum."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = random.Random(seed)
        self.maps = nn.ModuleList()
        k = rng.choice([2, 4, 0])  # 0: random slices
        if k:
            self.cuts = [(i * 8 // k, (i + 1) * 8 // k) for i in range(k)]
        else:
            self.cuts = [tuple(sorted(rng.sample(range(9), 2))) for _ in range(rng.randint(2, 3))]
        self.branches: list[list[tuple]] = []
        widths = []
        for lo, hi in self.cuts:
            steps, width = [], hi - lo
            for _ in range(rng.randint(0, 3)):
                op = rng.choice(["linear", "relu", "neg", "halves-cat", "halves-max", "leak"])
                if op in ("linear", "leak"):
                    out = width if op == "leak" else rng.randint(2, 4)
                    other = rng.randrange(len(self.cuts))
                    n_in = self.cuts[other][1] - self.cuts[other][0] if op == "leak" else width
                    self.maps.append(linear(n_in, out, rng.uniform(0.3, 3.0), rng.randrange(10 ** 6)))
                    steps.append((op, len(self.maps) - 1, other))
                    width = out
                elif op.startswith("halves") and width % 2 == 0:
                    steps.append((op,))
                    width = width if op == "halves-cat" else width // 2
                elif op in ("relu", "neg"):
                    steps.append((op,))
            self.branches.append(steps)
            widths.append(width)
        self.maximum = len(set(widths)) == 1 and rng.random() < 0.5

    def forward(self, x):
        pieces = [x[:, lo:hi] for lo, hi in self.cuts]
        outs = []
        for piece, steps in zip(pieces, self.branches):
            v = piece
            for step in steps:
                if step[0] == "linear":
                    v = self.maps[step[1]](v)
                elif step[0] == "leak":
                    v = v + self.maps[step[1]](pieces[step[2]])
                elif step[0] == "relu":
                    v = torch.relu(v)
                elif step[0] == "neg":
                    v = -v
                else:
                    a, b = v.chunk(2, dim=1)
                    v = torch.cat([b, torch.relu(a)], 1) if step[0] == "halves-cat" else torch.maximum(a, b)
            outs.append(v)
        if self.maximum:
            return _maximum(outs)
        return torch.cat(outs, dim=1)


def _maximum(values: list[torch.Tensor]) -> torch.Tensor:
    out = values[0]
    for v in values[1:]:
        out = torch.maximum(out, v)
    return out


def test_random_graphs_stay_above_attained_jacobian_norms() -> None:
    """Certified ≥ the exact norm of the Jacobian at several points, in every ℓp, on 40 random small blocks; the
    branch bound must have been used on some of them (else the test checks nothing new)."""
    used = 0
    for seed in range(40):
        model = RandomGraph(seed).eval()
        x = torch.randn(1, 8)
        for p in NORMS:
            report = analyze(model, x, p)
            attained = lower_bound(model, x, n=6, p=p, seed=seed)
            assert report.bound.value >= attained * (1 - SLACK), (seed, p, model.cuts, model.branches)
            used += any(n.bound.method == "autolip+joint-branches" for n in report.tree.walk())
    assert used >= 10


def test_a_rule_declaring_joint_with_a_smaller_combination_is_refused() -> None:
    """joint=True claims ‖Δy‖_p ≤ ‖(g_i‖Δx_i‖_p)_i‖_p; with combine=1 (a sum: a + b of the two halves, ℓ2 norm √2)
    the claim contradicts the rule's own combination, and the joint bound would certify 1 < √2."""
    registry = lipgraph.default_registry().copy()
    registry.register("add", lambda ctx: lipgraph.Transfer(gains=(lipgraph.exact(1.0, "add"),) * 2, combine=1.0,
                                                           joint=True), override=True)
    model = Lambda(lambda x: torch.add(*x.chunk(2, dim=1)))
    with pytest.raises(lipgraph.RuleError, match=r"joint=True needs combine >= the norm p=2"):
        lipgraph.analyze(model, torch.randn(1, 4), rules=registry, lower=False, quiet=True, cache=False)


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("kind", ["concat", "both", "maximum", "nested"])
def test_the_penalty_takes_the_branch_bound_too(kind: str) -> None:
    """lipschitz_penalty ≤ analyze's bound (its documented invariant) and, converged, equal to it: cat(a, f(b)) is
    max(1, ‖f‖), not √(1 + ‖f‖²) (the penalty gave 2.236 for analyze's 2.000); the gradient reaches the branch."""
    model, x = Coupled(kind).eval(), torch.randn(1, 8)
    certified = analyze(model, x, 2).bound.value
    penalty = lipgraph.lipschitz_penalty(model, x, iters=300)
    assert certified * (1 - 1e-4) <= penalty.item() <= certified * (1 + 1e-9)
    penalty.backward()
    branch = model.g if kind == "nested" else model.f
    assert branch.weight.grad is not None and branch.weight.grad.abs().sum() > 0


class NestedJoint(nn.Module):
    """Joint ops of joint ops on three pieces of x (lipgraph/passes/autolip.py ``nested_joint``): ``kind`` names
    the combination; the pieces a, b, c of x (1, 6) go through linear maps f, g, h of ℓ2 norms 2, 1.5, 0.5."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.f, self.g, self.h = linear(2, 2, 2.0, 4), linear(2, 2, 1.5, 5), linear(2, 2, 0.5, 6)
        self.k = linear(6, 2, 1.0, 7)

    def forward(self, x):
        a, b, c = x[:, :2], x[:, 2:4], x[:, 4:]
        if self.kind == "max-of-max":
            return torch.maximum(torch.maximum(self.f(a), self.g(b)), self.h(c))
        if self.kind == "cat-of-cat":
            return torch.cat([torch.cat([self.f(a), b], 1), self.h(c)], 1)
        if self.kind == "clamp-chain":
            return torch.clamp(torch.clamp(self.f(a), min=self.g(b)), max=self.h(c))
        if self.kind == "overlap":  # the inner pieces overlap in x[:, 2]
            return torch.maximum(torch.maximum(self.f(x[:, :2]), self.g(x[:, 1:3])), self.h(c))
        if self.kind == "other-route":  # an inner input reads all of x
            return torch.maximum(torch.maximum(self.f(a), self.g(b) + self.k(x)), self.h(c))
        raise ValueError(self.kind)


def _norms(model: NestedJoint, p: float) -> list[float]:
    return [op_norm(layer.weight.detach().double(), p) for layer in (model.f, model.g, model.h)]


@pytest.mark.parametrize("kind", ["max-of-max", "cat-of-cat", "clamp-chain"])
@pytest.mark.parametrize("p", NORMS)
def test_nested_joint_ops_on_disjoint_pieces_take_the_bound_over_all_of_them(kind: str, p: float) -> None:
    """The bound is the flat joint op's, max_i ‖W_i‖_p (cat of cats: block-diagonal diag(F, I, H), its norm exactly;
    max of max, clamp chain: attained where f's branch wins everywhere), not the generic root of squares inside."""
    model = NestedJoint(kind).eval()
    x = torch.randn(1, 6)
    report = analyze(model, x, p)
    norms = _norms(model, p)
    if kind == "cat-of-cat":
        expected = max(norms[0], 1.0, norms[2])
    else:  # f's branch is the largest: attained where f(a) wins in every coordinate (max: above g(b) and h(c);
        targets = (100.0, 0.0, 0.0) if kind == "max-of-max" else (0.0, -100.0, 100.0)  # clamp: between them)
        x = torch.cat([torch.linalg.solve(layer.weight.detach(), torch.full((2,), t) - layer.bias.detach())
                       for layer, t in zip((model.f, model.g, model.h), targets)])[None]
        expected = norms[0]
    assert dense_norm(model, x, p) == pytest.approx(expected, rel=1e-9)
    assert report.bound.value == pytest.approx(expected, rel=1e-5)
    assert report.bound.value >= lower_bound(model, x, n=8, p=p) * (1 - SLACK)


@pytest.mark.parametrize("kind", ["overlap", "other-route"])
@pytest.mark.parametrize("p", NORMS)
def test_nested_joint_ops_on_pieces_that_meet_keep_the_generic_bound(kind: str, p: float) -> None:
    """Overlapping pieces, or an inner input reading x by another route: no bound over all pieces may apply."""
    model, x = NestedJoint(kind).eval(), torch.randn(1, 6)
    if kind == "overlap":
        model.f.weight.data[:, 1] *= 4  # the shared coordinate x[:, 1] weighs in both inner branches
    report = analyze(model, x, p)
    assert report.bound.value >= lower_bound(model, x, n=8, p=p) * (1 - SLACK)
    ops = report_graph(model, x, p)
    inner, outer = [n for n in ops if record(n).key == "maximum"]
    assert joint_split(outer) is None and joint_split(inner) is None
    if not math.isinf(p):  # (in ℓ∞ the generic combination is the max already)
        assert report.bound.value > max(_norms(model, p)) * 1.01
