"""Where a joint op's inputs come from (docs/by-construction.md §1): functions of disjoint selections of one tensor.

A joint op (``Transfer.joint``: cat/stack, maximum/minimum, clamp of several tensors) with ``combine = p`` obeys
‖Δy‖_p ≤ ‖(g_i‖Δu_i‖_p)_i‖_p. When every input u_i depends on the network input only through pieces P_i of one
tensor s — selections (split, chunk, slices, views) that, all inputs together, hold each coordinate of s at most
once — and u_i = h_i(P_i) with ‖Δh_i‖_p ≤ L_i·max_{t∈P_i}‖Δt‖_p (AutoLip over the ops between P_i and u_i, its
pieces at 1), then Σ_i ‖ΔP_i‖_p^p ≤ ‖Δs‖_p^p gives

    ‖Δy‖_p ≤ ‖(g_i L_i ‖ΔP_i‖_p)_i‖_p ≤ max_i g_i L_i · ‖Δs‖_p,

so L(y) ≤ max_i g_i L_i · L(s) in every ℓp (ℓ∞: the combination is a max anyway). The plain case (each input a
selection, L_i = 1) gives max_i g_i·L(s): max of the two halves of a split is 1, not √2; ``cat(x₁, f(x₂))`` of the
two halves is max(1, L(f)), not √(1 + L(f)²). This module finds the pieces and the ops between them and each input
(:func:`joint_split`); :func:`lipgraph.passes.autolip.propagate` computes the L_i and uses the bound where tighter.
L_i need only bound ‖Δu_i‖_p by L_i·‖ΔP_i‖_p (P_i's coordinates together), which lets a joint op nested in the
branch take the same bound over its own pieces (:func:`lipgraph.passes.autolip.nested_joint`).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from torch import fx

from ..patternapi import SELECTIONS, injective_selection
from ..record import UNKNOWN, record


@dataclass(frozen=True)
class JointSplit:
    """The inputs of a joint op as functions of disjoint selections of ``source`` (the nearest tensor all of them
    read through): input i reads the network input only through ``pieces[i]`` (itself one piece when
    ``branches[i]`` is empty), through the ops ``branches[i]`` (graph order). ``first`` is the op after ``source``
    on the selections' path (the shortcut starts there)."""

    source: fx.Node
    first: fx.Node
    pieces: tuple[tuple[fx.Node, ...], ...]
    branches: tuple[tuple[fx.Node, ...], ...]

    @property
    def plain(self) -> bool:
        """Every input is itself a selection of ``source``."""
        return not any(self.branches)

    @property
    def label(self) -> str:
        """The shortcut's label: the node's bound reads ``autolip+joint`` or ``autolip+joint-branches``."""
        return "joint" if self.plain else "joint-branches"


def joint_split(node: fx.Node) -> JointSplit | None:
    """The :class:`JointSplit` of ``node``'s input-dependent inputs, or None when they are not functions of
    disjoint selections of one tensor; cached in its record's ``joint_split``."""
    rec = record(node)
    if rec.joint_split is UNKNOWN:
        rec.joint_split = _find(node)
    return rec.joint_split


def _find(node: fx.Node) -> JointSplit | None:
    """Walk up from the inputs (:func:`_labels`), then split each input's own nodes into pieces and branch."""
    inputs = record(node).inputs
    position = {n: i for i, n in enumerate(node.graph.nodes)}
    walked = _labels(inputs, position)
    if walked is None:
        return None
    sources, labels = walked
    pieces, branches = [], []
    for i, u in enumerate(inputs):
        if len(labels[u]) > 1:  # shared with another input: it can only be a piece itself
            pieces.append((u,))
            branches.append(())
            continue
        own = [n for n, seen in labels.items() if seen == {i}]
        tops = tuple(n for n in own if any(len(labels[a]) > 1 for a in record(n).inputs))
        pieces.append(tops)
        branches.append(tuple(sorted((n for n in own if n not in tops), key=position.__getitem__)))
    for source in sources:  # the nearest tensor the pieces are disjoint selections of (a module's own input)
        path = injective_selection(node.graph.owning_module, source, [t for ts in pieces for t in ts],
                                   lambda n: record(n).key)
        if path and record(path[0]).inputs[:1] == [source]:
            return JointSplit(source, path[0], tuple(pieces), tuple(branches))
    return None


def _labels(inputs: list[fx.Node], position: dict[fx.Node, int],
            ) -> tuple[list[fx.Node], dict[fx.Node, set[int]]] | None:
    """Walk up from ``inputs``, latest node first, marking each node with the inputs it reaches, up to the nearest
    node that every path from the network input to them passes through (the walk's frontier shrinks to it) and
    that is not a selection. The nodes where the frontier was one node (that one, and the selections below it that
    all inputs read through), nearest first, and the marks; None when the walk meets the network input first or a
    node two inputs share that is not a selection (the inputs then depend on common values by other routes)."""
    labels: dict[fx.Node, set[int]] = {}
    heap: list[tuple[int, fx.Node]] = []  # (-position, node): the latest node first

    def visit(a: fx.Node, marks: set[int]) -> None:
        if a not in labels:
            labels[a] = set()
            heapq.heappush(heap, (-position[a], a))
        labels[a] |= marks

    for i, u in enumerate(inputs):
        visit(u, {i})
    everyone = set(range(len(inputs)))
    sources: list[fx.Node] = []
    while heap:
        n = heap[0][1]
        shared = len(labels[n]) > 1
        if len(heap) == 1 and labels[n] == everyone:
            sources.append(n)
            if record(n).key not in SELECTIONS:
                return sources, labels
        heapq.heappop(heap)
        deps = list(dict.fromkeys(record(n).inputs))
        if not deps or (shared and record(n).key not in SELECTIONS):
            return None
        for a in deps:
            visit(a, labels[n])
    return None
