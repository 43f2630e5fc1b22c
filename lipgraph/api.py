"""``lipgraph.analyze``: trace -> rules -> AutoLip -> report."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from . import ir
from .bound import Bound, Kind
from .cache import NormCache, norm_cache
from .errors import InputError, UnsoundBoundError
from .estimators import ESTIMATORS
from .estimators.budget import budget_seconds, order, reserve_for_blocks, spending
from .frontend.prepare import as_inputs, check_finite_weights, check_runs, eval_mode, to_model_device, unwrap
from .frontend.trace import LipTracer
from .linalg.device import on_device
from .norms import NORMS, parse_norm  # noqa: F401 - part of this module's API
from .passes.annotate import annotate
from .passes.autolip import autolip, network_estimate
from .passes.crown import refine_chains
from .passes.fuse import fuse
from .passes.interval import propagate_intervals
from .passes.localchains import tighten_local_chains
from .passes.layer_lower import layer_lower_bounds
from .passes.residual import tighten_residuals
from .passes.seqlip import tighten_chains
from .progress import LayerProgress
from .lower_region import region_lower
from .region import check_region, global_ceiling, within_global
from .registry import Registry, default_registry
from .report import Report, build_tree, output_bounds

#: method -> chain estimators run on every sequential chain (docs/mathematics.md §5–§8); "autolip" runs none. The same
#: dict as the catalogue's ``ESTIMATORS.methods`` (register a method with ``ESTIMATORS.register_method``).
CHAIN_METHODS = ESTIMATORS.methods
METHODS = ESTIMATORS.method_names()
#: The chain estimators of a ``method`` (:meth:`lipgraph.estimators.EstimatorCatalogue.resolve`).
chain_estimators = ESTIMATORS.resolve


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
    """
    start = time.perf_counter()
    estimators = chain_estimators(method)
    seconds = budget_seconds(budget, method)
    estimators = order(estimators) if seconds is not None else estimators
    p = parse_norm(norm)
    if example_input is None:
        if input_shape is None:
            raise InputError("give example_input (a tensor with a batch dimension) or input_shape")
        example_input = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    inputs = as_inputs(example_input, model)
    registry = default_registry().with_overrides(rules)
    original = unwrap(model)
    name = type(original).__name__
    model = traceable_root(model, registry)
    inputs = to_model_device(model, inputs)
    if region is not None:
        region = check_region(region, inputs)
        ceiling = global_ceiling(lambda: analyze(  # a global bound holds on every region: local <= global
            original, example_input, method=method, norm=p, rules=rules, frontend=frontend, unsupported=unsupported,
            concrete_args=concrete_args, lower=False, device=device, cache=cache, quiet=True).bound)
    notes: list[str] = []
    with eval_mode(model, notes), norm_cache(cache) as disk, on_device(device), spending(seconds):
        lg = annotated_graph(model, inputs, registry, p, frontend=frontend, unsupported=unsupported,
                             concrete_args=concrete_args, notes=notes, progress=not quiet, region=region)
        if region is not None:
            refine_chains(lg, region, p)
        if layer_lower:
            with _failing_unsound(disk):
                notes += layer_lower_bounds(lg, p)
        if estimators:
            reserve_for_blocks(any(n.meta.get("lip.key") == "add" for n in lg.ops()))
            tighten_chains(lg, p, estimators)
            tighten_residuals(lg, p, estimators)
        if region is not None:
            tighten_local_chains(lg, p, estimators)
        total = autolip(lg, p)
        estimate = network_estimate(lg, p) if estimators else None
        if estimators and total.kind is Kind.CERTIFIED:
            total = Bound(total.value, total.kind, f"autolip+{method}", exact=total.exact)
        if region is not None:
            total = within_global(total, ceiling, notes)
        tree, formulas = build_tree(lg, total, p)
    if total.kind is Kind.UNBOUNDED:
        notes.append("some ops have no rule: the bound is unbounded (see the ops marked in the tree)")
    notes += disk.notes
    with _failing_unsound(disk):
        if region is not None:
            found = region_lower(unwrap(original), inputs[0], region, p, total) if lower else None
        else:
            found = _lower(unwrap(original), inputs, p, data, lower_options, total, notes) if lower else None
    return Report(bound=total, norm=p, model=name,
                  input_shape=[list(x.shape) for x in inputs], seconds=time.perf_counter() - start,
                  frontend=lg.frontend, tree=tree, outputs=output_bounds(lg), notes=notes,
                  lower=found.bound if found else None, lower_input=found.point if found else None, estimate=estimate,
                  formulas=formulas, region=region.describe(inputs[0]) if region is not None else None)


def traceable_root(model: nn.Module, registry: Registry) -> nn.Module:
    """``model`` unwrapped from (Distributed)DataParallel, inside an ``nn.Sequential`` when the root itself has a
    rule (fx never makes the root a leaf), with its weights checked finite."""
    model = unwrap(model)
    if LipTracer(registry).is_leaf_module(model, ""):
        model = nn.Sequential(model)
    check_finite_weights(model)
    return model


def annotated_graph(model: nn.Module, inputs: tuple, registry: Registry, norm: float, *, frontend: str = "auto",
                    unsupported: str = "error", concrete_args: dict[str, Any] | None = None,
                    notes: list[str] | None = None, progress: bool = False, region: Any = None) -> ir.LipGraph:
    """Trace, rules and fusion — the graph every later pass works on. Call it under ``eval_mode``. With a
    ``region``: intervals over it first, then the local rules where an op has one (docs/local.md)."""
    check_runs(model, inputs)
    if region is not None:  # compound-op patterns have no interval rules: a region analysis bounds their parts
        registry = registry.copy()
        registry.patterns = {}
    lg = ir.build(model, inputs, registry, frontend, concrete_args)
    if region is not None:
        propagate_intervals(lg, registry, region, norm)
        registry = registry.localized()
    if lg.frontend == "export" and notes is not None:
        notes.append(("torch.fx could not trace the model; " if frontend == "auto" else "")
                     + "the export frontend traces into every module, so rules registered for module classes "
                       "do not apply (ops are bounded one by one)")
    annotate(lg, registry, norm, unsupported, fusion=True, progress=LayerProgress if progress else None)
    fuse(lg, norm)
    return lg


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


@contextmanager
def _failing_unsound(disk: NormCache) -> Iterator[None]:
    """An :class:`UnsoundBoundError` in the block removes every disk cache entry the analysis read and says whose
    layers they served (a tampered or stale cache is the likely cause), or that a rule is wrong."""
    try:
        yield
    except UnsoundBoundError as exc:
        dropped = disk.drop_disk_hits()
        if dropped:
            shown = ", ".join(dropped[:8]) + (f" and {len(dropped) - 8} more" if len(dropped) > 8 else "")
            tail = (f"\nNorms used by these layers came from the disk cache: {shown}. Those entries were removed; "
                    "rerun to recompute them. If this error comes back (or with --no-cache), a rule is wrong: please "
                    "report this model.")
        else:
            tail = "\nNo norm came from the disk cache: a rule is wrong, please report this model."
        raise UnsoundBoundError(f"{exc}{tail}", [*exc.layers, *dropped]) from None
