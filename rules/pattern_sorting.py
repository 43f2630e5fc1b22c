"""Patterns of sorting activations written with max/min (docs/by-construction.md; Anil, Lucas & Grosse 2019).

- **maxmin**: two disjoint pieces a, b of one tensor z (split, chunk, slices: checked on the indices), then
  ``cat(max(a, b), min(a, b))`` in either order, along any dim (orthogonium's MaxMin, hand-written GroupSort-2).
  Each pair (a_i, b_i) goes to (max, min), which on each linear piece is a permutation of it, and distinct pairs
  use distinct coordinates of z: 1-Lipschitz in every ℓp, exactly 1 (move a_i alone). AutoLip gives 2 in ℓ2.
- **groupsort**: ``cat(min(x, d, keepdim=True), max(x, d, keepdim=True))`` (values; amin/amax too) along any dim,
  x.shape[d] ≥ 2 (deel's GroupSort2): per group the smallest and the largest element, two distinct order
  statistics; sorting is nonexpansive in every ℓp, so this projection of the sorted group is ≤ 1, and exactly 1.
  With x.shape[d] = 1 min = max = x and the map is x ↦ (x, x): √2 in ℓ2, so that does not match.
- **posneg**: ``cat(relu(x), relu(−x))`` (deel's MaxMin, CReLU): |Δx⁺|^p + |Δx⁻|^p ≤ |Δx|^p per coordinate
  (see ``rules._by_construction.positive_negative_parts``): 1 in every ℓp, exact.
"""
from __future__ import annotations

from torch import fx

from lipgraph.bound import Bound
from lipgraph.patternapi import GraphView, Match, Pattern, binary_operands, cat_operands, selection_root
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext

from ._by_construction import permutation_pieces, positive_negative_parts

_LARGEST = {"maximum": True, "max": True, "minimum": False, "min": False}


def _pair_extremum(node: fx.Node, view: GraphView) -> tuple[bool, frozenset] | None:
    """(largest?, {a, b}) for an elementwise max/min of two input-dependent tensors of the output's shape."""
    key = view.key(node)
    if key not in _LARGEST:
        return None
    a, b = binary_operands(node)
    shape = view.shape(node)
    if a is b or not (view.dep(a) and view.dep(b)) or shape is None or not view.shape(a) == view.shape(b) == shape:
        return None
    return _LARGEST[key], frozenset((a, b))


def match_maxmin(anchor: fx.Node, view: GraphView) -> Match | None:
    """cat(max(a, b), min(a, b)) with a, b disjoint selections of one tensor."""
    cat = cat_operands(anchor, view)
    if cat is None or len(cat[0]) != 2:
        return None
    u, v = cat[0]
    if not (isinstance(u, fx.Node) and isinstance(v, fx.Node)):
        return None
    first, second = _pair_extremum(u, view), _pair_extremum(v, view)
    if first is None or second is None or first[0] == second[0] or first[1] != second[1]:
        return None
    a, b = sorted(first[1], key=lambda n: n.name)
    sources = {s for s in (selection_root(a, view.key), selection_root(b, view.key)) if s is not None}
    if len(sources) != 1:
        return None
    path = view.injective_selection(sources.pop(), [a, b])
    if path is None:
        return None
    return Match(nodes=[*path, u, v, anchor])


def _reduction(node: fx.Node, view: GraphView) -> tuple[bool, fx.Node, int, list[fx.Node]] | None:
    """(largest?, x, dim, nodes) for the values of max/min/amax/amin of x over one dim with keepdim=True."""
    nodes = [node]
    if view.key(node) in ("getitem", "values"):  # torch.max(x, d, keepdim=True)[0] / .values
        index = node.args[1] if view.key(node) == "getitem" else 0
        if index != 0 or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]
        nodes.insert(0, node)
        if view.key(node) not in ("max", "min"):
            return None
    key = view.key(node)
    if key not in ("max", "min", "amax", "amin") or not node.args or not view.dep(node.args[0]):
        return None
    x = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if isinstance(dim, (list, tuple)) and len(dim) == 1:
        dim = dim[0]
    shape = view.shape(x)
    if not isinstance(dim, int) or keepdim is not True or shape is None or (key in ("max", "min")) != (len(nodes) == 2):
        return None
    return key.endswith("max"), x, dim % len(shape), nodes


def match_groupsort(anchor: fx.Node, view: GraphView) -> Match | None:
    """cat(min(x, d, keepdim=True), max(x, d, keepdim=True)) with x.shape[d] ≥ 2."""
    cat = cat_operands(anchor, view)
    if cat is None or len(cat[0]) != 2 or not all(isinstance(t, fx.Node) for t in cat[0]):
        return None
    first, second = (_reduction(t, view) for t in cat[0])
    if first is None or second is None or first[0] == second[0] or first[1] is not second[1] or first[2] != second[2]:
        return None
    if view.shape(first[1])[first[2]] < 2:
        return None
    return Match(nodes=[*first[3], *second[3], anchor])


def match_posneg(anchor: fx.Node, view: GraphView) -> Match | None:
    """cat(relu(x), relu(−x)) in either order."""
    cat = cat_operands(anchor, view)
    if cat is None or len(cat[0]) != 2 or not all(isinstance(t, fx.Node) for t in cat[0]):
        return None
    if any(view.key(t) != "relu" or not t.args or not isinstance(t.args[0], fx.Node) for t in cat[0]):
        return None
    (plus, minus) = (cat[0] if view.key(cat[0][1].args[0]) == "neg" else cat[0][::-1])
    neg = minus.args[0]
    if view.key(neg) != "neg" or not neg.args or neg.args[0] is not plus.args[0] or not view.dep(plus.args[0]):
        return None
    return Match(nodes=[neg, plus, minus, anchor])


def _one(ctx: OpContext) -> Bound:
    """A permutation on each linear piece: 1 in every ℓp, exact."""
    return permutation_pieces(1.0, ctx.key)


def _posneg(ctx: OpContext) -> Bound:
    """(relu(x), relu(−x)): 1 in every ℓp, exact."""
    return positive_negative_parts(1.0)


PATTERNS = (
    Pattern("maxmin", "MaxMin", match_maxmin, _one, "cat(max(a, b), min(a, b)) of disjoint pieces: 1 in every ℓp"),
    Pattern("groupsort", "GroupSort", match_groupsort, _one, "cat(min, max) over groups of ≥ 2: 1 in every ℓp"),
    Pattern("posneg", "PosNeg", match_posneg, _posneg, "cat(relu(x), relu(−x)): 1 in every ℓp"),
)


def register(registry: Registry) -> None:
    for pattern in PATTERNS:
        registry.register_pattern(pattern)
