"""What lipgraph knows about one graph node: one typed :class:`NodeRecord` per fx node, under ``node.meta["lipgraph"]``.

Each field is written by one pass of the pipeline (:mod:`lipgraph.pipeline`, which names them in its passes'
``requires``/``ensures``) and read by the later ones; a field a pass has not written yet holds its default.
Rules never see records: they get an :class:`~lipgraph.ruleapi.OpContext` built from them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from torch import fx

from .bound import Bound

if TYPE_CHECKING:
    from .passes.residual import ResidualResult
    from .passes.seqlip import ChainResult
    from .ruleapi import Rule, Transfer

#: the ``node.meta`` key that holds a node's record
META_KEY = "lipgraph"
#: a scope: the module calls around a node, outermost first, e.g. ``(("layer1", 0), ("layer1.0", 0))``
Scope = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Shortcut:
    """A certified bound of the sub-network from the input of ``first`` to the node that carries the shortcut
    (written by the fusion and chain passes): L(node) ≤ bound · L(input of first)."""

    first: fx.Node
    bound: Bound
    label: str  # what produced it, e.g. "fusion" or "seqlip": the node's bound reads "autolip+<label>"


@dataclass
class FusedRun:
    """A run of affine ops bounded as one operator A_k⋯A_1 (docs/mathematics.md §4), recorded on its last op."""

    first: fx.Node  # the run's first op (the run is ``first`` … the carrying node, each feeding the next)
    bound: Bound  # the certified norm of the composed operator
    product: float | Bound  # Π of the members' gains, which ``bound`` beats (a LazyBound while a gain is pending)
    lower: Bound | None = None  # power iteration on the composed operator (layer_lower pass), ℓ2 only


class _Unknown:
    """Not computed yet (for fields where None is a result)."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


@dataclass
class NodeRecord:
    """Everything the passes record about one node. By the pass that writes it:

    trace (:mod:`lipgraph.frontend.propagate`, :func:`lipgraph.ir.build`):
        ``dep`` the node's output is a tensor that depends on the network input; ``info`` its output: a
        :class:`~lipgraph.ruleapi.Var` (shape, dtype), a tuple of them, or None for non-tensors; ``value`` the value
        of a constant node that feeds an input-dependent one (weights, sizes, flags); ``key`` the canonical op key
        (input-dependent ops; None without a known spelling); ``scope`` the module calls around the node;
        ``path`` its display path (the module path of a ``call_module`` op, else ``<scope>.<node name>``);
        ``source`` ``file:line: code`` of the user's source line, when known; ``inputs`` the input-dependent
        argument nodes, one entry per occurrence, in argument order.
    intervals (region analyses): ``interval`` bounds (lo, hi) of the tensor over the region (a tuple of pairs
        for a tuple-valued op, None for integer results).
    annotate: ``transfer`` the rule's :class:`~lipgraph.ruleapi.Transfer`; ``rule`` the rule that gave it;
        ``seconds`` the wall time of its rule (and of the fused norms ending here); ``fused_norm`` the certified
        norm of the folded affine chain ending here (computed in the norm pool for fusion), or None.
    fuse: ``fused`` the :class:`FusedRun` ending here; ``shortcuts`` certified (or estimated) bounds of paths
        ending here, which AutoLip takes where tighter (fusion, chains, residual blocks).
    layer_lower: ``layer_lower`` power iteration on this layer's operator (kind ``lower``).
    chains: ``chain`` the :class:`~lipgraph.passes.seqlip.ChainResult` of the sequential chain ending here.
    residual: ``residual`` the :class:`~lipgraph.passes.residual.ResidualResult` of the block whose add this is.
    bound (AutoLip): ``bound`` the node's Lipschitz bound from the network input; on the output node ``outputs``
        (each returned tensor and its bound); ``joint_split`` (cached, joint ops) the
        :class:`~lipgraph.passes.joint.JointSplit` of its inputs (functions of disjoint selections of one tensor), or
        None.
    """

    dep: bool = False
    info: Any = None
    value: Any = None
    key: str | None = None
    scope: Scope = ()
    path: str | None = None
    source: str | None = None
    inputs: list[fx.Node] = field(default_factory=list)
    interval: Any = None
    transfer: Transfer | None = None
    rule: Rule | None = None
    seconds: float = 0.0
    fused_norm: Bound | None = None
    fused: FusedRun | None = None
    shortcuts: list[Shortcut] = field(default_factory=list)
    layer_lower: Bound | None = None
    chain: ChainResult | None = None
    residual: ResidualResult | None = None
    bound: Bound | None = None
    outputs: list[tuple[fx.Node, Bound]] | None = None
    joint_split: Any = UNKNOWN


#: the names of the record's fields: facts a pass can require or ensure about nodes
NODE_FACTS = frozenset(f.name for f in fields(NodeRecord))


def record(node: fx.Node) -> NodeRecord:
    """The record of ``node`` (created empty on first use)."""
    found = node.meta.get(META_KEY)
    if found is None:
        found = node.meta[META_KEY] = NodeRecord()
    return found
