"""The time budget of ``--method best`` (lipgraph/estimators/budget.py): which estimators it lets start (decided
from recorded runs, not from timing), and that the bound is the certified minimum of what finished."""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph.cli import main
from lipgraph.estimators import budget
from lipgraph.estimators.budget import Budget, budget_seconds, order


def _elapsed(b: Budget, seconds: float) -> Budget:
    b.start = time.perf_counter() - seconds
    return b


def test_cheap_estimators_always_run_the_rest_share_the_budget() -> None:
    b = _elapsed(Budget(100.0), 60.0)  # the chain estimators' half is spent, the blocks' half is not
    assert b.skip("cp") is None and b.skip("residual-eclipse-fast") is None
    assert "chain estimators' share (0.5) of the estimator budget of 100 s is spent" in b.skip("eclipse")
    assert b.skip("residual-pair") is None
    _elapsed(b, 101.0)
    assert b.skip("residual-pair") == "skipped: the estimator budget of 100 s is spent"
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
