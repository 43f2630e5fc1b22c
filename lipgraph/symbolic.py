"""Symbolic AutoLip: the formula of every node of the report's tree, over the constants of its children.

A module call is bounded by AutoLip over its ops with its inputs at 1 (:mod:`lipgraph.passes.calls`, which
also records the shortcuts AutoLip took there); the same walk here builds a sympy expression from those results. A child module call is one symbol ``L(child)`` when it is a *unit*
of the walk — one input tensor, one output tensor, and no fused run or chain crossing its boundary — else its
ops are walked in place, one level down. A fused run or chain is one symbol exactly where
:func:`lipgraph.passes.autolip.propagate` uses it instead of the product. A tensor used by several units whose
value is not a single symbol gets a symbol of its own, ``L(→x)`` (the bound reached at x), so that formulas of
DenseNets and U-Nets stay linear in size.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping

import sympy
from torch import fx

from .formula import Constant, Formulas, combine_expr, number, symbol
from .ir import LipGraph, Scope, arg_nodes
from .passes.calls import ModuleCall, module_outputs
from .passes.fuse import fused_members
from .passes.joint import JointSplit, joint_split
from .paths import chain_path, joined_name
from .record import Shortcut, record


@dataclass
class TreeFormulas:
    """What :func:`build_formulas` gives the report: the formula system (with each model output's formula), the
    formula of each module node and chain node (``""`` is the model) and of each op node, by path (an op may have
    its module's path), and each merge's value inside its module (with that module's path)."""

    formulas: Formulas
    modules: dict[str, sympy.Expr]
    ops: dict[str, sympy.Expr]
    merges: dict[str, tuple[sympy.Expr, str]]

    def expr(self, path: str, is_op: bool) -> sympy.Expr | None:
        return (self.ops if is_op else self.modules).get(path)


def build_formulas(lg: LipGraph, calls: Mapping[Scope, ModuleCall], norm: float) -> TreeFormulas:
    """Formulas of every module call in ``calls`` (scope -> its ops and bounds, :func:`~lipgraph.passes.calls.
    module_calls`; ``()`` is the model)."""
    return _Builder(lg, calls, norm).run()


def _weighted(lg: LipGraph, n: fx.Node) -> bool:
    """Whether the op has parameters or buffers (module weights, or constant tensors of the graph)."""
    if n.op == "call_module":
        module = lg.gm.get_submodule(n.target)
        return any(True for _ in module.parameters()) or any(True for _ in module.buffers())
    return any(a.op in ("get_attr", "placeholder") and not record(a).dep for a in arg_nodes(n))


def _atomic(e: sympy.Expr) -> bool:
    return e.is_Symbol or e.is_Number or (e.is_Mul and len(e.args) == 2 and e.args[0].is_Number
                                          and e.args[1].is_Symbol)


class _Product:
    """``factor · rest``, multiplied out when first needed. sympy sorts a product's factors each time one is built,
    so multiplying along a chain of n ops one factor at a time would cost O(n²); this costs O(n)."""

    __slots__ = ("factor", "rest", "_expr")

    def __init__(self, factor: sympy.Symbol, rest: "sympy.Expr | _Product") -> None:
        self.factor, self.rest, self._expr = factor, rest, None

    def expr(self) -> sympy.Expr:
        if self._expr is None:
            factors, node = [], self
            while isinstance(node, _Product) and node._expr is None:
                factors.append(node.factor)
                node = node.rest
            self._expr = sympy.Mul(_expr(node), *factors)
        return self._expr


def _expr(value: "sympy.Expr | _Product") -> sympy.Expr:
    return value.expr() if isinstance(value, _Product) else value


# -- the builder ----------------------------------------------------------------------------------------------
class _Builder:
    def __init__(self, lg: LipGraph, calls: Mapping[Scope, ModuleCall], norm: float) -> None:
        self.lg, self.calls, self.norm = lg, calls, norm
        self.instances = {scope: call.nodes for scope, call in calls.items()}
        self.order = {n: i for i, n in enumerate(lg.ops())}
        self.f = Formulas(constants={}, definitions={}, names={}, rank={})
        self.leaf: dict[fx.Node, sympy.Symbol] = {}
        self.fused: dict[fx.Node, sympy.Symbol] = {}
        self.chain: dict[fx.Node, sympy.Symbol] = {}
        self.joint: dict[fx.Node, sympy.Symbol] = {}  # residual adds bounded as whole blocks (docs/residual.md)
        self.pair: dict[fx.Node, sympy.Symbol] = {}  # ... and with the block before them
        self.call: dict[Scope, sympy.Symbol] = {}  # module calls that are units of their parent's formula
        # tree path -> its formula (one per call), for module and chain nodes and for op nodes
        self.terms: dict[str, list[sympy.Expr]] = defaultdict(list)
        self.op_terms: dict[str, list[sympy.Expr]] = defaultdict(list)
        self.merges: dict[str, tuple[sympy.Expr, str]] = {}

    def run(self) -> TreeFormulas:
        self._leaves()
        self._shortcuts()
        self._name_calls()
        for scope in sorted(self.instances, key=lambda s: (-len(s), self._first(s))):
            nodes = self.instances[scope]
            if not scope:
                continue
            if scope not in self.call:  # one op: its own constant (or its gains, if it has several inputs)
                n, path = nodes[0], scope[-1][0]
                own = self.leaf.get(n) or self._walk(scope, nodes, [n])[0]
                self.terms[path].append(own)
                self.op_terms[path].append(own)
            else:  # calls with equal bounds share one symbol, defined by the first
                definition, _ = self._walk(scope, nodes, module_outputs(nodes, set(nodes)))
                self.f.definitions.setdefault(self.call[scope], definition)
        outs = record(self.lg.output).inputs
        root, values = self._walk((), self.instances.get((), []), outs)
        modules = {path: self._node_formula(terms) for path, terms in self.terms.items()}
        modules[""] = root
        ops = {path: self._node_formula(terms) for path, terms in self.op_terms.items()}
        ops.update({path: e for path, (e, _) in self.merges.items()})
        self.f.outputs = [(record(n).path, _expr(values[n])) for n, _ in record(self.lg.output).outputs]
        return TreeFormulas(self.f, modules, ops, self.merges)

    def _first(self, scope: Scope) -> int:
        nodes = self.instances[scope]
        return self.order[nodes[0]] if nodes else -1

    def _node_formula(self, terms: list[sympy.Expr]) -> sympy.Expr:
        """A tree node's formula: its definition, or the largest of its calls' symbols when they differ."""
        unique = list(dict.fromkeys(terms))
        if len(unique) == 1:
            return self.f.definitions.get(unique[0], unique[0])
        return sympy.Max(*unique)

    def _constant(self, key: str, value: float, paths: tuple[str, ...], weighted: bool, rank: int,
                  fallback: sympy.Expr | None = None) -> sympy.Symbol:
        s = symbol(f"L({key})")
        if s not in self.f.constants:
            self.f.constants[s] = Constant(value, paths, weighted, fallback)
            self.f.names[s], self.f.rank[s] = key, rank
        return s

    # -- constants ---------------------------------------------------------------------------------------------
    def _leaves(self) -> None:
        """One constant per single-input op; a module called several times with different constants (another
        input size) gets one per call, ``path#k``."""
        by_path: dict[str, list[fx.Node]] = defaultdict(list)
        for n in self.order:
            if len(record(n).transfer.gains) == 1:
                by_path[record(n).path].append(n)
        for path, nodes in by_path.items():
            gains = [record(n).transfer.gains[0] for n in nodes]  # Bounds: a pending one is read when shown
            per_call = len(gains) > 1 and any(not math.isclose(g, gains[0], rel_tol=1e-12) for g in gains)
            for k, (n, gain) in enumerate(zip(nodes, gains)):
                key = f"{path}#{k + 1}" if per_call else path
                self.leaf[n] = self._constant(key, gain, (path,), _weighted(self.lg, n), self.order[n])
                self.op_terms[path].append(self.leaf[n])

    def _shortcuts(self) -> None:
        """Fused runs (``record.fused``) and chains bounded as a whole (``record.chain``): one constant each, whose
        fallback is the product of its members."""
        for n in self.order:
            if record(n).fused is not None:
                members = fused_members(n)
                paths = tuple(record(m).path for m in members)
                self.fused[n] = self._constant(
                    joined_name(list(paths)), record(n).fused.bound.value, paths,
                    any(_weighted(self.lg, m) for m in members), self.order[n],
                    sympy.Mul(*[self.leaf[m] for m in members]))
            if record(n).chain is not None:
                result = record(n).chain
                chain = result.chain
                parts = [self.fused[run[-1]] if run[-1] in self.fused and fused_members(run[-1])[0] is run[0]
                         else sympy.Mul(*[self.leaf[m] for m in run]) for run in chain.runs]
                parts += [self.leaf[a] for acts in chain.activations for a in acts]
                path = chain_path(result)
                self.chain[n] = self._constant(
                    path, result.best.value, tuple(record(m).path for m in chain.nodes),
                    any(_weighted(self.lg, m) for m in chain.nodes), self.order[n], sympy.Mul(*parts))
                self.terms[path].append(self.chain[n])
            if record(n).residual is not None and record(n).residual.best is not None:
                self._joint(n, record(n).residual)
            if record(n).residual is not None and record(n).residual.pair is not None:
                self._pair(n, record(n).residual)

    def _pair(self, n: fx.Node, result) -> None:
        """Two residual blocks and the activation between them bounded jointly (docs/residual.md): one constant
        ``L(<add>(pair))`` from the first block's input, whose fallback is the product of the separate bounds."""
        first = result.pair_first
        add_a = next(m for m in self.order if record(m).residual is not None
                     and record(m).residual.chain.chain.first is first)
        post = record(result.chain.chain.first).inputs[0]  # the activation between the blocks
        a = record(add_a).residual
        members = [*a.chain.chain.nodes, *a.shortcut, add_a, post, *result.chain.chain.nodes, *result.shortcut, n]
        fallback = self._separate(a) * self.leaf[post] * self._separate(result)
        self.pair[n] = self._constant(f"{record(n).path}(pair)", result.pair.value,
                                      tuple(record(m).path for m in members),
                                      any(_weighted(self.lg, m) for m in members), self.order[n], fallback)

    def _joint(self, n: fx.Node, result) -> None:
        """A residual add bounded as a whole block: one constant ``L(<add>(joint))``, whose fallback is the
        separate bound ‖P‖ + L(branch) over the members' constants."""
        chain = result.chain.chain
        members = [*chain.nodes, *result.shortcut, n]
        self.joint[n] = self._constant(f"{record(n).path}(joint)", result.best.value,
                                       tuple(record(m).path for m in members),
                                       any(_weighted(self.lg, m) for m in members), self.order[n],
                                       self._separate(result))

    def _separate(self, result) -> sympy.Expr:
        """‖P‖-path + L(branch) of a residual block over the members' constants."""
        def run_expr(run) -> sympy.Expr:
            last = run[-1]
            if last in self.fused and fused_members(last)[0] is run[0]:
                return self.fused[last]
            return sympy.Mul(*[self.leaf[m] for m in run])

        chain = result.chain.chain
        branch = self.chain.get(chain.last) or sympy.Mul(*[run_expr(r) for r in chain.runs],
                                                         *[self.leaf[a] for acts in chain.activations for a in acts])
        return (run_expr(result.shortcut) if result.shortcut else sympy.Integer(1)) + branch

    def _name_calls(self) -> None:
        """A symbol per module call made of several ops: ``L(path)``, or ``L(path#k)`` per call when the calls'
        bounds differ."""
        groups: dict[str, list[Scope]] = defaultdict(list)
        ops = {record(n).path for n in self.order}  # fx may file an op under the next module's call
        for scope, nodes in self.instances.items():
            if scope and not (len(nodes) == 1 and record(nodes[0]).scope == scope):
                groups[scope[-1][0]].append(scope)
        for path, scopes in groups.items():
            scopes.sort(key=self._first)
            values = [self.calls[s].bound.value for s in scopes]
            per_call = any(not math.isclose(v, values[0], rel_tol=1e-12) for v in values)
            name = f"{path}(module)" if path in ops else path
            for k, scope in enumerate(scopes):
                key = f"{name}#{k + 1}" if per_call else name
                s = self.call[scope] = symbol(f"L({key})")
                self.f.names[s] = key
                self.f.rank[s] = max(self.order[n] for n in self.instances[scope])
                self.terms[path].append(s)

    # -- one module call ---------------------------------------------------------------------------------------
    def _walk(self, scope: Scope, nodes: list[fx.Node], outs: list[fx.Node],
              ) -> tuple[sympy.Expr, dict[fx.Node, sympy.Expr | _Product]]:
        """The formula of one module call (inputs at 1, outputs joined as a concatenation) and the expression
        reached at each of its tensors (see :func:`_expr`)."""
        call = self.calls[scope]
        entry, taken = call.entries, call.taken
        units: dict[Scope, tuple[fx.Node, fx.Node] | None] = {}
        unit_of = {n: self._unit(n, scope, taken, units) for n in nodes}
        consumers: dict[fx.Node, set] = defaultdict(set)
        for n in nodes:
            for a in record(n).inputs:
                consumers[a].add(unit_of[n] or n)
        for o in outs:
            consumers[o].add("output")
        values: dict[fx.Node, sympy.Expr | _Product] = {a: sympy.Integer(1) for a in entry}
        for n in nodes:
            child = unit_of[n]
            if child is not None:
                src, out = units[child]
                if n is not out:
                    continue
                e = _Product(self.call[child], values[src])
            elif n in taken and taken[n].label in ("residual", "residual-pair"):  # min(joint · L(x), ‖P‖-path +
                # branch) and, for a pair, min(pair · L(x of the block before), that): every value shown
                e = self._block(n, values)
                if taken[n].label == "residual-pair":
                    source = values[record(taken[n].first).inputs[0]]
                    e = sympy.Min(_Product(self.pair[n], source).expr(), e)
                if record(n).scope == scope:
                    self.merges.setdefault(record(n).path, (e, scope[-1][0] if scope else ""))
            elif n in taken and (via := self._replacing(n, taken[n])) is not None:  # a fused run or chain
                e = _Product(via, values[record(taken[n].first).inputs[0]])
            elif n in taken:  # a shortcut another pass recorded: min(its bound · L(x), the AutoLip path), both shown
                source = values[record(taken[n].first).inputs[0]]
                e = sympy.Min(_Product(self._other(n, taken[n]), source).expr(), _expr(self._op(n, values)))
                if record(n).scope == scope:
                    self.merges.setdefault(record(n).path, (e, scope[-1][0] if scope else ""))
            else:
                e = self._op(n, values)
                if len(record(n).inputs) > 1 and record(n).scope == scope and n.op != "call_module":
                    self.merges.setdefault(record(n).path, (e, scope[-1][0] if scope else ""))
            if len(consumers[n]) > 1 and not _atomic(_expr(e)):
                e = self._shared(scope, child[-1][0] if child else record(n).path, self.order[n], _expr(e))
            values[n] = e
        return combine_expr([(sympy.Integer(1), _expr(values[o])) for o in outs], self.norm), values

    def _replacing(self, n: fx.Node, shortcut: Shortcut) -> sympy.Symbol | None:
        """The symbol of the fused run or chain that ``shortcut`` stands for (the product path is replaced by it),
        or None for a shortcut that is neither (a residual block, a pass of the caller's)."""
        if shortcut.label == "fusion":
            return self.fused.get(n)
        chain = record(n).chain
        return self.chain[n] if n in self.chain and shortcut.bound.value == chain.best.value else None

    def _other(self, n: fx.Node, shortcut: Shortcut) -> sympy.Symbol:
        """``L(<node>(<label>))``: the constant of a shortcut another pass recorded (shown beside the AutoLip path);
        for a joint op on disjoint selections (:func:`~lipgraph.passes.autolip.joint_shortcut`) its members are the
        ops of its branches and its fallback max_i g_i·L_i over their constants."""
        path = record(n).path
        split = joint_split(n) if record(n).transfer.joint and len(record(n).inputs) > 1 else None
        members = ([m for branch in split.branches for m in branch]
                   if split is not None and shortcut.label == split.label else [])
        return self._constant(f"{path}({shortcut.label})", shortcut.bound.value,
                              (*dict.fromkeys(record(m).path for m in members), path),
                              any(_weighted(self.lg, m) for m in members), self.order[n],
                              self._branches(n, split) if members else None)

    def _branches(self, n: fx.Node, split: JointSplit) -> sympy.Expr:
        """max_i g_i·L_i of a joint op over its branches' constants, each branch's pieces at 1."""
        values: dict[fx.Node, sympy.Expr | _Product] = {t: sympy.Integer(1) for ts in split.pieces for t in ts}
        for m in (m for branch in split.branches for m in branch):
            values[m] = self._op(m, values)
        gains = record(n).transfer.gains
        return sympy.Max(*[number(g.value) * _expr(values[u]) for g, u in zip(gains, record(n).inputs)])

    def _unit(self, n: fx.Node, scope: Scope, taken: dict[fx.Node, Shortcut],
              units: dict[Scope, tuple[fx.Node, fx.Node] | None]) -> Scope | None:
        """The outermost child call inside ``scope`` that contains ``n`` and is a unit of the walk, if any."""
        level, inner = scope, record(n).scope
        while len(inner) > len(level):
            child = inner[:len(level) + 1]
            if child not in units:
                units[child] = self._as_unit(child, taken)
            if units[child] is not None:
                return child
            level = child
        return None

    def _as_unit(self, child: Scope, taken: dict[fx.Node, Shortcut]) -> tuple[fx.Node, fx.Node] | None:
        """(input, output) of a child call that can stand as ``L(child) · L(input)``: a call of several ops with
        one input tensor and one output tensor, which no shortcut of the walk enters or leaves."""
        if child not in self.call:
            return None
        nodes = self.instances[child]
        inside = set(nodes)
        sources = {a for m in nodes for a in record(m).inputs if a not in inside}
        outs = module_outputs(nodes, inside)
        if len(sources) != 1 or len(outs) != 1:
            return None
        if any((m in inside) != (s.first in inside) for m, s in taken.items()):
            return None
        return next(iter(sources)), outs[0]

    def _block(self, n: fx.Node, values: Mapping[fx.Node, sympy.Expr | _Product]) -> sympy.Expr:
        """min(joint · L(x), ‖P‖-path + branch) at a residual add bounded as a whole (the op alone if not)."""
        op = _expr(self._op(n, values))
        if n not in self.joint:
            return op
        source = values[record(record(n).residual.chain.chain.first).inputs[0]]
        return sympy.Min(_Product(self.joint[n], source).expr(), op)

    def _op(self, n: fx.Node, values: Mapping[fx.Node, sympy.Expr | _Product]) -> sympy.Expr | _Product:
        transfer, inputs = record(n).transfer, record(n).inputs
        if len(transfer.gains) == 1:
            return _Product(self.leaf[n], values[inputs[0]])
        return combine_expr([(number(g.value), _expr(values[a])) for g, a in zip(transfer.gains, inputs)],
                            transfer.combine)

    def _shared(self, scope: Scope, path: str, rank: int, e: sympy.Expr) -> sympy.Symbol:
        """A symbol for the bound reached at a tensor used by several units of one module call's formula."""
        where = f"{scope[-1][0]}@{scope[-1][1]}" if scope else ""
        s = symbol(f"L(→{path} in {where})")
        self.f.definitions[s], self.f.names[s], self.f.rank[s] = e, f"→{path}", rank
        return s

