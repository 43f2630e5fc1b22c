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
"""
import importlib as _importlib
import warnings as _warnings

with _warnings.catch_warnings():  # torch warns on loading functorch when numpy is absent; lipgraph never needs it
    _warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    _importlib.import_module("torch.func")  # loaded once, here, for the modules below

from .api import analyze
from .certify import Certificate, certify
from .lower import LowerResult, lower_bound, search as lower_search
from .bound import Bound, Kind, certified, estimate, exact, lower, unbounded
from .errors import (InputError, LipgraphError, NormNotSupported, NotLipschitzError, RuleError, TraceError,
                     UnsoundBoundError, UnsupportedOpsError)
from .penalty import lipschitz_penalty
from .registry import Registry, default_registry, register, register_named, register_pattern, rule
from .patternapi import Chain, GraphView, Match, Pattern
from .comparison import Comparison
from .formula import Attribution, Formulas
from .report import Report, ReportNode
from .submodel import analyze_slice, capture_input
from .ruleapi import OpContext, Rule, Transfer, Var, elementwise, isometry, not_lipschitz, scale
from .formats import OutputFormat, default_formats, register_format
from . import render  # noqa: F401 - registers the built-in output formats

from .version import __version__

__all__ = [
    "certify", "Certificate", "lipschitz_penalty",
    "analyze_slice", "capture_input", "Attribution", "Comparison", "Formulas",
    "analyze", "lower_bound", "lower_search", "LowerResult", "Bound", "Kind", "certified", "estimate", "exact", "lower", "unbounded", "InputError",
    "LipgraphError", "NormNotSupported", "NotLipschitzError", "RuleError", "TraceError", "UnsoundBoundError", "UnsupportedOpsError",
    "Registry", "default_registry", "register", "rule", "Report", "ReportNode", "OpContext", "Rule",
    "Transfer", "Var", "elementwise", "isometry", "not_lipschitz", "scale", "__version__",
    "OutputFormat", "default_formats", "register_format",
    "register_named", "register_pattern", "Pattern", "Match", "GraphView", "Chain",
]
