"""The rules of ``rules/softmax.py`` and ``rules/extra.py`` against dense Jacobians (same style as test_rules_dense).

For each case and norm p ∈ {2, 1, ∞}: the bound of ``lipgraph.analyze(model, x, norm=p)`` must be ≥ the largest
ℓp norm of the float64 Jacobian over the probe inputs (soundness), and ≈ it where the case is marked "exact".
Probes: random points at several scales, one spike per coordinate, constant inputs, and per-case points at (or
next to) the worst case: for softmax two tied logits and the rest at −30 (sup 1/2), for log_softmax one
dominant logit (sup √d, 2, d − 1). A rule that claims ``exact`` on the only non-projection op of a case must match.
The harness (case constructors, Jacobians, probes, true norms) lives in ``oracle.py``.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipgraph
from lipgraph.record import record
from tests.rules import oracle
from tests.rules.oracle import (ALL, INF, Case, Probing, analysis, annotated_ops, assert_table_covers, built, const,
                                fn, lin, params, true_norm)


# worst-case probes ------------------------------------------------------------------------------------------
def tied(dim: int) -> Callable[[tuple], list[torch.Tensor]]:
    """Softmax's sup 1/2: two equal logits along ``dim``, the others at −30 (also each pair of positions)."""
    def make(shape):
        n = shape[dim]
        out = []
        for i in range(n):
            for j in range(i + 1, n):
                x = torch.full(shape, -30.0, dtype=torch.float64)
                x.narrow(dim, i, 1).fill_(0.0)
                x.narrow(dim, j, 1).fill_(0.0)
                out.append(x)
        return out
    return make


def dominant(dim: int) -> Callable[[tuple], list[torch.Tensor]]:
    """log_softmax's sups: one logit 30 above the others (s → a vertex of the simplex)."""
    def make(shape):
        out = []
        for i in range(shape[dim]):
            x = torch.zeros(shape, dtype=torch.float64)
            x.narrow(dim, i, 1).fill_(30.0)
            out.append(x)
        return out
    return make


def ones(shape):
    return [torch.ones(shape, dtype=torch.float64), -torch.ones(shape, dtype=torch.float64)]


UPPER_L12 = {2: "upper", 1: "upper", INF: "exact"}  # disjoint branches merged in ℓp: exact only in ℓ∞

# this file's generic probes: four random inputs per scale, near-constant inputs at 1 and −2 (jitter 1e-3)
PROBING = Probing(per_scale=4, levels=(1.0, -2.0), exact_levels=False, jitter=1e-3)
nonlin = functools.partial(oracle.nonlin, probing=PROBING)


CASES: list[Case] = [
    # ---- softmax family: 1/2 in every norm (0 for a dimension of size 1) ---------------------------------
    nonlin("F.softmax-last", fn(lambda m, x: F.softmax(x, -1)), (1, 2, 4), extra=tied(-1)),
    nonlin("softmax-d2", fn(lambda m, x: torch.softmax(x, 1)), (1, 2, 3), extra=tied(1)),
    nonlin("nn.Softmax-dim1", lambda: nn.Softmax(dim=1), (1, 3, 2), extra=tied(1)),
    nonlin("x.softmax", fn(lambda m, x: x.softmax(dim=-1)), (2, 3), extra=tied(-1)),
    nonlin("softmax-d1", fn(lambda m, x: F.softmax(x, 1)), (1, 1, 3)),
    nonlin("nn.Softmin", lambda: nn.Softmin(dim=-1), (1, 4), extra=tied(-1)),
    nonlin("nn.Softmax2d", nn.Softmax2d, (1, 3, 2, 2), extra=tied(1)),
    nonlin("softmax-temperature", fn(lambda m, x: F.softmax(x / 0.5, -1)), (1, 3), extra=tied(-1)),
    # ---- log_softmax: √d (ℓ2), 2 (ℓ∞), max(1, d − 1) (ℓ1) -----------------------------------------------
    nonlin("F.log_softmax-d4", fn(lambda m, x: F.log_softmax(x, -1)), (1, 4), extra=dominant(-1)),
    nonlin("nn.LogSoftmax-d3", lambda: nn.LogSoftmax(dim=1), (1, 3, 2), extra=dominant(1)),
    nonlin("log_softmax-d2", fn(lambda m, x: x.log_softmax(1)), (1, 2, 2), extra=dominant(1)),
    nonlin("log_softmax-d1", fn(lambda m, x: torch.log_softmax(x, 1)), (1, 1, 3)),
    # ---- abs, permutations -------------------------------------------------------------------------------
    nonlin("abs", fn(lambda m, x: torch.abs(x)), (1, 5)),
    nonlin("x.abs", fn(lambda m, x: x.abs()), (1, 2, 2)),
    nonlin("absolute", fn(lambda m, x: torch.absolute(x)), (1, 3)),
    lin("flip", fn(lambda m, x: torch.flip(x, (1, 2))), (1, 2, 3)),
    lin("x.flip", fn(lambda m, x: x.flip(-1)), (1, 4)),
    lin("fliplr", fn(lambda m, x: torch.fliplr(x)), (2, 3)),
    lin("roll", fn(lambda m, x: torch.roll(x, 1, -1)), (1, 2, 4)),
    lin("roll-2d", fn(lambda m, x: x.roll((1, -2), (1, 2))), (1, 2, 3)),
    lin("roll-flat", fn(lambda m, x: torch.roll(x, 2)), (1, 2, 3)),
    lin("rot90", fn(lambda m, x: torch.rot90(x, 1, (1, 2))), (1, 2, 3)),
    # ---- clamp: broadcasting copies x (gain √copies in ℓ2, copies in ℓ1) -----------------------------------
    nonlin("clamp-scalars", fn(lambda m, x: torch.clamp(x, -0.5, 1.0)), (1, 4)),
    nonlin("clamp-min-kw", fn(lambda m, x: x.clamp(min=0.3)), (1, 4)),
    nonlin("clamp_min", fn(lambda m, x: torch.clamp_min(x, 0.2)), (1, 3)),
    nonlin("clamp_max-method", fn(lambda m, x: x.clamp_max(-0.2)), (1, 3)),
    nonlin("clip", fn(lambda m, x: torch.clip(x, max=0.5)), (1, 3)),
    nonlin("clamp-tensor-bounds", fn(lambda m, x: torch.clamp(x, m.lo, m.hi), lo=const([[-1.0, 0.0, 0.5]]),
                                     hi=const([[1.0, 2.0, 0.7]])), (1, 3)),
    nonlin("clamp-broadcast-x", fn(lambda m, x: torch.clamp(x, min=m.lo), lo=lambda: torch.zeros(1, 2, 3)),
           (1, 1, 3)),
    nonlin("clamp-broadcast-x-3", fn(lambda m, x: x.clamp(max=m.hi), hi=lambda: torch.zeros(3, 1, 1)), (1, 2)),
    nonlin("clamp-empty-interval", fn(lambda m, x: torch.clamp(x, m.lo, m.hi), lo=const([[0.0], [2.0]]),
                                      hi=const([[1.0], [3.0]])), (1, 3), UPPER_L12),
    # disjoint slices of one tensor: a joint transfer, bounded by that tensor (docs/by-construction.md): exact
    nonlin("clamp-by-branch", fn(lambda m, x: torch.clamp(x[:, :2], min=x[:, 2:])), (1, 4)),
    nonlin("clamp-branch-broadcast", fn(lambda m, x: torch.clamp(x, min=x[:, :1])), (1, 3), UPPER_L12),
    # ---- elementwise max/min of two tensors ------------------------------------------------------------------
    nonlin("maximum-const", fn(lambda m, x: torch.maximum(x, m.c), c=const([0.1, -0.5, 2.0])), (1, 3)),
    nonlin("minimum-const-broadcast", fn(lambda m, x: torch.minimum(x, m.c), c=lambda: torch.zeros(2, 1, 3)),
           (1, 3)),
    nonlin("max-binary-const", fn(lambda m, x: torch.max(x, m.c), c=const([0.0, 1.0])), (1, 2)),
    nonlin("min-binary-const-method", fn(lambda m, x: x.min(m.c), c=const([0.0, 1.0])), (1, 2)),
    nonlin("fmax-const", fn(lambda m, x: torch.fmax(x, m.c), c=const([0.5])), (1, 3)),
    nonlin("maximum-branches", fn(lambda m, x: torch.maximum(x[:, :2], x[:, 2:])), (1, 4)),  # joint: exact
    nonlin("max-binary-branches", fn(lambda m, x: torch.max(x[:, :2], x[:, 2:])), (1, 4)),
    nonlin("minimum-x-2x", fn(lambda m, x: torch.minimum(x, 2 * x)), (1, 3), UPPER_L12),
    nonlin("fmin-branch-broadcast", fn(lambda m, x: torch.fmin(x, x[:, :1])), (1, 3), UPPER_L12),
    # ---- max/min reductions (values) -------------------------------------------------------------------------
    nonlin("max-dim-getitem", fn(lambda m, x: torch.max(x, 1)[0]), (1, 3, 2)),
    nonlin("max-dim-values", fn(lambda m, x: x.max(dim=-1).values), (1, 2, 3)),
    nonlin("max-keepdim-kw", fn(lambda m, x: torch.max(x, dim=1, keepdim=True).values), (1, 3, 2)),
    nonlin("max-unpack", fn(lambda m, x: _first_of_unpacked(x)), (1, 2, 3)),
    nonlin("max-all", fn(lambda m, x: torch.max(x)), (1, 2, 3)),
    nonlin("min-dim", fn(lambda m, x: x.min(1)[0]), (1, 3, 2)),
    nonlin("min-all", fn(lambda m, x: x.min()), (1, 4)),
    nonlin("amax", fn(lambda m, x: torch.amax(x, (1, 2))), (1, 2, 3)),
    nonlin("amax-keepdim", fn(lambda m, x: x.amax(-1, keepdim=True)), (1, 3, 2)),
    nonlin("amin", fn(lambda m, x: torch.amin(x, 1)), (1, 3, 2)),
    # ---- sort / topk (values) -----------------------------------------------------------------------------
    nonlin("sort-values", fn(lambda m, x: torch.sort(x, 1).values), (1, 4)),
    nonlin("sort-descending-getitem", fn(lambda m, x: x.sort(dim=-1, descending=True)[0]), (1, 2, 3)),
    nonlin("topk", fn(lambda m, x: torch.topk(x, 2, dim=1).values), (1, 4)),
    nonlin("topk-smallest", fn(lambda m, x: x.topk(2, largest=False)[0]), (1, 2, 3)),
    # ---- vector norms: m^{max(0, 1/q − 1/p)} over groups of m -----------------------------------------------
    nonlin("x.norm-dim", fn(lambda m, x: x.norm(dim=1)), (1, 4, 2), extra=ones),
    nonlin("torch.norm-fro-all", fn(lambda m, x: torch.norm(x)), (1, 2, 3), extra=ones),
    nonlin("torch.norm-p1", fn(lambda m, x: torch.norm(x, 1, 1)), (1, 3, 2), extra=ones),
    nonlin("torch.norm-pinf", fn(lambda m, x: torch.norm(x, p=float("inf"), dim=-1)), (1, 2, 3), extra=ones),
    nonlin("norm-p3-keepdim", fn(lambda m, x: x.norm(p=3, dim=-1, keepdim=True)), (1, 2, 4), extra=ones),
    nonlin("vector_norm", fn(lambda m, x: torch.linalg.vector_norm(x, dim=-1)), (1, 2, 3), extra=ones),
    nonlin("vector_norm-ord1-dims", fn(lambda m, x: torch.linalg.vector_norm(x, 1, dim=(1, 2))), (1, 2, 2),
           extra=ones),
    nonlin("vector_norm-ord-neginf", fn(lambda m, x: torch.linalg.vector_norm(x, -math.inf, dim=1)), (1, 3, 2)),
    nonlin("linalg.norm-vector", fn(lambda m, x: torch.linalg.norm(x, dim=1)), (1, 3), extra=ones),
    nonlin("linalg.norm-fro", fn(lambda m, x: torch.linalg.norm(x, dim=(1, 2))), (1, 2, 2), extra=ones),
    nonlin("linalg.norm-ord1-vector", fn(lambda m, x: torch.linalg.norm(x, 1, -1)), (1, 2, 3), extra=ones),
    # ---- compositions -------------------------------------------------------------------------------------
    nonlin("softmax-of-linear", fn(lambda m, x: F.softmax(F.linear(x, m.w), -1), w=lambda: torch.randn(3, 4)),
           (1, 4), "upper"),
    nonlin("max-pool-by-amax", fn(lambda m, x: x.unflatten(-1, (2, 2)).amax(-1)), (1, 2, 4)),
]


def _first_of_unpacked(x: torch.Tensor) -> torch.Tensor:
    values, _indices = torch.max(x, dim=2)
    return values


PROJECTIONS = {"getitem", "values"}


def main_op(case: Case, p: float):
    """(key, transfer, true norm) of the case's only op that is not a tuple projection, or None."""
    ops = [n for n in annotated_ops(case, p) if record(n).key not in PROJECTIONS]
    if len(ops) != 1 or len(record(ops[0]).inputs) != 1:
        return None
    return record(ops[0]).key, record(ops[0]).transfer


PARAMS = params(CASES)


# -- the tests ------------------------------------------------------------------------------------------------
def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("case,p", PARAMS)
def test_rule_bounds_dense_jacobian(case: Case, p: float):
    bound = analysis(case, p).bound
    assert bound.kind is lipgraph.Kind.CERTIFIED, bound
    rule, true = bound.value, true_norm(case, p)
    assert rule >= true * (1 - 1e-6), f"UNSOUND: rule {rule!r} < true norm {true!r} ({case.id}, p={p})"
    if case.expectation(p) == "exact":
        assert abs(rule - true) <= 1e-5 * true + 1e-12, f"not tight: {rule!r} vs true {true!r} ({case.id}, p={p})"
    else:
        assert rule > true * (1 + 1e-6), f"{case.id} is marked upper but the bound is tight (p={p}): mark it exact"
    found = main_op(case, p)
    if found is not None:  # a single op claiming exactness must be exact
        key, transfer = found
        (gain,) = transfer.gains
        if gain.exact:
            assert abs(gain.value - true) <= 1e-5 * true + 1e-12, (
                f"rule {key!r} claims exact={gain.value!r} but the true norm is {true!r}")


NEW_KEYS = {"softmax", "softmin", "softmax2d", "log_softmax", "abs", "flip", "roll", "rot90", "clamp", "maximum",
            "minimum", "max", "min", "amax", "amin", "sort", "topk", "values", "norm", "linalg_vector_norm",
            "linalg_norm"}


def test_table_covers_new_keys():
    assert_table_covers(CASES, NEW_KEYS)


@pytest.mark.parametrize("id_", ["abs", "clamp-scalars", "clamp-broadcast-x", "maximum-const"])
def test_elementwise_slope_interval(id_: str):
    """abs declares [−1, 1]; clamp/maximum with constants [0, 1] (for chain passes)."""
    case = next(c for c in CASES if c.id == id_)
    key, transfer = main_op(case, 2)
    assert transfer.slope == ((-1.0, 1.0) if key == "abs" else (0.0, 1.0)), (key, transfer.slope)


def test_softmax_is_half_and_log_softmax_constants():
    case = next(c for c in CASES if c.id == "F.log_softmax-d4")  # d = 4
    assert [analysis(case, p).bound.value for p in ALL] == pytest.approx([2.0, 3.0, 2.0])
    case = next(c for c in CASES if c.id == "F.softmax-last")
    assert [analysis(case, p).bound.value for p in ALL] == pytest.approx([0.5, 0.5, 0.5])


def test_clamp_broadcast_counts_copies():
    """torch.clamp broadcasts x against tensor bounds: x (1, 1, 3) vs lo (1, 2, 3) copies every x_j twice."""
    case = next(c for c in CASES if c.id == "clamp-broadcast-x")
    assert analysis(case, 2).bound.value == pytest.approx(math.sqrt(2))
    assert analysis(case, 1).bound.value == pytest.approx(2.0)
    assert analysis(case, INF).bound.value == pytest.approx(1.0)


# -- refusals ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    pytest.param(fn(lambda m, x: x + torch.argmax(x, 1, keepdim=True)), id="argmax"),
    pytest.param(fn(lambda m, x: x + x.min(dim=1).indices.unsqueeze(1)), id="indices-attr"),
    pytest.param(fn(lambda m, x: torch.norm(x, 0, dim=1)), id="norm-p0"),
    pytest.param(fn(lambda m, x: torch.linalg.vector_norm(x, 0.5, dim=1)), id="norm-p0.5"),
])
def test_not_lipschitz_ops_are_refused(make):
    with pytest.raises(lipgraph.NotLipschitzError):
        lipgraph.analyze(make().eval(), torch.randn(1, 3), lower=False)


@pytest.mark.parametrize("make", [
    pytest.param(fn(lambda m, x: torch.norm(x.reshape(1, 2, 2), p="nuc", dim=(1, 2))), id="norm-nuc"),
    pytest.param(fn(lambda m, x: torch.linalg.norm(x.reshape(1, 2, 2), 2, dim=(1, 2))), id="linalg.norm-spectral"),
])
def test_matrix_norms_are_unsupported(make):
    with pytest.raises(lipgraph.UnsupportedOpsError):
        lipgraph.analyze(make().eval(), torch.randn(1, 4), lower=False)


# -- the export frontend (aten spellings: _softmax, max.dim, maximum, clamp.Tensor, linalg_vector_norm, ...) ---------
EXPORT_IDS = ["F.softmax-last", "nn.LogSoftmax-d3", "abs", "roll-2d", "clamp-broadcast-x", "clamp_min",
              "maximum-branches", "max-binary-const", "max-dim-values", "max-all", "amax", "sort-values", "topk",
              "x.norm-dim", "torch.norm-p1", "linalg.norm-fro"]
EXPORT_CASES = [c for c in CASES if c.id in EXPORT_IDS]


def test_export_ids_exist():
    assert len(EXPORT_CASES) == len(EXPORT_IDS)


@pytest.mark.parametrize("case,p", params(EXPORT_CASES, ALL))
def test_export_frontend(case: Case, p: float):
    model, x = built(case)
    bound = lipgraph.analyze(model, x, norm=p, frontend="export", lower=False).bound
    assert bound.kind is lipgraph.Kind.CERTIFIED, bound
    assert bound.value == pytest.approx(analysis(case, p).bound.value, rel=1e-9)
