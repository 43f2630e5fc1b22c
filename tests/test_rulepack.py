"""Custom rules end to end, each path changing the bound as expected: the API decorator, ``--rules file.py``, and
the example rule pack ``examples/rulepack`` built into a wheel and installed (``pip install --target``, once per
session, about 2 s) so that lipgraph finds it through its entry point like any installed pack. A broken pack is one
clear error naming the pack.

The layer is GroupSort/MaxMin, 1-Lipschitz in every ℓp by construction; traced op by op AutoLip bounds it by √2
(max and min each 1 as joint ops on the two halves, one through −(−·); their concatenation √2 in ℓ2) — the local
copy below negates one half twice, so that lipgraph's own MaxMin pattern (docs/by-construction.md), which would find
1, does not recognise it. On Linear → MaxMin → Linear the bound with a rule is therefore exactly ‖W2‖·‖W1‖ (exact
singular values, float64), and √2 times that without.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph import registry as registry_module
from lipgraph.cli import main
from lipgraph.userfile import run_user_file

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "examples" / "rulepack"

pytestmark = pytest.mark.usefixtures("restore_default_registry")

MAXMIN = '''
import torch
from torch import nn


class MaxMin(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        b = -(-b)  # hides the split from lipgraph's MaxMin pattern (see the module docstring)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)
'''

MODEL = '''
import torch
from torch import nn

from {module} import MaxMin


def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), MaxMin(), nn.Linear(8, 3)).eval()


def example_input():
    return torch.randn(1, 6, generator=torch.Generator().manual_seed(0))
'''


def expected(model: nn.Module) -> float:
    """‖W2‖₂·‖W1‖₂: the bound of Linear → (a 1-Lipschitz layer) → Linear."""
    return math.prod(torch.linalg.matrix_norm(model[i].weight.detach().double(), 2).item() for i in (0, 2))


def model_of(file: Path) -> nn.Module:
    return run_user_file(file, "check")["build_model"]()


def explain_json(capsys, *argv: str) -> dict:
    assert main(["explain", *argv, "--json", "--no-lower"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def local_layer(tmp_path: Path, monkeypatch) -> Path:
    """maxmin_layer.py (the class) and model.py (a network using it) in a fresh folder."""
    (tmp_path / "maxmin_layer.py").write_text(MAXMIN)
    (tmp_path / "model.py").write_text(MODEL.format(module="maxmin_layer"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("maxmin_layer", None)


def test_decorator_rule_changes_the_bound(local_layer: Path) -> None:
    import maxmin_layer

    model = nn.Sequential(nn.Linear(6, 8), maxmin_layer.MaxMin(), nn.Linear(8, 3)).eval()
    x = torch.randn(1, 6)
    traced = lipgraph.analyze(model, x, lower=False).bound.value
    assert traced == pytest.approx(math.sqrt(2) * expected(model), rel=1e-5)

    @lipgraph.rule(maxmin_layer.MaxMin, exact=True)
    def maxmin(ctx: lipgraph.OpContext) -> lipgraph.Bound:
        """GroupSort: 1-Lipschitz in every norm."""
        return lipgraph.exact(1.0, "groupsort")

    report = lipgraph.analyze(model, x, lower=False)
    assert report.bound.value == pytest.approx(expected(model), rel=1e-5)
    assert report.find("1").bound.method == "groupsort" and not report.find("1").children  # an fx leaf now


def test_rules_file_changes_the_bound(local_layer: Path, capsys) -> None:
    rules = local_layer / "rules.py"
    rules.write_text("import lipgraph\nfrom maxmin_layer import MaxMin\n\n"
                     "lipgraph.register(MaxMin, lambda ctx: lipgraph.exact(1.0, 'groupsort'), exact=True)\n")
    model_file = local_layer / "model.py"
    without = explain_json(capsys, str(model_file))
    with_rule = explain_json(capsys, str(model_file), "--rules", str(rules))
    model = model_of(model_file)
    assert with_rule["bound"] == pytest.approx(expected(model), rel=1e-5)
    assert without["bound"] == pytest.approx(math.sqrt(2) * expected(model), rel=1e-5)
    assert next(c for c in with_rule["tree"]["children"] if c["path"] == "1")["method"] == "groupsort"


class ScaledResidual(nn.Module):
    """y = x + tanh(a)·f(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 4))
        self.a = nn.Parameter(torch.tensor(-0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.a) * self.f(x)


def test_composite_rule_in_terms_of_children() -> None:
    """A rule on a module class may analyse the module's children: here 1 + |tanh a|·L(f), which is also what
    AutoLip finds tracing through the module, so both must agree; with the rule the module is one leaf."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), ScaledResidual(), nn.Linear(4, 2)).eval()
    x = torch.randn(1, 3)
    traced = lipgraph.analyze(model, x, lower=False)

    @lipgraph.rule(ScaledResidual)
    def scaled_residual(ctx: lipgraph.OpContext) -> lipgraph.Bound:
        """1 + |tanh a|·L(f), L(f) analysed at the input's shape."""
        inner = lipgraph.analyze(ctx.module.f, torch.zeros(ctx.input.shape), norm=ctx.norm, lower=False).bound
        return lipgraph.Bound(1 + abs(math.tanh(ctx.module.a.item())) * inner.value, inner.kind, "1 + |tanh a|·L(f)")

    composite = lipgraph.analyze(model, x, lower=False)
    assert composite.find("1").bound.method == "1 + |tanh a|·L(f)" and not composite.find("1").children
    # equal up to tanh in float32 (the traced constant) against float64 (math.tanh)
    assert composite.find("1").bound.value == pytest.approx(traced.find("1").bound.value, rel=1e-6)
    assert composite.bound.value == pytest.approx(traced.bound.value, rel=1e-6)


# -- the entry-point rule pack -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def installed_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/rulepack built into a wheel (from a copy: no build/ in the checkout) and installed with pip into a
    folder of its own; returns that folder (put it on sys.path to "have the pack installed")."""
    if not (_has_module("pip") and _has_module("setuptools")):
        pytest.skip("pip and setuptools are needed to build the example pack offline")
    work = tmp_path_factory.mktemp("rulepack")
    shutil.copytree(PACK, work / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip"]
    proc = subprocess.run(pip + ["wheel", str(work / "src"), "--no-deps", "--no-build-isolation", "--no-index",
                                 "-w", str(work)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheel = next(work.glob("lipgraph_example_rules-*.whl"))
    proc = subprocess.run(pip + ["install", str(wheel), "--no-deps", "--no-index", "--target", str(work / "site")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work / "site"


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture
def pack_on_path(installed_pack: Path, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(installed_pack))
    monkeypatch.setattr(registry_module, "_DEFAULT", None)  # rebuilt from the installed packs, restored after
    yield installed_pack
    for name in [m for m in sys.modules if m.startswith("lipgraph_example_rules")]:
        sys.modules.pop(name)


def test_installed_pack_is_loaded_and_changes_the_bound(pack_on_path: Path, capsys, tmp_path: Path) -> None:
    from lipgraph_example_rules import MaxMin, OrthogonalLinear

    assert Path(sys.modules["lipgraph_example_rules"].__file__).is_relative_to(pack_on_path)  # the installed copy
    registry = lipgraph.default_registry()
    pack = next(p for p in registry.packs if "lipgraph_example_rules:register" in p)
    assert "of package lipgraph-example-rules 0.1.0" in pack
    assert registry.get("MaxMin").source == pack
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), MaxMin(), nn.Linear(8, 3)).eval()
    report = lipgraph.analyze(model, torch.randn(1, 6), lower=False)
    assert report.bound.value == pytest.approx(expected(model), rel=1e-5)
    layer = OrthogonalLinear(5)
    assert torch.allclose(layer.weight() @ layer.weight().T, torch.eye(5), atol=1e-5)  # orthogonal indeed
    ortho = lipgraph.analyze(nn.Sequential(layer).eval(), torch.randn(1, 5), lower=False)
    assert ortho.bound.value == 1.0 and ortho.find("0").bound.method == "orthogonal by construction"
    linf = lipgraph.analyze(nn.Sequential(layer).eval(), torch.randn(1, 5), norm="inf", lower=False)
    rows = layer.weight().detach().double().abs().sum(1).max().item()  # ‖W‖∞ of y = W x: max row abs sum
    assert linf.bound.value == pytest.approx(rows, rel=1e-9) and linf.bound.value >= rows
    (tmp_path / "model.py").write_text(MODEL.format(module="lipgraph_example_rules"))
    data = explain_json(capsys, str(tmp_path / "model.py"))  # the CLI sees the pack too
    assert data["bound"] == pytest.approx(expected(model_of(tmp_path / "model.py")), rel=1e-5)
    assert main(["doctor"]) == 0 and "lipgraph-example-rules" in capsys.readouterr().out


BROKEN = {
    "raises": ("def register(registry):\n    raise ImportError('this pack needs scipy')\n", "ImportError: this pack"),
    "missing": (None, "ModuleNotFoundError"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_pack_is_a_clear_error_naming_the_pack(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """An installed distribution is a ``*.dist-info`` folder on sys.path: importlib.metadata reads its METADATA and
    entry_points.txt, exactly what pip writes."""
    source, error = BROKEN[case]
    info = tmp_path / "broken_rules-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-rules\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lipgraph.rules]\nbroken = broken_rules:register\n")
    if source is not None:
        (tmp_path / "broken_rules.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    with pytest.raises(lipgraph.RuleError) as raised:
        lipgraph.Registry().load_entry_points()
    message = str(raised.value)
    assert "broken-rules 0.1" in message and "broken_rules:register" in message and error in message, message
    assert main(["rules"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lipgraph: error: rule pack entry point broken") and "broken-rules" in err
    assert "Traceback" not in err
    sys.modules.pop("broken_rules", None)
