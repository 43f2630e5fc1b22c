"""lipgraph: certified Lipschitz bounds of PyTorch networks, explained layer by layer.

    report = lipgraph.analyze(model, example_input)     # trace -> rules -> AutoLip -> report
    report.bound, report.kind; report.print(); report.to_dict()
    lipgraph.analyze(model, x, lower=True).ratio        # with a proven lower bound: upper / lower
    lipgraph.lipschitz_penalty(model, x)                # differentiable estimate of the bound, to train with
    lipgraph.certify(model, x, y).radii                 # certified robustness radii of a classifier

    report.formula("layer1.0"), report.top(10)            # sympy formulas; the constants that matter most
    report.with_constant("layer3.1.conv2", 1.0).bound     # what-if, from the formulas
    lipgraph.analyze_slice(model, x, "layer2", "layer3")  # part of a model, at its input size inside the model

    lipgraph.register(MyAct, lipgraph.elementwise(slope=(0, 1)))   # a custom op in one line
    lipgraph.analyze(model, x, region=lipgraph.Ball(None, 0.05))    # local bound on a region (docs/local.md)
"""
import importlib as _importlib
import os as _os
import sys as _sys
import types as _types
import warnings as _warnings


def _run_as_module() -> bool:
    """``python -m lipgraph`` (or ``-mlipgraph``): while runpy imports the package, ``sys.argv[0]`` is ``-m``; the
    module's name is the interpreter's first ``-m`` argument (not a script's own ``-m lipgraph`` arguments)."""
    if _sys.argv[:1] != ["-m"]:
        return False
    flag = next((i for i, a in enumerate(_sys.orig_argv) if a.startswith("-m")), None)
    return flag is not None and (_sys.orig_argv[flag][2:] or "".join(_sys.orig_argv[flag + 1:flag + 2])) == "lipgraph"


if _os.path.basename(_sys.argv[0] if _sys.argv else "").removesuffix(".exe") == "lipgraph" or _run_as_module():
    def _interrupted_while_loading(kind, value, tb, _default=_sys.excepthook):
        """`lipgraph` or `python -m lipgraph`, Ctrl-C while torch loads (before cli.main can catch it): no traceback."""
        if issubclass(kind, KeyboardInterrupt):
            print("lipgraph: interrupted", file=_sys.stderr, flush=True)
            _os._exit(130)
        _default(kind, value, tb)

    _sys.excepthook = _interrupted_while_loading

with _warnings.catch_warnings():  # torch warns on loading functorch when numpy is absent; lipgraph never needs it
    _warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    _importlib.import_module("torch.func")  # loaded once, here, for the modules below

from . import formats as _formats
from .bound import Bound, Kind, certified, estimate, exact, lower, unbounded
from .errors import (InputError, LipgraphError, NormNotSupported, NotLipschitzError, RuleError, TraceError,
                     UnsoundBoundError, UnsupportedOpsError)
from .version import __version__

#: the rest of the API, imported on first use (PEP 562): ``import lipgraph`` loads neither sympy nor rich
_LAZY = {
    "analyze": "api", "certify": "certify", "Certificate": "certify", "lipschitz_penalty": "penalty",
    "LowerResult": "lower", "lower_bound": "lower", "lower_search": ("lower", "search"),
    "Registry": "registry", "default_registry": "registry", "register": "registry", "rule": "registry",
    "register_named": "registry", "register_pattern": "registry", "Chain": "patternapi", "GraphView": "patternapi",
    "Match": "patternapi", "Pattern": "patternapi", "OutputFormat": "formats", "default_formats": "formats",
    "register_format": "formats", "Box": "region", "Ball": "region", "interval_rule": "registry",
    "local_rule": "registry",
    "Comparison": "comparison", "Attribution": "formula", "Formulas": "formula", "Report": "report",
    "ReportNode": "report", "analyze_slice": "submodel", "capture_input": "submodel",
    **{name: "ruleapi" for name in ("OpContext", "Rule", "Transfer", "Var", "elementwise", "isometry",
                                    "not_lipschitz", "scale")},
}


def __getattr__(name: str):
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'lipgraph' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(_importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(_types.ModuleType):
    """Keeps ``lipgraph.lower`` and ``lipgraph.certify`` the API's functions when their submodules are first
    imported (the import system sets a package attribute per submodule; they stay in ``sys.modules``)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("lower", "certify") and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
_formats.BUILTINS.append(lambda: _importlib.import_module(".render", __name__).register_builtins())

__all__ = [
    "certify", "Certificate", "lipschitz_penalty",
    "analyze_slice", "capture_input", "Attribution", "Comparison", "Formulas",
    "analyze", "lower_bound", "lower_search", "LowerResult", "Bound", "Kind", "certified", "estimate", "exact", "lower", "unbounded", "InputError",
    "LipgraphError", "NormNotSupported", "NotLipschitzError", "RuleError", "TraceError", "UnsoundBoundError", "UnsupportedOpsError",
    "Registry", "default_registry", "register", "rule", "Report", "ReportNode", "OpContext", "Rule",
    "Transfer", "Var", "elementwise", "isometry", "not_lipschitz", "scale", "__version__",
    "OutputFormat", "default_formats", "register_format",
    "register_named", "register_pattern", "Pattern", "Match", "GraphView", "Chain",
    "Box", "Ball", "interval_rule", "local_rule",
]
