"""The import contract of pyproject.toml ([tool.importlinter]): imports point down the layers only, no package has
an import cycle, and the built-in rules import only the rule API (imports inside functions count). A new upward
import or cycle fails here, naming it."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str | None:
    beside = Path(sys.executable).with_name("lint-imports")
    return str(beside) if beside.exists() else shutil.which("lint-imports")


@pytest.mark.skipif(importlib.util.find_spec("importlinter") is None or _lint_imports() is None,
                    reason="import-linter is not installed (pip install -e '.[test]')")
def test_imports_point_down_and_have_no_cycles() -> None:
    done = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout
