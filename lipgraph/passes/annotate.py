"""Annotate every input-dependent op with its rule's transfer (record fields ``rule``, ``transfer``,
``seconds``).

All problems are collected before failing: one error lists every op without a rule (with a rule stub),
another every op that is not globally Lipschitz. With ``unsupported="inf"`` ops without a rule get an
unbounded gain instead, and the report marks them.
"""
from __future__ import annotations

import math
import time
from contextlib import closing
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from ..bound import Bound, unbounded
from ..cache import layer_label
from ..errors import LipgraphError, NormNotSupported, NotLipschitzError, RuleError, UnsupportedOpsError
from ..hints import PRODUCT_HINT, REGION_HINT
from ..ir import LipGraph, map_args, op_spelling
from ..linalg.lazy import force_all
from ..linalg.parallel import parallel_map
from ..registry import Registry
from ..ruleapi import OpContext, Rule, Transfer
from .context import context
from .stubs import rule_stub
from ..record import record

if TYPE_CHECKING:
    from ..progress import ProgressFactory, Ticker

UNSUPPORTED_MODES = ("error", "inf")


def annotate(lg: LipGraph, registry: Registry, norm: float = 2, unsupported: str = "error", *,
             fusion: bool = False, progress: ProgressFactory | None = None) -> None:
    """Run every op's rule; write ``transfer``, ``rule`` and ``seconds`` (the rule's wall time) in each op's record.

    Built-in rules run in a thread pool when torch has several threads (:mod:`lipgraph.linalg.parallel`),
    other rules in the calling thread; results are handled in graph order either way. ``fusion=True`` then
    computes, in the same way, the norms of the folded affine chains that :func:`lipgraph.passes.fuse.fuse` will
    ask for (memoised by :mod:`lipgraph.cache`, so fusion finds them), adding their time to the ``seconds``
    of each chain's last op. ``progress(total, description)``, when the caller supplies one (a terminal bar,
    :class:`lipgraph.progress.LayerProgress`), is told of every layer done (``advance``) and of the chains added
    (``extend``); this pass draws nothing itself.
    """
    if unsupported not in UNSUPPORTED_MODES:
        raise RuleError(f"unsupported= must be one of {UNSUPPORTED_MODES}, got {unsupported!r}")
    missing: list[fx.Node] = []
    not_lipschitz: list[tuple[NotLipschitzError, fx.Node]] = []
    declined: dict[fx.Node, str] = {}  # why a rule has no constant here (its NormNotSupported)
    plan = []
    for node in lg.ops():
        key = record(node).key
        rule = registry.get(key) if key else None
        plan.append((node, rule, context(lg, node, norm) if rule is not None else None))
    # fail fast: the rules of ops without weights (activations, products, reshapes: no norm to compute) run
    # first, so that missing rules and ops that are not Lipschitz are reported before any layer norm
    early = {node: _apply((node, rule, ctx)) for node, rule, ctx in plan if rule is not None and _weightless(lg, node)}
    _check_coverage(lg, plan, early, unsupported, norm, registry)
    runnable = [job for job in plan if job[1] is not None]
    pooled = parallel_map(_apply, [job for job in runnable if _thread_safe(job[1]) and job[0] not in early])
    with (progress or _Silent)(len(runnable), "bounding layers") as bar, closing(pooled):
        for node, rule, ctx in plan:
            if rule is None:
                missing.append(node)
                continue
            if node in early:
                outcome, record(node).seconds = early[node]
            else:
                outcome, record(node).seconds = next(pooled) if _thread_safe(rule) else _apply((node, rule, ctx))
            bar.advance(record(node).path)
            if isinstance(outcome, NotLipschitzError):
                not_lipschitz.append((outcome, node))
            elif isinstance(outcome, NormNotSupported):
                missing.append(node)
                declined[node] = str(outcome)
            elif isinstance(outcome, LipgraphError):
                raise outcome
            elif isinstance(outcome, Exception):  # a broken rule must say which rule and where
                raise RuleError(f"rule {rule.name!r} (from {rule.source}) failed on {ctx.describe()}: "
                                f"{type(outcome).__name__}: {outcome}{_at(node)}") from outcome
            else:
                record(node).transfer = outcome
                record(node).rule = rule
        _raise_problems(lg, not_lipschitz, missing, declined, unsupported, norm, registry)
        for node in missing:
            why = f"no rule: {declined[node]}" if node in declined else "no rule"
            record(node).transfer = Transfer(gains=(unbounded(why),) * len(record(node).inputs))
            record(node).seconds = 0.0
        if fusion:
            _prefetch_fused_norms(lg, norm, bar)


def _raise_problems(lg: LipGraph, not_lipschitz: list[tuple[NotLipschitzError, fx.Node]], missing: list[fx.Node],
                    declined: dict[fx.Node, str], unsupported: str, norm: float, registry: Registry) -> None:
    if not_lipschitz:
        hint = (PRODUCT_HINT if any(error.product for error, _ in not_lipschitz)
                else "Bound the input domain or replace the op by a Lipschitz one.")
        raise NotLipschitzError(
            "the network is not globally Lipschitz, so no finite bound exists:\n"
            + "\n".join(f"  - {error}{_at(node)}" for error, node in not_lipschitz) + f"\n{hint}\n" + REGION_HINT,
            product=hint is PRODUCT_HINT)
    if missing and unsupported == "error":
        raise UnsupportedOpsError(_unsupported_message(lg, missing, declined, norm, registry), missing)


def _check_coverage(lg: LipGraph, plan: list, early: dict, unsupported: str, norm: float,
                    registry: Registry) -> None:
    """Raise the errors :func:`annotate` would raise at the end, from what is known before any weighted op's rule
    runs: ops without a rule, and the weightless ops whose rules say not Lipschitz or not for this norm."""
    missing = [node for node, rule, _ in plan if rule is None]
    not_lipschitz, declined = [], {}
    for node, (outcome, _) in early.items():
        if isinstance(outcome, NotLipschitzError):
            not_lipschitz.append((outcome, node))
        elif isinstance(outcome, NormNotSupported):
            missing.append(node)
            declined[node] = str(outcome)
    order = {node: i for i, (node, _, _) in enumerate(plan)}
    _raise_problems(lg, not_lipschitz, sorted(missing, key=order.__getitem__), declined, unsupported, norm, registry)


def _weightless(lg: LipGraph, node: fx.Node) -> bool:
    """The op has no parameters, buffers or tensor constants (a module's, or arguments of a function call)."""
    if node.op == "call_module":
        module = lg.gm.get_submodule(node.target)
        return next(iter(module.parameters()), None) is None and next(iter(module.buffers()), None) is None
    constants: list[Any] = []
    map_args(node, lambda a: constants.append(record(a).value) if not record(a).dep else None)
    return not any(isinstance(c, torch.Tensor) and c.numel() > 1 for c in constants)


def _thread_safe(rule: Rule) -> bool:
    """Built-in rules are pure functions of their context; other people's rules run in the calling thread."""
    return rule.source.startswith("builtin")


def _apply(job: tuple[fx.Node, Rule, OpContext]) -> tuple[Transfer | Exception, float]:
    """A rule's transfer (or the exception it raised) and its wall time."""
    _, rule, ctx = job
    start = time.perf_counter()
    try:
        with layer_label(ctx.path):
            outcome: Transfer | Exception = rule.apply(ctx)
    except Exception as exc:  # noqa: BLE001 - reported by annotate, in graph order
        outcome = exc
    return outcome, time.perf_counter() - start


def _prefetch_fused_norms(lg: LipGraph, norm: float, bar: Ticker) -> None:
    """Compute the norms of the folded affine chains now, in the pool (see :func:`annotate`), into ``fused_norm``
    of each chain's last op, where fusion reads them."""
    from .fuse import affine_chains, folded_structure, fused_bound  # fusion runs after this pass

    def prefetch(chain: list[fx.Node]) -> tuple[bool, Bound | None, float]:
        start, folded, bound = time.perf_counter(), False, None
        try:
            structure = folded_structure(chain)
            folded = structure is not None
            if folded:
                with layer_label(f"the fused chain ending at {record(chain[-1]).path}"):
                    bound = fused_bound(lg, chain, norm, structure)
        except Exception:  # noqa: BLE001 - fusion itself will meet the same error and handle it
            pass
        return folded, bound, time.perf_counter() - start

    chains = affine_chains(lg)
    bar.extend(len(chains))
    folded = set()  # the members of folded chains: their own norms are only shown
    for chain, (folds, bound, seconds) in zip(chains, parallel_map(prefetch, chains)):
        record(chain[-1]).seconds += seconds
        record(chain[-1]).fused_norm = bound
        if folds:
            folded.update(chain)
        bar.advance(record(chain[-1]).path)
    gains = [(n, g) for n in lg.ops() if n not in folded for g in record(n).transfer.gains]  # the rest: now
    for (n, _), seconds in zip(gains, force_all(g for _, g in gains)):
        record(n).seconds += seconds


class _Silent:
    """The progress of a caller that wants none."""

    def __init__(self, total: int, description: str) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def advance(self, label: str = "") -> None:
        pass

    def extend(self, more: int) -> None:
        pass


def _at(node: fx.Node) -> str:
    source = record(node).source
    return f"\n      at {source}" if source else ""


def _unsupported_message(lg: LipGraph, nodes: list[fx.Node], declined: dict[fx.Node, str], norm: float,
                         registry: Registry) -> str:
    rows = []
    for n in nodes:
        key = record(n).key or "(no key)"
        rows.append(f"  - {key:<16} {op_spelling(lg, n):<40} at {record(n).path}{_at(n)}")
        if n in declined:
            rows.append(f"      its rule has no constant here: {declined[n]}")
    norm_text = "inf" if math.isinf(norm) else f"{norm:g}"
    return (
        f"lipgraph has no rule (for the ℓ{norm_text} norm) for {len(nodes)} op(s); an op without a rule is never "
        "treated as the identity:\n" + "\n".join(rows) + "\n\n"
        "Register a rule for each. A rules file to start from (it refuses until you replace each raise by a "
        "proven constant):\n\n" + rule_stub(lg, nodes, registry) + "\n"
        "Or pass unsupported='inf' (--unsupported inf) for a partial tree with these ops unbounded."
    )
