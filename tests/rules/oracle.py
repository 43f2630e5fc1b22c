"""The dense-Jacobian oracle shared by ``test_rules_dense.py`` and ``test_rules_extra.py``.

A :class:`Case` is a tiny one-op (or few-op) network, an input shape and what the rule should achieve there.
For a norm p ∈ {2, 1, ∞}:

- the rule's constant is ``lipgraph.analyze(model, x, norm=p).bound`` (:func:`analysis`);
- the true constant (:func:`true_norm`) is the exact ℓp operator norm of the dense float64 Jacobian (LINEAR ops:
  at the example input), or the max of that norm over many probe inputs, including ones that hit the worst case
  (NONLINEAR ops, :func:`probes`), or the sup of |φ'| on a fine grid (elementwise activations,
  :func:`derivative_range`).

Everything is deterministic per case id (:func:`_seed`) and cached per case object.
"""
from __future__ import annotations

import copy
import functools
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Union

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph import ir
from lipgraph.passes.annotate import annotate
from lipgraph.registry import default_registry
from tests.fixtures.jacobian import jacobian, op_norm  # noqa: F401 - the oracle's API

INF = math.inf
ALL = (2, 1, INF)
L2 = (2,)


# -- building cases ------------------------------------------------------------------------------------------
class Fn(nn.Module):
    """A functional op as a module: ``forward(x) = fn(self, x)``; keyword tensors become buffers."""

    def __init__(self, fn: Callable[..., torch.Tensor], **consts: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        for name, value in consts.items():
            self.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def fn(f: Callable[..., torch.Tensor], **consts: Callable[[], torch.Tensor]) -> Callable[[], nn.Module]:
    """Factory of an :class:`Fn` module; constants are built lazily (under the case's seed)."""
    return lambda: Fn(f, **{k: v() for k, v in consts.items()})


def rnd(*shape: int) -> Callable[[], torch.Tensor]:
    """A random constant of ``shape`` (drawn under the case's seed)."""
    return lambda: torch.randn(*shape)


def const(value: Any) -> Callable[[], torch.Tensor]:
    """A fixed constant; the dtype is inferred (floats → float32, index lists and masks stay integer/bool)."""
    return lambda: torch.as_tensor(value)


Expect = Union[str, dict]


@dataclass(frozen=True)
class Probing:
    """The generic probe inputs of a nonlinear case (see :func:`probes`)."""

    per_scale: int = 3  # random inputs at each of the scales 0.1, 1, 10
    levels: tuple[float, ...] = (0.0, 1.0, -2.0)  # near-constant inputs (normalisation's worst case) ...
    exact_levels: bool = True  # ... preceded by the exactly constant input at each level
    jitter: float = 1e-6  # size of the noise added to the near-constant inputs


DEFAULT_PROBING = Probing()


@dataclass(frozen=True, eq=False)  # hashed by identity (lru_cache keys)
class Case:
    """One table row. ``expect``: "exact" or "upper", or a dict norm -> expectation when it depends on the norm."""

    id: str
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    expect: Expect = "exact"
    kind: str = "linear"  # linear | nonlinear | act
    norms: tuple = ALL
    extra: Callable[[tuple], list[torch.Tensor]] | None = None  # per-case worst-case probes (from the shape)
    probing: Probing = DEFAULT_PROBING

    def expectation(self, p: float) -> str:
        return self.expect if isinstance(self.expect, str) else self.expect[p]


def lin(id, make, shape, expect="exact", norms=ALL):
    """A linear case: its Jacobian is taken at the example input only."""
    return Case(id, make, shape, expect, "linear", norms)


def nonlin(id, make, shape, expect="exact", norms=ALL, *, extra=None, probing=DEFAULT_PROBING):
    """A nonlinear case: its Jacobian is taken at every point of :func:`probes`."""
    return Case(id, make, shape, expect, "nonlinear", norms, extra, probing)


def act(id, make, shape=(1, 3, 5), expect="exact"):
    """An elementwise activation: its true constant is sup |φ'| on :data:`GRID`."""
    return Case(id, make, shape, expect, "act", ALL)


def params(cases, norms=None) -> list:
    """``pytest.param(case, p)`` for each case and each of ``norms`` (default: the case's own norms)."""
    return [pytest.param(c, p, id=f"{c.id}-l{'inf' if math.isinf(p) else p}")
            for c in cases for p in (c.norms if norms is None else norms)]


# -- the oracle ----------------------------------------------------------------------------------------------
def _seed(case: Case) -> int:
    return zlib.crc32(case.id.encode())


@functools.lru_cache(maxsize=None)
def built(case: Case) -> tuple[nn.Module, torch.Tensor]:
    """The case's model (eval, float32) and example input, deterministic per case id."""
    with torch.random.fork_rng():
        torch.manual_seed(_seed(case))
        # wrapped: fx never makes the root module a leaf, so a bare nn.Conv1d would be traced into
        model = nn.Sequential(case.make()).eval()
        x = torch.randn(*case.shape)
    return model, x


def probes(case: Case, x: torch.Tensor) -> list[torch.Tensor]:
    """Inputs for a nonlinear op: random at several scales, one spike per coordinate (max pooling's worst
    case: the pixel wins every window covering it), near-constant inputs (normalisation's worst case), and the
    case's own worst-case points (``case.extra``). Counts and levels come from ``case.probing``."""
    cfg = case.probing
    g = torch.Generator().manual_seed(_seed(case) + 1)
    shape, n = x.shape, x.numel()
    out = [x.double()]
    for scale in (0.1, 1.0, 10.0):
        out += [scale * torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(cfg.per_scale)]
    for i in range(n):
        spike = 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
        spike[i] = 10.0
        out.append(spike.reshape(shape))
    for c in cfg.levels:
        if cfg.exact_levels:
            out.append(torch.full(shape, c, dtype=torch.float64))
        out.append(c + cfg.jitter * torch.randn(shape, generator=g, dtype=torch.float64))
    if case.extra is not None:
        out += case.extra(tuple(shape))
    return out


@functools.lru_cache(maxsize=None)
def jacobians(case: Case) -> tuple[torch.Tensor, ...]:
    """The float64 Jacobians of the case: at the example input (linear) or at every probe (nonlinear)."""
    model, x = built(case)
    model64 = copy.deepcopy(model).double()
    points = [x.double()] if case.kind == "linear" else probes(case, x)
    return tuple(jacobian(model64, pt) for pt in points)


GRID = torch.cat([
    torch.linspace(-12, 12, 240_001, dtype=torch.float64),  # step 1e-4
    torch.logspace(1, 4, 2_000, dtype=torch.float64),
    -torch.logspace(1, 4, 2_000, dtype=torch.float64),
    torch.tensor([0.0, -1e-9, 1e-9], dtype=torch.float64),
])


@functools.lru_cache(maxsize=None)
def derivative_range(case: Case) -> tuple[float, float, float]:
    """(min φ', max φ', sup |φ'|) of an elementwise activation on a fine grid (every channel)."""
    model, x = built(case)
    model64 = copy.deepcopy(model).double()
    channels = x.shape[1]
    t = GRID.repeat(channels, 1).unsqueeze(0).requires_grad_(True)  # (1, C, N): PReLU's channel dim is 1
    (d,) = torch.autograd.grad(model64(t).sum(), t)
    return d.min().item(), d.max().item(), d.abs().max().item()


def true_norm(case: Case, p: float) -> float:
    """The true ℓp Lipschitz constant of the case (as far as the Jacobians / the grid can tell)."""
    if case.kind == "act":
        return derivative_range(case)[2]
    return max(op_norm(J, p) for J in jacobians(case))


@functools.lru_cache(maxsize=None)
def analysis(case: Case, p: float) -> lipgraph.Report:
    """lipgraph's report on the case in the ℓp norm."""
    model, x = built(case)
    return lipgraph.analyze(model, x, norm=p, lower=False)


def op_nodes(report: lipgraph.Report) -> list[lipgraph.ReportNode]:
    """The report's nodes that stand for an op."""
    return [n for n in report.tree.walk() if n.op is not None]


def annotated_ops(case: Case, p: float) -> list:
    """The case's graph ops after annotation for the ℓp norm (``record(node).key``, ``record(node).transfer``, ...)."""
    model, x = built(case)
    registry = default_registry()
    lg = ir.build(model, (x,), registry, "auto")
    annotate(lg, registry, p)
    return list(lg.ops())


def assert_table_covers(cases, keys: set[str]) -> None:
    """Every key of ``keys`` is registered and appears in the analysis of some case."""
    seen: set[str] = set()
    for case in cases:
        seen |= {n.op for n in op_nodes(analysis(case, case.norms[0]))}
    assert keys <= seen, sorted(keys - seen)
    registered = {k for k, _ in default_registry().items()}
    assert keys <= registered, sorted(keys - registered)
