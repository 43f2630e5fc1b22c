"""The CLI: golden outputs, the --json contract, exit codes, and the rules / doctor commands.

Golden files live in ``tests/golden/``; ``pytest --update-golden`` rewrites them from the current output.
Outputs are normalised before comparing: the timing line is masked and JSON floats are rounded to 6
significant digits (``seconds`` is dropped).
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

import lipgraph
from lipgraph.cli import main
from lipgraph.render.rich_tree import print_report
from tests.fixtures.zoo import tiny_densenet, tiny_mobilenet

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.usefixtures("restore_default_registry")  # examples/custom_rule.py registers a rule


# -- helpers -----------------------------------------------------------------------------------------------
def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def normalise_text(text: str) -> str:
    text = re.sub(r"^\d+\.\d+ s ([*·]) frontend", r"<seconds> s \1 frontend", text, flags=re.M)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def normalise_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: normalise_json(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [normalise_json(v) for v in obj]
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    return obj


def check_golden(name: str, actual: str, update: bool) -> None:
    path = GOLDEN / name
    if update:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.is_file(), f"missing golden file {path}; create it with `pytest --update-golden`"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{name} differs from the golden file (rerun with --update-golden if intended)"


# -- golden text outputs -------------------------------------------------------------------------------------
TEXT_CASES = {
    "mlp_ascii.txt": ["examples/mlp.py", "--ascii", "--width", "100"],
    "small_cnn_ascii.txt": ["examples/cnn.py:small_cnn", "--ascii", "--width", "100"],
    "custom_rule_ascii.txt": ["examples/custom_rule.py", "--ascii", "--width", "100"],
    "mlp_linf_ascii.txt": ["examples/mlp.py", "--ascii", "--width", "100", "--norm", "inf"],
    "small_cnn_layer_lower_ascii.txt": ["examples/cnn.py:small_cnn", "--ascii", "--width", "100", "--layer-lower",
                                        "--no-lower"],
}


@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_golden_text(name: str, capsys, monkeypatch, update_golden: bool) -> None:
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, "explain", *TEXT_CASES[name])
    assert code == 0, err
    assert out.isascii(), [c for c in out if not c.isascii()]
    assert max(len(line) for line in out.splitlines()) <= 100
    check_golden(name, normalise_text(out), update_golden)


def _render(report: lipgraph.Report, **options: Any) -> str:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    print_report(report, console=console, **options)
    return console.file.getvalue()


def test_golden_unicode_tree_with_merges(update_golden: bool) -> None:
    """A residual add rendered with its formula (1 + L(conv)), unicode guides, fixed-width console."""
    report = lipgraph.analyze(*tiny_mobilenet())
    out = _render(report)
    assert "\x1b[" not in out  # color_system=None: no escape codes
    assert "1 + L(conv)" in out
    check_golden("tiny_mobilenet.txt", normalise_text(out), update_golden)


def test_golden_depth_2(update_golden: bool) -> None:
    """DenseNet-style concatenations; the tree collapsed below depth 2."""
    report = lipgraph.analyze(*tiny_densenet())
    out = _render(report, depth=2, ascii_only=True)
    assert "block.0 (_DenseLayer)" in out and "block.0.conv" not in out
    check_golden("tiny_densenet_depth2_ascii.txt", normalise_text(out), update_golden)


def opaque_gate(x: torch.Tensor) -> torch.Tensor:
    """A user function that fx keeps as one call (torch.fx.wrap) and that has no op key: never gets a rule."""
    return x * torch.sigmoid(x)


torch.fx.wrap("opaque_gate")


class _Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(opaque_gate(self.fc(x)) + x)


def test_golden_unbounded_tree(update_golden: bool) -> None:
    torch.manual_seed(0)
    report = lipgraph.analyze(_Opaque().eval(), torch.randn(1, 4), unsupported="inf")
    out = _render(report, ascii_only=True)
    assert out.isascii()
    assert "L inf" in out and "no rule" in out
    check_golden("unsupported_inf_ascii.txt", normalise_text(out), update_golden)


# -- golden JSON --------------------------------------------------------------------------------------------
JSON_CASES = {
    "mlp.json": ["examples/mlp.py"],
    "small_cnn.json": ["examples/cnn.py:small_cnn"],
    "custom_rule.json": ["examples/custom_rule.py"],
    "small_cnn_l1.json": ["examples/cnn.py:small_cnn", "--norm", "1"],
}


@pytest.mark.parametrize("name", sorted(JSON_CASES))
def test_golden_json(name: str, capsys, monkeypatch, update_golden: bool) -> None:
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, "explain", *JSON_CASES[name], "--json")
    assert code == 0, err
    data = normalise_json(json.loads(out))
    check_golden(name, json.dumps(data, indent=2, ensure_ascii=False) + "\n", update_golden)


def test_normalisers() -> None:
    assert normalise_json({"seconds": 1.0, "a": [0.1234567891, 2, None]}) == {"a": [0.123457, 2, None]}
    assert normalise_text("x  \n0.52 s * frontend fx\n") == "x\n<seconds> s * frontend fx\n"


# -- the JSON contract ----------------------------------------------------------------------------------------
TREE_KEYS = {"path", "type", "op", "bound", "kind", "method", "children"}


def _check_tree(node: dict) -> int:
    assert TREE_KEYS <= set(node), set(node)
    assert node["kind"] in ("certified", "estimate", "lower", "unbounded")
    assert node["bound"] is None or isinstance(node["bound"], float)
    return 1 + sum(_check_tree(c) for c in node["children"])


def test_json_contract(capsys) -> None:
    code, out, err = run(capsys, "explain", str(EXAMPLES / "cnn.py") + ":small_cnn", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    for key in ("bound", "kind", "method", "norm", "model", "input_shape", "seconds", "tree"):
        assert key in data, key
    assert data["kind"] == "certified" and data["method"] == "autolip" and data["norm"] == "2"
    assert data["model"] == "SmallCNNFlatten" and data["input_shape"] == [1, 1, 8, 8]
    assert isinstance(data["seconds"], float) and data["seconds"] >= 0
    assert data["tree"]["path"] == "" and data["tree"]["bound"] == data["bound"]
    assert _check_tree(data["tree"]) > 5
    paths = [c["path"] for c in data["tree"]["children"]]
    assert len(paths) == len(set(paths)), paths  # torch.relu and self.relu do not share a path


def test_json_unbounded_is_null(tmp_path: Path, capsys) -> None:
    model_file = tmp_path / "unsup.py"
    model_file.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.fixtures.zoo import unsupported_op
        def build_model():
            return unsupported_op()[0]
        def example_input():
            return unsupported_op()[1]
    """))
    code, out, err = run(capsys, "explain", str(model_file), "--json", "--unsupported", "inf")
    assert code == 0, err
    data = json.loads(out)
    assert data["bound"] is None and data["kind"] == "unbounded"
    code, out, err = run(capsys, "explain", str(model_file))
    assert code == 2 and "no rule" in err and "@lipgraph.rule(" in err and "Traceback" not in err


# -- depth -----------------------------------------------------------------------------------------------------
NESTED = """
import sys
sys.path.insert(0, {root!r})
from tests.fixtures.zoo import tiny_densenet
def build_model():
    return tiny_densenet()[0]
def example_input():
    return tiny_densenet()[1]
"""


def test_depth_collapses_the_tree(tmp_path: Path, capsys) -> None:
    model_file = tmp_path / "nested.py"
    model_file.write_text(NESTED.format(root=str(ROOT)))
    full = run(capsys, "explain", str(model_file), "--ascii", "--width", "120")
    one = run(capsys, "explain", str(model_file), "--ascii", "--width", "120", "--depth", "1")
    two = run(capsys, "explain", str(model_file), "--ascii", "--width", "120", "--depth", "2")
    assert full[0] == one[0] == two[0] == 0
    assert "block.0.conv" in full[1] and "block.0 " in two[1] and "block.0.conv" not in two[1]
    assert "block (Sequential)" in one[1] and "block.0" not in one[1]
    assert len(one[1].splitlines()) < len(two[1].splitlines()) < len(full[1].splitlines())
    # the bound line is the same whatever the depth
    assert one[1].splitlines()[0] == full[1].splitlines()[0]
    guides = [line for line in one[1].splitlines()[1:] if line.startswith(("+--", "`--"))]
    assert len(guides) == 6  # conv0, block, transition, adaptive_avg_pool2d, view, classifier


# -- errors: exit 2, one line of message, no traceback ------------------------------------------------------
def _assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("lipgraph: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_missing_model_file(tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "explain", str(tmp_path / "nope.py"))
    _assert_clean_error(code, err, "nope.py", "does not exist")
    assert out == ""


@pytest.mark.parametrize("source, needles", [
    ("def build_model(:\n", ["broken.py", "SyntaxError"]),
    ("import torch\nraise RuntimeError('no GPU here')\n", ["broken.py", "RuntimeError: no GPU here"]),
    ("import torch\nx = 1\n", ["broken.py", "build_model()"]),
    ("def build_model():\n    return 3\ninput_shape = (1, 2)\n", ["broken.py", "not an nn.Module"]),
    ("def build_model():\n    raise ValueError('bad config')\n", ["broken.py", "ValueError: bad config"]),
    ("import torch\ndef build_model():\n    return torch.nn.Linear(2, 2)\n", ["example_input", "--input-shape"]),
])
def test_broken_model_file(tmp_path: Path, capsys, source: str, needles: list[str]) -> None:
    path = tmp_path / "broken.py"
    path.write_text(source)
    code, _, err = run(capsys, "explain", str(path))
    _assert_clean_error(code, err, *needles)


def test_missing_factory(capsys) -> None:
    code, _, err = run(capsys, "explain", str(EXAMPLES / "mlp.py") + ":nope")
    _assert_clean_error(code, err, "'nope'")


@pytest.mark.parametrize("shape, needles", [
    ("1,a,3", ["'1,a,3'", "integers"]),
    ("0,64", ["positive"]),
    ("1,63", ["in_features=64", "(N, 64)"]),
    ("1,8,8", ["in_features=64", "(N, 64)"]),
])
def test_bad_input_shape(capsys, shape: str, needles: list[str]) -> None:
    code, _, err = run(capsys, "explain", str(EXAMPLES / "mlp.py"), "--input-shape", shape)
    _assert_clean_error(code, err, *needles)


def test_input_shape_override_works(capsys) -> None:
    code, out, err = run(capsys, "explain", str(EXAMPLES / "mlp.py"), "--input-shape", "2,64", "--json")
    assert code == 0, err
    assert json.loads(out)["input_shape"] == [2, 64]


def test_argparse_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", str(EXAMPLES / "mlp.py"), "--norm", "3"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LIPGRAPH_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "lipgraph", "explain", str(tmp_path / "missing.py")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("lipgraph: error: ") and "Traceback" not in proc.stderr
    assert proc.stdout == ""


# -- --version, rules, doctor ----------------------------------------------------------------------------
def test_version_subprocess() -> None:
    proc = subprocess.run([sys.executable, "-m", "lipgraph", "--version"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"lipgraph {lipgraph.__version__}"


def _table_row(out: str, key: str) -> list[str]:
    """The cells of the rules-table row whose op key is ``key``, folded continuation lines joined."""
    row: list[str] | None = None
    for line in out.splitlines():
        if not line.startswith("│"):
            if row is not None:
                break
            continue
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if row is not None:
            if cells[0]:  # the next rule
                break
            row = [f"{a}{'' if not b or a.endswith(('/', '_', '-')) else ' '}{b}".strip()
                   for a, b in zip(row, cells)]
        elif cells[0] == key:
            row = cells
    assert row is not None, f"no row for {key!r} in:\n{out}"
    return row


def test_rules_lists_relu_as_exact_builtin(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run(capsys, "rules")
    assert code == 0
    row = _table_row(out, "relu")
    assert row[1] == "exact"
    families = [line.strip() for line in out.splitlines() if line.strip() and line.strip()[0].isalpha()]
    assert "activations" in families and "linear" in families  # grouped by family, not one long table
    assert out.index("\nactivations\n") < out.index("│ relu ") < out.index("\narithmetic\n")
    assert re.search(r"\d+ rules in \d+ families", out)
    code, out, _ = run(capsys, "rules", "--op", "nn.ReLU")  # one op in full: every spelling and the source
    assert code == 0 and "op key:      relu" in out and "nn.ReLU" in out and "builtin (lipgraph.rules.activations)" in out
    code, out, _ = run(capsys, "rules", "--op", "matmul")
    assert code == 0 and "__matmul__" in out and "nn.ReLU" not in out
    code, _, err = run(capsys, "rules", "--op", "no_such_op")
    assert code == 2 and "no rule for op 'no_such_op'" in err


def test_rules_show_which_ops_a_region_analysis_can_bound(capsys, monkeypatch) -> None:
    """The "on a region" column: the interval and local rules registered for each op (docs/local.md)."""
    from lipgraph.registry import default_registry

    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run(capsys, "rules")
    assert code == 0
    registry = default_registry()
    for key, expected in (("relu", "interval + local"), ("linear", "interval"), ("lstm", "no interval rule")):
        has = (registry.interval(key) is not None, registry.local(key) is not None)
        assert has == {"interval + local": (True, True), "interval": (True, False),
                       "no interval rule": (False, False)}[expected], key
        assert _table_row(out, key)[3] == expected, key
    code, out, _ = run(capsys, "rules", "--op", "nn.ReLU")
    assert code == 0 and "on a region: interval + local" in out


def test_doctor(capsys) -> None:
    import torch

    code, out, _ = run(capsys, "doctor")
    assert code == 0
    assert f"torch {torch.__version__}" in out
    assert f"lipgraph {lipgraph.__version__}" in out
    assert "builtin: lipgraph.rules" in out
    assert "rich ?" not in out


# -- --rules: a local rules file for a custom activation -------------------------------------------------
LAYERS = '''
import torch
from torch import nn


class ClippedSine(nn.Module):
    """x -> 0.5 sin(x): slopes in [-0.5, 0.5]."""

    def forward(self, x):
        return 0.5 * torch.sin(x)
'''

MODEL = '''
import torch
from torch import nn

from cli_test_layers import ClippedSine


def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), ClippedSine(), nn.Linear(6, 3)).eval()


def example_input():
    return torch.randn(1, 6, generator=torch.Generator().manual_seed(0))
'''

RULES = '''
import lipgraph

from cli_test_layers import ClippedSine


@lipgraph.rule(ClippedSine)
def clipped_sine(ctx):
    """0.5·sin: |slope| <= 0.5."""
    return lipgraph.certified(0.5, "derivative bound", exact=True)
'''


@pytest.fixture
def custom_files(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts the files' folder on sys.path
    (tmp_path / "cli_test_layers.py").write_text(LAYERS)
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "my_rules.py").write_text(RULES)
    yield tmp_path
    sys.modules.pop("cli_test_layers", None)


def test_rules_file_is_loaded(custom_files: Path, capsys) -> None:
    model, rules = str(custom_files / "model.py"), str(custom_files / "my_rules.py")
    code, out, err = run(capsys, "explain", model, "--json")  # without the file ClippedSine is traced into
    if code == 0:
        act = next(c for c in json.loads(out)["tree"]["children"] if c["type"] == "ClippedSine")
        assert act["op"] != "ClippedSine"
    else:  # (while torch.sin has no built-in rule)
        _assert_clean_error(code, err, "sin", "@lipgraph.rule(")
    code, out, err = run(capsys, "explain", model, "--rules", rules, "--json")
    assert code == 0, err
    data = json.loads(out)
    act = next(c for c in data["tree"]["children"] if c["type"] == "ClippedSine")
    assert act["bound"] == pytest.approx(0.5) and act["exact"] is True and act["op"] == "ClippedSine"
    assert data["kind"] == "certified"


def test_rules_command_shows_the_file_as_source(custom_files: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    code, out, err = run(capsys, "rules", "--rules", str(custom_files / "my_rules.py"))
    assert code == 0, err
    row = _table_row(out, "ClippedSine")
    assert row[1] == "upper bound" and "0.5·sin" in row[2]
    family = out[:out.index("│ ClippedSine")].rstrip().rsplit("\n┏", 1)[0].rsplit("\n", 1)[1]
    assert family.startswith("file ") and family.endswith("my_rules.py")  # the file is the rule's family


def test_untraceable_model_is_one_clean_message(tmp_path: Path, capsys) -> None:
    """fx and export both fail: one message with both reasons, without torch's partial-graph dumps."""
    path = tmp_path / "ddif.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.fixtures.zoo import data_dependent_if
        def build_model():
            return data_dependent_if()[0]
        def example_input():
            return data_dependent_if()[1]
    """))
    code, out, err = run(capsys, "explain", str(path))
    _assert_clean_error(code, err, "if x.sum() > 0", "--frontend export", "concrete_args", "failed as well")
    assert "def forward(" not in err and out == ""
