"""Rewrite matches of subgraph patterns (:mod:`lipgraph.patternapi`) into single ops before annotation.

:func:`rewrite` runs after :func:`lipgraph.frontend.propagate.propagate` (matchers need which nodes depend on the
input, their shapes and the constants) and replaces each match by one ``call_function`` node whose target is a
:class:`Compound`: it computes the same values (it runs the matched nodes), carries the pattern's name as its op key,
and its rule bounds it as one op; the tree shows it as one node.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import fx

from ..patternapi import GraphView, Match, Pattern
from .opkeys import node_key


class Compound:
    """The target of a rewritten node: runs the matched nodes (a small ``GraphModule``) on the compound's inputs."""

    def __init__(self, pattern: Pattern, module: fx.GraphModule, params: dict[str, Any]) -> None:
        self.lipgraph_op_key = pattern.name  # read by opkeys.node_key
        self.pattern = pattern
        self.module = module
        self.params = params
        self.__name__ = pattern.title
        self.__qualname__ = pattern.title
        self.__module__ = __name__

    def __call__(self, *inputs: Any) -> Any:
        return self.module(*inputs)

    def __repr__(self) -> str:
        return f"<compound {self.key}>"


def rewrite(gm: fx.GraphModule, patterns: Iterable[Pattern], alias_of: Callable[[Any], str | None]) -> int:
    """Replace every match of ``patterns`` in ``gm`` (propagated) by one compound node; returns how many.

    Nodes are tried as anchors in graph order, patterns in registration order; a match whose inner nodes are used
    outside it, or that overlaps an earlier match, is skipped (its ops keep their own rules).
    """
    patterns = list(patterns)
    if not patterns:
        return 0
    view = GraphView(gm, lambda n: node_key(gm, n, alias_of))
    taken: set[fx.Node] = set()
    found: list[tuple[Pattern, Match]] = []
    for anchor in list(gm.graph.nodes):
        if not view.dep(anchor) or anchor.op not in ("call_function", "call_method", "call_module"):
            continue
        for pattern in patterns:
            match = pattern.match(anchor, view)
            if match is None or match.nodes[-1] is not anchor:
                continue
            inner = set(match.nodes)
            # unused results (the indices of a max whose values are taken) go with the match
            dead = [u for n in match.nodes[:-1] for u in n.users if u not in inner and not u.users and u.op != "output"]
            inner |= set(dead)
            if any(u not in inner for n in match.nodes[:-1] for u in n.users) or taken & inner:
                continue
            match.nodes[:-1] = [*match.nodes[:-1], *dict.fromkeys(dead)]
            taken |= inner
            found.append((pattern, match))
            break
    for pattern, match in found:
        _replace(gm, pattern, match)
    if found:
        gm.graph.lint()
        gm.recompile()
    return len(found)


def _replace(gm: fx.GraphModule, pattern: Pattern, match: Match) -> None:
    inner = set(match.nodes)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    nodes = sorted(match.nodes, key=order.__getitem__)
    inputs: list[fx.Node] = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inner and a not in inputs:
                inputs.append(a)
    sub = fx.Graph()
    env = {a: sub.placeholder(f"in_{i}") for i, a in enumerate(inputs)}
    for n in nodes:
        env[n] = sub.node_copy(n, env.__getitem__)
    anchor = match.nodes[-1]
    sub.output(env[anchor])
    compound = Compound(pattern, fx.GraphModule(gm, sub, pattern.title), match.params)
    with gm.graph.inserting_before(anchor):
        new = gm.graph.create_node("call_function", compound, tuple(inputs), {}, name=pattern.name)
    new.meta = {k: v for k, v in anchor.meta.items()}
    anchor.replace_all_uses_with(new)
    for n in reversed(nodes):
        gm.graph.erase_node(n)


