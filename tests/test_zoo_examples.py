"""The architecture zoo in ``examples/``: every ``tiny()`` variant gets a certified, finite bound that is at
least the largest Jacobian spectral norm found at a few random inputs (a proven lower bound on the Lipschitz
constant), and the CLI explains two of them.

The default (CIFAR-sized) builds take seconds to a minute each; they are exercised by hand
(``lipgraph explain examples/X.py``), not here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import lipgraph
from lipgraph.userfile import run_user_file
from lipgraph.bound import Kind
from lipgraph.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ZOO = ["alexnet", "vgg", "densenet", "mobilenet", "squeezenet", "shufflenet", "inception", "unet", "tcn",
       "mixer"]
# (file, factory): every zoo file's tiny() plus the nn.ChannelShuffle spelling of ShuffleNetV2.
CASES = [(name, "tiny") for name in ZOO] + [("shufflenet", "tiny_channel_shuffle")]

pytestmark = pytest.mark.usefixtures("restore_default_registry")


def load(name: str, factory: str) -> tuple[torch.nn.Module, torch.Tensor]:
    ns = run_user_file(EXAMPLES / f"{name}.py", "zoo")  # as `lipgraph explain` does: the folder joins sys.path
    assert callable(ns.get("build_model")) and callable(ns.get("example_input")), name
    return ns[factory](), ns[f"{factory}_input"]()


def jacobian_lower_bound(model: torch.nn.Module, x: torch.Tensor, samples: int = 5) -> float:
    """max over random inputs of ‖J_f(x)‖₂ in float64: a lower bound on the ℓ2 Lipschitz constant."""
    f = model.double().eval()
    g = torch.Generator().manual_seed(1)
    best = 0.0
    for _ in range(samples):
        xi = torch.randn(x.shape, generator=g, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(lambda t: f(t), xi).reshape(-1, xi.numel())
        best = max(best, torch.linalg.matrix_norm(J, 2).item())
    return best


@pytest.mark.parametrize("name,factory", CASES, ids=[f"{n}:{f}" for n, f in CASES])
def test_tiny_bound_is_certified_and_sound(name: str, factory: str) -> None:
    model, x = load(name, factory)
    assert max(x.shape[2:]) <= 16
    report = lipgraph.analyze(model, x)
    bound = report.bound.value
    assert report.kind is Kind.CERTIFIED, (name, report.kind)
    assert math.isfinite(bound) and bound > 0, (name, bound)
    lower = jacobian_lower_bound(model, x)
    assert lower > 0, name
    assert bound >= lower * (1 - 1e-6), f"{name}:{factory}: bound {bound} < Jacobian norm {lower}"


@pytest.mark.parametrize("name", ["densenet", "shufflenet"])
def test_cli_explains_tiny(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(EXAMPLES / f"{name}.py:tiny"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "certified" and math.isfinite(report["bound"]), report["kind"]
