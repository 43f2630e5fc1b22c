"""F.normalize and cosine_similarity: Lipschitz 1/eps through torch's eps (rules/eps_normalize.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lipgraph
from tests.rules.test_spellings import Wrap, witness


@pytest.mark.parametrize("eps", [0.5, 1e-12])
def test_normalize_is_one_over_eps_exactly(eps: float) -> None:
    f = lambda x: F.normalize(x, dim=-1, eps=eps)  # noqa: E731
    report = lipgraph.analyze(Wrap(f), torch.randn(1, 3, 3), lower=False, cache=False, quiet=True)
    assert report.bound.value == pytest.approx(1 / eps)
    assert witness(f, 1) == pytest.approx(1 / eps, rel=1e-3)  # attained inside the eps-ball


def test_cosine_similarity_bound_is_sound_with_broadcasting() -> None:
    c = torch.randn(4, 3)
    f = lambda x: F.cosine_similarity(x[0, 0, :1], x[0, 1] + c[:3], dim=-1, eps=0.5)  # noqa: E731  x1 copied 3×
    report = lipgraph.analyze(Wrap(f), torch.randn(1, 2, 3, 3), lower=False, cache=False, quiet=True)
    assert report.bound.value >= witness(f, 2) > 0.5
    assert report.bound.value == pytest.approx((3 ** 0.5 + 1) / 0.5, rel=1e-6)  # √c/eps per operand, summed


@pytest.mark.parametrize("call, norm, message", [
    (lambda x: F.normalize(x, p=1.0), 2, "F.normalize with p=1 in ℓ2 has no rule"),
    (lambda x: F.normalize(x), 1, "F.normalize with p=2 in ℓ1 has no rule"),
    (lambda x: F.cosine_similarity(x, x + 1), 1, "cosine_similarity in ℓ1 has no rule"),
])
def test_declined_cases_say_no_rule(call, norm: float, message: str) -> None:
    with pytest.raises(lipgraph.UnsupportedOpsError) as info:
        lipgraph.analyze(Wrap(call), torch.randn(1, 3, 3), norm=norm, lower=False, cache=False, quiet=True)
    assert "no rule" in str(info.value)
    assert message in str(info.value)
