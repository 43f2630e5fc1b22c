"""Oracles for lipgraph.linalg: exact norms of Jacobians computed independently of the code under test."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch

from lipgraph.bound import Bound, Kind


class Oracle:
    @staticmethod
    def jacobian(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...]) -> np.ndarray:
        """The (out_numel × in_numel) Jacobian of ``fn`` (batched) by autograd, in float64."""
        x = torch.randn(in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0)).flatten(), x)
        return jac.reshape(jac.shape[0], -1).numpy()

    def norm(self, fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...], p: float) -> float:
        """Exact ℓp operator norm by numpy (ord=2: σ_max; ord=1: max col sum; ord=inf: max row sum)."""
        return float(np.linalg.norm(self.jacobian(fn, in_shape), ord=p))

    @staticmethod
    def assert_exact(bound: Bound, ref: float) -> None:
        """An exact certified result equals ``ref`` up to rounding plus its (1 + FLOAT_MARGIN) margin."""
        assert bound.kind is Kind.CERTIFIED and bound.exact, bound
        assert ref * (1 - 1e-9) - 1e-12 <= bound.value <= ref * (1 + 2e-6) + 1e-12, (bound, ref)

    @staticmethod
    def assert_upper(bound: Bound, ref: float, slack: float) -> None:
        """A certified bound: ≥ ``ref`` and at most ``slack`` × ``ref`` (so it cannot be absurdly loose)."""
        assert bound.kind is Kind.CERTIFIED, bound
        assert ref * (1 - 1e-9) - 1e-12 <= bound.value <= slack * ref + 1e-12, (bound, ref)


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    return Oracle()


INF = math.inf
