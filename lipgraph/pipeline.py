"""The composition root: an analysis is an ordered list of passes over one shared :class:`Analysis` state.

Every pass follows one protocol, in the spirit of torch.fx's ``PassBase``: a ``name``, the facts it ``requires``
and the facts it ``ensures``, and ``__call__(state)``. A fact is a field of the per-node record
(:class:`lipgraph.record.NodeRecord`: ``transfer``, ``fused``, ``chain``, …) or a field of the state
(:data:`GRAPH_FACTS`: ``graph``, ``total``, ``calls``, ``tree``). :func:`run_passes` checks, before each pass, that an
earlier pass ensured everything it requires, and after it that it set the state fields it ensures; a pass list
in the wrong order fails there with a :class:`PipelineError` naming the pass and the missing fact, before any
computation goes wrong.

The recipes: ``analyze`` runs :func:`analysis_passes` (trace → [intervals] → annotate → fuse → [crown] →
[layer_lower] → [chains → residual] → [local chains] → extra passes → bound → module bounds → tree);
``lipschitz_penalty`` runs :func:`graph_passes` (trace → annotate → fuse) and its own differentiable AutoLip,
``certify`` the graph passes and the bound pass. A new analysis is one more :class:`Pass` in the list
(``analyze(..., passes=[...])`` runs extra passes just before the bound pass; docs/architecture.md).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Sequence

from torch import nn

from . import ir
from .bound import Bound, Kind
from .cache import NormCache
from .errors import UnsoundBoundError, listed
from .estimators import ESTIMATORS, EstimatorCatalogue
from .estimators.budget import reserve_for_blocks
from .frontend.prepare import check_runs
from .passes.annotate import annotate
from .passes.autolip import autolip, network_estimate
from .passes.calls import ModuleCall, module_calls
from .passes.crown import refine_chains
from .passes.fuse import fuse
from .passes.interval import propagate_intervals
from .passes.layer_lower import layer_lower_bounds
from .passes.localchains import tighten_local_chains
from .passes.residual import tighten_residuals
from .passes.seqlip import tighten_chains
from .progress import ProgressFactory
from .record import NODE_FACTS, Scope, record
from .region import Region, within_global
from .registry import Registry
from .report import ReportNode
from .tree import LazyFormulas, build_tree


class PipelineError(RuntimeError):
    """A pass list that cannot run: a pass requires a fact no earlier pass ensures (an internal error)."""


@dataclass
class Analysis:
    """The state the passes share: the options of the analysis, then what the passes computed (the graph facts
    of :data:`GRAPH_FACTS`, None until a pass ensures them)."""

    model: nn.Module
    inputs: tuple
    norm: float
    registry: Registry
    catalogue: EstimatorCatalogue = field(default_factory=lambda: ESTIMATORS)  # the global one, not a copy
    method: str = "autolip"
    estimators: tuple[str, ...] | None = None  # the chain estimators to run, in order (None: the method's)
    frontend: str = "auto"
    unsupported: str = "error"
    concrete_args: dict[str, Any] | None = None
    region: Region | None = None
    ceiling: Bound | None = None  # a region analysis: the global bound, which holds on every region
    progress: ProgressFactory | None = None
    cache: NormCache | None = None  # the analysis's norm cache: an unsound layer drops its disk entries
    notes: list[str] = field(default_factory=list)
    facts: set[str] = field(default_factory=set)  # ensured so far
    graph: ir.LipGraph | None = None
    total: Bound | None = None  # the network's bound (AutoLip with every certified shortcut)
    estimate: Bound | None = None  # AutoLip with the estimate shortcuts too, when a pass recorded any
    calls: dict[Scope, ModuleCall] | None = None
    tree: ReportNode | None = None
    formulas: LazyFormulas | None = None  # built on first use

    def __post_init__(self) -> None:
        if self.estimators is None:
            self.estimators = self.catalogue.resolve(self.method)


#: facts about the whole analysis: fields of :class:`Analysis` that a pass ensures
GRAPH_FACTS = frozenset({"graph", "total", "calls", "tree"})
FACTS = NODE_FACTS | GRAPH_FACTS


class Pass:
    """One step of an analysis. Subclasses set ``name``, ``requires`` and ``ensures`` (facts: :data:`FACTS`) and
    define ``__call__(state)``, which reads only what it requires and writes what it ensures."""

    name: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()
    ensures: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, state: Analysis) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pass {self.name}: {', '.join(sorted(self.requires)) or '-'} → {', '.join(sorted(self.ensures))}>"


def run_passes(passes: Sequence[Pass], state: Analysis) -> Analysis:
    """Run ``passes`` in order on ``state``, checking each one's ``requires`` before and ``ensures`` after it."""
    for p in passes:
        unknown = (p.requires | p.ensures) - FACTS
        if unknown:
            raise PipelineError(f"pass {p.name!r} names unknown facts {sorted(unknown)}; facts are the fields of "
                                f"NodeRecord and {sorted(GRAPH_FACTS)}")
        missing = p.requires - state.facts
        if missing:
            done = ", ".join(sorted(state.facts)) or "nothing"
            raise PipelineError(f"pass {p.name!r} requires {', '.join(sorted(missing))}, which no pass before it "
                                f"ensures (ensured so far: {done})")
        p(state)
        unset = [f for f in p.ensures & GRAPH_FACTS if getattr(state, f) is None]
        if unset:
            raise PipelineError(f"pass {p.name!r} ensures {', '.join(sorted(unset))} but did not set it")
        state.facts |= p.ensures
    return state


# -- the passes -----------------------------------------------------------------------------------------------
TRACED = frozenset({"graph", "dep", "info", "value", "key", "scope", "path", "source", "inputs"})


class Trace(Pass):
    """Trace the model, run it once for shapes and constants, name every op (:func:`lipgraph.ir.build`). A
    region analysis drops the compound-op patterns (they have no interval rules: their parts are bounded)."""

    name, ensures = "trace", TRACED

    def __call__(self, state: Analysis) -> None:
        check_runs(state.model, state.inputs)
        if state.region is not None:
            state.registry = state.registry.copy()
            state.registry.patterns = {}
        state.graph = ir.build(state.model, state.inputs, state.registry, state.frontend, state.concrete_args)
        if state.graph.frontend == "export":
            state.notes.append(("torch.fx could not trace the model; " if state.frontend == "auto" else "")
                               + "the export frontend traces into every module, so rules registered for module "
                                 "classes do not apply (ops are bounded one by one)")


class Intervals(Pass):
    """Intervals of every tensor over the region (docs/local.md §2); later rules are the local ones."""

    name, requires, ensures = "intervals", TRACED, frozenset({"interval"})

    def __call__(self, state: Analysis) -> None:
        propagate_intervals(state.graph, state.registry, state.region, state.norm)
        state.registry = state.registry.localized()


class Annotate(Pass):
    """Every op's rule, and the norms of the affine runs fusion will ask for (:mod:`lipgraph.passes.annotate`)."""

    name, requires, ensures = "annotate", TRACED, frozenset({"transfer", "rule", "seconds", "fused_norm"})

    def __call__(self, state: Analysis) -> None:
        annotate(state.graph, state.registry, state.norm, state.unsupported, fusion=True, progress=state.progress)


class Fuse(Pass):
    """Affine runs bounded as one operator (:mod:`lipgraph.passes.fuse`)."""

    name, requires, ensures = "fuse", frozenset({"transfer"}), frozenset({"fused", "shortcuts"})

    def __call__(self, state: Analysis) -> None:
        fuse(state.graph, state.norm)


class Crown(Pass):
    """Tighter pre-activation intervals on sequential chains, and the local transfers recomputed from them."""

    name, requires, ensures = "crown", frozenset({"interval", "transfer", "rule"}), frozenset({"interval", "transfer"})

    def __call__(self, state: Analysis) -> None:
        refine_chains(state.graph, state.region, state.norm)


class LayerLower(Pass):
    """Power-iteration lower bounds beside each layer and fused run (:mod:`lipgraph.passes.layer_lower`)."""

    name, requires, ensures = "layer_lower", frozenset({"transfer", "fused"}), frozenset({"layer_lower"})

    def __call__(self, state: Analysis) -> None:
        with failing_unsound(state.cache):
            state.notes += layer_lower_bounds(state.graph, state.norm)


class Chains(Pass):
    """The method's chain estimators on every sequential chain (:mod:`lipgraph.passes.seqlip`)."""

    name, requires, ensures = "chains", frozenset({"transfer", "fused"}), frozenset({"chain", "shortcuts"})

    def __call__(self, state: Analysis) -> None:
        reserve_for_blocks(any(record(n).key == "add" for n in state.graph.ops()))  # a budget's share for blocks
        tighten_chains(state.graph, state.norm, state.estimators, catalogue=state.catalogue)


class Residual(Pass):
    """Residual blocks bounded jointly (:mod:`lipgraph.passes.residual`)."""

    name, requires, ensures = "residual", frozenset({"chain"}), frozenset({"residual", "shortcuts"})

    def __call__(self, state: Analysis) -> None:
        tighten_residuals(state.graph, state.norm, state.estimators)


class LocalChains(Pass):
    """Chains with per-neuron slopes over the region (:mod:`lipgraph.passes.localchains`)."""

    name, requires = "local_chains", frozenset({"interval", "transfer", "fused"})
    ensures = frozenset({"fused", "chain", "shortcuts"})

    def __init__(self, target: float | None = None) -> None:
        self.target = target  # only ``bound < target`` matters (a radius test): a useless tightening is skipped

    def __call__(self, state: Analysis) -> None:
        tighten_local_chains(state.graph, state.norm, state.estimators, self.target, state.catalogue)


class AutoLip(Pass):
    """The network's bound: AutoLip over the DAG with every certified shortcut (:mod:`lipgraph.passes.autolip`);
    the estimate with the estimate shortcuts too when chain estimators ran. A region's bound is at most the global
    ``ceiling`` (:func:`lipgraph.region.within_global`)."""

    name, requires, ensures = "bound", frozenset({"transfer", "inputs"}), frozenset({"bound", "outputs", "total"})

    def __call__(self, state: Analysis) -> None:
        total = autolip(state.graph, state.norm)
        if state.estimators:
            state.estimate = network_estimate(state.graph, state.norm)
            if total.kind is Kind.CERTIFIED:
                total = Bound(total.value, total.kind, f"autolip+{state.method}", exact=total.exact)
        if state.region is not None:
            total = within_global(total, state.ceiling, state.notes)
        state.total = total


class ModuleBounds(Pass):
    """AutoLip per module call, inputs at 1 (:mod:`lipgraph.passes.calls`): what the tree shows beside each
    module."""

    name, requires, ensures = "module_bounds", frozenset({"transfer", "scope"}), frozenset({"calls"})

    def __call__(self, state: Analysis) -> None:
        state.calls = module_calls(state.graph, state.norm)


class Tree(Pass):
    """The report's tree and formulas from the records and the module calls' bounds (:mod:`lipgraph.tree`)."""

    name, requires, ensures = "tree", frozenset({"total", "calls", "fused", "seconds"}), frozenset({"tree"})

    def __call__(self, state: Analysis) -> None:
        state.tree, state.formulas = build_tree(state.graph, state.calls, state.total, state.norm)


# -- the recipes ----------------------------------------------------------------------------------------------
def graph_passes(region: Region | None = None) -> list[Pass]:
    """Trace, [intervals over the region,] rules and fusion: the graph every later pass works on."""
    return [Trace(), *([Intervals()] if region is not None else []), Annotate(), Fuse()]


def analysis_passes(state: Analysis, *, layer_lower: bool = False, extra: Sequence[Pass] = ()) -> list[Pass]:
    """The passes of ``lipgraph.analyze`` for these options; ``extra`` passes run just before the bound pass."""
    local = state.region is not None
    return [*graph_passes(state.region), *([Crown()] if local else []), *([LayerLower()] if layer_lower else []),
            *([Chains(), Residual()] if state.estimators else []), *([LocalChains()] if local else []),
            *extra, AutoLip(), ModuleBounds(), Tree()]


@contextmanager
def failing_unsound(cache: NormCache | None) -> Iterator[None]:
    """An :class:`UnsoundBoundError` in the block removes every disk cache entry the analysis read and says whose
    layers they served (a tampered or stale cache is the likely cause), or that a rule is wrong."""
    try:
        yield
    except UnsoundBoundError as exc:
        dropped = cache.drop_disk_hits() if cache is not None else []
        if dropped:
            tail = (f"\nNorms used by these layers came from the disk cache: {listed(dropped, 8)}. Those entries were "
                    "removed; "
                    "rerun to recompute them. If this error comes back (or with --no-cache), a rule is wrong: please "
                    "report this model.")
        else:
            tail = "\nNo norm came from the disk cache: a rule is wrong, please report this model."
        raise UnsoundBoundError(f"{exc}{tail}", [*exc.layers, *dropped]) from None
