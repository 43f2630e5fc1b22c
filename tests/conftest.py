"""Shared test configuration.

- ``pytest --update-golden`` rewrites the golden files under ``tests/golden/`` instead of comparing to them.
- torch runs single-threaded: on a busy 2-core machine its OpenMP threads oversubscribe the cores and a
  512×512 ``eigvalsh`` goes from 13 ms to several seconds.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `from tests.fixtures.zoo import ...` works from any working directory
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for CLI subprocesses
# analyze() keeps per-layer norms on disk: in a folder of this test session, never the user's ~/.cache
os.environ["LIPGRAPH_CACHE_DIR"] = tempfile.mkdtemp(prefix="lipgraph-test-cache-")
atexit.register(shutil.rmtree, os.environ["LIPGRAPH_CACHE_DIR"], ignore_errors=True)
# ... authenticated with a key of this session (outside that folder), never the user's ~/.config/lipgraph/cache.key
os.environ["LIPGRAPH_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="lipgraph-test-key-"), "cache.key")
atexit.register(shutil.rmtree, os.path.dirname(os.environ["LIPGRAPH_KEY_FILE"]), ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def restore_default_registry():
    """Undo whatever a test registers into the process-wide default registry (CLI --rules, example files)."""
    from lipgraph.registry import default_registry

    registry = default_registry()
    saved = (dict(registry._rules), dict(registry._aliases), list(registry.packs))
    yield registry
    registry._rules, registry._aliases, registry.packs = dict(saved[0]), dict(saved[1]), list(saved[2])


@pytest.fixture
def torch_threads():
    """Set torch's thread count for one test (``torch_threads(4)``); the count before is restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture()
def mlp_file(tmp_path: Path) -> Path:
    """A model file for the CLI: a seeded 3-4-2 ReLU MLP with its input shape."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        def build_model():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        input_shape = (1, 3)
        """))
    return path
