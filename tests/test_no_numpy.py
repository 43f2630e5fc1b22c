"""lipgraph's core needs torch, networkx, sympy and rich only: numpy is not a dependency (the test extra installs it
for other reasons, which would hide a stray ``.numpy()``). Run an analysis in a subprocess where numpy cannot be
imported and torch's numpy bridge is therefore unavailable."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import sys

    import importlib.machinery

    class NoNumpy:  # numpy "exists" (torch probes for it with find_spec) but cannot be imported
        def find_spec(self, name, path=None, target=None):
            if name == "numpy" or name.startswith("numpy."):
                return importlib.machinery.ModuleSpec(name, self)
            return None

        def create_module(self, spec):
            raise ModuleNotFoundError("numpy is blocked in this test", name=spec.name)

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, NoNumpy())
    import torch
    from torch import nn
    import lipgraph

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    for method in ("autolip", "seqlip"):
        report = lipgraph.analyze(model, x, method=method)
        assert report.kind.value == "certified", report.kind
    print("ok", report.bound.value)
""")


def test_analysis_runs_without_numpy(tmp_path) -> None:
    env = {"LIPGRAPH_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]
