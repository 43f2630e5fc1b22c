"""``lipgraph.analyze``: the analysis recipe — the passes of :func:`lipgraph.pipeline.analysis_passes` (trace →
rules → fusion → chains → AutoLip → tree) inside the analysis's contexts, then the lower-bound search."""
from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .bound import Bound, Kind
from .cache import norm_cache
from .errors import InputError, UnsoundBoundError
from .estimators import ESTIMATORS, EstimatorCatalogue
from .estimators.budget import budget_seconds, order, spending
from .frontend.prepare import as_inputs, check_finite_weights, eval_mode, to_model_device, unwrap
from .frontend.trace import LipTracer
from .frontend.untouched import leaves_untouched
from .linalg.device import on_device
from .norms import NORMS, parse_norm  # noqa: F401 - part of this module's API
from .pipeline import Analysis, Pass, analysis_passes, failing_unsound, run_passes
from .progress import LayerProgress
from .lower_region import region_lower
from .region import check_region, global_ceiling
from .registry import Registry, default_registry
from .report import Report
from .tree import output_bounds

#: method -> chain estimators run on every sequential chain (docs/mathematics.md §5–§8); "autolip" runs none. The same
#: dict as the catalogue's ``ESTIMATORS.methods`` (register a method with ``ESTIMATORS.register_method``).
CHAIN_METHODS = ESTIMATORS.methods
METHODS = ESTIMATORS.method_names()
#: The chain estimators of a ``method`` (:meth:`lipgraph.estimators.EstimatorCatalogue.resolve`).
chain_estimators = ESTIMATORS.resolve


@leaves_untouched
def analyze(
    model: nn.Module,
    example_input: Any = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    method: str = "autolip",
    norm: Any = 2,
    rules: Mapping[Any, Any] | None = None,
    frontend: str = "auto",
    unsupported: str = "error",
    concrete_args: dict[str, Any] | None = None,
    lower: bool = True,
    data: Any = None,
    lower_options: Mapping[str, Any] | None = None,
    layer_lower: bool = False,
    device: str | None = None,
    cache: bool | str | os.PathLike = True,
    quiet: bool = False,
    region: Any = None,
    budget: float | None = None,
    estimators: EstimatorCatalogue | None = None,
    passes: Sequence[Pass] = (),
) -> Report:
    """Certified upper bound on the Lipschitz constant of ``model`` (in eval mode) around its whole input space.

    ``example_input`` (or ``input_shape``) fixes the input size, which the operator norms depend on; the batch
    dimension is dim 0. ``norm`` is the ℓp norm on inputs and outputs. ``rules`` maps op keys, module classes
    or functions to rules for this call only. ``unsupported="inf"`` reports ops without a rule as unbounded
    instead of failing. The report also carries a proven lower bound (``lipgraph.lower_bound`` with the small,
    deterministic budget ``lipgraph.lower.REPORT_BUDGET``, starting from the example input and the rows of
    ``data``; ``lower_options`` are passed on, e.g. ``{"seconds": 10}`` for a longer, timed search):
    ``report.lower`` and ``report.ratio`` (upper / lower) show how tight the bound is; ``lower=False`` skips it.
    ``layer_lower=True`` (ℓ2) runs power iteration on every certified linear layer and fused chain: a proven lower
    bound beside each layer's certified norm (``ReportNode.layer_lower``, ``FusedChain.lower``).
    ``device="cuda"`` computes the operator norms on that GPU. ``cache`` keeps per-layer norms on disk (``True``:
    ``$LIPGRAPH_CACHE_DIR`` or ``~/.cache/lipgraph``; a folder; ``False``: only within this call), so a second run
    of the same model is fast (:mod:`lipgraph.cache`). A long analysis shows a progress bar on a terminal's stderr
    unless ``quiet``; ``ReportNode.seconds`` says where the time went.

    ``region`` (``lipgraph.Box(lo, hi)`` or ``lipgraph.Ball(center, radius, norm)``, example input of batch 1)
    bounds the Lipschitz constant of the model restricted to that region instead (docs/local.md): intervals
    over the region, local rules, per-neuron slopes; the lower bound is then searched inside the region.

    ``budget``: total seconds for the chain and block estimators of ``method`` (default: 120 for ``"best"``,
    unlimited otherwise; ``math.inf``: no limit), spent cheapest and tightest-per-second first; the bound is the
    certified minimum of what finished (:mod:`lipgraph.estimators.budget`).

    Scoped to this call: ``rules`` (a mapping of overrides, or a whole :class:`~lipgraph.registry.Registry`, e.g.
    ``default_registry().copy()`` with patterns of its own), ``estimators`` (an
    :class:`~lipgraph.estimators.EstimatorCatalogue`, e.g. ``ESTIMATORS.copy()`` with an estimator registered:
    ``method`` is resolved in it) and ``passes`` (extra :class:`lipgraph.pipeline.Pass` objects, run after the
    chain passes and before AutoLip: docs/architecture.md).
    """
    start = time.perf_counter()
    catalogue = ESTIMATORS if estimators is None else estimators
    chain_names = catalogue.resolve(method)  # an unknown method fails before any work
    seconds = budget_seconds(budget, method)
    chain_names = order(chain_names) if seconds is not None else chain_names
    p = parse_norm(norm)
    if example_input is None:
        if input_shape is None:
            raise InputError("give example_input (a tensor with a batch dimension) or input_shape")
        example_input = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    inputs = as_inputs(example_input, model)
    registry = rules if isinstance(rules, Registry) else default_registry().with_overrides(rules)
    original = unwrap(model)
    name = type(original).__name__
    model = traceable_root(model, registry)
    inputs = to_model_device(model, inputs)
    ceiling = None
    if region is not None:
        region = check_region(region, inputs)
        ceiling = global_ceiling(lambda: analyze(  # a global bound holds on every region: local <= global
            original, example_input, method=method, norm=p, rules=rules, frontend=frontend, unsupported=unsupported,
            concrete_args=concrete_args, lower=False, device=device, cache=cache, quiet=True, estimators=estimators,
            passes=passes, budget=budget).bound)
    notes: list[str] = []
    with eval_mode(model, notes), norm_cache(cache) as disk, on_device(device), spending(seconds):
        state = Analysis(model, inputs, p, registry, catalogue, method, chain_names, frontend, unsupported,
                         concrete_args, region, ceiling, progress=None if quiet else LayerProgress, cache=disk,
                         notes=notes)
        run_passes(analysis_passes(state, layer_lower=layer_lower, extra=passes), state)
    total = state.total
    if total.kind is Kind.UNBOUNDED:
        notes.append("some ops have no rule: the bound is unbounded (see the ops marked in the tree)")
    notes += disk.notes
    if budget is not None and not chain_names:
        notes.append(f"budget has no effect: method {method!r} runs no chain or block estimators")
    with failing_unsound(disk):
        if region is not None:
            found = region_lower(unwrap(original), inputs[0], region, p, total) if lower else None
        else:
            found = _lower(unwrap(original), inputs, p, data, lower_options, total, notes) if lower else None
    return Report(bound=total, norm=p, model=name,
                  input_shape=[list(x.shape) for x in inputs], seconds=time.perf_counter() - start,
                  frontend=state.graph.frontend, tree=state.tree, outputs=output_bounds(state.graph), notes=notes,
                  lower=found.bound if found else None, lower_input=found.point if found else None,
                  estimate=state.estimate, _formulas=state.formulas,
                  region=region.describe(inputs[0]) if region is not None else None)


def traceable_root(model: nn.Module, registry: Registry) -> nn.Module:
    """``model`` unwrapped from (Distributed)DataParallel, inside an ``nn.Sequential`` when the root itself has a
    rule (fx never makes the root a leaf), with its weights checked finite."""
    model = unwrap(model)
    if LipTracer(registry).is_leaf_module(model, ""):
        model = nn.Sequential(model)
    check_finite_weights(model)
    return model


def _lower(model: nn.Module, inputs: tuple, p: float, data: Any, options: Mapping[str, Any] | None, total: Bound,
           notes: list[str]) -> Any:
    """The lower-bound search of ``analyze``: ``REPORT_BUDGET`` unless ``options`` ask for a timed search (then
    the search's own defaults); a failure becomes a note, not an error."""
    from .lower import REPORT_BUDGET, search

    options = dict(options or {})
    if "seconds" not in options:
        options = {**REPORT_BUDGET, **options}
    try:
        found = search(model, inputs, norm=p, data=data, **options)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the upper bound stands on its own
        notes.append(f"lower-bound search failed: {type(exc).__name__}: {exc}")
        return None
    if total.kind is Kind.CERTIFIED and found.bound.value > total.value:
        raise UnsoundBoundError(f"unsound bound: the lower bound {found.bound.value:.6g} (a ratio attained at an "
                                f"input) exceeds the certified bound {total.value:.6g}.")
    return found
