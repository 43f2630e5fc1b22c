"""lipgraph: certified Lipschitz bounds of PyTorch networks, explained layer by layer.

    report = lipgraph.analyze(model, example_input)     # trace -> rules -> AutoLip -> report
    report.bound, report.kind; report.print(); report.to_dict()
    lipgraph.analyze(model, x, lower=True).ratio        # with a proven lower bound: upper / lower
    lipgraph.lipschitz_penalty(model, x)                # differentiable estimate of the bound, to train with
    lipgraph.certify(model, x, y).radii                 # certified robustness radii of a classifier

    lipgraph.register(MyAct, lipgraph.elementwise(slope=(0, 1)))   # a custom op in one line
"""
from .api import analyze
from .certify import Certificate, certify
from .lower import LowerResult, lower_bound, search as lower_search
from .bound import Bound, Kind, certified, estimate, exact, lower, unbounded
from .errors import (InputError, LipgraphError, NormNotSupported, NotLipschitzError, RuleError, TraceError,
                     UnsupportedOpsError)
from .penalty import lipschitz_penalty
from .registry import Registry, default_registry, register, rule
from .report import Report, ReportNode
from .ruleapi import OpContext, Rule, Transfer, Var, elementwise, isometry, not_lipschitz, scale

__version__ = "0.1.0"

__all__ = [
    "certify", "Certificate", "lipschitz_penalty",
    "analyze", "lower_bound", "lower_search", "LowerResult", "Bound", "Kind", "certified", "estimate", "exact", "lower", "unbounded", "InputError",
    "LipgraphError", "NormNotSupported", "NotLipschitzError", "RuleError", "TraceError", "UnsupportedOpsError",
    "Registry", "default_registry", "register", "rule", "Report", "ReportNode", "OpContext", "Rule",
    "Transfer", "Var", "elementwise", "isometry", "not_lipschitz", "scale", "__version__",
]
