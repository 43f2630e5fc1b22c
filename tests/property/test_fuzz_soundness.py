"""Soundness fuzzer, fast profile: random networks from the rule catalogue; a proven lower bound (an attained
ratio ‖f(x) − f(y)‖/‖x − y‖, ``lipgraph.lower_bound``) must never exceed any certified bound.

The long profile is ``python -m tests.fuzz --minutes N`` (same generator). A failure prints the network's spec:
``tests.property.netgen.build(spec)`` rebuilds it exactly.
"""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipgraph.rules.activations import FIXED_SLOPES

from .netgen import ACTIVATIONS, HypothesisDraw, build, check, draw_spec

CI = settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@CI
@given(data=st.data())
def test_lower_bound_never_exceeds_a_certified_bound(data) -> None:
    spec = draw_spec(HypothesisDraw(data))
    lo, uppers, violations = check(spec)
    assert not violations, "\n".join(violations) + "\nspec: " + json.dumps(spec)
    assert uppers and lo >= 0


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), norm=st.sampled_from(["1", "inf"]))
def test_l1_linf_lower_bound_never_exceeds_a_certified_bound(data, norm: str) -> None:
    spec = draw_spec(HypothesisDraw(data), norm=norm, max_blocks=3)
    _, _, violations = check(spec)
    assert not violations, "\n".join(violations) + "\nspec: " + json.dumps(spec)


def test_catalogue_covers_every_activation_rule() -> None:
    """Every activation rule of rules/activations.py (except the non-Lipschitz hardshrink) is generated."""
    keys = set(FIXED_SLOPES) | {"leaky_relu", "rrelu", "prelu", "elu", "threshold"}
    assert keys <= set(ACTIVATIONS), keys - set(ACTIVATIONS)


def test_specs_rebuild_identically() -> None:
    import random

    from .netgen import RandomDraw

    spec = draw_spec(RandomDraw(random.Random(7)))
    spec2 = json.loads(json.dumps(spec))
    (m1, x1), (m2, x2) = build(spec), build(spec2)
    assert (m1(x1) - m2(x2)).abs().max().item() == 0.0
