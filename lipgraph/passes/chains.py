"""Sequential-chain detection (docs/mathematics.md §5): the parts of the DAG shaped like W_K ∘ φ ∘ ⋯ ∘ φ ∘ W_1.

A chain is a maximal path of the graph whose ops each feed only the next one, made of affine runs (see
:func:`lipgraph.passes.fuse.affine_runs`: conv→BN, linear, flatten→linear… bounded as one operator) alternating
with elementwise activations of known slope interval. Found with networkx: the subgraph of eligible ops with
sole-consumer edges is a disjoint union of paths; each weakly connected component is cut into runs and
activations. Consecutive activations merge (slopes of a composition multiply); a run of gain exactly 1
(identity, dropout, reshape alone) ends a chain, as there is nothing to tighten through it. Leading and trailing activations
stay outside: they multiply the chain's constant as in AutoLip. Chains need K ≥ 2 runs to be tightened.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
from torch import fx

from ..ir import LipGraph
from .fuse import affine_runs, is_affine_link, is_trivial, sole_consumer
from ..record import record


@dataclass(frozen=True)
class SeqChain:
    """``runs[0]``, ``activations[0]`` (slope ``slopes[0]``), ``runs[1]``, …, ``runs[-1]``."""

    runs: tuple[tuple[fx.Node, ...], ...]
    activations: tuple[tuple[fx.Node, ...], ...]  # each a run of consecutive elementwise activations
    slopes: tuple[tuple[float, float], ...]

    @property
    def first(self) -> fx.Node:
        return self.runs[0][0]

    @property
    def last(self) -> fx.Node:
        return self.runs[-1][-1]

    @property
    def nodes(self) -> list[fx.Node]:
        out: list[fx.Node] = list(self.runs[0])
        for acts, run in zip(self.activations, self.runs[1:]):
            out += [*acts, *run]
        return out

    @property
    def scope(self) -> str:
        """The longest module path containing every member ('' at the top level)."""
        paths = [_path(n).split(".")[:-1] for n in self.nodes]
        common = paths[0]
        for p in paths[1:]:
            common = [a for a, b in zip(common, p) if a == b][: next((i for i, (a, b) in enumerate(zip(common, p))
                                                                       if a != b), len(common))]
        return ".".join(common)

    def members(self) -> list[str]:
        """Display names relative to :attr:`scope`: ``conv1+bn1``, ``relu``, ``conv2+bn2`` (runs joined by '+')."""
        cut = len(self.scope) + 1 if self.scope else 0
        groups = [self.runs[0]]
        for acts, run in zip(self.activations, self.runs[1:]):
            groups += [acts, run]
        return ["+".join(_path(n)[cut:] for n in group) for group in groups]


def is_activation(n: fx.Node) -> bool:
    """A single-input elementwise op with a slope interval (and not affine: lo < hi)."""
    t = record(n).transfer
    return (n.op not in ("placeholder", "output") and t is not None and t.slope is not None and not t.affine
            and len(record(n).inputs) == 1 and (t.slope[0] < t.slope[1] or t.neuron_slopes is not None))


def sequential_chains(lg: LipGraph) -> list[SeqChain]:
    """Every maximal sequential chain of the graph with at least two affine runs."""
    run_of = {run[0]: run for run in affine_runs(lg)}
    eligible = [n for n in lg.ops() if is_affine_link(n) or is_activation(n)]
    paths = nx.DiGraph()
    paths.add_nodes_from(eligible)
    for n in eligible:
        nxt = sole_consumer(lg, n)
        if nxt is not None and paths.has_node(nxt):
            paths.add_edge(n, nxt)
    chains = []
    for component in nx.weakly_connected_components(paths):
        order = list(nx.topological_sort(paths.subgraph(component)))
        chains += _cut(order, run_of)
    return sorted(chains, key=lambda c: lg.ops().index(c.first))


def _cut(order: list[fx.Node], run_of: dict[fx.Node, list[fx.Node]]) -> list[SeqChain]:
    """Split one path into chains: affine runs separated by activations (a run boundary inside the path that is
    not an activation, e.g. a run starting mid-path, also separates chains)."""
    runs: list[tuple[fx.Node, ...]] = []
    acts: list[tuple[fx.Node, ...]] = []
    pending: list[fx.Node] = []
    chains: list[SeqChain] = []
    i = 0
    while i < len(order):
        n = order[i]
        if is_activation(n):
            pending.append(n)
            i += 1
            continue
        run = run_of.get(n)
        if run is not None and all(is_trivial(m) for m in run):  # an identity-like run: nothing to tighten
            run = None
        if run is None or (runs and not pending):  # cannot continue the current chain here
            chains += _close(runs, acts)
            runs, acts = [], []
            if run is None:
                i += 1
                pending = []
                continue
        if runs:
            acts.append(tuple(pending))
        pending = []
        runs.append(tuple(run))
        i += len(run)
    return chains + _close(runs, acts)


def _close(runs: list, acts: list) -> list[SeqChain]:
    if len(runs) < 2:
        return []
    return [SeqChain(tuple(runs), tuple(acts), tuple(_compose_slopes(a) for a in acts))]


def _compose_slopes(acts: tuple[fx.Node, ...]) -> tuple[float, float]:
    """Slope interval of a composition of elementwise maps: products of the factors' slopes."""
    lo, hi = 1.0, 1.0
    for n in acts:
        a, b = record(n).transfer.slope
        ends = [lo * a, lo * b, hi * a, hi * b]
        lo, hi = min(ends), max(ends)
    return lo, hi


def _path(n: fx.Node) -> str:
    return record(n).path or n.name
