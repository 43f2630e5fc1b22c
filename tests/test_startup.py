"""Fast start (issue #19): ``import lipgraph`` loads no heavy optional library, the lazy API resolves to the same
objects, and a whole analysis never pulls in torch's compiler stack (no timings are asserted)."""
from __future__ import annotations

import subprocess
import sys

import lipgraph


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_import_lipgraph_loads_no_heavy_library() -> None:
    loaded = _modules_after("import lipgraph")
    assert not {"sympy", "rich", "cvxpy", "scipy", "networkx"} & loaded


def test_an_analysis_with_its_lower_bound_does_not_load_the_compiler_stack() -> None:
    """fx's own stack-trace recording, forward-mode AD and torch.optim import torch._dynamo (seconds)."""
    loaded = _modules_after(
        "import torch, lipgraph\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()\n"
        "r = lipgraph.analyze(m, torch.randn(1, 4), quiet=True, cache=False)\n"
        "assert r.lower is not None and 0 < r.lower.value <= r.bound.value")
    assert "torch._dynamo" not in loaded and "torch._inductor" not in loaded


def test_the_lazy_api_is_complete_and_lower_stays_the_bound_factory() -> None:
    import lipgraph.certify  # noqa: F401 - importing the submodules must not replace the functions
    import lipgraph.lower  # noqa: F401

    assert all(hasattr(lipgraph, name) for name in lipgraph.__all__)
    assert lipgraph.lower(0.5, "m").kind is lipgraph.Kind.LOWER
    assert callable(lipgraph.certify) and lipgraph.lower_search.__module__ == "lipgraph.lower"
    assert set(lipgraph.__all__) <= set(dir(lipgraph))


def test_an_analysis_drawn_as_a_tree_without_merges_never_imports_sympy() -> None:
    """The formulas are built on first use (lipgraph.tree.LazyFormulas): neither the default analysis (its lower
    bound included: no ``autograd.grad`` with a seed tensor, no vectorised Jacobian on few outputs, which make torch
    import sympy) nor the default tree of an MLP builds them."""
    loaded = _modules_after(
        "import io, torch, lipgraph, lipgraph.cli\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()\n"
        "r = lipgraph.analyze(m, torch.randn(1, 4), quiet=True, cache=False)\n"
        "assert r.lower is not None and 0 < r.lower.value <= r.bound.value\n"
        "out = io.StringIO(); r.print(file=out); assert '(Linear)' in out.getvalue()")
    assert not {"sympy", "lipgraph.formula", "lipgraph.symbolic"} & loaded


def test_a_conv_net_analysis_imports_neither_sympy_nor_the_compiler_stack() -> None:
    """The conv certificates (frequencies without ``torch.unravel_index``), the pending conv norms' power steps
    (``attained_norm`` without ``torch.func.vjp``) and dense norms by rows (the global pool's: one batched backward
    pass, no ``vmap`` of a ``vjp``) import neither sympy nor torch._dynamo: ≈ 0.8 s of a fresh process each."""
    loaded = _modules_after(
        "import torch, lipgraph\n"
        "from torch import nn\n"
        "m = nn.Sequential(nn.Conv2d(8, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.Conv2d(24, 24, 3),\n"
        "                  nn.BatchNorm2d(24), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                  nn.Linear(24, 3)).eval()\n"
        "r = lipgraph.analyze(m, torch.randn(1, 8, 30, 30), quiet=True, cache=False)\n"
        "assert r.lower is not None and 0 < r.lower.value <= r.bound.value")
    assert not {"sympy", "torch._dynamo", "torch._inductor"} & loaded
