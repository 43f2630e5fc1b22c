"""The number protocol of :class:`lipgraph.bound.Bound` (documented in lipgraph/bound.py)."""
from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph.bound import Bound, Kind, certified, estimate, exact, lower, unbounded


def test_float_and_isfinite() -> None:
    b = certified(2.5, "test")
    assert float(b) == 2.5 and isinstance(float(b), float)
    assert math.isfinite(b) and not math.isfinite(unbounded("no rule"))
    assert math.log(exact(math.e)) == pytest.approx(1.0)


def test_ordering_with_numbers_and_bounds() -> None:
    small, large = lower(1.0, "power"), certified(3.0, "autolip")
    assert small < large and small <= large and large > small and large >= small
    assert large > 2 and 2 < large and large >= 3.0 and not large > 3.0
    assert unbounded("x") > 1e308
    assert sorted([large, 2.0, small]) == [small, 2.0, large]
    assert max([large, small]) is large and min(small, 0.5) == 0.5


def test_equality_is_the_record_between_bounds_and_the_value_with_numbers() -> None:
    a, b = certified(2.0, "fft"), estimate(2.0, "greedy")
    assert a == 2 and 2.0 == a and a != 2.1
    assert a != b and a <= b and a >= b  # same value, different results
    assert a == certified(2.0, "fft")
    assert a != "2.0" and (a == "2.0") is False  # not a number: never equal, no error
    with pytest.raises(TypeError):
        a < "3"  # noqa: B015 - ordering with a non-number is a TypeError, as for float


def test_hash_consistent_with_equality() -> None:
    a = certified(2.0, "fft")
    assert hash(a) == hash(certified(2.0, "fft")) == hash(2.0)
    assert len({a, certified(2.0, "fft"), estimate(2.0, "greedy")}) == 2
    assert pickle.loads(pickle.dumps(a)) == a


def test_format_spec_and_empty_spec() -> None:
    b = certified(412.7123, "autolip")
    assert f"{b:.3g}" == "413" and f"{b:.2f}" == "412.71" and f"{b:>10.1e}" == "   4.1e+02"
    assert f"{b}" == str(b) == repr(b)  # an empty spec keeps today's str
    assert f"{unbounded('x'):.3g}" == "inf"


def test_arithmetic_gives_plain_floats() -> None:
    b = certified(2.0, "fft")
    for result, expected in ((b * 2, 4.0), (2 * b, 4.0), (b + 1, 3.0), (1 + b, 3.0), (b - 0.5, 1.5),
                             (5 - b, 3.0), (b / 4, 0.5), (1 / b, 0.5), (b * b, 4.0), (round(b, 1), 2.0)):
        assert type(result) is float and result == expected
    with pytest.raises(TypeError):
        b + "1"  # noqa: B018


def test_kind_method_exact_stay_and_truthiness_is_presence() -> None:
    z = exact(0.0, "constant")
    assert z.kind is Kind.CERTIFIED and z.method == "constant" and z.exact
    assert bool(z)  # a zero bound is still a result
    with pytest.raises(ValueError, match="must be >= 0"):
        Bound(-1.0, Kind.CERTIFIED, "bad")


def test_report_bound_is_a_number() -> None:
    report = lipgraph.analyze(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), torch.zeros(1, 3), lower=True, cache=False)
    assert isinstance(report.bound, Bound)
    assert report.lower <= report.bound and float(report.bound) == report.bound.value
    assert f"{report.bound:.3g}" == f"{report.bound.value:.3g}" and math.isfinite(report.bound)
    assert report.bound / report.lower == pytest.approx(report.ratio)
