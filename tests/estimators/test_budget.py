"""The time budget of ``--method best`` (lipgraph/estimators/budget.py): which estimators it lets start (decided
from recorded runs, not from timing), and that the bound is the certified minimum of what finished."""
from __future__ import annotations

import contextlib
import math
import time

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph.cli import main
from lipgraph.estimators import budget, lipsdp_fo
from lipgraph.estimators.budget import Budget, budget_seconds, order
from lipgraph.estimators.dcp import ConvChain, block_bound, dcp, whole_block_bound
from lipgraph.estimators.eclipse import eclipse, eclipse_fast
from lipgraph.estimators.sdp import lipsdp
from tests.estimators.nets import chain_of, mlp
from tests.estimators.test_residual_pair import attained_norm


def _elapsed(b: Budget, seconds: float) -> Budget:
    b.start = time.perf_counter() - seconds
    return b


def test_cheap_estimators_always_run_the_rest_share_the_budget() -> None:
    b = _elapsed(Budget(100.0), 60.0)  # the chain estimators' half is spent, the blocks' half is not
    assert b.skip("cp") is None and b.skip("residual-eclipse-fast") is None
    assert "chain estimators' share (0.5) of the estimator budget of 100 s is spent" in b.skip("eclipse")
    assert b.skip("residual-lipsdp") is None
    _elapsed(b, 101.0)
    assert b.skip("residual-lipsdp") == "skipped: the estimator budget of 100 s is spent"
    assert b.skip("residual-pair") is None  # --method cp runs it: best ≤ cp
    assert b.skip("seqlip-greedy") is None


def test_measured_runs_decide() -> None:
    b = _elapsed(Budget(100.0), 10.0)  # 40 s left of the chain share
    b.spent("eclipse", 45.0, 1.0, 2.0)  # tight, but would not fit any more
    assert b.skip("eclipse") == "skipped: its last run took 45 s, 40 s of the budget are left"
    b.spent("dcp", 5.0, 2.0, 2.0)  # no gain over what the chain already had
    assert b.skip("dcp") == "skipped: no tighter than the other estimators on 1 earlier run(s) of 5 s"
    b.spent("lipsdp-neuron", 5.0, 1.5, 2.0)  # 25 % tighter: runs again
    assert b.skip("lipsdp-neuron") is None
    b.spent("seqlip", 0.1, None, 2.0)  # cheap in practice: always runs
    assert b.skip("seqlip") is None


def test_nothing_but_the_cheap_estimators_starts_past_the_deadline() -> None:
    """A cheap last run lets an estimator start while its share lasts, never after (on a larger chain it could run
    for minutes before its first deadline check)."""
    b = _elapsed(Budget(100.0), 10.0)
    b.spent("eclipse", 0.1, None, 2.0)
    b.spent("residual-lipsdp", 0.1, None, 2.0)
    assert b.skip("eclipse") is None and b.skip("residual-lipsdp") is None
    _elapsed(b, 50.5)
    assert "chain estimators' share (0.5) of the estimator budget of 100 s is spent" in b.skip("eclipse")
    assert b.skip("residual-lipsdp") is None
    _elapsed(b, 100.5)
    assert b.skip("residual-lipsdp") == "skipped: the estimator budget of 100 s is spent"
    assert b.skip("cp") is None and b.skip("residual-cp") is None


def test_order_and_defaults() -> None:
    assert order(("lipsdp-neuron", "mine", "dcp", "cp", "eclipse-fast")) == (
        "cp", "eclipse-fast", "lipsdp-neuron", "dcp", "mine")
    assert budget_seconds(None, "best") == budget.BEST_SECONDS
    assert budget_seconds(None, "cp") is None and budget_seconds(math.inf, "best") is None
    assert budget_seconds(7, "cp") == 7.0


@pytest.mark.parametrize("bad", [0, -1.0, "soon", math.nan, True])
def test_bad_budget_is_an_input_error(bad) -> None:
    with pytest.raises(lipgraph.InputError, match="budget must be a positive number of seconds"):
        lipgraph.analyze(nn.Linear(2, 2), input_shape=(1, 2), method="best", budget=bad)


def test_a_budget_for_a_method_without_estimators_is_noted() -> None:
    report = lipgraph.analyze(nn.Linear(2, 2), input_shape=(1, 2), budget=5, lower=False, cache=False)
    assert "budget has no effect: method 'autolip' runs no chain or block estimators" in report.notes


def test_cli_budget_error(capsys, mlp_file) -> None:
    assert main(["explain", str(mlp_file), "--method", "best", "--budget", "-1"]) == 2
    err = capsys.readouterr().err
    assert "budget must be a positive number of seconds (inf: no limit), got -1.0" in err  # what the CLI takes


def test_best_under_a_spent_budget_is_the_minimum_of_what_finished(monkeypatch) -> None:
    """A budget spent at once: only the cheap estimators finish; the bound is their certified minimum, never above
    CP's, and not below what the unlimited ``best`` certifies."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(1, 4)
    monkeypatch.setattr(budget, "CHEAP_SECONDS", 0.0)  # every measured run counts as costly
    spent = lipgraph.analyze(model, x, method="best", lower=False, quiet=True, budget=1e-9)
    (chain,) = spent.chains
    assert set(chain.results) >= {"cp", "eclipse-fast"}
    assert any("budget" in note and "is spent" in note for note in chain.notes)
    certified = [b.value for b in chain.results.values() if b.kind is lipgraph.Kind.CERTIFIED]
    assert spent.bound.value <= min(certified) * (1 + 1e-12)
    cp = lipgraph.analyze(model, x, method="cp", lower=False, quiet=True)
    full = lipgraph.analyze(model, x, method="best", lower=False, quiet=True, budget=math.inf)
    assert full.bound.value <= spent.bound.value <= cp.bound.value


def test_without_blocks_the_chains_may_spend_it_all() -> None:
    with budget.spending(100.0) as b:
        _elapsed(b, 60.0)
        assert "share (0.5)" in budget.skip("eclipse")
        budget.reserve_for_blocks(False)
        assert budget.skip("eclipse") is None
        _elapsed(b, 101.0)
        assert budget.skip("eclipse") == "skipped: the estimator budget of 100 s is spent"


class _Clock:
    """A fake clock for a budget: time stands still except while estimator ``name`` runs, when each read (one
    :func:`budget.expired` check) is one second; so ``name`` reaches a deadline of S seconds after S checks, and
    nothing depends on how fast the machine is."""

    def __init__(self, name: str) -> None:
        self.name, self.now, self.budget = name, 0.0, None

    def __call__(self) -> float:
        run = self.budget.current if self.budget is not None else None
        if run is not None and run.name == self.name:
            self.now += 1.0
        return self.now


@contextlib.contextmanager
def _fake_spending(name: str, seconds: float):
    clock = _Clock(name)
    with budget.spending(seconds, clock) as b:
        clock.budget = b
        yield b


def _counted(monkeypatch, b: Budget) -> list[bool]:
    """Per evaluation of the first-order objective (schur mode): whether the estimator was already stopped."""
    calls: list[bool] = []
    objective = lipsdp_fo._schur_objective

    def counting(weights, slopes):
        evaluate = objective(weights, slopes)

        def wrapped(log_t, beta):
            calls.append(b.current.stopped)
            return evaluate(log_t, beta)
        return wrapped
    monkeypatch.setattr(lipsdp_fo, "_schur_objective", counting)
    return calls


def test_first_order_solver_stops_at_the_deadline_and_its_point_is_certified(monkeypatch) -> None:
    model = mlp((5, 12, 12, 12, 3), act="relu", seed=3)
    chain = chain_of(model, 5)
    unlimited = lipsdp_fo.lipsdp_first_order(chain)
    with _fake_spending("lipsdp-neuron", 6.0) as b:
        budget.reserve_for_blocks(False)
        calls = _counted(monkeypatch, b)
        outcome = budget.timed("lipsdp-neuron", lambda: lipsdp_fo.lipsdp_first_order(chain), math.inf)
    assert outcome.finished and outcome.bound.kind is lipgraph.Kind.CERTIFIED
    assert 0 < len(calls) <= 6 and not any(calls)  # no evaluation after the stop: overrun = the certificate
    assert len(outcome.notes) == 1 and outcome.notes[0].startswith("lipsdp-neuron: stopped at the budget's deadline")
    assert outcome.notes[0].endswith("its best point so far was certified")
    attained = attained_norm(model, (5,))
    assert attained <= outcome.bound.value and unlimited.value <= outcome.bound.value * (1 + 1e-9)
    assert outcome.bound.value <= eclipse_fast(chain).value * (1 + 1e-9)  # its start, ECLipsE-Fast, verifies


def test_an_estimator_stopped_before_any_point_contributes_nothing() -> None:
    model = mlp((15, 12, 12, 3), seed=4)  # 15 inputs > 12: the input reduction runs (and may stop) too
    chain = chain_of(model, 15)
    conv = ConvChain.from_sequential(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
                                                   nn.Conv2d(2, 2, 3, padding=1)).double(), (1, 4, 4))
    with _fake_spending("none", 1.0) as b:
        for name, compute in [("lipsdp-neuron", lambda: lipsdp_fo.lipsdp_first_order(chain)),
                              ("eclipse", lambda: eclipse(chain)),
                              ("dcp", lambda: dcp(conv, estimator="eclipse-fast", workers=1))]:
            b.clock.name, b.clock.now = name, 0.0  # starts in time; its first deadline check is 1 s: past 0.5 s
            outcome = budget.timed(name, compute, math.inf)
            assert not outcome.finished and outcome.bound is None
            assert outcome.notes == [f"{name}: stopped at the budget's deadline (0.5 s into 1 s) after "
                                     f"{outcome.seconds:.3g} s; nothing certified from it"]
        b.clock.now = 5.0  # past the deadline
        cheap = budget.timed("eclipse-fast", lambda: eclipse_fast(chain), math.inf)  # never cut
        b.clock.name, b.clock.now = "none", 0.0
        solved = budget.timed("lipsdp-layer", lambda: lipsdp(chain, per_neuron=False), math.inf)
    assert cheap.finished and cheap.notes == [] and b.deadline("cp") == math.inf
    # one interior-point solve has no iteration to stop at; its ECLipsE-Fast fallback and its certificate (input
    # reduction included) never stop it: a finished solve is certified, not dropped
    assert solved.finished and solved.bound.kind is lipgraph.Kind.CERTIFIED and solved.notes == []


def test_best_with_an_estimator_stopped_is_certified_and_never_above_cp(monkeypatch) -> None:
    """``best`` whose ECLipsE is stopped after one stage (fake clock): its mixed multipliers are certified, the
    report says it was stopped, the costly estimators after it are skipped, and best ≤ cp ≥ attained."""
    model = mlp((4, 10, 10, 10, 10, 2), seed=5)
    x = torch.randn(1, 4, dtype=torch.float64)
    monkeypatch.setattr(lipgraph.api, "spending", lambda seconds: _fake_spending("eclipse", 1.5))
    report = lipgraph.analyze(model, x, method="best", lower=False, quiet=True, cache=False, budget=100.0)
    (chain,) = report.chains
    assert any(n.startswith("eclipse: stopped at the budget's deadline") for n in chain.notes), chain.notes
    assert any("is spent" in n for n in chain.notes)
    cp = lipgraph.analyze(model, x, method="cp", lower=False, quiet=True, cache=False)
    attained = attained_norm(model, (4,))
    assert attained <= report.bound.value <= cp.bound.value
    assert all(attained <= b.value for b in chain.results.values() if b.kind is lipgraph.Kind.CERTIFIED)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(torch.relu(self.c1(x)))


def test_best_with_its_budget_spent_keeps_the_block_pairs_of_cp() -> None:
    """``--method cp`` bounds consecutive blocks jointly (residual-pair): ``best`` whose budget is spent before the
    block estimators ran must too (it was 1.97 against cp's 1.67 here)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), _Block(), nn.ReLU(), _Block(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(1, 2, 6, 6)
    cp = lipgraph.analyze(model, x, method="cp", lower=False, quiet=True, cache=False)
    best = lipgraph.analyze(model, x, method="best", budget=1e-9, lower=False, quiet=True, cache=False)
    assert best.bound.value <= cp.bound.value


def _conv3() -> tuple[nn.Module, ConvChain]:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(2, 2, 3, padding=1)).double()
    return model, ConvChain.from_sequential(model, (1, 4, 4))


@pytest.mark.parametrize("deadline, cut", [(1.5, "untiled"), (4.5, "one-layer")])
def test_dcp_stopped_returns_the_best_cut_into_its_finished_blocks(deadline: float, cut: str) -> None:
    """Fake clock, one second per deadline check (one at the start, one per block): DCP stopped after the whole
    chain untiled (1.5 s), or after the one-layer blocks too (4.5 s, before any two-layer block), returns the best
    cut into what it finished — certified as a finished search's, ≥ the attained norm and ≥ the unlimited search —
    and the note names it; stopped before any block cuts the chain (0.5 s) it contributes nothing."""
    model, chain = _conv3()
    unlimited = dcp(chain, estimator="eclipse-fast", workers=1)
    whole = whole_block_bound(chain, 0, 3).value
    layers = math.prod(block_bound(chain, i, i + 1, estimator="eclipse-fast", max_piece=200, workers=1).value
                       for i in range(3))
    with _fake_spending("dcp", deadline):
        budget.reserve_for_blocks(False)
        outcome = budget.timed("dcp", lambda: dcp(chain, estimator="eclipse-fast", workers=1), math.inf)
    assert outcome.finished and outcome.bound.kind is lipgraph.Kind.CERTIFIED
    assert outcome.notes == [f"dcp: stopped at the budget's deadline ({deadline:.3g} s into {deadline:g} s) after "
                             f"{outcome.seconds:.3g} s; its best point so far was certified"]
    expected = whole if cut == "untiled" else min(whole, layers)  # ReLU slopes: 1 at the cuts
    assert outcome.bound.value == pytest.approx(expected, rel=1e-12)
    assert ("untiled" in outcome.bound.method) == (expected == whole)
    assert attained_norm(model, (1, 4, 4)) <= unlimited.value <= outcome.bound.value * (1 + 1e-12)
    with _fake_spending("dcp", 0.5):
        budget.reserve_for_blocks(False)
        nothing = budget.timed("dcp", lambda: dcp(chain, estimator="eclipse-fast", workers=1), math.inf)
    assert not nothing.finished and nothing.notes[0].endswith("nothing certified from it")


def test_eclipse_first_stage_stops_after_a_slow_cvxpy_import(monkeypatch) -> None:
    """ECLipsE's first stage (fake clock): a stage too large for cvxpy does not import it; a cold cvxpy import
    that passes the deadline (20 s of the clock here; 9 s on a loaded machine) is followed by no interior-point
    solve — ECLipsE stops with nothing, ECLipsE-Fast stands; without a budget its value is unchanged."""
    from lipgraph.estimators import eclipse as eclipse_module

    chain = chain_of(mlp((6, 10, 10, 3), seed=7), 6)
    unlimited = eclipse(chain).value
    imports, solves = [], []
    monkeypatch.setattr(eclipse_module, "solve_lmi", lambda *args, **kwargs: solves.append(1) or 1 / 0)
    with _fake_spending("none", 10.0) as b:
        budget.reserve_for_blocks(False)

        def cold_import() -> bool:
            imports.append(1)
            b.clock.now += 20.0
            return False
        monkeypatch.setattr(eclipse_module, "cvxpy_missing", cold_import)
        outcome = budget.timed("eclipse", lambda: eclipse(chain), math.inf)
    assert imports == [1] and solves == []
    assert not outcome.finished
    assert outcome.notes[0].startswith("eclipse: stopped at the budget's deadline (10 s into 10 s)")
    monkeypatch.setattr(eclipse_module, "MAX_LMI", 12)  # every stage (side 16, 20) by the first-order solver
    first_order = eclipse(chain)
    assert len(imports) == 1 and solves == []
    assert attained_norm(mlp((6, 10, 10, 3), seed=7), (6,)) <= first_order.value
    assert unlimited <= eclipse_fast(chain).value * (1 + 1e-9)
