"""``lipgraph.lipschitz_penalty``: its gradient against finite differences, its value against ``analyze`` (equal
once converged where analyze's layer norms are exact, never above it), warm starts, caching and errors.

Oracles: central finite differences of the penalty itself (float64, converged vectors: σ = ‖A v‖ is second-order
accurate in v, so warm-started re-evaluation is the function being differentiated), and ``lipgraph.analyze`` on
tiny models whose operator norms it computes exactly (dense SVD), which makes AutoLip with exact norms known —
and, for ``method="cp"``, AutoLip with CP/LipLT on exact partial-product norms (``analyze(method="cp")``).
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipgraph
from lipgraph import penalty as penalty_module
from lipgraph.estimators.residual import RESIDUAL_ESTIMATORS
from lipgraph.passes import residual as residual_pass
from lipgraph.userfile import run_user_file
from tests.fixtures.jacobian import jacobian, op_norm
from tests.fixtures.zoo import tiny_resnet

CONVERGED = {"iters": 20000, "tol": 1e-13}  # power steps until the estimate stops moving (float64)
CONVERGED_FLOAT32 = {"iters": 3000, "tol": 1e-6}
CONVERGED_RESNET = {"iters": 3000, "tol": 1e-12}  # float64; its close singular values converge slowly


class Branchy(nn.Module):
    """A residual addition, a concatenation and a final linear layer over a shared hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3, self.l4 = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 3), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.l1(x))
        a = self.l2(h) + h
        return self.l4(torch.cat([a, torch.tanh(self.l3(h))], dim=1))


class ComputedWeight(nn.Module):
    """A weight computed in ``forward`` from parameters (weight standardisation style): F.linear(x, w·s − mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 6))
        self.s = nn.Parameter(torch.tensor(1.5))
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w * self.s
        return self.out(F.relu(F.linear(x, w - w.mean())))


def randomise_bn(model: nn.Module) -> nn.Module:
    """BatchNorm layers with running statistics and scales away from the identity."""
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
    return model


def conv_bn() -> nn.Module:
    """conv → BN (one fused operator) → ReLU → overlapping max-pool (gain 2) → flatten → linear."""
    return randomise_bn(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                      nn.MaxPool2d(3, 2), nn.Flatten(), nn.Linear(3 * 2 * 2, 4)))


class Residual(nn.Module):
    """x + bn2(conv2(relu(bn1(conv1 x)))), then ReLU → flatten → linear: a chain of two fused conv→BN runs inside
    a residual addition."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 3 * 3, 3)
        randomise_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(F.relu(h).flatten(1))


def chain_cnn() -> nn.Module:
    """conv → LeakyReLU → flatten → linear → tanh → linear: one chain of three runs, the middle one [flatten,
    linear] (a weightless op in a run), activations with slopes [0.1, 1] and [0, 1]."""
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(2 * 3 * 3, 6), nn.Tanh(),
                         nn.Linear(6, 3))


class SplitUnit(nn.Module):
    """A ShuffleNet-style unit: split the channels, conv → BN on one half, concatenate, then a linear head (the
    fused conv run starts by picking the half out of the split's tuple)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 3)
        randomise_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return self.fc(torch.cat([a, F.relu(self.bn(self.conv(b)))], dim=1).flatten(1))


CASES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)), (1, 5)),
    "branchy": (Branchy, (1, 6)),
    "conv_bn": (conv_bn, (1, 1, 5, 5)),
    "computed_weight": (ComputedWeight, (1, 6)),
    "residual": (Residual, (1, 2, 3, 3)),
    "chain_cnn": (chain_cnn, (1, 1, 5, 5)),
    "split_unit": (SplitUnit, (1, 4, 3, 3)),
}
CHAINED = ["mlp", "residual", "chain_cnn"]  # models with sequential chains, which method="cp" tightens


def make(name: str) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = CASES[name]
    torch.manual_seed(0)
    model = factory().double().eval()
    return model, torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, method", [(name, "autolip") for name in CASES] + [("mlp", "cp"), ("residual", "cp")])
def test_gradient_matches_finite_differences(name: str, method: str) -> None:
    model, x = make(name)
    value = lipgraph.lipschitz_penalty(model, x, method, **CONVERGED)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, params)
    assert any(g.abs().sum() > 0 for g in grads)
    gen, h = torch.Generator().manual_seed(2), 1e-5
    for p, g in zip(params, grads):
        for index in torch.randint(p.numel(), (3,), generator=gen).tolist():
            flat = p.data.view(-1)
            saved = flat[index].item()
            values = []
            for step in (h, -h):
                flat[index] = saved + step
                values.append(lipgraph.lipschitz_penalty(model, x, method, **CONVERGED).item())
            flat[index] = saved
            numeric = (values[0] - values[1]) / (2 * h)
            assert g.view(-1)[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-6), (name, index)


@pytest.mark.parametrize("name", list(CASES))
def test_converged_value_is_autolip_with_exact_norms_and_never_above_analyze(name: str) -> None:
    model, x = make(name)
    certified = lipgraph.analyze(model, x, lower=False).bound.value  # exact (dense) norms on these tiny models
    first = lipgraph.lipschitz_penalty(model, x, iters=0).item()  # the WARMUP_ITERS steps of a first call
    converged = lipgraph.lipschitz_penalty(model, x, **CONVERGED).item()
    assert first <= converged * (1 + 1e-9)
    assert converged == pytest.approx(certified, rel=1e-5)
    assert converged <= certified * (1 + 1e-9)


def analyze_cp_without_lmis(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> float:
    """analyze(method="cp") whose residual blocks get residual-cp only (no LMI: not eclipse-fast, not block
    pairs): the certified bound the cp penalty is a differentiable version of."""
    with monkeypatch.context() as patch:
        patch.setattr(residual_pass, "RESIDUAL_ESTIMATORS", {"residual-cp": RESIDUAL_ESTIMATORS["residual-cp"]})
        patch.setattr(residual_pass, "_tighten_pairs", lambda *args: None)
        return lipgraph.analyze(model, x, method="cp", lower=False).bound.value


@pytest.mark.parametrize("name", CHAINED)
def test_converged_cp_value_is_analyze_cp_and_below_autolip(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """penalty(cp) → AutoLip with CP/LipLT on exact partial-product norms, residual blocks by CP/LipLT with the
    shortcut = analyze(method="cp") without its LMI block estimators, on models whose partial products analyze
    materialises; strictly below the autolip penalty, since every model has a chain. With the LMI block
    estimators, analyze(method="cp") can only be lower."""
    model, x = make(name)
    joint = lipgraph.analyze(model, x, method="cp", lower=False).bound.value
    certified = analyze_cp_without_lmis(model, x, monkeypatch)
    assert joint <= certified * (1 + 1e-9)
    first = lipgraph.lipschitz_penalty(model, x, "cp", iters=0).item()
    converged = lipgraph.lipschitz_penalty(model, x, "cp", **CONVERGED).item()
    autolip = lipgraph.lipschitz_penalty(model, x, **CONVERGED).item()
    assert first <= converged * (1 + 1e-9)
    assert converged == pytest.approx(certified, rel=1e-5)
    assert converged <= certified * (1 + 1e-9)
    assert converged < autolip * (1 - 1e-3)


def test_cp_penalty_bounds_residual_blocks_jointly(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/fixtures/zoo.py's tiny ResNet (an identity block, a projection block): the cp penalty folds each
    shortcut into CP's linear term, strictly below 1 + L(branch) (the penalty without blocks), equal once converged
    to analyze's certified residual-cp bound, and ≥ a Jacobian norm attained at random points."""
    model, x = tiny_resnet()
    model, x = model.double().eval(), x.double()
    converged = lipgraph.lipschitz_penalty(model, x, "cp", **CONVERGED_RESNET)
    (plan,) = model.__dict__[penalty_module._PLANS].values()
    assert [(b.add.name, [n.name for n in b.top.shortcut]) for b in plan.blocks] == [
        ("add", []), ("add_1", ["layer2_downsample_0", "layer2_downsample_1"])]
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(converged, [model.layer2.downsample[0].weight,
                                                                          model.layer1.conv1.weight]))
    monkeypatch.setattr(penalty_module, "residual_adds", lambda *args: [])
    separate = lipgraph.lipschitz_penalty(model, x, "cp", retrace=True, **CONVERGED_RESNET).item()
    monkeypatch.undo()
    assert converged.item() < separate * (1 - 1e-2)
    certified = analyze_cp_without_lmis(model, x, monkeypatch)
    assert converged.item() == pytest.approx(certified, rel=1e-4)  # 3000 steps: 3.5e-5 below the limit
    assert converged.item() <= certified
    assert certified < lipgraph.analyze(model, x, lower=False).bound.value
    gen = torch.Generator().manual_seed(3)
    attained = max(op_norm(jacobian(model, torch.randn(x.shape, dtype=torch.float64, generator=gen)), 2)
                   for _ in range(5))
    assert attained <= converged.item()


def test_cp_estimates_every_partial_product_and_shares_layer_operators() -> None:
    model, x = make("chain_cnn")
    lipgraph.lipschitz_penalty(model, x, "cp")
    (plan,) = model.__dict__[penalty_module._PLANS].values()
    (chain,) = plan.chains
    names = {op: "|".join("+".join(n.name for n in run) for run in op.runs) for op in plan.store}
    assert {jk: names[op] for jk, op in chain.products.items()} == {
        (0, 0): "_0", (1, 1): "_2+_3", (2, 2): "_5", (0, 1): "_0|_2+_3", (1, 2): "_2+_3|_5", (0, 2): "_0|_2+_3|_5",
    }  # W_k⋯W_j: runs j..k of the chain, activations _1 and _4 skipped
    assert [names[op] for op in plan.operators] == ["_0", "_3", "_5"]  # layers: _0 and _5 shared with the chain
    assert len(plan.store) == 3 + 4


def test_penalty_excludes_weightless_ops_from_power_iteration() -> None:
    model, x = make("conv_bn")
    lipgraph.lipschitz_penalty(model, x)
    (plan,) = model.__dict__[penalty_module._PLANS].values()
    runs = [[n.name for n in op.nodes] for op in plan.operators]
    assert sorted(map(tuple, runs)) == [("_0", "_1"), ("_5",)]  # conv+BN fused, then the linear layer


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    ns = run_user_file(Path(__file__).resolve().parent.parent / "examples" / "digits.py", "digits")
    return ns


def test_after_training_certified_bound_is_at_least_the_penalty(digits) -> None:
    """penalty (1 step per call) ≤ penalty (converged) = AutoLip with exact norms ≤ analyze: the training-time
    value is an estimate from below; the certificate is analyze's."""
    x_train, y_train, *_ = digits["load_digits_tensors"]()
    x_train, y_train, example = x_train[:400], y_train[:400], x_train[:1]
    for factory in (digits["mlp"], digits["cnn"]):
        model = digits["train"](factory(), x_train, y_train, epochs=3, lr=3e-3, weight=0.05,
                                penalty=lambda m: lipgraph.lipschitz_penalty(m, example))
        during = lipgraph.lipschitz_penalty(model, example).item()
        converged = lipgraph.lipschitz_penalty(model, example, **CONVERGED_FLOAT32).item()
        report = lipgraph.analyze(model, example, lower=False)
        assert report.kind is lipgraph.Kind.CERTIFIED
        assert during <= converged * (1 + 1e-5)
        assert converged <= report.bound.value * (1 + 1e-5)
        assert converged >= 0.5 * report.bound.value  # the same AutoLip, up to FFT vs exact conv norms


def test_penalty_lowers_the_certified_bound(digits) -> None:
    x_train, y_train, *_ = digits["load_digits_tensors"]()
    x_train, y_train, example = x_train[:400], y_train[:400], x_train[:1]
    bounds = []
    for weight in (0.0, 0.1):
        model = digits["train"](digits["mlp"](hidden=32), x_train, y_train, epochs=4, lr=3e-3, weight=weight,
                                penalty=lambda m: lipgraph.lipschitz_penalty(m, example))
        bounds.append(lipgraph.analyze(model, example, lower=False).bound.value)
    assert bounds[1] < 0.7 * bounds[0]


def test_train_mode_model_is_evaluated_as_in_eval_mode_and_left_untouched() -> None:
    model, x = make("conv_bn")
    expected = lipgraph.lipschitz_penalty(copy.deepcopy(model), x, **CONVERGED).item()
    model.train()
    stats = [b.clone() for b in model.buffers()]
    value = lipgraph.lipschitz_penalty(model, x, **CONVERGED)
    value.backward()
    assert value.item() == pytest.approx(expected, rel=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))  # running stats not updated
    assert all(m.training for m in model.modules())
    assert model[0].weight.grad.abs().sum() > 0 and model[1].weight.grad.abs().sum() > 0


def test_weights_computed_in_forward_are_live_not_snapshots() -> None:
    model, x = make("computed_weight")
    before = lipgraph.lipschitz_penalty(model, x, **CONVERGED).item()
    with torch.no_grad():
        model.s.mul_(3.0)  # the computed weight triples
    after = lipgraph.lipschitz_penalty(model, x, **CONVERGED).item()
    assert after == pytest.approx(3 * before, rel=1e-6)
    assert after == pytest.approx(lipgraph.analyze(model, x, lower=False).bound.value, rel=1e-5)


def test_traced_once_per_model_and_input_shape(monkeypatch) -> None:
    calls = []
    build = lipgraph.ir.build
    monkeypatch.setattr(lipgraph.ir, "build", lambda *a, **k: calls.append(1) or build(*a, **k))
    model, x = make("mlp")
    for _ in range(3):
        lipgraph.lipschitz_penalty(model, x)
    assert len(calls) == 1
    lipgraph.lipschitz_penalty(model, torch.cat([x, x]))  # another input shape
    lipgraph.lipschitz_penalty(model, x, retrace=True)
    assert len(calls) == 3
    twin = copy.deepcopy(model)  # a copy does not share the original's plan (its layers are other objects)
    with torch.no_grad():
        twin[0].weight.mul_(2.0)
    assert lipgraph.lipschitz_penalty(twin, x, **CONVERGED).item() == pytest.approx(
        2 * lipgraph.lipschitz_penalty(model, x, **CONVERGED).item(), rel=1e-6)
    assert len(calls) == 4


def test_a_module_that_is_itself_a_layer() -> None:
    layer = nn.Linear(4, 3).double()
    value = lipgraph.lipschitz_penalty(layer, torch.rand(1, 4, dtype=torch.float64), **CONVERGED)
    assert value.item() == pytest.approx(torch.linalg.matrix_norm(layer.weight.detach(), 2).item(), rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "seqlip"}, "unknown penalty method 'seqlip'; available: autolip, cp (certify with "),
    ({"norm": "inf"}, "ℓ2 operator norms by power iteration"),
    ({"iters": -1}, "iters must be an integer >= 0"),
])
def test_errors(kwargs: dict, message: str) -> None:
    model, x = make("mlp")
    with pytest.raises(lipgraph.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lipgraph.lipschitz_penalty(model, x, **kwargs)


def test_models_without_a_finite_bound_are_refused() -> None:
    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x).sum()

    with pytest.raises(lipgraph.NotLipschitzError):
        lipgraph.lipschitz_penalty(Gate(), torch.rand(1, 3))
