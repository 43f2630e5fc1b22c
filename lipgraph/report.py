"""The result of an analysis as plain dataclasses and their JSON: no rich, no printing (renderers live in
``lipgraph.render``), no computation on the graph (the tree pass, :mod:`lipgraph.tree`, builds them).

One node per module of the model's own hierarchy; its bound is the Lipschitz constant of the sub-network
the module computes (AutoLip over its ops, inputs at 1). Functional ops appear as children of the module
that calls them; an op merging several branches (``add``, ``cat``) shows its value inside the parent module
with its formula, e.g. ``1 + L(conv2+bn2)·L(relu)·L(conv1+bn1)`` for a residual addition. Every node also
carries its bound as a sympy formula over its children's constants (``expr``, :mod:`lipgraph.symbolic`), which
``Report.formulas`` evaluates, differentiates (attribution) and re-evaluates with other constants (what-if). The
formulas are built on first use (:class:`lipgraph.tree.LazyFormulas`): a report read without them never imports sympy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from .bound import Bound, Kind
from .errors import InputError
from .formats import default_formats
from .paths import joined_name

if TYPE_CHECKING:
    import sympy

    from .comparison import Comparison
    from .formula import Attribution, Formulas
    from .tree import LazyFormulas


@dataclass
class FusedChain:
    """A chain of affine ops bounded as one operator (ends at the node that carries it)."""

    members: list[str]
    bound: Bound
    product: float
    lower: Bound | None = None  # power iteration on the composed operator (``analyze(layer_lower=True)``)

    def to_dict(self) -> dict[str, Any]:
        return {"members": self.members, **bound_dict(self.bound), "product": float(self.product),
                "lower": lower_value(self.lower)}


@dataclass
class ChainInfo:
    """A sequential chain W_K ∘ φ ∘ ⋯ ∘ φ ∘ W_1 bounded as a whole (``method="seqlip"`` etc., docs/mathematics.md §5–§8):
    ``bound`` is the smallest certified value, found by ``winner``; ``results`` has every estimator's value
    (certified or estimate) and ``product`` is AutoLip along the chain."""

    members: list[str]
    bound: Bound
    winner: str
    product: float
    results: dict[str, Bound]
    seconds: dict[str, float]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"members": self.members, **bound_dict(self.bound), "winner": self.winner, "product": self.product,
                "results": {name: bound_dict(b) for name, b in self.results.items()},
                "seconds": {name: round(t, 4) for name, t in self.seconds.items()}, "notes": list(self.notes)}


@dataclass
class ReportNode:
    path: str
    type: str
    op: str | None
    bound: Bound
    calls: int = 1
    _formula: str | None = field(default=None, repr=False)  # see ``formula``
    notes: list[str] = field(default_factory=list)
    children: list["ReportNode"] = field(default_factory=list)
    fused: FusedChain | None = None
    layer_lower: Bound | None = None  # power iteration on this layer's operator (``analyze(layer_lower=True)``)
    chain: ChainInfo | None = None  # set on the node that stands for a sequential chain
    _expr: Any = field(default=None, repr=False)  # see ``expr``
    seconds: float = 0.0  # wall time of the rules and norms of every op inside this node (every call)
    _lazy: "LazyFormulas | None" = field(default=None, repr=False, compare=False)  # builds expr and formula

    @property
    def expr(self) -> Any:
        """sympy: this node's bound over its children's constants (Report.formula, lipgraph.formula)."""
        self._resolve()
        return self._expr

    @expr.setter
    def expr(self, value: Any) -> None:
        self._resolve()
        self._expr = value

    @property
    def formula(self) -> str | None:
        """A merge's display formula inside its module, ``1 + L(conv2+bn2)·L(relu)·L(conv1+bn1) = 1 + 8.99``
        (None for other nodes; known without building the formulas)."""
        if self._lazy is not None and self.path in self._lazy.merges:
            self._resolve()
        return self._formula

    @formula.setter
    def formula(self, value: str | None) -> None:
        self._resolve()
        self._formula = value

    def _resolve(self) -> None:
        """Take ``expr`` and ``formula`` from the lazily built formulas, once."""
        if self._lazy is not None:
            lazy, self._lazy = self._lazy, None
            self._expr, self._formula = lazy.node(self.path, self.op is not None)

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1] if self.path else self.type

    def walk(self) -> Iterator["ReportNode"]:
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self, text: Callable[["ReportNode"], str] | None = None) -> dict[str, Any]:
        """JSON-ready; ``text`` prints a node's formula (``expr`` is null without it)."""
        return {
            "path": self.path,
            "type": self.type,
            "op": self.op,
            **bound_dict(self.bound),
            "calls": self.calls,
            "formula": self.formula,
            "notes": list(self.notes),
            "fused": self.fused.to_dict() if self.fused else None,
            "layer_lower": lower_value(self.layer_lower),
            "chain": self.chain.to_dict() if self.chain else None,
            "expr": text(self) if text and self.expr is not None else None,
            "seconds": round(self.seconds, 4),
            "children": [c.to_dict(text) for c in self.children],
        }


@dataclass
class Report:
    bound: Bound
    norm: float
    model: str
    input_shape: list[list[int]]
    seconds: float
    frontend: str
    tree: ReportNode
    outputs: list[tuple[str, Bound]]
    notes: list[str] = field(default_factory=list)
    lower: Bound | None = None  # a proven lower bound (None with ``analyze(lower=False)`` or if the search failed)
    lower_input: Any = None  # the input (batch 1) at which it is attained
    estimate: Bound | None = None  # the network with each chain's estimate (greedy SeqLip), when computed
    _formulas: "Formulas | LazyFormulas | None" = field(default=None, repr=False)  # see ``formulas``
    region: str | None = None  # the input region of a local analysis (docs/local.md), None for a global one

    @property
    def formulas(self) -> Formulas | None:
        """Every node's bound as a formula over constants (what-if, attribution), built on first use."""
        if callable(self._formulas):
            self._formulas = self._formulas()
        return self._formulas

    @property
    def chains(self) -> list[ChainInfo]:
        """Every sequential chain bounded as a whole, in execution order."""
        return [node.chain for node in self.tree.walk() if node.chain is not None]

    @property
    def ratio(self) -> float | None:
        """upper / lower: how far the certified bound can be from the truth (None without a lower bound)."""
        if self.lower is None or self.lower.value <= 0 or math.isinf(self.bound.value):
            return None
        return self.bound.value / self.lower.value

    @property
    def kind(self) -> Kind:
        return self.bound.kind

    @property
    def method(self) -> str:
        return self.bound.method

    def find(self, path: str) -> ReportNode:
        """The tree node of a module path (``"layer1.0.conv1"``)."""
        for node in self.tree.walk():
            if node.path == path:
                return node
        raise KeyError(f"no node with path {path!r} in the report")

    # -- formulas, attribution, what-if (lipgraph.formula) ------------------------------------------------
    def formula(self, path: str = "") -> sympy.Expr:
        """The sympy formula of a node's bound over its children's constants (``""``: the model), e.g.
        ``1 + L(layer1.0.conv2+bn2)*L(layer1.0.relu)*L(layer1.0.conv1+bn1)``; a fused run or chain gives its
        symbol. Evaluate with ``report.formulas.evaluate(expr)``."""
        try:
            return self.find(path).expr if path else self.tree.expr
        except KeyError:
            symbols = self.formulas.symbols_named(path)
            if len(symbols) != 1:
                raise
            return symbols[0]

    def formula_text(self, path: str = "", *, latex: bool = False) -> str:
        """The formula of a node as printed in the tree (names relative to the node), or in LaTeX."""
        expr, where = self.formula(path), path or self.tree.path
        return self.formulas.latex(expr, where) if latex else self.formulas.text(expr, where)

    def attribution(self) -> list[Attribution]:
        """Every constant the bound depends on, by decreasing elasticity ``∂log L/∂log L_i``: 1 for each layer of a
        pure chain, the branch's share ``L_branch / L_block`` for the layers of a residual branch."""
        return self.formulas.attribution(self.tree.expr)

    def top(self, n: int = 10) -> list[Attribution]:
        """The ``n`` constants of layers with weights (that a constraint could lower) that matter most."""
        return [a for a in self.attribution() if a.weighted][:n]

    def with_constant(self, path: str, value: float) -> "Report":
        """The report as if the constant of ``path`` (a layer, a fused run ``layer1.0.conv1+bn1``, a chain, or a
        module its parent's formula uses as one symbol) were ``value`` — e.g. 1.0 for a spectrally normalised
        layer — re-evaluated from the formulas without recomputing any norm. A fused run or chain containing a
        changed layer falls back to the product of its members. Not a certificate of the model as it is: the
        lower bound is dropped and a note says what changed."""
        return self.with_constants({path: value})

    def with_constants(self, values: Mapping[str, float]) -> "Report":
        """:meth:`with_constant` for several paths at once."""
        overrides = {}
        for path, value in values.items():
            symbols = self.formulas.symbols_named(path)
            if not symbols:
                raise KeyError(f"no constant named {path!r} in the formulas (layers, fused runs such as "
                               "'layer1.0.conv1+bn1', chains, and modules used as one symbol)")
            overrides.update({s: float(value) for s in symbols})
        formulas = self.formulas.with_overrides(overrides)
        used = set(formulas.depends_on(self.tree.expr))
        unused = sorted({formulas.names[s] for s in overrides if s not in used})
        if unused:
            raise InputError(f"{', '.join(unused)}: not one symbol of the model's formula (a fused run or chain "
                             "crosses its boundary, so its parent's formula uses its layers); set their constants")
        tree = _reevaluated(self.tree, formulas, "")
        changed = ", ".join(f"L({path}) = {value:g}" for path, value in values.items())
        return replace(self, bound=tree.bound, tree=tree, _formulas=formulas, lower=None, lower_input=None,
                       estimate=None, outputs=[(name, _reevaluated_bound(b, formulas.evaluate(e))) for
                                               (name, b), (_, e) in zip(self.outputs, formulas.outputs)],
                       notes=[*self.notes, f"what-if: {changed}; bounds re-evaluated from the formulas, no norm "
                                           "recomputed (not a certificate of the model as it is)"])

    # -- parts of the model ----------------------------------------------------------------------------------
    def subtree(self, path: str) -> "Report":
        """The report of one node (a stage, a block): its bound, tree and formulas (attribution and what-if
        relative to its own bound, inputs at 1)."""
        node = self.find(path)
        formulas = replace(self.formulas, outputs=[(path, node.expr)], _cache={}) if self.formulas else None
        return replace(self, bound=node.bound, model=f"{path} ({node.type})", input_shape=[], tree=node,
                       outputs=[(path, node.bound)], notes=[], lower=None, lower_input=None, estimate=None,
                       _formulas=formulas)

    def bounds(self, depth: int | None = None, types: Iterable[str] | None = None) -> dict[str, Bound]:
        """Bounds by path of the nodes at ``depth`` (1: the model's children, e.g. a ResNet's stages) and/or of
        the module ``types`` (e.g. ``("BasicBlock", "Bottleneck")``: per block)."""
        wanted = set(types) if types is not None else None
        found: dict[str, Bound] = {}

        def visit(node: ReportNode, level: int) -> None:
            if level and (depth is None or level == depth) and (wanted is None or node.type in wanted):
                found[node.path] = node.bound
            for child in node.children:
                visit(child, level + 1)

        visit(self.tree, 0)
        return found

    def compare(self, other: "Report") -> "Comparison":
        """Node by node, this report's bounds against ``other``'s (e.g. two checkpoints of the same model)."""
        from .comparison import compare

        return compare(self, other)

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of ``lipgraph explain --json`` (``region`` only in a local analysis)."""
        return {
            **({"region": self.region} if self.region is not None else {}),
            **bound_dict(self.bound),
            "lower": lower_value(self.lower),
            "ratio": self.ratio,
            "estimate": lower_value(self.estimate),
            "norm": norm_name(self.norm),
            "model": self.model,
            "input_shape": self.input_shape[0] if len(self.input_shape) == 1 else self.input_shape,
            "seconds": round(self.seconds, 4),
            "frontend": self.frontend,
            "outputs": [{"name": name, **bound_dict(b)} for name, b in self.outputs],
            "notes": list(self.notes),
            "tree": self.tree.to_dict((lambda n: self.formulas.text(n.expr, n.path)) if self.formulas else None),
        }

    def __repr__(self) -> str:
        """One line: the bound, its kind and method, the lower bound, the model and input (``report.print()`` for
        the tree)."""
        lower = f"{self.lower.value:.4g} ≤ " if self.lower is not None else ""
        bound = "∞" if math.isinf(self.bound.value) else f"{self.bound.value:.4g}"
        return (f"<lipgraph.Report {self.model}: {lower}L ≤ {bound} {self.kind.value} · {self.method} · "
                f"ℓ{norm_name(self.norm)} · input {' + '.join('×'.join(map(str, s)) for s in self.input_shape)} · "
                f"{len(list(self.tree.walk()))} nodes; .print() shows the tree>")

    __str__ = __repr__

    def print(self, format: str = "tree", file: IO | None = None, **options: Any) -> None:
        """Render in an output format (:mod:`lipgraph.formats`; default the rich tree) onto ``file`` (default
        standard output); ``options`` go to the renderer (tree: ``depth``, ``ascii_only``, ``width``,
        ``formulas``, ``top``, ``console``)."""
        default_formats().write(self, "report", format, file, **options)


def bound_dict(b: Bound) -> dict[str, Any]:
    return {"bound": None if math.isinf(b.value) else b.value, "kind": b.kind.value, "method": b.method,
            "exact": b.exact}


def lower_value(b: Bound | None) -> float | None:
    return None if b is None else b.value


def norm_name(norm: float) -> str:
    return "inf" if math.isinf(norm) else f"{norm:g}"


def _reevaluated(node: ReportNode, formulas: Formulas, module: str) -> ReportNode:
    """A copy of ``node``'s subtree with every bound evaluated from ``formulas`` (a what-if)."""
    copy = replace(node, bound=_reevaluated_bound(node.bound, formulas.evaluate(node.expr)), notes=list(node.notes),
                   children=[_reevaluated(c, formulas, node.path) for c in node.children])
    if node.formula is not None:  # a merge: its display formula inside its module
        copy.formula = formulas.worked(node.expr, module)
    if node.fused is not None:
        fused = formulas.symbols_named(joined_name(node.fused.members))[0]
        bound = _reevaluated_bound(node.fused.bound, formulas.value(fused), "fused what-if")
        copy.fused = replace(node.fused, bound=bound, product=formulas.evaluate(formulas.constants[fused].fallback))
    if node.chain is not None:
        copy.chain = replace(node.chain, bound=copy.bound)
    return copy


def _reevaluated_bound(old: Bound, value: float, method: str = "what-if") -> Bound:
    """``old`` if a what-if left it alone, else ``value`` (an estimate stays one)."""
    if math.isclose(value, old.value, rel_tol=1e-12) or value == old.value:  # inf == inf
        return old
    return Bound(value, Kind.ESTIMATE if old.kind is Kind.ESTIMATE else Kind.CERTIFIED, method)
