"""Chain estimators: bounds on the Lipschitz constant of one sequential chain (algorithms.md §5–§8).

A chain is f(x) = W_K φ_{K−1}(W_{K−1} ⋯ φ_1(W_1 x + b_1) ⋯) + b_K where each φ_i acts elementwise with every
slope in [α_i, β_i] (biases never change the constant). Estimators take a :class:`DenseChain` (explicit float64
matrices, for chains small enough to materialise) and return a :class:`~lipgraph.bound.Bound` whose kind says
what it is: ``certified`` (a true upper bound, re-certified where a solver was involved) or ``estimate``.

The graph pass (``lipgraph.passes.seqlip``) finds chains in the model, builds their ``DenseChain`` and runs the
estimators picked by ``--method``; an estimator registers itself in :data:`CHAIN_ESTIMATORS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch

from lipgraph.bound import Bound


@dataclass(frozen=True)
class DenseChain:
    """Matrices ``weights[i]`` of shape (n_{i+1}, n_i), float64, and one slope interval per activation.

    ``len(slopes) == len(weights) - 1``: ``slopes[i]`` is the interval of the activation applied to the output
    of ``weights[i]``.
    """

    weights: tuple[torch.Tensor, ...]
    slopes: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.slopes) != len(self.weights) - 1:
            raise ValueError(f"{len(self.weights)} matrices need {len(self.weights) - 1} slope intervals, "
                             f"got {len(self.slopes)}")
        for a, b in zip(self.weights, self.weights[1:]):
            if b.shape[1] != a.shape[0]:
                raise ValueError(f"shapes do not chain: {tuple(a.shape)} then {tuple(b.shape)}")
        for lo, hi in self.slopes:
            if not lo <= hi:
                raise ValueError(f"slope interval must have lo <= hi, got {(lo, hi)}")

    @classmethod
    def of(cls, weights, slopes) -> "DenseChain":
        """Build from any sequence of matrices (converted to float64) and slope pairs."""
        return cls(tuple(torch.as_tensor(w).detach().to(torch.float64) for w in weights),
                   tuple((float(lo), float(hi)) for lo, hi in slopes))

    @cached_property
    def svds(self) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]:
        """Thin SVDs (U, S, V) of every matrix, float64, computed once per chain (shared by the estimators)."""
        out = []
        for W in self.weights:
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            out.append((U, S, Vh.T))
        return tuple(out)

    @property
    def widths(self) -> list[int]:
        """n_0 (input), n_1, …, n_K (output)."""
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]


@dataclass(frozen=True)
class ChainEstimator:
    """A named chain estimator. ``certified`` says whether its results are certified upper bounds;
    ``applies(chain)`` returns None when it can run on the chain, else the reason it cannot (e.g. too large)."""

    name: str
    fn: Callable[[DenseChain], Bound]
    certified: bool
    applies: Callable[[DenseChain], str | None] = field(default=lambda chain: None)
    description: str = ""


CHAIN_ESTIMATORS: dict[str, ChainEstimator] = {}


def register_estimator(estimator: ChainEstimator) -> ChainEstimator:
    """Add an estimator to :data:`CHAIN_ESTIMATORS` (names are unique)."""
    if estimator.name in CHAIN_ESTIMATORS:
        raise ValueError(f"chain estimator {estimator.name!r} is already registered")
    CHAIN_ESTIMATORS[estimator.name] = estimator
    return estimator


def _load_builtin_estimators() -> None:
    """Import the modules that register the built-in estimators (after the names above exist)."""
    from lipgraph.estimators import cp, eclipse, lipsdp_fo, sdp, seqlip  # noqa: F401


_load_builtin_estimators()
