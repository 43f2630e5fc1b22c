"""What a rule sees and returns. Rules know nothing of passes, graphs or rendering.

A rule maps one op of the network to its Lipschitz *transfer*: for an op ``y = g(x_1, ..., x_m)`` it gives
the gains ``l_i = Lip(g in x_i)`` and how they combine, so that AutoLip (Scaman & Virmaux 2018, §4) can bound
``L(y) <= ||(l_1 L(x_1), ..., l_m L(x_m))||_q`` with ``q = 1`` (a sum: add, sub, generic ops) or ``q = p``
for a concatenation measured in the ℓp norm (cat/stack: ℓ2 -> root of squares, ℓ∞ -> max).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
from torch import nn

from .bound import Bound, exact
from .errors import NotLipschitzError, RuleError

_MISSING = object()


@dataclass(frozen=True)
class Var:
    """An input-dependent tensor argument of an op, as the rule sees it: shape and dtype, no values."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    index: int  # position among the op's input-dependent arguments
    parts: tuple["Var", ...] | None = None  # for a tuple-valued input (the result of chunk/split)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Matrix:
    """y = W x on the last dim (the linear part of an affine op, for exact folding: docs/mathematics.md §4)."""

    weight: torch.Tensor


@dataclass(frozen=True)
class Conv:
    """A convolution with ``weight`` and ``options`` (the keywords of ``lipgraph.linalg.conv_norm``)."""

    weight: torch.Tensor
    options: dict[str, Any]


@dataclass(frozen=True)
class ChannelScale:
    """y_c = s_c x_c along dim 1 (e.g. eval BatchNorm)."""

    scale: torch.Tensor


@dataclass(frozen=True)
class ChannelMean:
    """y_c = the mean of x_c over its ``size`` positions (dims 2…), for each of ``channels`` channels along dim 1:
    global average pooling."""

    channels: int
    size: int


#: the structure of an affine op's linear part that fusion can fold exactly
AffineStructure = Union[Matrix, Conv, ChannelScale, ChannelMean]


@dataclass(frozen=True)
class Transfer:
    """The local Lipschitz behaviour of one op.

    ``gains[i]`` bounds the Lipschitz constant of the op in its i-th input-dependent argument
    (``ctx.inputs[i]``). ``combine`` is the q of the q-norm that merges the per-input terms
    (1: sum, as for add; ``ctx.norm``: concatenation). ``slope`` is the derivative interval of an
    elementwise activation, for chain passes (SeqLip, SDP) that need more than the constant.

    ``affine`` declares the op affine in its input (x ↦ A x + b, A fixed): chains of affine ops are bounded
    as one composed operator (docs/mathematics.md §4). ``structure`` optionally describes A for exact folding:
    a :class:`Matrix`, :class:`Conv` or :class:`ChannelScale`.

    ``joint`` (set it only with ``combine = p``, a :class:`RuleError` below p: cat/stack, elementwise max/min,
    clamp) declares ‖Δy‖_p ≤ ‖(g_i·‖Δx_i‖_p)_i‖_p, hence the op ``max(gains)``-Lipschitz in its inputs *jointly*.
    AutoLip then bounds y by max_i g_i·L_i·L(s) when input i is a function (AutoLip bound L_i) of pieces of one
    tensor s that, all inputs together, are disjoint selections of s (the two halves of a split: 1, not √2;
    docs/by-construction.md §1).
    """

    gains: tuple[Bound, ...]
    combine: float = 1.0
    slope: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()
    affine: bool = False
    structure: AffineStructure | None = None
    joint: bool = False
    neuron_slopes: tuple[torch.Tensor, torch.Tensor] | None = None  # local: per-coordinate [α, β] (docs/local.md)


RuleFn = Callable[["OpContext"], Union[Transfer, Bound]]
#: an interval rule: the op's input intervals ``ctx.bounds`` -> its output interval (lo, hi) (docs/local.md)
IntervalFn = Callable[["OpContext"], Any]


@dataclass
class Rule:
    """A transfer rule plus what ``lipgraph rules`` shows about it."""

    fn: RuleFn
    name: str
    exact: bool  # declared: the constant is exact (True) or only an upper bound (False)
    description: str = ""
    slope: tuple[float, float] | None = None
    source: str = ""  # filled in by the registry: builtin module, entry point, file, or API caller
    keys: list[str] = field(default_factory=list)
    affine: bool = False  # for rules returning a plain Bound: the op is affine (see Transfer.affine)

    def apply(self, ctx: "OpContext") -> Transfer:
        """Run the rule and check its answer has one gain per input-dependent argument."""
        out = self.fn(ctx)
        if isinstance(out, Bound):
            out = Transfer(gains=(out,) * len(ctx.inputs), slope=self.slope, affine=self.affine)
        if not isinstance(out, Transfer):
            raise RuleError(
                f"rule {self.name!r} for {ctx.describe()} returned {type(out).__name__}; it must return a "
                "lipgraph.Bound (e.g. lipgraph.certified(value, 'method')) or a lipgraph.Transfer"
            )
        if len(out.gains) != len(ctx.inputs):
            raise RuleError(
                f"rule {self.name!r} for {ctx.describe()} returned {len(out.gains)} gains for "
                f"{len(ctx.inputs)} input-dependent arguments"
            )
        if out.joint and out.combine < ctx.norm:  # the joint claim would be stronger than the combination's
            raise RuleError(
                f"rule {self.name!r} for {ctx.describe()} returned a joint Transfer with combine={out.combine:g}; "
                f"joint=True needs combine >= the norm p={ctx.norm:g} (e.g. combine=ctx.norm, as cat and maximum)"
            )
        return out


class OpContext:
    """One op of the traced network, seen by its rule.

    ``args``/``kwargs`` hold the op's arguments with constants resolved to their values (weights are real
    tensors) and input-dependent tensors replaced by :class:`Var`. ``module`` is the ``nn.Module`` of a
    ``call_module`` op, else ``None``. ``norm`` is the vector norm p (1, 2 or ``math.inf``).
    """

    def __init__(
        self,
        *,
        key: str,
        target: Any,
        module: nn.Module | None,
        args: tuple,
        kwargs: dict,
        output: Any,
        norm: float,
        name: str,
        path: str,
        bounds: tuple | None = None,
    ) -> None:
        self.key = key
        self.target = target
        self.module = module
        self.args = args
        self.kwargs = kwargs
        self.output = output
        self.norm = norm
        self.name = name
        self.path = path
        self.inputs: tuple[Var, ...] = tuple(_vars_in((args, kwargs)))
        #: in a region analysis, ``bounds[i]`` is the interval (lo, hi) of ``inputs[i]`` over the region (a tuple
        #: of intervals for a tuple-valued input), float64; None in a global analysis (docs/local.md)
        self.bounds = bounds

    # -- argument access ---------------------------------------------------------------------------
    def arg(self, name: str, index: int | None = None, default: Any = _MISSING) -> Any:
        """An argument by name, the same way for ``nn.Conv2d``, ``F.conv2d`` and ``aten.conv2d``.

        Looks at the module's attribute ``name``, then the keyword, then the positional slot that the op's
        signature gives ``name`` (or ``index``), then ``default``.
        """
        if self.module is not None and hasattr(self.module, name):
            return getattr(self.module, name)
        if name in self.kwargs:
            return self.kwargs[name]
        names = _parameter_names(self.target) if self.module is None else None
        if names and name in names:
            index = names.index(name)
        if index is not None and index < len(self.args):
            return self.args[index]
        if default is not _MISSING:
            return default
        raise RuleError(f"{self.describe()}: rule {self.key!r} needs argument {name!r}, which the call does not give")

    @property
    def input(self) -> Var:
        """The single input-dependent argument of a unary op."""
        if len(self.inputs) != 1:
            raise RuleError(f"{self.describe()}: expected one input-dependent argument, got {len(self.inputs)}")
        return self.inputs[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        if not isinstance(self.output, Var):
            raise RuleError(f"{self.describe()}: output is not a single tensor")
        return self.output.shape

    def apply(self, *tensors: torch.Tensor, dtype: torch.dtype | None = None) -> Any:
        """Run the op on concrete tensors in place of its input-dependent arguments (constants kept).

        Rules use it to measure linear ops exactly (materialise, count copies) without re-implementing them.
        ``dtype`` (e.g. ``torch.float64``) runs the op with its floating constants, parameters and buffers cast
        to that type, so a float32 layer can be materialised without float32 rounding.
        """
        it = iter(tensors)

        def fill(obj: Any) -> Any:
            if isinstance(obj, Var):
                return next(it)
            if isinstance(obj, (tuple, list)):
                return type(obj)(fill(o) for o in obj)
            if isinstance(obj, dict):
                return {k: fill(v) for k, v in obj.items()}
            return obj

        args, kwargs = fill(self.args), fill(self.kwargs)
        if dtype is not None:
            args, kwargs = _cast(args, dtype), _cast(kwargs, dtype)
        if self.module is not None:
            if dtype is None:
                return self.module(*args, **kwargs)
            state = {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}
            return torch.func.functional_call(self.module, _cast(state, dtype), args, kwargs)
        if isinstance(self.target, str):
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)

    def describe(self) -> str:
        where = f" in {self.path}" if self.path else ""
        return f"op {self.key!r} (node {self.name}{where})"

    def not_lipschitz(self, why: str, *, product: bool = False) -> NotLipschitzError:
        """The error for this op; ``product``: it multiplies or divides input-dependent tensors."""
        return NotLipschitzError(f"{self.describe()} is not globally Lipschitz: {why}", product=product)


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    """``obj`` with every floating-point tensor inside (tuples, lists, dicts) converted to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


def _vars_in(obj: Any):
    if isinstance(obj, Var):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _vars_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _vars_in(item)


def _parameter_names(target: Any) -> list[str] | None:
    """Positional parameter names of a torch function, an ``aten`` overload or a Python function."""
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return [a.name for a in schema.arguments]
    from torch.fx.operator_schemas import get_signature_for_torch_op

    try:
        signatures = get_signature_for_torch_op(target) if callable(target) else None
    except Exception:  # noqa: BLE001 - torch raises various errors for non-ops
        signatures = None
    candidates = list(signatures or [])
    try:
        candidates.append(inspect.signature(target))
    except (TypeError, ValueError):
        pass
    for sig in candidates:
        kinds = {p.kind for p in sig.parameters.values()}
        if inspect.Parameter.VAR_POSITIONAL not in kinds:
            return list(sig.parameters)
    return None


# -- factories for the common cases ---------------------------------------------------------------------
def _unary(gain: Bound) -> RuleFn:
    """A rule function for a one-input op with a fixed gain (refuses ops with several input-dependent arguments)."""

    def fn(ctx: OpContext) -> Bound:
        ctx.input  # noqa: B018 - raises unless exactly one argument depends on the input
        return gain

    return fn


def elementwise(slope: tuple[float, float], *, name: str = "elementwise") -> Rule:
    """An elementwise map whose derivative lies in ``[lo, hi]``: Lipschitz ``max(|lo|, |hi|)`` in every ℓp."""
    lo, hi = map(float, slope)
    if lo > hi:
        raise RuleError(f"slope interval must have lo <= hi, got {slope}")
    return Rule(_unary(exact(max(abs(lo), abs(hi)), "slope")), name=name, exact=True, slope=(lo, hi), affine=lo == hi,
                description=f"elementwise, slope in [{lo:g}, {hi:g}]")


def scale(c: float, *, name: str = "scale") -> Rule:
    """Multiplication by a constant ``c``: Lipschitz ``|c|`` in every norm."""
    return Rule(_unary(exact(abs(float(c)), "constant")), name=name, exact=True, slope=(float(c), float(c)), affine=True,
                description=f"x -> {c:g}·x")


def isometry(*, name: str = "isometry", description: str = "reshape/permutation: Lipschitz 1") -> Rule:
    """A map that permutes, reshapes or selects coordinates: Lipschitz 1 in every ℓp."""
    return Rule(_unary(exact(1.0, "isometry")), name=name, exact=True, slope=(1.0, 1.0), affine=True, description=description)


def not_lipschitz(why: str, *, name: str = "not-lipschitz") -> Rule:
    """A rule for an op that has no global Lipschitz constant: analysing it raises with ``why``."""

    def fn(ctx: OpContext) -> Transfer:
        raise ctx.not_lipschitz(why)

    return Rule(fn, name=name, exact=True, description=f"not globally Lipschitz: {why}")


def make_rule(fn: RuleFn | Rule, *, name: str | None = None, exact_: bool = False, affine: bool = False) -> Rule:
    """Wrap a plain function ``ctx -> Bound | Transfer`` as a :class:`Rule` (its docstring becomes the description)."""
    if isinstance(fn, Rule):
        return fn
    if not callable(fn):
        raise RuleError(f"a rule must be a lipgraph Rule or a function ctx -> Bound | Transfer, got {fn!r}")
    doc = inspect.getdoc(fn) or ""
    return Rule(fn, name=name or getattr(fn, "__name__", "rule"), exact=exact_, affine=affine,
                description=doc.split("\n")[0])


def ntuple(x: Any, n: int) -> tuple:
    """Normalise an int-or-tuple argument (``kernel_size=3`` or ``(3, 3)``) to an n-tuple."""
    if isinstance(x, (tuple, list, torch.Size)):
        return tuple(x) if len(x) == n else tuple(x) * n if len(x) == 1 else tuple(x)
    return (x,) * n
