"""Property: on any region, lower_in_region ≤ local ≤ global, for every fixture of the zoo and of the
by-construction families and every method where both analyses run (docs/local.md §6). Compound patterns (SLL/CPL
residual blocks, MaxMin, LiResNet's affine residual) are bounded as one op globally but by their parts on a
region: without the global ceiling their local bound is above the global one."""
from __future__ import annotations

import random

import pytest
import torch

import lipgraph
from lipgraph.api import METHODS
from lipgraph.errors import LipgraphError
from tests.fixtures.by_construction import FAMILIES
from tests.fixtures.zoo import ZOO

FIXTURES = {**{name: (lambda f=f: f()[:2]) for name, f in FAMILIES.items()}, **ZOO}
#: small MLPs: every method (the solvers of the others take minutes on the CNNs)
EVERY_METHOD = ("tiny_mlp", "shared_weights", "sll_mlp", "cpl_mlp", "cayley_linear_mlp")
#: fixtures with a compound pattern bounded as one op globally but by its parts on a region: only these may need
#: the global ceiling (elsewhere local ≤ global must hold before it, or the property would hold by construction)
COMPOUND = {"sll_mlp", "cpl_mlp", "liresnet", "cayley_cnn"}


def random_region(x: torch.Tensor, seed: int):
    """A box around x or an ℓ2/ℓ∞ ball around it, of a random size (seeded)."""
    rng = random.Random(seed)
    radius = rng.choice([0.01, 0.1, 0.5, 2.0])
    kind = rng.choice(["box", "ball2", "ballinf"])
    if kind == "box":
        return lipgraph.Box(x - radius * rng.random(), x + radius)
    return lipgraph.Ball(None, radius, norm=2 if kind == "ball2" else "inf")


def check_chain_of_bounds(name: str, method: str, seed: int) -> lipgraph.Report:
    model, x = FIXTURES[name]()
    x = x[:1]
    region = random_region(x, seed)
    try:
        global_ = lipgraph.analyze(model, x, method=method, lower=False, quiet=True)
        local = lipgraph.analyze(model, x, method=method, region=region, quiet=True)
    except LipgraphError as exc:  # e.g. a norm a rule does not support: both must then fail alike
        pytest.skip(f"{name}/{method} refused: {exc}")
    assert local.lower is not None and local.lower.value <= local.bound.value, region
    assert local.bound.kind is lipgraph.Kind.CERTIFIED and local.bound.value <= global_.bound.value, region
    capped = [note for note in local.notes if "is below the region's bound" in note]
    assert not capped or name in COMPOUND, (region, capped)
    return local


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_lower_in_region_le_local_le_global(name):
    check_chain_of_bounds(name, "autolip", seed=sum(map(ord, name)))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "autolip"])
@pytest.mark.parametrize("name", EVERY_METHOD)
def test_every_method_local_le_global(name, method):
    check_chain_of_bounds(name, method, seed=sum(map(ord, name + method)))


def test_compound_patterns_are_capped_by_the_global_bound():
    model, x = FIXTURES["sll_mlp"]()
    report = lipgraph.analyze(model, x[:1], region=lipgraph.Ball(None, 0.5), lower=False, quiet=True)
    assert report.bound.method == "global autolip"
    assert any("is below the region's bound" in note for note in report.notes)


def test_the_global_ceiling_of_a_region_run_spends_the_callers_budget(monkeypatch):
    """The global analysis behind the cap gets the user's ``budget``, not the method's default."""
    import lipgraph.api as api

    seen = []
    real = api.budget_seconds
    monkeypatch.setattr(api, "budget_seconds", lambda budget, method: seen.append(budget) or real(budget, method))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.zeros(1, 3)
    lipgraph.analyze(model, x, method="best", budget=3.0, region=lipgraph.Ball(x, 0.1), lower=False, cache=False)
    assert seen == [3.0, 3.0]
