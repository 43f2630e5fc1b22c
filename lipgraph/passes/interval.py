"""The interval pass (docs/local.md §2): bounds [lo, hi] of every input-dependent tensor over an input region.

Runs each op's interval rule (``Registry.register_interval``) in graph order on the intervals of its inputs,
in float64, and widens every result outward by a relative ``ROUNDING`` so that float64 rounding of the rule's own
arithmetic stays inside. Writes ``interval`` (a (lo, hi) pair, a tuple of pairs for a tuple-valued op, or
None for integer results) on every input-dependent node. An op without an interval rule is an error listing all
of them, as a missing Lipschitz rule is.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..errors import LipgraphError, RuleError, UnsupportedOpsError
from ..ir import LipGraph, op_spelling
from ..region import Region
from ..registry import Registry
from .annotate import _at
from .context import context
from ..record import record

#: relative outward widening of every interval (covers float64 rounding of the interval arithmetic)
ROUNDING = 1e-12


def propagate_intervals(lg: LipGraph, registry: Registry, region: Region, norm: float) -> None:
    """Write ``interval`` in the record of every placeholder (the region's box) and op (its interval rule's result)."""
    (placeholder,) = lg.placeholders
    record(placeholder).interval = region.interval(lg.inputs[0])
    missing: list[fx.Node] = []
    for node in lg.ops():
        key = record(node).key
        fn = registry.interval(key) if key else None
        inputs = [record(a).interval for a in record(node).inputs]
        if fn is None:
            missing.append(node)
            continue
        if any(b is None for b in inputs):  # downstream of an op without an interval rule (reported there)
            continue
        ctx = context(lg, node, norm)
        try:
            with torch.no_grad():
                record(node).interval = _widen(fn(ctx))
        except LipgraphError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken rule must say which and where
            raise RuleError(f"interval rule of {ctx.describe()} failed: {type(exc).__name__}: {exc}{_at(node)}") \
                from exc
    if missing:
        rows = "\n".join(f"  - {record(n).key or '(no key)':<16} {op_spelling(lg, n):<40} at "
                         f"{record(n).path}{_at(n)}" for n in missing)
        raise UnsupportedOpsError(
            f"a region analysis needs an interval rule for every op; lipgraph has none for {len(missing)} op(s):\n"
            f"{rows}\n\nRegister one with @lipgraph.interval_rule(\"key\") on def f(ctx) -> (lo, hi), computing "
            "the output's bounds from the input intervals ctx.bounds.", missing)


def _widen(bound: Any) -> Any:
    if bound is None:
        return None
    if isinstance(bound, tuple) and len(bound) == 2 and isinstance(bound[0], torch.Tensor):
        lo, hi = (b.to(torch.float64) for b in bound)
        if bool((lo > hi).any()) or not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise RuleError("an interval rule returned lo > hi or a non-finite bound")
        return lo - ROUNDING * (1 + lo.abs()), hi + ROUNDING * (1 + hi.abs())
    return tuple(_widen(b) for b in bound)
