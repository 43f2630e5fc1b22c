"""The wheel ships the built-in rules as ``lipgraph.rules`` (source folder ``rules/``), never as a top-level
``rules`` package, and the installed wheel works on its own."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "lipgraph", "rules"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None:
        pytest.skip("setuptools or pip is not installed: cannot build a wheel offline")
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:  # build from a copy: never write build/ or *.egg-info into the working tree
        if not (ROOT / name).exists():
            pytest.skip(f"{name} is missing from the checkout")
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = src / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist)],
        cwd=src, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    wheels = sorted(dist.glob("lipgraph-*.whl"))
    if proc.returncode != 0 and "setuptools" in proc.stderr and "No module named" in proc.stderr:
        pytest.skip(f"building is impossible here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0 and wheels, proc.stdout + proc.stderr
    return wheels[0]


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def test_rules_are_inside_the_package(wheel: Path) -> None:
    names = _names(wheel)
    expected = {f"lipgraph/rules/{p.name}" for p in (ROOT / "rules").glob("*.py")}
    assert {"lipgraph/rules/__init__.py", "lipgraph/rules/activations.py"} <= expected
    assert expected <= set(names), sorted(expected - set(names))


def test_no_top_level_rules_package(wheel: Path) -> None:
    names = _names(wheel)
    top = {n.split("/", 1)[0] for n in names}
    assert "rules" not in top, sorted(n for n in names if n.startswith("rules/"))
    assert top == {"lipgraph", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, top


def test_every_subpackage_and_the_entry_point_are_shipped(wheel: Path) -> None:
    names = set(_names(wheel))
    for folder in ("lipgraph", "lipgraph/frontend", "lipgraph/passes", "lipgraph/render", "lipgraph/linalg"):
        sources = {f"{folder}/{p.name}" for p in (ROOT / folder).glob("*.py")}
        assert sources and sources <= names, sorted(sources - names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        text = z.read(entry_points).decode()
    assert "lipgraph = lipgraph.cli:main" in text


def test_installed_wheel_loads_its_builtin_rules(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    code = (
        "import lipgraph, lipgraph.rules, torch\n"
        "from lipgraph.registry import default_registry\n"
        "assert lipgraph.__file__.startswith(%r), lipgraph.__file__\n"
        "assert lipgraph.rules.__file__.startswith(%r), lipgraph.rules.__file__\n"
        "assert default_registry().get('relu').source.startswith('builtin')\n"
        "r = lipgraph.analyze(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()), torch.randn(1, 3))\n"
        "print(r.kind.value)\n"
    ) % (str(target), str(target))
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "certified"
