"""The rule registry: registration forms, lookup along the MRO, overrides, per-call rules, entry-point packs."""
from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import lipgraph
import lipgraph.registry as registry_module
from lipgraph import Kind
from lipgraph.cli import main
from lipgraph.registry import ENTRY_POINT_GROUP, Registry, default_registry


class HalfTanh(nn.Module):
    """x -> 0.5 tanh(x): slopes in [0, 0.5]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.tanh(x)


class InheritsForward(HalfTanh):
    """Same computation as its base: the base's rule applies."""


class OverridesForward(HalfTanh):
    """Computes something else (3·tanh): the base's rule must NOT apply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(x)


def scaled_sin(x: torch.Tensor) -> torch.Tensor:
    """A plain function the tracer keeps as one op once it has a rule."""
    return 0.25 * torch.sin(x)


class UsesFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_sin(self.fc(x))


def _net(act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 2)).eval()


X = torch.randn(1, 4, generator=torch.Generator().manual_seed(0))


def _half(ctx):
    """0.5·tanh: |slope| <= 0.5."""
    return lipgraph.exact(0.5, "slope")


# -- registration forms ------------------------------------------------------------------------------------
def test_decorator_with_class_and_key() -> None:
    registry = Registry()

    @registry.rule(HalfTanh, "half_tanh", exact=True)
    def half_tanh(ctx):
        """0.5·tanh."""
        return lipgraph.exact(0.5, "slope")

    rule = registry.get("half_tanh")
    assert rule is not None and rule.exact and rule.description == "0.5·tanh."
    assert registry.alias(HalfTanh) == "half_tanh"
    assert registry.aliases_of("half_tanh") == [f"{__name__}.HalfTanh"]
    assert half_tanh.__name__ == "half_tanh"  # the decorator returns the function unchanged
    assert rule.source.startswith("api")


def test_decorator_with_class_only_uses_the_qualname() -> None:
    registry = Registry()
    registry.rule(HalfTanh)(_half)
    assert registry.alias(HalfTanh) == "HalfTanh" and registry.get("HalfTanh") is not None


def test_register_key_string() -> None:
    registry = Registry()
    rule = registry.register("my_key", lipgraph.elementwise(slope=(0, 1)))
    assert registry.get("my_key") is rule and "my_key" in rule.keys
    assert registry.alias(HalfTanh) is None


def test_register_rejects_non_targets() -> None:
    with pytest.raises(lipgraph.RuleError, match="op key, an nn.Module class or a function"):
        Registry().register(42, _half)


def test_override() -> None:
    registry = Registry()
    registry.register(HalfTanh, _half)
    with pytest.raises(lipgraph.RuleError, match="already registered"):
        registry.register(HalfTanh, lipgraph.elementwise(slope=(0, 2)))
    new = registry.register(HalfTanh, lipgraph.elementwise(slope=(0, 2)), override=True)
    assert registry.get("HalfTanh") is new
    with pytest.raises(lipgraph.RuleError):
        registry.rule("HalfTanh")(_half)
    registry.rule("HalfTanh", override=True)(_half)
    assert registry.get("HalfTanh") is not new


# -- lookup ---------------------------------------------------------------------------------------------------
def test_per_call_rules_bound_the_module_and_do_not_leak() -> None:
    report = lipgraph.analyze(_net(HalfTanh()), X, rules={HalfTanh: _half})
    node = report.find("1")
    assert node.op == "HalfTanh" and node.bound.value == 0.5 and node.bound.exact
    assert default_registry().alias(HalfTanh) is None
    assert default_registry().get("HalfTanh") is None
    assert lipgraph.analyze(_net(HalfTanh()), X).find("1").op is None  # the next call: no class rule


def test_without_a_rule_the_module_is_traced_through() -> None:
    """Without a class rule, HalfTanh is traced into: tanh (1) then a constant scale (0.5)."""
    report = lipgraph.analyze(_net(HalfTanh()), X)
    ops = [n.op for n in report.find("1").children]
    assert ops == ["tanh", "mul"], ops
    assert report.find("1").bound.value == pytest.approx(0.5)


def test_mro_subclass_inheriting_forward_uses_the_base_rule() -> None:
    calls = []

    def rule(ctx):
        calls.append(type(ctx.module).__name__)
        return lipgraph.exact(0.5, "slope")

    report = lipgraph.analyze(_net(InheritsForward()), X, rules={HalfTanh: rule})
    assert calls == ["InheritsForward"]
    assert report.find("1").op == "HalfTanh" and report.find("1").bound.value == 0.5


def test_mro_subclass_overriding_forward_is_traced_through() -> None:
    report = lipgraph.analyze(_net(OverridesForward()), X, rules={HalfTanh: _half})
    node = report.find("1")
    assert node.op is None and [c.op for c in node.children] == ["tanh", "mul"]
    assert node.bound.value == pytest.approx(3.0)  # not the base rule's 0.5: that would be unsound


def test_mro_builtin_subclass() -> None:
    class MyConv(nn.Conv2d):
        pass

    class WeightStandardisedConv(nn.Conv2d):
        def forward(self, x):
            w = 3.0 * (self.weight - self.weight.mean())
            return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)

    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 5)
    plain = lipgraph.analyze(nn.Sequential(MyConv(2, 3, 3, padding=1)), x)
    node = plain.find("0")
    assert (node.type, node.op, node.children) == ("MyConv", "conv2d", [])  # a leaf, with nn.Conv2d's rule
    torch.manual_seed(0)
    ws_model = nn.Sequential(WeightStandardisedConv(2, 3, 3, padding=1)).eval()
    ws = lipgraph.analyze(ws_model, x)
    # traced into its own forward: F.conv2d with the standardised, tripled weight, not nn.Conv2d's rule on
    # self.weight (which would be unsound here)
    def conv_with(weight: torch.Tensor) -> float:
        ref = nn.Conv2d(2, 3, 3, padding=1)
        with torch.no_grad():
            ref.weight.copy_(weight)
        return lipgraph.analyze(ref, x).bound.value

    w = ws_model[0].weight.detach()
    assert ws.kind is Kind.CERTIFIED and ws.find("0").op == "conv2d"
    assert ws.bound.value == pytest.approx(conv_with(3.0 * (w - w.mean())), rel=1e-6)
    assert ws.bound.value != pytest.approx(conv_with(w), rel=1e-2)


def test_key_registration_covers_every_spelling() -> None:
    class Spellings(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1) + x.cumsum(dim=1)

    rules = {"cumsum": lambda ctx: lipgraph.certified(2.0, "row sums of a triangular matrix (n = 4)")}
    report = lipgraph.analyze(Spellings(), X, rules=rules, lower=False)  # the constant is illustrative
    assert report.bound.value == pytest.approx(4.0)
    assert [n.op for n in report.tree.children].count("cumsum") == 2


def test_function_rule_makes_the_function_one_op() -> None:
    report = lipgraph.analyze(UsesFunction().eval(), X, rules={scaled_sin: lipgraph.elementwise(slope=(-0.25, 0.25))})
    ops = [n.op for n in report.tree.children]
    assert "sin" not in ops and any(op and "scaled_sin" in op for op in ops), ops
    assert scaled_sin not in default_registry().functions


def test_module_level_api_registers_into_the_default_registry(restore_default_registry) -> None:
    lipgraph.register(HalfTanh, _half)
    assert default_registry().alias(HalfTanh) == "HalfTanh"
    report = lipgraph.analyze(_net(HalfTanh()), X)
    assert report.find("1").bound.value == 0.5
    assert default_registry().get("HalfTanh").source.startswith("api")


def test_restore_fixture_really_restores() -> None:
    """Guard for the fixture above: nothing from it is left in the default registry."""
    assert default_registry().alias(HalfTanh) is None


# -- entry points ------------------------------------------------------------------------------------------
PACK = '''
import lipgraph


class PackAct:
    pass


def register(registry):
    registry.register("pack_half_tanh", lipgraph.elementwise(slope=(0.0, 0.5)))


def broken(registry):
    raise ImportError("pack needs scipy")
'''


@pytest.fixture
def pack_module(tmp_path: Path, monkeypatch) -> str:
    name = "lipgraph_test_pack_mod"
    (tmp_path / f"{name}.py").write_text(PACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _fake_entry_points(monkeypatch, *eps: importlib.metadata.EntryPoint) -> None:
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        if kwargs.get("group") == ENTRY_POINT_GROUP:
            return importlib.metadata.EntryPoints(eps)
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_entry_point_pack_is_loaded(pack_module: str, monkeypatch) -> None:
    ep = importlib.metadata.EntryPoint("halfpack", f"{pack_module}:register", ENTRY_POINT_GROUP)
    _fake_entry_points(monkeypatch, ep)
    registry = Registry()
    registry.load_entry_points()
    rule = registry.get("pack_half_tanh")
    assert rule is not None
    assert rule.source.startswith("entry point halfpack")
    assert any("halfpack" in pack for pack in registry.packs)


def test_failing_entry_point_names_the_pack(pack_module: str, monkeypatch) -> None:
    ep = importlib.metadata.EntryPoint("badpack", f"{pack_module}:broken", ENTRY_POINT_GROUP)
    _fake_entry_points(monkeypatch, ep)
    with pytest.raises(lipgraph.RuleError) as info:
        Registry().load_entry_points()
    msg = str(info.value)
    assert "badpack" in msg and "ImportError: pack needs scipy" in msg


def test_missing_entry_point_module_names_the_pack(monkeypatch) -> None:
    ep = importlib.metadata.EntryPoint("ghost", "no_such_module_xyz:register", ENTRY_POINT_GROUP)
    _fake_entry_points(monkeypatch, ep)
    with pytest.raises(lipgraph.RuleError, match="ghost.*ModuleNotFoundError"):
        Registry().load_entry_points()


def test_rules_command_shows_entry_point_source(pack_module: str, monkeypatch, capsys) -> None:
    ep = importlib.metadata.EntryPoint("halfpack", f"{pack_module}:register", ENTRY_POINT_GROUP)
    _fake_entry_points(monkeypatch, ep)
    monkeypatch.setattr(registry_module, "_DEFAULT", None)  # rebuilt with the fake pack, restored after
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    family = out[:out.index("│ pack_half_tanh ")].rsplit("\n┏", 1)[0].rsplit("\n", 1)[1]  # the table's heading
    assert family.startswith("entry point halfpack")
    assert main(["doctor"]) == 0
    assert "entry point halfpack" in capsys.readouterr().out


def test_failing_entry_point_is_a_cli_error(pack_module: str, monkeypatch, capsys, tmp_path: Path) -> None:
    ep = importlib.metadata.EntryPoint("badpack", f"{pack_module}:broken", ENTRY_POINT_GROUP)
    _fake_entry_points(monkeypatch, ep)
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    assert main(["rules"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lipgraph: error: ") and "badpack" in err and "Traceback" not in err


# -- local rules files -------------------------------------------------------------------------------------
def test_load_file_records_its_source(tmp_path: Path) -> None:
    path = tmp_path / "local_rules.py"
    path.write_text(textwrap.dedent('''
        import lipgraph
        lipgraph.register("local_key", lipgraph.elementwise(slope=(0, 1)))
    '''))
    registry = Registry()
    registry.load_file(path)
    assert registry.get("local_key").source == f"file {path}"
    assert f"file {path}" in registry.packs
    assert default_registry().get("local_key") is None  # loaded into `registry`, not the default one


def test_rules_json_unaffected_by_previous_tests(capsys) -> None:
    """The default registry is the builtin one again: relu is builtin and exact."""
    rule = default_registry().get("relu")
    assert rule.exact and rule.source.startswith("builtin")
    assert json.dumps(sorted(k for k, _ in default_registry().items()))  # serialisable keys
