"""Bound formulas: the report's tree as equations ``L(node) = f(L(children))``, in sympy.

A *constant* is a symbol whose value was computed from the weights: a layer's norm, an activation's slope bound,
a fused affine run (docs/mathematics.md §4), a sequential chain bounded as a whole (§5–§6). Every other symbol is
*defined* by a formula over symbols one level down, built like AutoLip (Scaman & Virmaux 2018, §4):
``L_k = ||(l_{k,i} L_i)_i||_q`` — sums for residual additions, roots of squares for ℓ2 concatenations, products
along paths. Formulas stay local (one per tree node), so evaluating them all is linear in the size of the tree.

Attribution is the elasticity ``∂log L / ∂log L_i`` of a bound in a constant (1 for every layer of a pure
chain; a branch's share ``L_branch / L`` in a residual block), by the chain rule through the definitions. What-if
evaluates the same formulas with some constants replaced; a fused run or chain that contains a replaced layer
falls back to the product it replaced (the fused norm of the old weights says nothing about the new ones).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import sympy

#: Printed in place of products and roots (``--ascii`` maps them to ``*`` and ``sqrt``).
MUL, ROOT = "·", "√"


@dataclass(frozen=True)
class Constant:
    """A symbol whose value was computed from the weights (not from other symbols).

    ``paths`` are the module paths of the layers it bounds (several for a fused run or a chain); ``weighted``
    says some of them carry parameters or buffers, i.e. training or a constraint could change it; ``fallback``
    (fused runs and chains) is the product of its members' constants that it replaced.
    """

    value: float
    paths: tuple[str, ...]
    weighted: bool
    fallback: sympy.Expr | None = None


@dataclass(frozen=True)
class Attribution:
    """How much the bound depends on one constant: ``elasticity = ∂log L / ∂log L_i``."""

    name: str  # display key: a module path, ``layer1.0.conv1+bn1`` (fused run) or ``layer1.chain(conv1+bn1)``
    paths: tuple[str, ...]
    value: float
    elasticity: float
    weighted: bool


def symbol(name: str) -> sympy.Symbol:
    """A constant or defined bound: nonnegative, so sympy may write √(x²) as x."""
    return sympy.Symbol(name, nonnegative=True)


def number(value: float) -> sympy.Expr:
    if math.isinf(value):
        return sympy.oo
    return sympy.Integer(int(value)) if float(value).is_integer() else sympy.Float(value)


def combine_expr(terms: Iterable[tuple[sympy.Expr, sympy.Expr]], q: float) -> sympy.Expr:
    """``||(g_i · x_i)_i||_q``, the symbolic twin of :func:`lipgraph.passes.autolip.combine` (zero gains drop)."""
    values = [g * x for g, x in terms if g != 0]
    if not values:
        return sympy.Integer(0)
    if len(values) == 1:
        return values[0]
    if q == 1:
        return sympy.Add(*values)
    if math.isinf(q):
        return sympy.Max(*values)
    power = number(q)
    return sympy.Add(*[v ** power for v in values]) ** (1 / power)


@dataclass
class Formulas:
    """Every constant and definition of one report, with evaluation, elasticities and what-if overrides.

    ``names`` gives each symbol's display key (``layer1.0.conv1``, ``layer1.0.conv1+bn1``, ``→layer2.0`` for the
    value reached at a tensor used twice in a formula); ``rank`` the execution position used to order products
    (latest layer first, as in a composition) and sums; ``overrides`` the constants replaced by a what-if.
    """

    constants: dict[sympy.Symbol, Constant]
    definitions: dict[sympy.Symbol, sympy.Expr]
    names: dict[sympy.Symbol, str]
    rank: dict[sympy.Symbol, int]
    outputs: list[tuple[str, sympy.Expr]] = field(default_factory=list)  # each model output's formula
    overrides: dict[sympy.Symbol, float] = field(default_factory=dict)
    _cache: dict[sympy.Symbol, float] = field(default_factory=dict, repr=False)

    # -- lookup --------------------------------------------------------------------------------------------
    def symbols_named(self, key: str) -> list[sympy.Symbol]:
        """The symbols of a display key; a module called several times with different constants has one per call
        (``relu#1``, ``relu#2``)."""
        return [s for s, name in self.names.items() if name == key or name.rsplit("#", 1)[0] == key
                and name.rsplit("#", 1)[-1].isdigit()]

    def value(self, s: sympy.Symbol) -> float:
        if s not in self._cache:
            if s in self.overrides:
                self._cache[s] = self.overrides[s]
            elif s in self.definitions:
                self._cache[s] = self.evaluate(self.definitions[s])
            else:
                expr = self.active_fallback(s)
                self._cache[s] = float(self.constants[s].value) if expr is None else self.evaluate(expr)
        return self._cache[s]

    def active_fallback(self, s: sympy.Symbol) -> sympy.Expr | None:
        """The fallback of a fused run or chain one of whose members was given another constant, else None."""
        fallback = self.constants[s].fallback if s in self.constants and s not in self.overrides else None
        if fallback is None or not self.overrides:
            return None
        touched = any(m in self.overrides or self.active_fallback(m) is not None for m in fallback.free_symbols)
        return fallback if touched else None

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, expr: sympy.Expr) -> float:
        """The float value of ``expr`` with every symbol at its value (products with a zero factor are 0, as a
        zero gain kills even an unbounded input in AutoLip)."""
        return self._values(expr, {})[expr]

    def _values(self, expr: sympy.Expr, memo: dict) -> dict:
        if expr in memo:
            return memo
        if expr.is_Symbol:
            memo[expr] = self.value(expr)
            return memo
        if expr.is_Number:
            memo[expr] = math.inf if expr is sympy.oo else float(expr)
            return memo
        args = [self._values(a, memo)[a] for a in expr.args]
        if expr.is_Add:
            memo[expr] = math.fsum(args) if not any(map(math.isinf, args)) else math.inf
        elif expr.is_Mul:
            memo[expr] = 0.0 if 0.0 in args else math.prod(args)
        elif expr.is_Pow:
            memo[expr] = args[0] ** args[1]
        elif expr.func is sympy.Max:
            memo[expr] = max(args)
        elif expr.func is sympy.Min:
            memo[expr] = min(args)
        else:
            raise TypeError(f"unexpected term {expr.func.__name__} in a bound formula")
        return memo

    def partials(self, expr: sympy.Expr) -> dict[sympy.Symbol, float]:
        """``∂expr/∂s`` for every symbol ``s`` in ``expr`` (reverse mode; the argmax of a max gets the gradient)."""
        memo = self._values(expr, {})
        grads: dict[sympy.Symbol, float] = defaultdict(float)
        stack = [(expr, 1.0)]
        while stack:
            e, adjoint = stack.pop()
            if adjoint == 0 or e.is_Number:
                continue
            if e.is_Symbol:
                grads[e] += adjoint
                continue
            args, vals = e.args, [memo[a] for a in e.args]
            if e.is_Add:
                stack += [(a, adjoint) for a in args]
            elif e.is_Mul:
                stack += [(a, adjoint * math.prod(vals[:i] + vals[i + 1:])) for i, a in enumerate(args)]
            elif e.is_Pow:
                base, power = vals
                stack.append((args[0], adjoint * power * base ** (power - 1) if base > 0 else 0.0))
            else:  # Max / Min: the first argument attaining it
                stack.append((args[vals.index(memo[e])], adjoint))
        return dict(grads)

    def elasticities(self, expr: sympy.Expr) -> dict[sympy.Symbol, float]:
        """``∂log expr / ∂log L_i`` for every constant ``L_i`` that ``expr`` depends on, through the definitions
        (and through the fallback of a fused run or chain whose member was overridden)."""
        total = self.evaluate(expr)
        if not (0 < total < math.inf):
            raise ValueError(f"elasticities need a finite, nonzero bound (got {total})")
        order = self.depends_on(expr)
        adjoint: dict[sympy.Symbol, float] = defaultdict(float, self.partials(expr))
        for s in order:
            inner = self._inner(s)
            if inner is not None and adjoint.get(s):
                for t, g in self.partials(inner).items():
                    adjoint[t] += adjoint[s] * g
        return {s: adjoint[s] * self.value(s) / total for s in order
                if self._inner(s) is None and s in adjoint}

    def _inner(self, s: sympy.Symbol) -> sympy.Expr | None:
        """What ``s`` is computed from, if anything: its definition or an active fallback."""
        if s in self.overrides:
            return None
        return self.definitions.get(s) if s in self.definitions else self.active_fallback(s)

    def depends_on(self, expr: sympy.Expr) -> list[sympy.Symbol]:
        """Every symbol the value of ``expr`` is computed from (through definitions and active fallbacks), each
        before the symbols its own value is computed from."""
        seen: set[sympy.Symbol] = set()
        post: list[sympy.Symbol] = []
        stack = [(s, False) for s in sorted(expr.free_symbols, key=str)]
        while stack:
            s, done = stack.pop()
            if done:
                post.append(s)
                continue
            if s in seen:
                continue
            seen.add(s)
            stack.append((s, True))
            inner = self._inner(s)
            if inner is not None:
                stack += [(t, False) for t in sorted(inner.free_symbols, key=str) if t not in seen]
        return post[::-1]

    def attribution(self, expr: sympy.Expr) -> list[Attribution]:
        """Every constant ``expr`` depends on, by decreasing elasticity (then decreasing value)."""
        rows = [Attribution(self.names[s], self.constants[s].paths, self.value(s), e, self.constants[s].weighted)
                for s, e in self.elasticities(expr).items()]
        return sorted(rows, key=lambda a: (-round(a.elasticity, 9), -a.value, a.name))  # ties: larger first

    # -- what-if -------------------------------------------------------------------------------------------
    def with_overrides(self, values: Mapping[sympy.Symbol, float]) -> "Formulas":
        """A copy where the given symbols have these values (on top of earlier overrides)."""
        return replace(self, overrides={**self.overrides, **{s: float(v) for s, v in values.items()}}, _cache={})

    # -- printing ------------------------------------------------------------------------------------------
    def display_name(self, s: sympy.Symbol, relative_to: str = "") -> str:
        """``conv1+bn1`` for ``layer1.0.conv1+bn1`` inside ``layer1.0``."""
        key = self.names.get(s, s.name)
        arrow = "→" if key.startswith("→") else ""
        key = key.removeprefix("→")
        if relative_to and key.startswith(relative_to + "."):
            key = key[len(relative_to) + 1:]
        return arrow + key

    def text(self, expr: sympy.Expr, relative_to: str = "") -> str:
        """``1 + L(conv2+bn2)·L(relu)·L(conv1+bn1)``: products latest layer first, constants before sums."""
        return _text(expr, self, relative_to)

    def worked(self, expr: sympy.Expr, relative_to: str = "") -> str:
        """``1 + L(conv) = 1 + 1.54``: the formula, then its terms' values (how the tree shows a merge)."""
        return f"{self.text(expr, relative_to)} = {self.numeric_terms(expr)}"

    def numeric_terms(self, expr: sympy.Expr) -> str:
        """The top level of ``expr`` with each term replaced by its value: ``1 + 8.993``, ``√(1 + 1.2^2)``,
        ``max(1, 2.5)`` (the merge display of the tree)."""
        value = lambda e: f"{self.evaluate(e):.4g}"  # noqa: E731
        if expr.is_Add:
            return " + ".join(value(a) for a in sorted(expr.args, key=self._order_key))
        if expr.func in (sympy.Max, sympy.Min):
            return f"{str(expr.func).lower()}({', '.join(value(a) for a in sorted(expr.args, key=self._order_key))})"
        if expr.is_Pow and expr.args[0].is_Add and expr.args[1].is_Rational:
            q = 1 / expr.args[1]  # ||(t_i)||_q = (Σ t_i^q)^(1/q): show each t_i
            terms = " + ".join(f"{self.evaluate(a) ** float(1 / q):.4g}^{q}"
                               for a in sorted(expr.args[0].args, key=self._order_key))
            return f"{ROOT}({terms})" if q == 2 else f"({terms})^(1/{q})"
        return value(expr)

    def latex(self, expr: sympy.Expr, relative_to: str = "") -> str:
        names = {s: latex_name(self.display_name(s, relative_to)) for s in expr.free_symbols}
        return sympy.latex(self._ordered(expr), symbol_names=names, mul_symbol="dot", order="none")

    def _order_key(self, e: sympy.Expr) -> tuple:
        ranks = [self.rank.get(s, -1) for s in e.free_symbols]
        return (bool(ranks), max(ranks, default=-1), str(e))

    def _factor_key(self, e: sympy.Expr) -> tuple:
        """Coefficients first, then the latest layer first (a composition reads right to left)."""
        return (not e.is_Number, -self._order_key(e)[1], str(e))

    def _ordered(self, e: sympy.Expr) -> sympy.Expr:
        """``e`` rebuilt unevaluated with factors latest-first and terms earliest-first (for LaTeX)."""
        if e.is_Atom:
            return e
        args = [self._ordered(a) for a in e.args]
        if e.is_Mul:
            keyed = sorted(zip(e.args, args), key=lambda p: self._factor_key(p[0]))
            return sympy.Mul(*[a for _, a in keyed], evaluate=False)
        if e.is_Add:
            keyed = sorted(zip(e.args, args), key=lambda p: self._order_key(p[0]))
            return sympy.Add(*[a for _, a in keyed], evaluate=False)
        return e.func(*args, evaluate=False)


def _text(e: sympy.Expr, f: Formulas, rel: str) -> str:
    """Plain text: ``L(name)`` symbols, ``·`` products, ``√(…)`` roots, ``max(…)``, ``x^2``."""
    if e.is_Symbol:
        return f"L({f.display_name(e, rel)})"
    if e.is_Number:
        return "∞" if e is sympy.oo else f"{float(e):.4g}"
    if e.is_Add:
        return " + ".join(_text(a, f, rel) for a in sorted(e.args, key=f._order_key))
    if e.is_Mul:
        return MUL.join(_wrap(_text(a, f, rel), a.is_Add) for a in sorted(e.args, key=f._factor_key))
    if e.is_Pow:
        base, power = e.args
        if power == sympy.Rational(1, 2):
            return f"{ROOT}({_text(base, f, rel)})"
        exponent = f"{power.p}/{power.q}" if power.is_Rational and power.q != 1 else str(power)
        return f"{_wrap(_text(base, f, rel), not base.is_Atom)}^{_wrap(exponent, '/' in exponent)}"
    if e.func in (sympy.Max, sympy.Min):
        return f"{str(e.func).lower()}({', '.join(_text(a, f, rel) for a in sorted(e.args, key=f._order_key))})"
    return str(e)


def _wrap(text: str, needed: bool) -> str:
    return f"({text})" if needed else text


def latex_name(key: str) -> str:
    """``L_{\text{layer1.0}}`` (``L`` for the model), with LaTeX's special characters escaped."""
    if not key:
        return "L"
    escaped = key.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("#", r"\#").replace(
        "&", r"\&").replace("%", r"\%").replace("→", r"$\to$")
    return r"L_{\text{%s}}" % escaped
