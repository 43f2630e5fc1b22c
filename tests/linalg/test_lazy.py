"""Lazy layer norms (issue #19, "no wasted norms"): a conv fused with its BatchNorm is bounded by the fused
operator; its own norm is computed only when read, and every number is the one the eager analysis gives."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

import lipgraph
import lipgraph.linalg.conv as conv_module
import lipgraph.rules.conv as conv_rule
from lipgraph.bound import Bound, Kind, certified
from lipgraph.linalg import conv_norm, lazy_conv_norm
from lipgraph.linalg.lazy import LazyBound, is_pending, product_above


def _conv_bn(uniform: bool = False) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 3))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not uniform:
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval(), torch.randn(1, 3, 24, 24)


@pytest.fixture
def computed(monkeypatch):
    """The calls of the lazily read conv norms (the fused ones do not go through this name)."""
    calls = []
    original = conv_module.conv_norm

    def spy(*args, **kwargs):
        calls.append(kwargs.get("in_spatial"))
        return original(*args, **kwargs)
    monkeypatch.setattr(conv_module, "conv_norm", spy)
    return calls


def _numbers(report: lipgraph.Report) -> dict:
    """The report as a dict, without its timings."""
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k != "seconds"}
        return [strip(v) for v in d] if isinstance(d, list) else d
    return strip(report.to_dict())


def _eager(monkeypatch, model, x) -> lipgraph.Report:
    with monkeypatch.context() as m:
        m.setattr(conv_rule, "lazy_conv_norm", conv_norm)
        return lipgraph.analyze(model, x, lower=False, quiet=True, cache=False)


def test_a_fused_conv_norm_is_computed_only_when_read(monkeypatch, computed):
    model, x = _conv_bn()
    report = lipgraph.analyze(model, x, lower=False, quiet=True, cache=False)
    assert len(computed) == 1  # the last conv (no BatchNorm after it); both fused convs are still pending
    eager = _eager(monkeypatch, model, x)
    assert report.bound == eager.bound  # value, kind, method
    assert _numbers(report) == _numbers(eager)  # reading every shown number computes the pending ones
    assert len(computed) == 3
    fused = [n.fused for n in report.tree.walk() if n.fused is not None]
    assert len(fused) == 2 and all(f.bound.value < f.product * (1 - 1e-6) for f in fused)


def test_a_fusion_that_does_not_tighten_reads_the_norms_and_is_dropped(monkeypatch, computed):
    model, x = _conv_bn(uniform=True)  # BatchNorm at init: one scale, ‖s·C‖ = s‖C‖
    report = lipgraph.analyze(model, x, lower=False, quiet=True, cache=False)
    assert len(computed) == 3
    assert not any(n.fused is not None for n in report.tree.walk())
    assert _numbers(report) == _numbers(_eager(monkeypatch, model, x))


@pytest.fixture
def drawn(monkeypatch):
    """How many power steps each pending conv norm's ``below`` ran (one entry per conv whose steps were drawn)."""
    counts = []
    original = conv_module.attained_steps

    def spy(*args, **kwargs):
        counts.append(0)
        for value in original(*args, **kwargs):
            counts[-1] += 1
            yield value
    monkeypatch.setattr(conv_module, "attained_steps", spy)
    return counts


@pytest.mark.parametrize("scales", ["differ", "barely differ", "equal"])
def test_fusion_decides_as_the_eager_analysis_and_stops_the_power_steps_early(monkeypatch, computed, drawn, scales):
    """BatchNorm scales that differ (0.3 to 1), barely differ (one channel 0.1 % smaller: the steps cannot show it,
    the norms are computed) or are equal (at initialisation: ‖s·C‖ = s‖C‖, never tighter beyond rounding): the same
    report as the eager analysis; fewer power steps than ``BELOW_STEPS`` and no norm computed where they differ."""
    model, x = _conv_bn(uniform=True)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and scales == "differ":
            m.weight.data = torch.linspace(0.3, 1.0, m.num_features)
        elif isinstance(m, nn.BatchNorm2d) and scales == "barely differ":
            m.weight.data[0] = 1 - 1e-3
    report = lipgraph.analyze(model, x, lower=False, quiet=True, cache=False)
    if scales == "differ":
        assert len(computed) == 1 and drawn and max(drawn) < conv_module.BELOW_STEPS
    else:
        assert drawn == [conv_module.BELOW_STEPS] * 2 and len(computed) == 3
    assert sum(n.fused is not None for n in report.tree.walk()) == (0 if scales == "equal" else 2)
    assert _numbers(report) == _numbers(_eager(monkeypatch, model, x))


def _lazy(value: float, below: list[float], calls: list[str]) -> LazyBound:
    def values():
        for v in below:
            calls.append(f"below {v}")
            yield v
    return LazyBound(lambda: calls.append("computed") or certified(value, "test"), below=values)


def test_product_above_draws_one_value_of_each_pending_gain_per_round_until_one_passes():
    calls = []
    gains = [_lazy(4.0, [1.0, 2.0, 3.0], calls), certified(2.0, "known"), _lazy(1.0, [0.5, 0.75, 0.9], calls)]
    assert product_above(gains, lambda product: product > 2.5)  # round 2: 2 · 2 · 0.75 = 3 passes
    assert calls == ["below 1.0", "below 0.5", "below 2.0", "below 0.75"]
    calls.clear()
    assert product_above(gains, lambda product: product > 7.5)  # the values never pass (5.4); 4 · 2 · 1 = 8 does
    assert calls == ["below 1.0", "below 0.5", "below 2.0", "below 0.75", "below 3.0", "below 0.9", "computed",
                     "computed"]
    assert not product_above(gains, lambda product: product > 8.5)  # computed: the real product decides


def test_lazy_conv_norm_is_conv_norm_and_below_is_attained():
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    lazy = lazy_conv_norm(w, in_spatial=(9, 9), padding=1)
    assert is_pending(lazy) and lazy.kind is Kind.CERTIFIED  # the kind is declared: reading it computes nothing
    assert is_pending(lazy)
    below = list(lazy.below())
    exact = conv_norm(w, in_spatial=(9, 9), padding=1, strategy="dense")
    assert len(below) == conv_module.BELOW_STEPS and below == sorted(below)  # one value per power step, growing
    assert 0.5 * exact.value < below[-1] <= exact.value
    assert lazy == conv_norm(w, in_spatial=(9, 9), padding=1) and not is_pending(lazy)
    assert not isinstance(lazy_conv_norm(w, in_spatial=(9, 9), p=1), LazyBound)  # ℓ1: abs sums, no reason to wait


def test_lazy_bound_pickles_as_its_value_and_checks_its_kind():
    lazy = LazyBound(lambda: certified(2.0, "test"))
    copy = pickle.loads(pickle.dumps(lazy))
    assert type(copy) is Bound and copy == certified(2.0, "test")
    wrong = LazyBound(lambda: lipgraph.bound.estimate(2.0, "test"))
    with pytest.raises(ValueError, match="lazy certified constant computed a estimate one"):
        float(wrong)


def test_pending_norm_is_of_the_analysed_weights():
    """A norm read after the analysis (the report's per-layer values) is that of the weights analysed, not of
    weights the caller changed since (e.g. a training step): a later ×0.01 must not make it 100× too small."""
    model, x = _conv_bn()
    report = lipgraph.analyze(model, x, lower=False, cache=False, quiet=True)
    pending = [n for n in report.tree.walk() if n.bound is not None and is_pending(n.bound)]
    assert pending
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(0.01)
    fresh = lipgraph.analyze(model, x, lower=False, cache=False, quiet=True)
    for node in pending:
        shown = node.bound.value
        later = next(n for n in fresh.tree.walk() if n.path == node.path).bound.value
        assert shown == pytest.approx(100 * later, rel=1e-6)
