"""A total time budget for the chain and block estimators of one analysis (``analyze(..., budget=S)``,
``lipgraph explain --budget S``; ``--method best`` gets :data:`BEST_SECONDS` unless told otherwise).

The graph passes ask :func:`skip` before each estimator and :func:`spent` after it. The budget spends its time by
measured tightness per second:

- the estimators run cheapest first (:func:`order`, by :data:`COST_ORDER`);
- an estimator of :data:`CHEAP_NAMES`, or whose last run took at most :data:`CHEAP` of the budget (or
  :data:`CHEAP_SECONDS`), always runs, so the cheap certified bounds (CP, ECLipsE-Fast, the whole-block bounds of
  ``--method cp``) exist for every chain and block: ``best`` is never looser than ``cp``, and its time is that
  of ``cp`` plus the budget;
- on a graph with additions, the chain estimators may spend :data:`CHAIN_SHARE` of the budget, the whole-block
  estimators (which run after them, and win most on residual networks) the rest (:func:`reserve_for_blocks`); once a share is spent, nothing else of it starts;
- an estimator that already ran is skipped when its last run would not fit in what is left, or when it improved
  nothing (less than :data:`GAIN` relative over the best certified value already found for its chain or block)
  on every earlier run that took more than :data:`CHEAP_SECONDS`: it cost time for no tightness.

An estimator once started is not interrupted: the total can overrun by one estimator's run, never more. Whatever
is skipped, the bound is the certified minimum of what finished (never looser than the cheap bounds above).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

#: the default total seconds of ``--method best``
BEST_SECONDS = 120.0
#: runs this cheap (a fraction of the budget, or seconds) are never skipped
CHEAP, CHEAP_SECONDS = 0.01, 0.5
#: relative improvement below which a run counts as no gain
GAIN = 1e-3
#: estimators that run whatever the budget: closed forms (milliseconds per chain or block) and the whole-block
#: bounds that ``--method cp`` runs too, so that ``best`` is never looser than ``cp``; the budget caps the rest
CHEAP_NAMES = frozenset({"cp", "eclipse-fast", "seqlip-greedy", "residual-cp", "residual-eclipse-fast",
                         "residual-fft", "residual-joint"})
#: the order the chain estimators run in under a budget (cheapest first; others after, in their own order)
COST_ORDER = ("cp", "eclipse-fast", "seqlip-greedy", "seqlip", "eclipse", "lipsdp-layer", "lipsdp-neuron", "dcp",
              "lipsdp-conv")
#: fraction of the budget the chain estimators may spend; the block estimators (name ``residual-*``) get the rest
CHAIN_SHARE = 0.5


@dataclass
class Budget:
    """``seconds`` from the first estimator on; per estimator, its runs' (seconds, relative gain)."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)
    runs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    chain_share: float = CHAIN_SHARE

    @property
    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def skip(self, name: str) -> str | None:
        """None when ``name`` may start now, else why not (a note for the report)."""
        runs = self.runs.get(name)
        if name in CHEAP_NAMES or (runs and runs[-1][0] <= max(CHEAP * self.seconds, CHEAP_SECONDS)):
            return None
        block = name.startswith("residual")
        left = self.left if block else self.left - (1 - self.chain_share) * self.seconds
        if left <= 0:
            share = "" if block or self.chain_share == 1 else f"the chain estimators' share ({self.chain_share:g}) of "
            return f"skipped: {share}the estimator budget of {self.seconds:g} s is spent"
        if not runs:
            return None
        if runs[-1][0] > left:
            return f"skipped: its last run took {runs[-1][0]:.3g} s, {left:.3g} s of the budget are left"
        costly = [gain for seconds, gain in runs if seconds > CHEAP_SECONDS]
        if costly and max(costly) < GAIN:
            return (f"skipped: no tighter than the other estimators on {len(costly)} earlier run(s) of "
                    f"{sum(s for s, _ in runs):.3g} s")
        return None

    def spent(self, name: str, seconds: float, value: float | None, previous: float) -> None:
        """Record a run: ``value`` its certified bound (None: none), ``previous`` the best before it."""
        gain = 0.0 if value is None or not math.isfinite(previous) else max(0.0, 1.0 - value / previous)
        self.runs.setdefault(name, []).append((seconds, gain))


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("lipgraph_budget", default=None)


@contextlib.contextmanager
def spending(seconds: float | None) -> Iterator[Budget | None]:
    """The budget of the estimators run inside the block (None: unlimited)."""
    budget = None if seconds is None else Budget(float(seconds))
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def reserve_for_blocks(has_blocks: bool) -> None:
    """Keep (1 − :data:`CHAIN_SHARE`) of the current budget for the block estimators only when the graph has
    residual additions (else the chain estimators may spend it all)."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.chain_share = CHAIN_SHARE if has_blocks else 1.0


def skip(name: str) -> str | None:
    """Why ``name`` must not start under the current budget, or None."""
    budget = _CURRENT.get()
    return None if budget is None else budget.skip(name)


def spent(name: str, seconds: float, value: float | None, previous: float) -> None:
    budget = _CURRENT.get()
    if budget is not None:
        budget.spent(name, seconds, value, previous)


def order(estimators: Sequence[str]) -> tuple[str, ...]:
    """``estimators`` cheapest first (:data:`COST_ORDER`), the unknown ones after in their own order."""
    rank = {name: i for i, name in enumerate(COST_ORDER)}
    return tuple(sorted(estimators, key=lambda name: rank.get(name, len(rank))))


def budget_seconds(budget: float | None, method: str) -> float | None:
    """The seconds of ``analyze(..., budget=…)``: :data:`BEST_SECONDS` for ``best`` when not given, unlimited
    (None) for the other methods or ``math.inf``; anything but a positive number is an
    :class:`~lipgraph.errors.InputError`."""
    from lipgraph.errors import InputError

    if budget is None:
        return BEST_SECONDS if method == "best" else None
    try:
        value = math.nan if isinstance(budget, bool) else float(budget)
    except (TypeError, ValueError):
        value = math.nan
    if not value > 0:
        raise InputError(f"budget must be a positive number of seconds (inf: no limit), got {budget!r}")
    return None if math.isinf(value) else value
