"""A total time budget for the chain and block estimators of one analysis (``analyze(..., budget=S)``,
``lipgraph explain --budget S``; ``--method best`` gets :data:`BEST_SECONDS` unless told otherwise).

The graph passes run each estimator through :func:`timed`, which asks :meth:`Budget.skip` before it starts and
records its run after. The budget spends its time by measured tightness per second:

- the estimators run cheapest first (:func:`order`, by :data:`COST_ORDER`);
- an estimator of :data:`CHEAP_NAMES` always starts, so the cheap certified bounds (CP, ECLipsE-Fast, the
  whole-block bounds of ``--method cp``) exist for every chain and block: ``best`` is never looser than ``cp``, and
  its time is that of ``cp`` plus the budget; one whose last run took at most :data:`CHEAP` of the budget (or
  :data:`CHEAP_SECONDS`) starts while its share lasts (a cheap run on one chain says little about the next, larger
  one: nothing else starts past the deadline);
- on a graph with additions, the chain estimators may spend :data:`CHAIN_SHARE` of the budget, the whole-block
  estimators (which run after them, and win most on residual networks) the rest (:func:`reserve_for_blocks`); once
  a share is spent, nothing else of it starts;
- an estimator that already ran is skipped when its last run would not fit in what is left, or when it improved
  nothing (less than :data:`GAIN` relative over the best certified value already found for its chain or block)
  on every earlier run that took more than :data:`CHEAP_SECONDS`: it cost time for no tightness.

**A deadline, checked cooperatively.** A running estimator has a deadline: the end of its share (chain
estimators) or of the budget (block estimators); none for :data:`CHEAP_NAMES`, which are never cut. The long
estimators call :func:`expired` once per iteration (an optimiser's function evaluation, an ECLipsE or
ECLipsE-Fast stage, a step of the exact input reduction, a DCP block or piece, a SeqLip enumeration prefix;
docs/residual.md). Past the deadline, an iterative solver
stops and its best point so far goes through the same rigorous certificate as a finished run's (a result that
does not verify is dropped, never trusted); DCP returns the best cut into the blocks it finished (a block stopped
halfway is dropped); a solver stopped before it had any point, or DCP before its blocks cut the chain, raises
:class:`BudgetExpired` and contributes nothing. So the total overruns
the budget by at most one iteration and one certificate, and the report's notes name the estimator that was
stopped. Whatever is skipped or stopped, the bound is the certified minimum of what finished (never looser than
the cheap bounds above). Without a budget, :func:`expired` is one context-variable read.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Sequence

from lipgraph.bound import Bound, Kind

#: the default total seconds of ``--method best``
BEST_SECONDS = 120.0
#: runs this cheap (a fraction of the budget, or seconds) are never skipped
CHEAP, CHEAP_SECONDS = 0.01, 0.5
#: relative improvement below which a run counts as no gain
GAIN = 1e-3
#: estimators that run whatever the budget: closed forms (milliseconds per chain or block) and the whole-block
#: bounds that ``--method cp`` runs too, so that ``best`` is never looser than ``cp``; the budget caps the rest
CHEAP_NAMES = frozenset({"cp", "eclipse-fast", "seqlip-greedy", "residual-cp", "residual-eclipse-fast",
                         "residual-fft", "residual-joint", "residual-pair"})
#: the order the chain estimators run in under a budget (cheapest first; others after, in their own order)
COST_ORDER = ("cp", "eclipse-fast", "seqlip-greedy", "seqlip", "eclipse", "lipsdp-layer", "lipsdp-neuron", "dcp",
              "lipsdp-conv")
#: fraction of the budget the chain estimators may spend; the block estimators (name ``residual-*``) get the rest
CHAIN_SHARE = 0.5


class BudgetExpired(Exception):
    """An estimator reached the budget's deadline before it had anything to certify: it contributes nothing."""


@dataclass
class Run:
    """The estimator running now: its name, the clock reading it must stop at (inf: never), whether it did."""

    name: str
    deadline: float
    stopped: bool = False


@dataclass
class Budget:
    """``seconds`` from the first estimator on (read on ``clock``); per estimator, its runs' (seconds, relative
    gain); ``current``: the estimator running now."""

    seconds: float
    clock: Callable[[], float] = time.perf_counter
    start: float | None = None
    runs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    chain_share: float = CHAIN_SHARE
    current: Run | None = None

    def __post_init__(self) -> None:
        if self.start is None:
            self.start = self.clock()

    @property
    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    def deadline(self, name: str) -> float:
        """When ``name`` must stop: the end of its share (module docstring); never for :data:`CHEAP_NAMES`."""
        if name in CHEAP_NAMES:
            return math.inf
        return self.start + (1.0 if name.startswith("residual") else self.chain_share) * self.seconds

    @contextlib.contextmanager
    def running(self, name: str) -> Iterator[Run]:
        """``name`` is the running estimator inside the block (:meth:`expired` reads its deadline)."""
        run, previous = Run(name, self.deadline(name)), self.current
        self.current = run
        try:
            yield run
        finally:
            self.current = previous

    def expired(self) -> bool:
        """Whether the running estimator is past its deadline (then marked as stopped)."""
        run = self.current
        if run is None or not (run.stopped or self.clock() > run.deadline):
            return False
        run.stopped = True
        return True

    def skip(self, name: str) -> str | None:
        """None when ``name`` may start now, else why not (a note for the report)."""
        if name in CHEAP_NAMES:
            return None
        block = name.startswith("residual")
        left = self.left if block else self.left - (1 - self.chain_share) * self.seconds
        if left <= 0:
            share = "" if block or self.chain_share == 1 else f"the chain estimators' share ({self.chain_share:g}) of "
            return f"skipped: {share}the estimator budget of {self.seconds:g} s is spent"
        runs = self.runs.get(name)
        if not runs or runs[-1][0] <= max(CHEAP * self.seconds, CHEAP_SECONDS):
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
def spending(seconds: float | None, clock: Callable[[], float] = time.perf_counter) -> Iterator[Budget | None]:
    """The budget of the estimators run inside the block (None: unlimited), timed by ``clock``."""
    budget = None if seconds is None else Budget(float(seconds), clock)
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


def expired() -> bool:
    """Whether the estimator running now must stop (module docstring): never without a budget, never for
    :data:`CHEAP_NAMES`. Long estimators call it once per iteration."""
    budget = _CURRENT.get()
    return budget is not None and budget.expired()


class Outcome(NamedTuple):
    """What :func:`timed` got: ``finished`` (``bound`` is the estimator's result, in ``seconds``) or not, and the
    notes for the report (skipped, failed, stopped at the deadline)."""

    finished: bool
    bound: Bound | None
    seconds: float
    notes: list[str]


def timed(name: str, compute: Callable[[], Bound | None], previous: float) -> Outcome:
    """Run estimator ``name`` (``compute``) under the current budget, unless it must be skipped; a failure or a
    stop before a result becomes a note; ``previous``: the best certified value before it (for its gain)."""
    if why := skip(name):
        return Outcome(False, None, 0.0, [f"{name}: {why}"])
    budget = _CURRENT.get()
    start, notes, bound, finished = time.perf_counter(), [], None, False
    with budget.running(name) if budget is not None else contextlib.nullcontext() as run:
        try:
            bound, finished = compute(), True
        except BudgetExpired:
            pass
        except Exception as exc:  # noqa: BLE001 - a failed estimator (solver error, missing extra) leaves the others
            notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    if run is not None and run.stopped:
        kept = ("its best point so far was certified" if finished and bound is not None
                and bound.kind is Kind.CERTIFIED else "nothing certified from it")
        notes.append(f"{name}: stopped at the budget's deadline ({run.deadline - budget.start:.3g} s into "
                     f"{budget.seconds:g} s) after {seconds:.3g} s; {kept}")
    certified = bound.value if finished and bound is not None and bound.kind is Kind.CERTIFIED else None
    spent(name, seconds, certified, previous)
    return Outcome(finished, bound, seconds, notes)


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
