"""Local bounds on a region (docs/local.md): interval rules contain sampled values of their ops, local bounds are
above sampled Jacobian norms and difference quotients inside the region, and never above the global bound."""
from __future__ import annotations

import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import lipgraph
from lipgraph import ir
from lipgraph.errors import InputError, LipgraphError, NotLipschitzError, UnsupportedOpsError
from lipgraph.passes.interval import propagate_intervals
from lipgraph.passes.localchains import local_cp, reduce_chain, vertex_bound
from lipgraph.registry import default_registry
from lipgraph.record import record
from tests.fixtures.jacobian import jacobian_norm
from tests.property.netgen import RandomDraw, build, draw_spec


class _Recorder(fx.Interpreter):
    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        self.seen[n.name] = out
        return out


def sampled_values(lg: ir.LipGraph, points: list[torch.Tensor]) -> list[dict]:
    """Every node's value at each point (float64 copy of the traced module)."""
    import copy

    gm = copy.deepcopy(lg.gm).double()
    found = []
    for z in points:
        rec = _Recorder(gm)
        rec.seen = {}
        with torch.no_grad():
            rec.run(z)
        found.append(rec.seen)
    return found


def assert_contains(bound, value, where: str) -> None:
    if bound is None or not isinstance(value, (torch.Tensor, tuple, list)):
        return
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            return
        lo, hi = bound
        slack = 1e-9 * (1 + value.abs())
        assert bool((value >= lo - slack).all() and (value <= hi + slack).all()), where
        return
    for b, v in zip(bound, value):
        assert_contains(b, v, where)


def check_intervals(model: nn.Module, x: torch.Tensor, region, samples: int = 64, seed: int = 0) -> ir.LipGraph:
    registry = default_registry()
    model.eval()
    lg = ir.build(model, (x,), registry)
    propagate_intervals(lg, registry, region, 2.0)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = region.interval(x)
    points = [region.sample(x, gen) for _ in range(samples)] + [lo, hi]
    points = [p for p in points if region.contains(p, x)]
    for seen in sampled_values(lg, points):
        for node in lg.ops():
            assert_contains(record(node).interval, seen[node.name], f"{record(node).key} at {node.name}")
    return lg


# -- every interval rule against sampled outputs -----------------------------------------------------------------
class Elementwise(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a * b, a / (b * b + 1.0), a - 2 * b, -a, torch.maximum(a, b), a.clamp(-0.5, 0.5),
                       a.abs(), torch.sort(b, dim=1).values, F.leaky_relu(a, -0.3), F.softsign(b)], dim=1)
        return y.sum(dim=1, keepdim=True) + y.mean() + torch.linalg.vector_norm(y, dim=1, keepdim=True)


class Attentionish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.ln, self.gn = nn.LayerNorm(4), nn.GroupNorm(3, 3)

    def forward(self, x):
        t = x.reshape(1, 3, 4)
        q, k, v = self.q(t), self.k(t), self.v(t)
        att = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        out = self.ln(att @ v + t)
        return self.gn(out).flatten(1).log_softmax(dim=1)


ACTIVATIONS = [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-0.5, 2.0), nn.Sigmoid(), nn.Tanh(), nn.Softsign(), nn.LogSigmoid(),
               nn.Hardsigmoid(), nn.CELU(0.7), nn.SELU(), nn.Softplus(), nn.Softshrink(0.3), nn.Tanhshrink(),
               nn.GELU(), nn.GELU("tanh"), nn.SiLU(), nn.Mish(), nn.Hardswish(), nn.LeakyReLU(0.1),
               nn.LeakyReLU(-0.5), nn.PReLU(12, init=-0.2), nn.ELU(0.5), nn.ELU(-0.5), nn.RReLU(), nn.Threshold(0.1, 0.1)]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda m: repr(m))
def test_activation_intervals_and_local_slopes_contain_sampled_values(act):
    model = nn.Sequential(nn.Linear(6, 12), act, nn.Linear(12, 3))
    x = torch.randn(1, 6, generator=torch.Generator().manual_seed(1))
    for region in (lipgraph.Box(x - 0.7, x + 0.7), lipgraph.Ball(None, 3.0)):
        lg = check_intervals(model, x, region)
        local = lipgraph.analyze(model, x, region=region, lower=False)
        for z in [region.sample(x, torch.Generator().manual_seed(k)) for k in range(8)]:
            assert jacobian_norm(model, z) <= local.bound.value * (1 + 1e-9)
        assert lg is not None


def test_slopes_cover_derivatives_per_neuron():
    """Each neuron's slope range holds σ' at every sampled pre-activation in its interval."""
    from lipgraph.rules.local import activation
    from lipgraph.passes.context import context

    for act in ACTIVATIONS:
        model = nn.Sequential(nn.Linear(5, 12), act).eval()
        x = torch.randn(1, 5, generator=torch.Generator().manual_seed(2))
        region = lipgraph.Box(x - 1.5, x + 1.5)
        registry = default_registry()
        lg = ir.build(model, (x,), registry)
        propagate_intervals(lg, registry, region, 2.0)
        node = lg.ops()[-1]
        transfer = activation(context(lg, node, 2.0))
        lo, hi = record(record(node).inputs[0]).interval
        s_lo, s_hi = transfer.neuron_slopes
        for k in range(50):
            t = (lo + (hi - lo) * torch.rand(lo.shape, generator=torch.Generator().manual_seed(k))).requires_grad_()
            f = copy.deepcopy(act).double()
            (g,) = torch.autograd.grad(f(t).sum(), t)
            assert bool(((g >= s_lo - 1e-7) & (g <= s_hi + 1e-7)).all()), repr(act)  # torch: 1/6 in float32


def test_relu_stable_neurons_are_exact():
    from lipgraph.rules.local import piecewise_slopes

    lo = torch.tensor([0.0, -2.0, -1.0, 0.5])
    hi = torch.tensor([1.0, 0.0, 1.0, 0.5])
    s_lo, s_hi = piecewise_slopes(lo, hi, [0.0], [0.0, 1.0])
    assert s_lo.tolist() == [1.0, 0.0, 0.0, 1.0] and s_hi.tolist() == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("model,shape", [
    (Elementwise(), (1, 8)),
    (Attentionish(), (1, 12)),
    (nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(3), nn.MaxPool2d(2),
                   nn.Upsample(scale_factor=2), nn.AvgPool2d(2), nn.AdaptiveMaxPool2d(3), nn.AdaptiveAvgPool2d(2),
                   nn.ConvTranspose2d(3, 2, 2, stride=2), nn.InstanceNorm2d(2), nn.Flatten(),
                   nn.Linear(32, 5), nn.Dropout(), nn.Softmin(dim=1)), (1, 2, 6, 6)),
], ids=["elementwise", "attention-like", "conv"])
def test_interval_rules_contain_sampled_outputs(model, shape):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    for region in (lipgraph.Box(x - 0.3, x + 0.3), lipgraph.Ball(None, 0.5), lipgraph.Ball(None, 0.5, norm="inf")):
        check_intervals(model, x, region)


# -- local bounds: above sampled ratios, below the global bound --------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_fuzz_local_bound_is_sound_and_below_global(seed):
    rng = random.Random(1000 + seed)
    spec = draw_spec(RandomDraw(rng), norm="2", max_blocks=3)
    model, x = build(spec)
    x = x[:1]
    radius = rng.choice([0.01, 0.1, 1.0])
    region = lipgraph.Ball(None, radius) if seed % 2 else lipgraph.Box(x - radius, x + radius)
    try:
        local = lipgraph.analyze(model, x, region=region, lower=False, cache=False, quiet=True)
    except LipgraphError as exc:
        pytest.skip(f"refused: {exc}")
    global_ = lipgraph.analyze(model, x, lower=False, cache=False, quiet=True)
    assert local.bound.value <= global_.bound.value * (1 + 1e-9)
    # ... before the global ceiling (region.within_global), else the line above holds by construction
    assert not [note for note in local.notes if "is below the region's bound" in note]
    check_intervals(model, x, region, samples=16)
    gen = torch.Generator().manual_seed(seed)
    import copy

    net = copy.deepcopy(model).double().eval()
    for _ in range(6):
        z = region.sample(x, gen)
        assert jacobian_norm(model, z) <= local.bound.value * (1 + 1e-7)
        a, b = region.sample(x, gen), region.sample(x, gen)
        with torch.no_grad():
            ratio = float(torch.linalg.vector_norm(net(a) - net(b)) / torch.linalg.vector_norm(a - b))
        assert ratio <= local.bound.value * (1 + 1e-7)


def test_local_mlp_is_much_tighter_and_above_its_lower_bound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(1, 10)
    global_ = lipgraph.analyze(model, x, lower=False)
    local = lipgraph.analyze(model, x, region=lipgraph.Ball(None, 1e-3))
    assert local.lower.value <= local.bound.value < 0.5 * global_.bound.value
    results = local.chains[0].results
    assert results.get("vertices-local", results["cp-local"]).value <= results["cp-local"].value
    # a tinier ball: every ReLU is stable, the chain bound is the Jacobian norm at x (to rounding)
    tiny = lipgraph.analyze(model, x, region=lipgraph.Ball(None, 1e-6))
    assert tiny.bound.value <= tiny.lower.value * (1 + 1e-4)


def test_local_cp_is_exact_on_stable_chains_and_reduction_keeps_it():
    W = [torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)]
    s = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    exact_norm = torch.linalg.matrix_norm(W[1] @ torch.diag(s) @ W[0], 2).item()
    assert local_cp(W, [(s, s)], 2).value == pytest.approx(exact_norm, rel=1e-5)
    lo, hi = s.clone(), s.clone()
    lo[0], hi[1] = 0.5, 1.0  # two unstable neurons: the vertex bound is the max of four exact norms
    norms = [torch.linalg.matrix_norm(W[1] @ torch.diag(torch.tensor([a, b, 1.0, 1.0, 0.0], dtype=torch.float64))
                                      @ W[0], 2).item() for a in (0.5, 1.0) for b in (0.0, 1.0)]
    assert vertex_bound(W, [(lo, hi)], 2).value == pytest.approx(max(norms), rel=1e-5)
    assert vertex_bound(W, [(lo, hi)], 2).value <= local_cp(W, [(lo, hi)], 2).value * (1 + 1e-12)
    reduced = reduce_chain(W, [(s, s)])
    assert reduced.weights[0].shape == (3, 4) and reduced.slopes == ((1.0, 1.0),)


def test_vertex_batches_early_stop_and_memo_agree_with_one_vertex_at_a_time(monkeypatch):
    from itertools import product

    from lipgraph.passes import localchains

    gen = torch.Generator().manual_seed(5)
    W = [torch.randn(6, 4, dtype=torch.float64, generator=gen), torch.randn(5, 6, dtype=torch.float64, generator=gen),
         torch.randn(3, 5, dtype=torch.float64, generator=gen)]
    slopes = [(torch.tensor([0.0, 0, 1, 0, 0, 0.2], dtype=torch.float64), torch.tensor([1.0, 0, 1, 1, 0, 1], dtype=torch.float64)),
              (torch.tensor([0.0, 1, 0, 0, 0.5], dtype=torch.float64), torch.tensor([1.0, 1, 1, 0, 0.5], dtype=torch.float64))]
    unstable = [(i, j) for i, (a, b) in enumerate(slopes) for j in torch.nonzero(b > a).flatten().tolist()]
    one_by_one = 0.0
    for corner in product((0, 1), repeat=len(unstable)):
        fixed = [(a.clone(), b.clone()) for a, b in slopes]
        for (i, j), side in zip(unstable, corner):
            fixed[i][0][j] = fixed[i][1][j] = slopes[i][side][j]
        one_by_one = max(one_by_one, localchains.local_cp(W, fixed, 2).value)
    monkeypatch.setattr(localchains, "VERTEX_BATCH", 4)  # several batches: prefixes shared within a batch
    monkeypatch.setattr(localchains, "_VERTEX_MEMO", {})
    full = vertex_bound(W, slopes, 2)
    assert full.value == pytest.approx(one_by_one, rel=1e-12) and "exact" in full.method
    assert vertex_bound(W, slopes, 2, stop_above=full.value * 1.01).value == full.value  # remembered
    assert vertex_bound(W, slopes, 2, stop_above=full.value * 0.99) is None
    monkeypatch.setattr(localchains, "_VERTEX_MEMO", {})
    assert vertex_bound(W, slopes, 2, stop_above=full.value * 0.99) is None  # computed: stops at a vertex above
    assert vertex_bound(W, slopes, 2, stop_above=full.value * 1.01).value == pytest.approx(full.value, rel=1e-12)


def test_products_and_attention_are_bounded_on_a_region_only():
    model = Attentionish().eval()
    x = torch.randn(1, 12, generator=torch.Generator().manual_seed(4))
    with pytest.raises(NotLipschitzError):
        lipgraph.analyze(model, x, lower=False)
    region = lipgraph.Ball(None, 0.2)
    local = lipgraph.analyze(model, x, region=region)
    assert math.isfinite(local.bound.value) and local.lower.value <= local.bound.value
    for k in range(8):
        assert jacobian_norm(model, region.sample(x, torch.Generator().manual_seed(k))) <= local.bound.value


def test_division_by_an_interval_holding_zero_is_refused():
    class Div(nn.Module):
        def forward(self, x):
            return x / x.sum(dim=1, keepdim=True)

    x = torch.ones(1, 3)
    assert math.isfinite(lipgraph.analyze(Div(), x, region=lipgraph.Box(0.5, 1.0), lower=False).bound.value)
    with pytest.raises(NotLipschitzError, match="contains 0"):
        lipgraph.analyze(Div(), x, region=lipgraph.Box(-1.0, 1.0), lower=False)


# -- regions: validation, reporting --------------------------------------------------------------------------------
def test_region_errors_are_clear():
    model, x = nn.Linear(3, 2), torch.zeros(1, 3)
    with pytest.raises(InputError, match="lo <= hi"):
        lipgraph.analyze(model, x, region=lipgraph.Box(1.0, 0.0))
    with pytest.raises(InputError, match="does not broadcast"):
        lipgraph.analyze(model, x, region=lipgraph.Box(torch.zeros(4), 1.0))
    with pytest.raises(InputError, match="radius must be a finite number >= 0"):
        lipgraph.Ball(None, -1.0)
    with pytest.raises(InputError, match="norm must be 1, 2 or inf"):
        lipgraph.Ball(None, 1.0, norm=3)
    with pytest.raises(InputError, match="batch of 1"):
        lipgraph.analyze(model, torch.zeros(2, 3), region=lipgraph.Ball(None, 1.0))
    with pytest.raises(InputError, match="must be lipgraph.Box"):
        lipgraph.analyze(model, x, region=(0, 1))


def test_missing_interval_rule_is_listed():
    registry = default_registry().copy()
    registry._intervals.pop("tanh")
    model, x = nn.Sequential(nn.Linear(3, 3), nn.Tanh()), torch.zeros(1, 3)
    lg = ir.build(model, (x,), registry)
    with pytest.raises(UnsupportedOpsError, match="interval rule.*\n.*tanh"):
        propagate_intervals(lg, registry, lipgraph.Box(-1, 1), 2.0)


def test_report_states_the_region_and_global_json_has_none():
    model, x = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)), torch.zeros(1, 3)
    local = lipgraph.analyze(model, x, region=lipgraph.Box(0, 1), lower=False)
    assert local.to_dict()["region"] == "box [0, 1]"
    assert "region" not in lipgraph.analyze(model, x, lower=False).to_dict()
    import io

    from rich.console import Console

    out = io.StringIO()
    local.print(console=Console(file=out, width=200))
    assert "on the box [0, 1]" in out.getvalue().splitlines()[0]


# -- certify with local bounds -------------------------------------------------------------------------------------
def _classifier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.randn(3, 4)
    return model, x, model(x).argmax(1)


def test_certify_local_radii_are_larger_and_never_flip():
    model, x, y = _classifier()
    cert = lipgraph.certify(model, x, y, local=True)
    assert bool((cert.local_radii >= cert.radii).all()) and bool((cert.local_radii > cert.radii).any())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in range(len(x)):
            d = torch.randn(200, 4, generator=gen)
            d = d / d.norm(dim=1, keepdim=True) * cert.local_radii[k].float() * 0.999
            assert bool((model(x[k] + d).argmax(1) == y[k]).all())
    assert "local_radius" in cert.to_dict()


def test_certify_local_radius_where_the_margin_is_constant_on_the_first_ball():
    """Every ReLU is off near x: the local bound of f_y − f_j on the first ball is 0 (was a ZeroDivisionError).
    The radius then grows by doubling while the bound certifies it, and no point inside flips the class."""
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        model[0].bias.fill_(-10.0)
        model[2].weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [0.0, 3.0, -1.0]]))
        model[2].bias.copy_(torch.tensor([1.0, 0.0]))
    x, y = torch.zeros(1, 2), torch.tensor([0])
    cert = lipgraph.certify(model, x, y, local=True)
    assert float(cert.local_radii[0]) > 4 * float(cert.radii[0]) > 0
    d = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    d = d / d.norm(dim=1, keepdim=True) * float(cert.local_radii[0]) * 0.999
    with torch.no_grad():
        assert bool((model(x + d).argmax(1) == 0).all())


def test_certify_local_runs_on_an_executor():
    from concurrent.futures import ThreadPoolExecutor

    model, x, y = _classifier()
    with ThreadPoolExecutor(2) as pool:
        cert = lipgraph.certify(model, x, y, local=True, executor=pool)
    assert torch.allclose(cert.local_radii, lipgraph.certify(model, x, y, local=True).local_radii)


def test_certify_local_on_a_dask_cluster():
    distributed = pytest.importorskip("dask.distributed")
    model, x, y = _classifier()
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=1) as cluster, \
            distributed.Client(cluster) as client:
        cert = lipgraph.certify(model, x, y, local=True, executor=client.get_executor())
    assert torch.allclose(cert.local_radii, lipgraph.certify(model, x, y, local=True).local_radii)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.GELU(), nn.Tanh()], ids=repr)
def test_crown_intervals_contain_sampled_pre_activations_and_are_tighter(act):
    from lipgraph.passes.crown import refine_chains
    from lipgraph.pipeline import Analysis, graph_passes, run_passes

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 4)).eval()
    x = torch.randn(1, 6)
    for region in (lipgraph.Ball(None, 0.3), lipgraph.Ball(None, 0.3, norm="inf"), lipgraph.Box(x - 0.2, x + 0.2)):
        lg = run_passes(graph_passes(region), Analysis(model, (x,), 2.0, default_registry(), region=region)).graph
        pre = [n for n in lg.ops() if record(n).key == "linear"]
        before = [tuple(b.clone() for b in record(n).interval) for n in pre]
        refine_chains(lg, region, 2.0)
        widths = [float((record(n).interval[1] - record(n).interval[0]).sum()) for n in pre]
        assert widths[1] < float((before[1][1] - before[1][0]).sum())  # back-substitution paid off
        gen = torch.Generator().manual_seed(0)
        points = [region.sample(x, gen) for _ in range(200)]
        for seen in sampled_values(lg, points):
            for n in pre:
                assert_contains(record(n).interval, seen[n.name], n.name)


def test_not_lipschitz_error_ends_with_the_region_command():
    class Gate(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x.sum(dim=1, keepdim=True))

    with pytest.raises(NotLipschitzError) as err:
        lipgraph.analyze(Gate(), torch.ones(1, 3), lower=False)
    assert str(err.value).splitlines()[-1].startswith("To bound it on the inputs that matter: lipgraph explain MODEL --box")
    assert math.isfinite(lipgraph.analyze(Gate(), torch.ones(1, 3), region=lipgraph.Box(0, 1), lower=False).bound.value)


def test_cli_box_ball_and_errors(tmp_path, capsys):
    import json

    from lipgraph.cli import main

    model_file = tmp_path / "gate.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Gate(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(3, 3)\n"
        "    def forward(self, x):\n        return self.fc(x) * torch.sigmoid(x)\n\n"
        "def build_model():\n    torch.manual_seed(0)\n    return Gate()\n\n"
        "def example_input():\n    return torch.full((1, 3), 0.5)\n")
    torch.save(torch.zeros(1, 3), tmp_path / "c.pt")

    def run(*args):
        code = main([*args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = run("explain", str(model_file), "--box", "0,1", "--json", "--no-lower")
    assert code == 0, err
    assert json.loads(out)["region"] == "box [0, 1]" and json.loads(out)["kind"] == "certified"
    code, out, err = run("explain", str(model_file), "--ball", "0.1", "--center", str(tmp_path / "c.pt"), "--json",
                         "--no-lower")
    assert code == 0 and json.loads(out)["region"] == "ℓ2 ball of radius 0.1 around center 0", err
    code, out, err = run("explain", str(model_file))
    assert code == 2 and "--box" in err.splitlines()[-1]
    code, out, err = run("explain", str(model_file), "--box", "0,x")
    assert code == 2 and "--box '0,x' must be two numbers LO,HI" in err
    code, out, err = run("explain", str(model_file), "--box", "0,1", "--ball", "1")
    assert code == 2 and "give --box or --ball, not both" in err


def test_every_local_chain_estimator_is_above_sampled_jacobians():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(1, 5)
    region = lipgraph.Ball(None, 0.5)
    report = lipgraph.analyze(model, x, region=region, method="best")
    auto = lipgraph.analyze(model, x, region=region, lower=False)
    assert report.bound.value <= auto.bound.value * (1 + 1e-9)
    results = report.chains[0].results
    assert {"cp-local", "seqlip-local"} <= set(results)
    gen = torch.Generator().manual_seed(0)
    top = max(jacobian_norm(model, region.sample(x, gen)) for _ in range(30))
    for name, bound in results.items():
        if bound.kind is lipgraph.Kind.CERTIFIED:
            assert top <= bound.value * (1 + 1e-9), name


def test_discontinuous_activations_are_refused_on_a_region_too():
    model, x = nn.Sequential(nn.Linear(3, 3), nn.Threshold(0.1, 2.0)), torch.zeros(1, 3)
    with pytest.raises(NotLipschitzError, match="jumps"):
        lipgraph.analyze(model, x, region=lipgraph.Box(-1, 1), lower=False)


def test_a_rules_file_registers_all_three_kinds_for_a_custom_op(restore_default_registry):
    """A user op: its global rule refuses (x² is not Lipschitz), its interval and local rules bound it on a region."""

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    registry = restore_default_registry
    saved = (dict(registry._intervals), dict(registry._local))
    try:
        lipgraph.register(Square, lipgraph.not_lipschitz("x² grows quadratically"), key="my_square")  # torch.square has a built-in key

        @lipgraph.interval_rule("my_square")
        def square_interval(ctx):
            lo, hi = ctx.bounds[0]
            low = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo * lo, hi * hi))
            return low, torch.maximum(lo * lo, hi * hi)

        @lipgraph.local_rule("my_square")
        def square_local(ctx):
            """|d(x²)/dx| = 2|x| ≤ 2 max|x| on the region."""
            lo, hi = ctx.bounds[0]
            return lipgraph.certified(2 * float(torch.maximum(lo.abs(), hi.abs()).max()), "2 max|x|")

        model, x = nn.Sequential(nn.Linear(3, 3), Square()), torch.zeros(1, 3)
        with pytest.raises(NotLipschitzError, match="quadratically"):
            lipgraph.analyze(model, x, lower=False)
        local = lipgraph.analyze(model, x, region=lipgraph.Box(-1, 1))
        assert math.isfinite(local.bound.value) and local.lower.value <= local.bound.value
    finally:
        registry._intervals, registry._local = saved


def _certify_args(tmp_path, x, y) -> list[str]:
    """``lipgraph certify MODEL --data FILE --json`` for :func:`_classifier`'s network written as a model file."""
    model_file = tmp_path / "clf.py"
    model_file.write_text("import torch\nfrom torch import nn\n\n\nclass Net(nn.Sequential):  # a class of the file\n"
                          "    pass\n\n\ndef build_model():\n    torch.manual_seed(0)\n"
                          "    return Net(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3)).eval()\n\n\n"
                          "def example_input():\n    return torch.zeros(1, 4)\n")
    torch.save((x, y), tmp_path / "data.pt")
    return ["certify", str(model_file), "--data", str(tmp_path / "data.pt"), "--json"]


def test_cli_certify_local_on_spawned_workers(tmp_path, capsys):
    """`--workers 2`: spawned processes (torch's thread pools do not survive fork) get the model file's class by
    value (cloudpickle) and find the serial local radii."""
    import json

    pytest.importorskip("cloudpickle")
    from lipgraph.cli import main

    model, x, y = _classifier()
    code = main([*_certify_args(tmp_path, x, y), "--local", "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    serial = lipgraph.certify(model, x, y, local=True).local_radii
    assert json.loads(captured.out)["local_radius"] == pytest.approx(serial.tolist())


def test_cli_certify_local_on_a_dask_scheduler(tmp_path, capsys):
    """`lipgraph certify --local --dask ADDRESS` against an in-process LocalCluster: the serial local radii."""
    import json

    distributed = pytest.importorskip("dask.distributed")
    from lipgraph.cli import main

    model, x, y = _classifier()
    args = _certify_args(tmp_path, x, y)
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=1) as cluster:
        code = main([*args, "--local", "--dask", cluster.scheduler_address])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    serial = lipgraph.certify(model, x, y, local=True).local_radii
    assert json.loads(captured.out)["local_radius"] == pytest.approx(serial.tolist())
    assert main([*args, "--dask", cluster.scheduler_address]) == 2
    assert "--workers and --dask run the local radii: add --local" in capsys.readouterr().err
    assert main([*args, "--local", "--dask", "tcp://127.0.0.1:1", "--workers", "2"]) == 2
    assert "give --workers or --dask, not both" in capsys.readouterr().err
    assert main([*args, "--local", "--dask", "nosuchscheme://host:1"]) == 2
    assert "--dask: cannot reach a dask scheduler at 'nosuchscheme://host:1'" in capsys.readouterr().err


# -- ℓ1/ℓ∞ local rules of normalisation layers; attention is ℓ2 only -------------------------------------------------
def _operator_norm(J: torch.Tensor, p: float) -> float:
    return float(J.abs().sum(1).max() if math.isinf(p) else J.abs().sum(0).max())


@pytest.mark.parametrize("p", [1.0, math.inf], ids=["l1", "linf"])
@pytest.mark.parametrize("layer, shape", [(nn.LayerNorm(6), (1, 6)), (nn.GroupNorm(2, 4), (1, 4, 3)),
                                          (nn.InstanceNorm1d(4, affine=True), (1, 4, 3))], ids=repr)
def test_normalisation_local_l1_linf_bounds_are_above_dense_jacobians(layer, shape, p):
    torch.manual_seed(0)
    for param in layer.parameters():
        with torch.no_grad():
            param.uniform_(-1.5, 1.5)
    model = nn.Sequential(layer).eval()
    x = torch.randn(*shape)
    region = lipgraph.Box(x - 0.02, x + 0.02)  # small: the bound is nearly the largest sampled norm
    bound = lipgraph.analyze(model, x, region=region, norm=p, quiet=True).bound.value
    net = copy.deepcopy(model).double()
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        z = region.sample(x, gen)
        J = torch.autograd.functional.jacobian(lambda t: net(t).reshape(-1), z).reshape(z.numel(), z.numel())
        assert _operator_norm(J, p) <= bound * (1 + 1e-9)


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.att(x, x, x, need_weights=False)[0]


def test_attention_local_bound_in_l1_linf_is_refused_by_name():
    model = SelfAttention().eval()
    with pytest.raises(UnsupportedOpsError, match=r"no rule \(for the ℓinf norm\)[\s\S]*multihead_attention"):
        lipgraph.analyze(model, torch.randn(1, 3, 4), region=lipgraph.Box(-1, 1), norm="inf", quiet=True)
