"""The default thread count (issue #19): the cores other processes leave idle, at least 1 (no timings asserted)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lipgraph.cli import main
from lipgraph.threads import idle_threads

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("load, expected", [(0.0, 4), (1.4, 4), (5.6, 2), (7.5, 1), (40.0, 1)])
def test_idle_threads_follow_the_load(monkeypatch, torch_threads, load: float, expected: int) -> None:
    torch_threads(4)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert idle_threads() == expected


def test_no_load_average_keeps_torchs_default(monkeypatch, torch_threads) -> None:
    torch_threads(4)

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert idle_threads() == 4


def test_explain_uses_idle_threads_and_restores_them(monkeypatch, torch_threads, capsys) -> None:
    torch_threads(4)
    seen = []
    monkeypatch.setattr(os, "getloadavg", lambda: (100.0, 100.0, 100.0))
    monkeypatch.setattr("lipgraph.pipeline.annotate", _spy(seen))
    assert main(["explain", str(ROOT / "examples" / "mlp.py"), "--no-lower", "--json"]) == 0
    assert seen == [1] and torch.get_num_threads() == 4
    assert main(["explain", str(ROOT / "examples" / "mlp.py"), "--no-lower", "--json", "--threads", "3"]) == 0
    assert seen == [1, 3] and torch.get_num_threads() == 4


def _spy(seen: list[int]):
    import lipgraph.pipeline

    original = lipgraph.pipeline.annotate

    def annotate(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    return annotate
