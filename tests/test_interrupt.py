"""Ctrl-C during an analysis: "interrupted" on stderr within about a second, exit code 130, a consistent cache."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the CLI's own code path (lipgraph.cli.main), with a line once the imports are done so the signal lands mid-analysis
COMMAND = "import sys, lipgraph.cli as cli; print('ready', flush=True); sys.exit(cli.main(sys.argv[1:]))"


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_ctrl_c_prints_interrupted_and_exits_130_at_once(tmp_path):
    env = {**os.environ, "LIPGRAPH_CACHE_DIR": str(tmp_path / "cache"),
           "LIPGRAPH_KEY_FILE": str(tmp_path / "config" / "cache.key")}
    # a first analysis of the CIFAR ResNet-18 takes well over 5 s (its layers' norms are not cached yet)
    child = subprocess.Popen([sys.executable, "-c", COMMAND, "explain", str(ROOT / "examples" / "resnet.py"),
                              "--threads", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=tmp_path)
    try:
        assert child.stdout.readline() == "ready\n"
        time.sleep(2.0)
        assert child.poll() is None, "the analysis ended before the signal"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
        reacted = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
    assert (child.returncode, err) == (130, "lipgraph: interrupted\n"), err
    assert reacted < 3.0, f"took {reacted:.1f} s after the signal"
    # every entry written before the signal is whole (written aside, then renamed into place)
    for entry in (tmp_path / "cache").rglob("[!.]*.json"):
        assert set(json.loads(entry.read_text())) >= {"key", "value", "tag"}


# stops the `lipgraph` command inside `import lipgraph`, where torch loads (seconds before cli.main runs)
SLOW_TORCH = """import importlib.abc, sys, time
class SlowTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch.func":
            print("loading torch", flush=True)
            time.sleep(30)
sys.meta_path.insert(0, SlowTorch())
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
@pytest.mark.parametrize("spelling", ["lipgraph", "python -m lipgraph"])
def test_ctrl_c_while_the_command_loads_torch(tmp_path, spelling: str):
    script = Path(sys.executable).with_name("lipgraph")
    if spelling == "lipgraph" and not script.exists():
        pytest.skip("the lipgraph console script is not installed next to this Python")
    (tmp_path / "sitecustomize.py").write_text(SLOW_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    command = [str(script)] if spelling == "lipgraph" else [sys.executable, "-m", "lipgraph"]
    child = subprocess.Popen([*command, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=tmp_path)
    try:
        assert child.stdout.readline() == "loading torch\n"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert (child.returncode, err) == (130, "lipgraph: interrupted\n"), err


def test_a_program_with_its_own_m_lipgraph_arguments_keeps_its_excepthook():
    """Only the interpreter's ``-m lipgraph`` installs the loading-time Ctrl-C hook: ``python -c CODE -m lipgraph``
    (CODE's own arguments) keeps Python's excepthook (it printed 'lipgraph: interrupted' and skipped atexit)."""
    code = "import sys, lipgraph; print(sys.excepthook is sys.__excepthook__)"
    done = subprocess.run([sys.executable, "-c", code, "-m", "lipgraph"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.stdout.strip() == "True", done.stderr
