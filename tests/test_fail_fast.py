"""Fail fast (issue #19): missing rules and ops that are not Lipschitz are reported before any layer norm."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lipgraph
import lipgraph.linalg.conv as conv_module


class _ConvThen(nn.Module):
    """A 64-channel conv on 32×32 maps (a real FFT certificate), then ``tail``."""

    def __init__(self, tail) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.conv(x))


@pytest.fixture
def no_norms(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a conv norm was computed before the coverage error")

    monkeypatch.setattr(conv_module, "_conv_norm", refuse)


@pytest.mark.parametrize("tail, error, message", [
    (lambda y: torch.special.i0e(y), lipgraph.UnsupportedOpsError, "i0e"),
    (lambda y: y * y, lipgraph.NotLipschitzError, "not globally Lipschitz"),
], ids=["missing-rule", "not-lipschitz"])
def test_errors_come_before_any_norm(no_norms, tail, error, message: str) -> None:
    model = _ConvThen(tail).eval()
    with pytest.raises(error, match=message):
        lipgraph.analyze(model, torch.randn(1, 3, 32, 32), cache=False, lower=False)


def test_unsupported_inf_still_computes_the_norms(monkeypatch) -> None:
    calls = []
    original = conv_module._conv_norm
    monkeypatch.setattr(conv_module, "_conv_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    report = lipgraph.analyze(_ConvThen(lambda y: torch.special.i0e(y)).eval(), torch.randn(1, 3, 8, 8),
                              cache=False, lower=False, unsupported="inf")
    assert calls and report.kind is lipgraph.Kind.UNBOUNDED
