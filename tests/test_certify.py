"""``lipgraph.certify`` and ``lipgraph certify``: radii against exact oracles, soundness under attack, the CLI.

Oracles: for a linear classifier f(x) = W x + b the per-class-pair radius is exactly the ℓp distance to the
nearest decision boundary, min_j (f_y − f_j)/‖w_y − w_j‖_{p*}, and a point just beyond it changes the class;
the global radius is margin / (c_p · L) with L from ``analyze``. Soundness: on digits models trained in the test,
no PGD iterate and no random point inside the certified radius changes the predicted class (hundreds of inputs),
while the same attack does change it at a few times the radius (so it is not a weak attack).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph.certify import default_grid, pair_constant
from lipgraph.cli import main
from lipgraph.userfile import run_user_file

ROOT = Path(__file__).resolve().parent.parent
DUAL = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}
NORMS = {1.0: "1", 2.0: "2", math.inf: "inf"}


def linear_classifier(features: int = 5, classes: int = 4) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(features, classes)).double()
    x = torch.randn(60, features, dtype=torch.float64)
    y = torch.randint(classes, (60,))
    y[:30] = model(x[:30]).argmax(1)  # half correct, the rest mostly misclassified
    return model, x, y


@pytest.mark.parametrize("p", [2.0, math.inf, 1.0])
def test_linear_classifier_radius_is_the_exact_distance_to_the_boundary(p: float) -> None:
    model, x, y = linear_classifier()
    cert = lipgraph.certify(model, x, y, norm=NORMS[p])
    assert cert.certified and cert.pair_bounds is not None
    W = model[0].weight.detach()
    logits = model(x).detach()
    for k in range(len(x)):
        c = int(logits[k].argmax())
        if c != y[k]:
            assert cert.radii[k] == 0
            continue
        distances = [((logits[k, c] - logits[k, j]) / torch.linalg.vector_norm(W[c] - W[j], DUAL[p])).item()
                     for j in range(W.shape[0]) if j != c]
        exact = min(distances)
        assert cert.radii[k].item() == pytest.approx(exact, rel=1e-5)
        # just beyond the radius, along the worst direction towards the nearest boundary, the class changes
        j = [i for i in range(W.shape[0]) if i != c][distances.index(exact)]
        w = W[j] - W[c]  # d(f_j − f_c)/dx
        if p == 2.0:
            step = w / w.norm()
        elif math.isinf(p):
            step = w.sign()
        else:
            step = torch.zeros_like(w)
            step[w.abs().argmax()] = w[w.abs().argmax()].sign()
        assert model(x[k] + 1.001 * exact * step).argmax().item() != c
        assert model(x[k] + 0.999 * exact * step).argmax().item() == c


def small_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 5))


@pytest.mark.parametrize("p", [2.0, math.inf, 1.0])
def test_global_radius_is_margin_over_c_times_L_and_pairs_never_smaller(p: float) -> None:
    model = small_mlp()
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1).detach()
    y[:20] = (y[:20] + 1) % 5
    L = lipgraph.analyze(model, x[:1], norm=NORMS[p], lower=False).bound.value
    plain = lipgraph.certify(model, x, y, norm=NORMS[p], pairwise=False)
    logits = model(x).detach().double()
    top2 = logits.topk(2, dim=1).values
    expected = torch.where(plain.correct, (top2[:, 0] - top2[:, 1]) / (pair_constant(p) * L), torch.zeros(200))
    assert plain.bound.value == pytest.approx(L, rel=1e-12) and plain.pair_bounds is None
    torch.testing.assert_close(plain.radii, expected, rtol=1e-6, atol=0)
    assert not plain.correct[:20].all() and (plain.radii[~plain.correct] == 0).all()
    pairs = lipgraph.certify(model, x, y, norm=NORMS[p])
    assert pairs.pair_bounds is not None and torch.equal(pairs.pair_bounds, pairs.pair_bounds.T)
    assert (pairs.pair_bounds <= pair_constant(p) * L * (1 + 1e-12)).all()
    assert (pairs.radii >= plain.radii).all() and pairs.radii.sum() > plain.radii.sum()


def test_certified_accuracy_summary_and_default_grid() -> None:
    model, x, y = linear_classifier()
    cert = lipgraph.certify(model, x, y, radii=[0, 0.1, 1.0])
    assert [r for r, _, _ in cert.summary()] == [0, 0.1, 1.0]
    for r, acc, count in cert.summary():
        expected = sum(1 for k in range(len(x)) if cert.correct[k] and cert.radii[k] >= r)
        assert count == expected and acc == pytest.approx(expected / len(x))
    assert cert.summary()[0][1] == pytest.approx(cert.accuracy)
    assert default_grid(torch.tensor([0.0, 0.2, 0.31])) == (0.0, 0.062, 0.12, 0.19, 0.25, 0.31)
    assert default_grid(torch.zeros(3)) == (0.0,)


def test_bounds_that_are_not_certified_are_said_to_give_no_certificate() -> None:
    model = small_mlp()
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(3))
    report = lipgraph.analyze(model, x[:1], lower=False)
    guess = dataclasses.replace(report, bound=lipgraph.estimate(report.bound.value / 2, "guess"))
    cert = lipgraph.certify(model, x, model(x).argmax(1), report=guess)
    assert cert.kind is lipgraph.Kind.ESTIMATE and not cert.certified
    assert any("NOT certificates" in note for note in cert.notes)
    with pytest.raises(lipgraph.InputError, match="the report bounds the ℓ2"):
        lipgraph.certify(model, x, model(x).argmax(1), norm="inf", report=report)


def test_unbounded_ops_give_zero_radii_that_are_not_certificates() -> None:
    from tests.fixtures.zoo import unsupported_op

    model, x = unsupported_op()
    x = torch.cat([x, -x, 2 * x])
    with pytest.raises(lipgraph.UnsupportedOpsError):
        lipgraph.certify(model, x, model(x).argmax(1))
    cert = lipgraph.certify(model, x, model(x).argmax(1), unsupported="inf")
    assert cert.kind is lipgraph.Kind.UNBOUNDED and not cert.certified and (cert.radii == 0).all()
    assert any("unbounded, not certified: these radii are NOT certificates" in note for note in cert.notes)
    result = json.loads(json.dumps(cert.to_dict(), allow_nan=False))
    assert result["bound"] is None and result["kind"] == "unbounded" and not result["certified"]


@pytest.mark.parametrize("x, y, message", [
    (torch.rand(4, 6), torch.tensor([0.0, 1.0, 0.0, 1.0]), "labels must be an integer tensor"),
    (torch.rand(4, 6), torch.tensor([0, 1, 0]), "4 inputs but 3 labels"),
    (torch.rand(4, 6), torch.tensor([0, 1, 0, 7]), "labels go up to 7 but the model has 5 classes"),
    (torch.rand(4, 6), torch.tensor([0, -1, 0, 1]), "class indices >= 0"),
    (torch.randint(3, (4, 6)), torch.tensor([0, 1, 0, 1]), "inputs must be a non-empty floating tensor"),
])
def test_bad_data_is_refused_clearly(x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    with pytest.raises(lipgraph.InputError, match=message):
        lipgraph.certify(small_mlp(), x, y)


def test_a_model_that_is_not_a_classifier_is_refused() -> None:
    with pytest.raises(lipgraph.InputError, match=r"returning one tensor of logits \(N, classes >= 2\)"):
        lipgraph.certify(nn.Sequential(nn.Linear(6, 1)), torch.rand(4, 6), torch.zeros(4, dtype=torch.long))


# -- soundness on digits models ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_models():
    pytest.importorskip("sklearn")
    torch.manual_seed(0)
    ns = run_user_file(ROOT / "examples" / "digits.py", "digits")
    x_train, y_train, x_test, y_test = ns["load_digits_tensors"]()
    example = x_train[:1]
    models = {name: ns["train"](ns[name](), x_train[:600], y_train[:600], epochs=5, lr=3e-3, weight=0.05,
                                penalty=lambda m: lipgraph.lipschitz_penalty(m, example))
              for name in ("mlp", "cnn")}
    return models, x_test, y_test


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: torch.Tensor, p: float, *,
           steps: int = 40, restarts: int = 2, seed: int = 0) -> torch.Tensor:
    """PGD on max_{j≠y} f_j − f_y inside the ℓp ball (p = 2 or ∞) of ``radius`` per row, from random starts in
    the ball; True where any iterate changes the predicted class."""
    gen = torch.Generator().manual_seed(seed)
    r = radius.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)

    def project(d: torch.Tensor) -> torch.Tensor:
        if math.isinf(p):
            return torch.maximum(torch.minimum(d, r), -r)
        return d * torch.clamp(r / d.flatten(1).norm(dim=1).view_as(r).clamp_min(1e-12), max=1.0)

    def unit(g: torch.Tensor) -> torch.Tensor:
        return g.sign() if math.isinf(p) else g / g.flatten(1).norm(dim=1).view_as(r).clamp_min(1e-12)

    changed = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(restarts):
        d = project(torch.randn(x.shape, generator=gen) * r)
        for _ in range(steps + 1):
            d.requires_grad_(True)
            out = model(x + d)
            changed |= out.argmax(1) != y
            gap = out.scatter(1, y[:, None], -math.inf).max(1).values - out.gather(1, y[:, None]).squeeze(1)
            (g,) = torch.autograd.grad(gap.sum(), d)
            d = project(d.detach() + 2.5 / steps * r * unit(g))
    return changed


def random_points_change(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: torch.Tensor, p: float,
                         samples: int = 50) -> torch.Tensor:
    """True where one of ``samples`` random points on the sphere (ℓ2) or corners of the box (ℓ∞) changes the class."""
    gen = torch.Generator().manual_seed(1)
    r = radius.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)
    changed = torch.zeros(len(x), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(samples):
            d = torch.randn(x.shape, generator=gen)
            d = d.sign() if math.isinf(p) else d / d.flatten(1).norm(dim=1).view_as(r)
            changed |= model(x + r * d).argmax(1) != y
    return changed


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("p", [2.0, math.inf])
def test_no_attack_changes_the_class_inside_the_certified_radius(digits_models, name: str, p: float) -> None:
    models, x, y = digits_models
    model = models[name]
    cert = lipgraph.certify(model, x, y, norm=NORMS[p])
    assert cert.certified and cert.accuracy > 0.8
    ok = cert.correct & (cert.radii > 0)
    assert ok.sum() >= 300  # hundreds of inputs attacked
    x, y, radius = x[ok], y[ok], cert.radii[ok] * (1 - 1e-4)  # float32 network: stay off the exact boundary
    assert not attack(model, x, y, radius, p).any()
    assert not random_points_change(model, x, y, radius, p).any()
    # the attack is not weak: at a few times the radius it changes many classes
    assert attack(model, x, y, radius * (10 if p == 2 else 40), p).float().mean() > 0.5


# -- the command line -------------------------------------------------------------------------------------
MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn

    def build_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5))

    def example_input():
        return torch.rand(1, 6)
""")


@pytest.fixture
def cli_files(tmp_path: Path) -> dict[str, Path]:
    ns = {}
    exec(MODEL_FILE, ns)  # noqa: S102 - the test's own model file
    model = ns["build_model"]()
    with torch.no_grad():
        model[2].weight.mul_(3.0)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(4))
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 5
    files = {"model": tmp_path / "model.py", "weights": tmp_path / "weights.pt", "tuple": tmp_path / "xy.pt",
             "dict": tmp_path / "xy_dict.pt"}
    files["model"].write_text(MODEL_FILE)
    torch.save(model.state_dict(), files["weights"])
    torch.save((x, y), files["tuple"])
    torch.save({"inputs": x, "labels": y}, files["dict"])
    files["expected"] = lipgraph.certify(model, x, y, radii=[0.0, 0.05])  # type: ignore[assignment]
    return files


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("data", ["tuple", "dict"])
def test_cli_json_matches_the_api(capsys, cli_files, data: str) -> None:
    code, out, err = run(capsys, "certify", str(cli_files["model"]), "--weights", str(cli_files["weights"]),
                         "--data", str(cli_files[data]), "--radii", "0,0.05", "--json")
    assert code == 0, err
    result = json.loads(out)
    expected = cli_files["expected"]
    assert result["kind"] == "certified" and result["certified"] and result["pairwise"] and result["n"] == 40
    assert result["radius"] == pytest.approx(expected.radii.tolist(), rel=1e-9)
    assert [row["certified_accuracy"] for row in result["summary"]] == [a for _, a, _ in expected.summary()]
    assert result["accuracy"] == pytest.approx(expected.accuracy)


def test_cli_table_ascii_and_plot(capsys, cli_files, tmp_path: Path) -> None:
    args = ["certify", str(cli_files["model"]), "--weights", str(cli_files["weights"]), "--data",
            str(cli_files["tuple"]), "--radii", "0,0.05"]
    code, out, err = run(capsys, *args, "--width", "120")
    assert code == 0, err
    assert "certified accuracy (ℓ2 radius)" in out and "certified · autolip · ℓ2 · 40 inputs" in out
    count = int((cli_files["expected"].correct & (cli_files["expected"].radii >= 0.05)).sum())
    assert f"{count}/40" in out
    code, out, err = run(capsys, *args, "--ascii", "--norm", "inf")
    assert code == 0, err
    assert out.isascii() and "certified accuracy (linf radius)" in out
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curve.png"
    code, out, err = run(capsys, *args, "--plot", str(plot), "--json")
    assert code == 0, err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(monkeypatch, cli_files, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(lipgraph.LipgraphError, match="plotting needs matplotlib: pip install matplotlib"):
        cli_files["expected"].plot(tmp_path / "curve.png")


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 3])
    cases = {
        "module": (nn.Linear(2, 2), "could not load data file .* with weights_only=True"),
        "no_labels": ({"x": x}, r"holds a dict with keys \['x'\]; it needs inputs under one of .* and labels"),
        "three": ((x, y, y), "must hold \\(inputs, labels\\) or \\{'x': inputs, 'y': labels\\}, got tuple of length 3"),
        "float_labels": ((x, y.float()), "data file .*: labels must be an integer tensor"),
        "out_of_range": ((x, torch.tensor([0, 1, 2, 9])), "labels go up to 9 but the model has 5 classes"),
        "wrong_shape": ((torch.rand(4, 7), y), "the model does not run on the example input"),
    }
    files = {}
    for name, (obj, message) in cases.items():
        files[name] = (tmp_path / f"{name}.pt", message)
        torch.save(obj, files[name][0])
    files["missing"] = (tmp_path / "nope.pt", "data file .*nope.pt does not exist")
    return files


def test_cli_errors_are_one_clear_message(capsys, cli_files, tmp_path: Path) -> None:
    for name, (path, message) in _bad_files(tmp_path).items():
        code, out, err = run(capsys, "certify", str(cli_files["model"]), "--data", str(path))
        assert code == 2, (name, out, err)
        assert err.startswith("lipgraph: error: ") and "Traceback" not in err, name
        assert re.search(message, err), (name, err)
    code, out, err = run(capsys, "certify", str(cli_files["model"]), "--data", str(cli_files["tuple"]),
                         "--radii", "0.1,big")
    assert code == 2 and "--radii '0.1,big' is not a comma-separated list of numbers" in err
