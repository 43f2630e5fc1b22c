"""Every torch spelling of an op is ruled soundly, refused as not globally Lipschitz, or reported without a rule.

The walk below is generated from op *names*: each name is tried as ``torch.X``, ``torch.special.X``,
``torch.linalg.X``, ``F.X``, ``Tensor.X``, in-place ``Tensor.X_`` / ``torch.X_``, and the operator spelling, with
both operands input-dependent and with one constant operand, under the fx and the export frontend. Nothing here
says which op is Lipschitz; a numerical witness decides: the largest finite-difference ratio
‖f(x + δ) − f(x)‖ / ‖δ‖ (float64) over probe points at singular places (0, ±1, integers, π/2, 10⁻⁶, large
scales, near-singular matrices). Then, for each spelling:

- ruled: the certified bound is ≥ the witness (no made-up constant, no silent identity);
- refused "not globally Lipschitz": the witness exceeds ``STEEP`` (the refusal is true), and the message gives
  the reason from the rule tables of ``rules/nonlipschitz.py`` when the op is keyed there;
- refused "no rule": the witness stays below ``STEEP`` (an op with a witnessed unbounded slope must say so).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipgraph
from lipgraph.frontend.opkeys import canonical_name
from lipgraph.rules import nonlipschitz

STEEP = 100.0  # a witnessed slope above this is "unbounded" (every Lipschitz op below has constant < 5)
#: refusals the probes cannot witness, each with why it is still right (or a known imprecision), by frontend
UNWITNESSED = {
    ("torch.special.airy_ai", "fx"): "|Ai′(x)| ~ |x|^{1/4}/√π reaches 100 only near x = −10⁹, beyond float probes",
    ("torch.special.airy_ai", "export"): "as under fx",
    ("F.softsign", "export"): "export lowers softsign to x / (1 + |x|): the quotient rule refuses any input-dependent "
                              "divisor (imprecise: softsign is 1-Lipschitz; fx keeps it whole and rules it)",
}
_GEN = torch.Generator().manual_seed(0)
C = torch.rand(3, 3, generator=_GEN, dtype=torch.float64).float() + 0.5  # a constant operand, entries in [0.5, 1.5]

UNARY = """exp exp2 expm1 log log2 log10 log1p sqrt rsqrt reciprocal square tan sinh cosh asin acos atanh acosh
arcsin arccos arctanh arccosh erfinv lgamma digamma i0 floor ceil round trunc fix frac sign sgn logit erfcx ndtri
log_ndtr entr i1 gammaln psi expit erf erfc sin cos atan arctan asinh arcsinh sigmoid tanh relu abs absolute neg
negative i0e i1e sinc ndtr bessel_j0 bessel_j1 bessel_y0 bessel_y1 modified_bessel_i0 modified_bessel_i1
modified_bessel_k0 modified_bessel_k1 scaled_modified_bessel_k0 scaled_modified_bessel_k1 spherical_bessel_j0
airy_ai softplus logsigmoid gelu silu mish elu celu selu softsign tanhshrink hardshrink softshrink relu6 hardtanh
hardsigmoid hardswish leaky_relu matrix_exp inv pinv pinverse inverse det logdet cholesky""".split()
BINARY = """pow float_power xlogy xlog1py atan2 arctan2 hypot logaddexp logaddexp2 copysign fmod remainder
floor_divide ldexp zeta igamma igammac gammainc gammaincc mul multiply div divide true_divide maximum minimum fmax
fmin add sub subtract matmul mm mv dot vdot inner outer ger kron cross vecdot cdist pairwise_distance
cosine_similarity solve""".split()
TERNARY = "baddbmm addbmm addmm addmv addr addcmul addcdiv lerp".split()
REDUCTIONS = """prod cumprod var var_mean std std_mean logsumexp logcumsumexp softmax log_softmax softmin sum mean
norm vector_norm matrix_norm svdvals""".split()
NAMESPACES = (("torch", torch), ("torch.special", torch.special), ("torch.linalg", torch.linalg), ("F", F))

#: a name's operands from independent input-dependent parts p[i] of shape (1, 3, 3) (p[i][0]: a square matrix,
#: p[i][0, 0]: a vector); default: the parts themselves
OPERANDS: dict[str, Callable] = {
    "mv": lambda p: (p[0][0], p[1][0, 0]), "addmv": lambda p: (p[0][0, 0], p[1][0], p[2][0, 0]),
    **dict.fromkeys(("dot", "vdot", "inner", "outer", "ger"), lambda p: (p[0][0, 0], p[1][0, 0])),
    "addr": lambda p: (p[0][0], p[1][0, 0], p[2][0, 0]), "addbmm": lambda p: (p[0][0], p[1], p[2]),
    "addmm": lambda p: tuple(q[0] for q in p),
    **dict.fromkeys(("matmul", "mm", "kron", "solve", "cdist"), lambda p: tuple(q[0] for q in p)),
}
EXTRA_ARGS: dict[str, tuple] = {"softmax": (-1,), "log_softmax": (-1,), "softmin": (-1,), "cumprod": (-1,),
                                "logcumsumexp": (-1,), "logsumexp": (-1,), "norm": (0.5,), "vector_norm": (0.5,)}
#: constants (entries in [0.5, 1.5]) for an operand of 1, 2 or 3 dimensions
CONSTANTS = {n: C[(None,) * (n - 2)] if n >= 2 else C[0] for n in (1, 2, 3)}


def _variants(name: str) -> list[tuple[str, Callable]]:
    """Every spelling of ``name`` that torch has: namespaces, Tensor method, in-place method and function."""
    found = []
    extra = EXTRA_ARGS.get(name, ())
    for label, space in NAMESPACES:
        fn = getattr(space, name, None)
        if callable(fn) and not isinstance(fn, type):
            found.append((f"{label}.{name}", lambda *a, fn=fn: fn(*a, *extra)))
    if callable(getattr(torch.Tensor, name, None)):
        found.append((f"Tensor.{name}", lambda a, *b: getattr(a, name)(*b, *extra)))
    if callable(getattr(torch.Tensor, name + "_", None)):
        found.append((f"Tensor.{name}_", lambda a, *b: getattr(a.clone(), name + "_")(*b, *extra)))
    if callable(getattr(torch, name + "_", None)):
        found.append((f"torch.{name}_", lambda a, *b: getattr(torch, name + "_")(a.clone(), *b, *extra)))
    return found


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) or type(out).__module__.startswith("torch.return_types") else out


def spellings() -> list[tuple[str, Callable, int, bool]]:
    """(label, f, parts, export): f maps an input (1, 3, 3) (parts = 1) or (1, parts, 3, 3) (one part per operand)
    to a tensor, for every spelling of every name above. ``export``: the case is also run under torch.export, which
    lowers the spellings of a name to one aten op and its in-place variant: the first and the in-place spelling,
    with all operands input-dependent (the rules read constant operands the same way under both frontends)."""
    cases = []
    for name in UNARY + REDUCTIONS:
        for i, (label, g) in enumerate(_variants(name)):
            cases.append((label, lambda x, g=g: _first(g(x)), 1, i == 0 or label.startswith("Tensor.")
                          and label.endswith("_")))
    for name in BINARY + TERNARY:
        arity = 3 if name in TERNARY else 2
        operands = OPERANDS.get(name, lambda p: tuple(p))
        constants = [CONSTANTS[a.dim()] for a in operands([torch.zeros(1, 3, 3)] * arity)]
        for i, (label, g) in enumerate(_variants(name)):
            for mask in ("xy", "xc", "cx") if arity == 2 else ("xyz", "cxy", "xyc", "xcy", "cxc"):
                def f(x, g=g, operands=operands, mask=mask, arity=arity):  # x: (1, arity, 3, 3), a part per operand
                    parts = [x[:, i] for i in range(arity)]
                    args = (a if m != "c" else c.to(x.dtype) for a, c, m in zip(operands(parts), constants, mask))
                    return _first(g(*args))
                in_place = label.startswith("Tensor.") and label.endswith("_")
                cases.append((f"{label}({', '.join(mask)})", f, arity, (i == 0 or in_place) and "c" not in mask))
    binary = [  # operator spellings of two operands: x = (1, 2, 3, 3)
        ("x * y", lambda x: x[:, 0] * x[:, 1]), ("x / y", lambda x: x[:, 0] / x[:, 1]),
        ("x @ y", lambda x: x[:, 0] @ x[:, 1]), ("x ** y", lambda x: x[:, 0] ** x[:, 1]),
        ("x // y", lambda x: x[:, 0] // x[:, 1]), ("x % y", lambda x: x[:, 0] % x[:, 1]),
        ("linalg.multi_dot(x, C, y)", lambda x: torch.linalg.multi_dot([x[0, 0], C.to(x.dtype), x[0, 1]])),
        ("chain_matmul(x, y)", lambda x: torch.chain_matmul(x[0, 0], x[0, 1])),
        ("einsum(ij,jk, x, y)", lambda x: torch.einsum("ij,jk->ik", x[0, 0], x[0, 1])),
        ("tensordot(x, y)", lambda x: torch.tensordot(x[0, 0], x[0, 1], dims=1)),
        ("F.bilinear(x, y)", lambda x: F.bilinear(x[0, 0], x[0, 1], C[None].to(x.dtype))),
    ]
    cases += [(label, f, 2, True) for label, f in binary]
    cases += [(label, f, 1, True) for label, f in [  # one operand: operators, polynomials, powers and matrix powers
        ("x ** 2", lambda x: x ** 2), ("2 ** x", lambda x: 2 ** x), ("x ** 1", lambda x: x ** 1),
        ("x ** C", lambda x: x ** C.to(x.dtype)),
        ("x // 1", lambda x: x // 1), ("x % 1", lambda x: x % 1), ("x @ x", lambda x: x @ x),
        ("x @ C", lambda x: x @ C), ("1 / x", lambda x: 1 / x), ("x.pow_(3)", lambda x: x.clone().pow_(3)),
        ("torch.pow(x, 0.5)", lambda x: torch.pow(x, 0.5)), ("torch.pow(x, [1, 2, 1])", lambda x: torch.pow(x, torch.tensor([1.0, 2.0, 1.0]))),
        ("torch.pow(x, [1, 0, 1])", lambda x: torch.pow(x, torch.tensor([1.0, 0.0, 1.0]))),
        ("special.chebyshev_polynomial_t(x, 3)", lambda x: torch.special.chebyshev_polynomial_t(x, 3)),
        ("special.hermite_polynomial_h(x, 2)", lambda x: torch.special.hermite_polynomial_h(x, 2)),
        ("special.legendre_polynomial_p(x, 1)", lambda x: torch.special.legendre_polynomial_p(x, 1)),
        ("special.polygamma(1, x)", lambda x: torch.special.polygamma(1, x)),
        ("polygamma(2, x)", lambda x: torch.polygamma(2, x)), ("x.polygamma_(1)", lambda x: x.clone().polygamma_(1)),
        ("mvlgamma(x, 1)", lambda x: torch.mvlgamma(x, 1)), ("special.multigammaln(x, 1)", lambda x: torch.special.multigammaln(x, 1)),
        ("logit(x, eps=0.1)", lambda x: torch.logit(x, eps=0.1)),
        ("linalg.matrix_power(x, 2)", lambda x: torch.linalg.matrix_power(x[0], 2)),
        ("linalg.matrix_power(x, -1)", lambda x: torch.linalg.matrix_power(x[0], -1)),
        ("linalg.matrix_power(x, 1)", lambda x: torch.linalg.matrix_power(x[0], 1)),
        ("linalg.inv_ex(x)", lambda x: torch.linalg.inv_ex(x[0])[0]),
        ("linalg.slogdet(x)", lambda x: torch.linalg.slogdet(x[0])[1]),
        ("linalg.cholesky(x)", lambda x: torch.linalg.cholesky(x[0])),
        ("linalg.multi_dot(x, C)", lambda x: torch.linalg.multi_dot([x[0], C.to(x.dtype)])),
        ("einsum(ij,jk, x, C)", lambda x: torch.einsum("ij,jk->ik", x[0], C.to(x.dtype))),
        ("linalg.norm(x, 0.5)", lambda x: torch.linalg.norm(x.flatten(), 0.5)),
        ("x.norm(p=0.5)", lambda x: x.norm(p=0.5)),
        ("F.normalize(x)", lambda x: F.normalize(x)),
        ("F.pdist(x)", lambda x: F.pdist(x[0])),
        ("F.scaled_dot_product_attention(C, C, x)", lambda x: F.scaled_dot_product_attention(C[None].to(x.dtype), C[None].to(x.dtype), x)),
    ]]
    return cases


class Wrap(nn.Module):
    def __init__(self, f: Callable) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


FLATS = (0.0, 1e-100, 1e-12, -1e-12, 1e-6, -1e-6, 0.5, -0.5, 1.0, -1.0, 1 + 1e-6, 1 - 1e-6, -1 + 1e-6, 2.0,
         math.pi / 2, 10.0, -10.0, 1e3, -1e3, 1e6)


def _probe_points(parts: int) -> list[torch.Tensor]:
    """Inputs (1, [parts,] 3, 3), float64, at singular places: every part constant at t (t in FLATS), or at ±c (the
    constant operand); the first part at s and the others at t (a divisor or sign source at 0, a base at 1 …); t·I
    (near-singular positive definite matrices); t times a general matrix."""
    shape = (1, parts, 3, 3) if parts > 1 else (1, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand(shape)
    general = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    points = [torch.full(shape, t, dtype=torch.float64) for t in FLATS]
    points += [sign * C.to(torch.float64).expand(shape) for sign in (1, -1)]  # x = ±c: where fmod(x, c) jumps
    for s_, t in ((s_, t) for s_ in (0.0, 0.5, 1.0, 1e3) for t in (0.0, 1e-6, 1.0, 1e3) if s_ != t and parts > 1):
        x = torch.full(shape, t, dtype=torch.float64)
        x[:, 0] = s_
        points.append(x)
    return points + [t * eye for t in (1e-6, 1.0, 1e3)] + [t * general for t in (1e-6, 1.0, 10.0, 1e3)]


@functools.lru_cache(maxsize=None)
def witness(f: Callable, parts: int) -> float:
    """The largest finite-difference ratio of f over the probe points, a lower bound on its Lipschitz constant
    (float64; non-finite entries skipped; differences within the op's own rounding do not count)."""
    best = 0.0
    for x in _probe_points(parts):
        scale = float(x.abs().max())
        step = 1e-8 * max(1.0, scale) if scale >= 1e-6 or scale == 0 else 1e-2 * scale  # tiny x: stay > 0
        delta = step * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        try:
            a, b = f(x), f(x + delta)
        except RuntimeError:  # outside the op's domain (e.g. Cholesky of a non-PD matrix)
            continue
        finite = a.isfinite() & b.isfinite()  # an op that is infinite somewhere is not Lipschitz anyway
        rounding = 1e-13 * float(a[finite].norm() + b[finite].norm())
        best = max(best, max(0.0, float((b - a)[finite].norm()) - rounding) / float(delta.norm()))
    return best


SPELLINGS = spellings()

def example(parts: int) -> torch.Tensor:
    """An input in every op's domain (log, sqrt, acosh, Cholesky …): entries in [1, 2] plus the identity."""
    x = torch.rand(1, parts, 3, 3, generator=torch.Generator().manual_seed(2)) + 1 + 2 * torch.eye(3)
    return x if parts > 1 else x[:, 0]


def _runs(f: Callable, parts: int) -> bool:
    try:
        out = f(example(parts))
    except (RuntimeError, TypeError, ValueError, IndexError):
        return False
    return torch.is_tensor(out) and out.is_floating_point()


with warnings.catch_warnings():  # torch's deprecations of cholesky, chain_matmul, cross without dim
    warnings.simplefilter("ignore")
    CASES = [case for case in SPELLINGS if _runs(case[1], case[2])]


def _outcome(f: Callable, parts: int, frontend: str) -> tuple[str, str, float]:
    try:
        report = lipgraph.analyze(Wrap(f), example(parts), frontend=frontend, lower=False, cache=False, quiet=True)
    except lipgraph.NotLipschitzError as err:
        return "not-lipschitz", str(err), math.nan
    except lipgraph.UnsupportedOpsError as err:
        return "no-rule", str(err), math.nan
    return "ruled", "", report.bound.value


def _reasons() -> list[str]:
    """The reasons the rule tables give, one of which a refusal of a tabled op must quote."""
    return [*nonlipschitz.UNBOUNDED_SLOPE.values(), nonlipschitz.PRODUCT, nonlipschitz.ATTENTION,
            *(why for _, why in nonlipschitz.ONE_SIDED.values())]


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's deprecations of cholesky, chain_matmul, cross's dim
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_every_spelling_is_ruled_refused_or_unruled(frontend: str) -> None:
    wrong, exempted, counts = [], set(), {"ruled": 0, "not-lipschitz": 0, "no-rule": 0}
    reasons = _reasons()
    for label, f, parts, export in CASES:
        if frontend == "export" and not export:
            continue
        slope = witness(f, parts)
        kind, message, bound = _outcome(f, parts, frontend)
        counts[kind] += 1
        if kind == "ruled" and not bound >= slope * (1 - 1e-6):
            wrong.append(f"{label}: certified {bound:.4g} < witnessed slope {slope:.4g}")
        elif kind == "not-lipschitz" and slope <= STEEP and (label, frontend) not in UNWITNESSED:
            wrong.append(f"{label}: refused as not Lipschitz, but the largest slope seen is {slope:.4g}")
        elif kind == "no-rule" and slope > STEEP:
            wrong.append(f"{label}: 'no rule', but slope {slope:.4g} seen: it must say not globally Lipschitz")
        elif kind == "no-rule" and "no rule" not in message:
            wrong.append(f"{label}: unsupported without 'no rule': {message[:200]}")
        elif kind == "not-lipschitz" and not ("is not globally Lipschitz: " in message):
            wrong.append(f"{label}: {message[:200]}")
        elif kind == "not-lipschitz" and _keyed(message) and not any(r in message for r in reasons + _rule_reasons()):
            wrong.append(f"{label}: refused without the table's reason: {message[:300]}")
        if kind == "not-lipschitz" and (label, frontend) in UNWITNESSED:
            exempted.add(label)
    assert not wrong, "\n".join(wrong)
    assert exempted == {label for label, fe in UNWITNESSED if fe == frontend}  # every exemption is still needed
    assert len(CASES) > 300 and min(counts.values()) > 30, counts  # the walk is broad and sees all three outcomes


def _keyed(message: str) -> bool:
    """The refused op is one of rules/nonlipschitz.py's table keys."""
    tables = (nonlipschitz.UNBOUNDED_SLOPE, nonlipschitz.FACTORS, nonlipschitz.ONE_SIDED)
    return any(f"op {key!r}" in message for table in tables for key in table)


def _rule_reasons() -> list[str]:
    return ["x^", "A^", "det of", "polynomial of degree", "incomplete gamma", "multiplies entries", "logit has"]


def test_spellings_share_keys() -> None:
    """In-place, torch.special and aten spellings resolve to the op's key."""
    assert canonical_name("exp_") == canonical_name("exp") == "exp"
    assert canonical_name("special_erfcx") == "erfcx" and canonical_name("special_expit") == "sigmoid"
    assert canonical_name("special_psi") == canonical_name("digamma_") == "digamma"
    assert canonical_name("special_gammaln") == "lgamma" and canonical_name("addcmul_") == "addcmul"
    assert canonical_name("_softmax") == "softmax" and canonical_name("__iadd__") == "add"
