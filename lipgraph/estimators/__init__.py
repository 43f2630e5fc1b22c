"""Chain estimators: bounds on the Lipschitz constant of one sequential chain (docs/mathematics.md §5–§8).

A chain is f(x) = W_K φ_{K−1}(W_{K−1} ⋯ φ_1(W_1 x + b_1) ⋯) + b_K where each φ_i acts elementwise with every
slope in [α_i, β_i] (biases never change the constant). Most estimators take a :class:`DenseChain` (explicit
float64 matrices, for chains small enough to materialise), DCP a ``ConvChain`` (:data:`INPUTS`); each returns a
:class:`~lipgraph.bound.Bound` whose kind says what it is: ``certified`` (a true upper bound, re-certified where a
solver was involved) or ``estimate``.

The graph pass (``lipgraph.passes.seqlip``) finds chains in the model, builds the form each estimator takes and
runs the estimators picked by ``--method``; an estimator registers itself in the catalogue :data:`ESTIMATORS` (one file
plus one ``register_estimator`` line), which also names the methods of ``--method``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import torch

from lipgraph.bound import Bound
from lipgraph.errors import InputError


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

    @cached_property
    def reduced_input(self):
        """``recertify.reduce_input(weights[0])`` (the exact input reduction and its proof), computed once per
        chain: the estimators and certificates of a chain share it (a QR and two Grams: minutes on a 16,384-input
        conv layer)."""
        from lipgraph.estimators.recertify import reduce_input

        return reduce_input(self.weights[0])

    def reduced_input_by_deadline(self):
        """:attr:`reduced_input`, computed (when not yet) with the deadline checks of ``reduce_input(stoppable=True)``:
        for the preparation of an estimator, which stops there past the analysis's deadline."""
        if "reduced_input" not in self.__dict__:
            from lipgraph.estimators.recertify import reduce_input

            self.__dict__["reduced_input"] = reduce_input(self.weights[0], stoppable=True)
        return self.reduced_input

    @property
    def widths(self) -> list[int]:
        """n_0 (input), n_1, …, n_K (output)."""
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]


#: What an estimator's ``fn`` takes (``ChainEstimator.input``): ``"dense"`` a :class:`DenseChain` (the chain pass
#: materialises chains whose layers are small enough, ``lipgraph.linalg.dense_is_cheap``); ``"conv"`` a
#: :class:`lipgraph.estimators.dcp.ConvChain` (2-D zero-padded convolutions with BatchNorm folded in and linear
#: layers, built by the chain pass from the graph at any size).
INPUTS = ("dense", "conv")


@dataclass(frozen=True)
class ChainEstimator:
    """A named chain estimator: one entry of the catalogue (:data:`ESTIMATORS`).

    ``fn(chain)`` bounds the chain in ℓ2; ``certified`` says whether its results are certified upper bounds;
    ``applies(chain)`` returns None when it can run on the chain, else the reason it cannot (a size limit, a
    missing optional solver). ``input`` is the form of chain ``fn`` takes (:data:`INPUTS`); ``any_norm(chain, p)``,
    when given, bounds the chain in any ℓp norm (else the estimator is ℓ2 only); ``limits`` says in words which
    chains it handles (shown by ``lipgraph rules --estimators``).
    """

    name: str
    fn: Callable[[Any], Bound]
    certified: bool
    applies: Callable[[Any], str | None] = field(default=lambda chain: None)
    description: str = ""
    input: str = "dense"
    any_norm: Callable[[Any, float], Bound] | None = None
    limits: str = ""

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"estimator {self.name!r}: input must be one of {INPUTS}, got {self.input!r}")

    @property
    def scope(self) -> str:
        """What it applies to, in words: ``dense chains; ℓ2; largest stage LMI ≤ 300``."""
        return "; ".join(filter(None, [f"{self.input} chains", "any ℓp" if self.any_norm else "ℓ2", self.limits]))

    def supports(self, norm: float) -> bool:
        return norm == 2 or self.any_norm is not None

    def run(self, chain: Any, norm: float = 2.0) -> Bound:
        """The bound of ``chain`` in the ℓ``norm`` norm (call :meth:`supports` first)."""
        return self.fn(chain) if norm == 2 else self.any_norm(chain, norm)


class EstimatorCatalogue(dict):
    """Every chain estimator by name, and the named methods of ``--method`` that run several of them.

    One instance, :data:`ESTIMATORS`, is read by ``--method`` parsing (:meth:`resolve`), ``lipgraph rules
    --estimators`` and the chain pass (``lipgraph.passes.seqlip``); :meth:`copy` gives a catalogue scoped to one
    analysis (``tighten_chains(..., catalogue=...)``). Adding an estimator is one file that defines it plus one
    line, ``register_estimator(ChainEstimator(...))`` (docs/architecture.md).
    """

    def __init__(self, estimators: Mapping[str, ChainEstimator] = (), methods: Mapping[str, Sequence[str]] = ()
                 ) -> None:
        super().__init__(estimators)
        #: method -> the estimators it runs; ``"best"`` (every estimator) is implicit.
        self.methods: dict[str, tuple[str, ...]] = {name: tuple(names) for name, names in dict(methods).items()}

    def register(self, estimator: ChainEstimator) -> ChainEstimator:
        """Add an estimator (names are unique)."""
        if estimator.name in self or estimator.name == "best":
            raise ValueError(f"chain estimator {estimator.name!r} is already registered")
        self[estimator.name] = estimator
        return estimator

    def register_method(self, name: str, estimators: Sequence[str]) -> None:
        """A named ``--method`` running several estimators (``()``: none, AutoLip with fusion only); a method takes
        precedence over an estimator of the same name (``cp``, ``dcp``)."""
        if name in self.methods or name == "best":
            raise ValueError(f"method {name!r} is already registered")
        self.methods[name] = tuple(estimators)

    def method_names(self) -> tuple[str, ...]:
        """The named methods of ``--method``, then ``best``."""
        return (*self.methods, "best")

    def resolve(self, method: str) -> tuple[str, ...]:
        """The estimators of ``method``: a named method, ``"best"`` (every registered estimator) or the name of
        one registered estimator (e.g. ``"lipsdp-neuron"`` with ``lipgraph[sdp]``)."""
        if method in self.methods:
            return self.methods[method]
        if method == "best":
            return tuple(self)
        if method in self:
            return (method,)
        available = dict.fromkeys([*self.method_names(), *self])  # cp and seqlip are both: list each once
        raise InputError(f"unknown method {method!r}; available: {', '.join(available)}")

    def of_input(self, kind: str) -> list[str]:
        """Names of the estimators whose ``fn`` takes that form of chain (:data:`INPUTS`)."""
        return [name for name, est in self.items() if est.input == kind]

    def copy(self) -> "EstimatorCatalogue":
        return EstimatorCatalogue(self, self.methods)


#: The catalogue (built-in estimators register below; third-party ones with :func:`register_estimator`).
ESTIMATORS = EstimatorCatalogue(methods={"autolip": (), "seqlip": ("cp", "seqlip", "seqlip-greedy"), "cp": ("cp",),
                                         "lipsdp": ("lipsdp-neuron",), "dcp": ("cp", "dcp")})
#: The former name of :data:`ESTIMATORS` (the same object).
CHAIN_ESTIMATORS = ESTIMATORS


def register_estimator(estimator: ChainEstimator) -> ChainEstimator:
    """Add an estimator to :data:`ESTIMATORS` (names are unique)."""
    return ESTIMATORS.register(estimator)


def _load_builtin_estimators() -> None:
    """Import the modules that register the built-in estimators (after the names above exist)."""
    from lipgraph.estimators import cp, eclipse, lipsdp_fo, sdp, seqlip  # noqa: F401


_load_builtin_estimators()
from lipgraph.estimators import dcp  # noqa: E402,F401 - registers "dcp" (conv chains), which uses the others
from lipgraph.estimators import lipsdp_fo  # noqa: E402,F401 - registers "lipsdp-conv" (large conv chains)
