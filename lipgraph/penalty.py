"""A differentiable Lipschitz estimate to train with: ``lipgraph.lipschitz_penalty(model, example_input)``.

    loss = F.cross_entropy(model(x), y) + weight * lipgraph.lipschitz_penalty(model, x[:1])

The value is AutoLip (Scaman & Virmaux, NeurIPS 2018, §4) over lipgraph's own graph of the model — the same trace,
rules, fusion chains and DAG as ``lipgraph.analyze`` — with one change: the norm of every weight-carrying linear
operator A x = f(x) − f(0) (a Linear, Conv or BatchNorm layer, or a chain of affine ops with nothing nonlinear
between them, which analyze bounds as one operator) is the power-iteration value ‖A v‖₂ for a unit vector v that
persists from call to call (warm-started, as ``torch.nn.utils.spectral_norm`` keeps its ``u``): ``iters`` no-grad
power steps, then one differentiable evaluation, so the gradient flows to the weights. Every other op keeps its
certified constant gain, and gains combine as in ``lipgraph.passes.autolip.combine`` (a q-norm over the inputs:
residual additions sum, concatenations take the ℓ2 root of squares), with analyze's shortcut for a joint op on
functions of disjoint selections of one tensor (max_i g_i·L_i·L(s), docs/by-construction.md §1).

``method="cp"`` also tightens every sequential chain W_K ∘ φ_{K−1} ∘ ⋯ ∘ φ_1 ∘ W_1 of the graph
(:func:`lipgraph.passes.chains.sequential_chains`: affine runs alternating with elementwise activations of slopes
in [α, β]), as ``analyze(method="cp")`` does: the chain's constant becomes min(AutoLip's product along it,
CP/LipLT) (Combettes & Pesquet 2020, Prop. 3.6; Fazlyab et al. 2023; docs/mathematics.md §6, the DP of
:func:`lipgraph.estimators.cp.cp_value`), whose K(K+1)/2 partial-product norms ‖W_k⋯W_j‖ are power-iteration
values of the composed linear maps (runs j..k, activations skipped), each with its own persistent vector (a
single run that is already a layer's operator shares that operator). CP is monotone in these norms and ≤ the
product with exact norms, so once converged the cp penalty is ≤ the autolip one (before that, up to the power
iteration's convergence: the two methods keep their own vectors). A residual addition y = P x + branch(x) whose
branch is such a chain and whose shortcut P is the identity or an affine run from x (:func:`lipgraph.passes.residual.
residual_adds`, the blocks of ``analyze(method="cp")``) also gets CP/LipLT with the shortcut folded into its linear
term, ‖P + (Π m_k) W_l⋯W_0‖ + Σ_j r_j |m_{j+1}⋯m_l| ‖W_l⋯W_j‖ L_{j−1} (docs/residual.md, "Combettes–Pesquet / LipLT
with the shortcut"; :func:`lipgraph.estimators.residual.residual_cp_value`), the first norm one more
power-iteration operator x ↦ P x + (Π m_k) W_l⋯W_0 x: AutoLip takes min(‖P‖-path + L(branch), that · L(x)).

**An estimate from below, never a certificate.** For any unit v, ‖A v‖ ≤ ‖A‖ ≤ the certified norm that analyze
uses, and AutoLip is monotone in every gain, so at every call

    lipschitz_penalty(model, x) ≤ AutoLip with exact operator norms ≤ lipgraph.analyze(model, x).bound

with equality on the left once the vectors have converged (power iteration converges from below, and slowly when
the top singular values are close — which a spectral penalty tends to make them). For ``method="cp"`` the same
holds with CP/LipLT in every chain and residual block on both sides: ≤ ``analyze(model, x, method="cp").bound``
without the block estimators that solve an LMI (``residual-eclipse-fast``, ``residual-fft``, block pairs), which
``analyze(method="cp")`` adds (no differentiable counterpart here: the cp penalty can be above its bound); analyze's
``method="seqlip"`` (CP and SeqLip) can certify less than either penalty. Once converged, either penalty is AutoLip
(with CP) on exact norms: a certified bound, ≥ the true constant. The number to report for a trained model
comes from ``lipgraph.analyze`` (``method="seqlip"`` or ``"cp"`` for the tightest chains) or ``lipgraph.certify``,
never from the penalty.

ℓ2 only; torch.fx frontend only (``torch.export`` copies the parameters: no gradient would reach them). The traced
state (graph, operators, vectors) is kept on the model per input shape, so repeated calls do not re-trace; pass
``retrace=True`` after changing the model's structure. A ``copy.deepcopy`` of the model starts afresh.
"""
from __future__ import annotations

from functools import reduce
from typing import Any, Iterable, Sequence

import math

import torch
from torch import Tensor, fx, nn

from .api import traceable_root
from .errors import InputError
from .estimators.cp import cp_value
from .estimators.residual import residual_cp_value
from .frontend.prepare import as_inputs, eval_mode, to_model_device, unwrap
from .frontend.untouched import leaves_untouched
from .ir import LipGraph, map_args
from .linalg import power_iteration
from .norms import parse_norm
from .pipeline import Analysis, Pass, graph_passes, run_passes
from .passes.chains import SeqChain, sequential_chains
from .passes.fuse import affine_chains
from .passes.joint import joint_split
from .passes.residual import residual_adds
from .registry import default_registry
from .record import record

#: Estimators the penalty implements: AutoLip, and AutoLip with CP/LipLT on every sequential chain.
METHODS = ("autolip", "cp")
#: Power steps on a plan's first call, when its vectors are random rather than warm.
WARMUP_ITERS = 50


def lipschitz_penalty(model: nn.Module, example_input: Any, method: str = "autolip", *, norm: Any = 2,
                      iters: int = 1, tol: float = 0.0, retrace: bool = False) -> Tensor:
    """A differentiable estimate (from below) of the ℓ2 AutoLip bound of ``model``; see the module docstring.

    ``method``: ``"autolip"``, or ``"cp"`` for CP/LipLT on every sequential chain (≤ the autolip value once
    converged, K(K+1)/2 power-iteration operators per chain of K runs instead of K). ``example_input`` fixes the
    input size, as for ``analyze`` (a batch of one is cheapest). ``iters`` power steps per call and operator
    (``WARMUP_ITERS`` on the first call), fewer if the estimate moves by less than ``tol`` (relative) from one step
    to the next. The model is evaluated as in eval mode
    (BatchNorm on running statistics, which this call does not update); its own mode is left as it was.
    """
    if method not in METHODS:
        raise InputError(f"unknown penalty method {method!r}; available: {', '.join(METHODS)} (certify with "
                         "lipgraph.analyze(model, x, method=...), which has every chain estimator)")
    if parse_norm(norm) != 2:
        raise InputError(f"lipschitz_penalty estimates ℓ2 operator norms by power iteration; norm={norm!r} is "
                         "not supported (lipgraph.analyze and lipgraph.certify bound the ℓ1 and ℓ∞ norms)")
    if not isinstance(iters, int) or iters < 0:
        raise InputError(f"iters must be an integer >= 0, got {iters!r}")
    model = unwrap(model)
    inputs = to_model_device(model, as_inputs(example_input))
    key = (method, tuple((tuple(x.shape), x.dtype, x.device) for x in inputs))
    plans = model.__dict__.setdefault(_PLANS, _PlanCache())
    if retrace or key not in plans:
        plans[key] = _Plan(model, inputs, method)
    return plans[key](iters, tol)


@leaves_untouched
def build_graph(model: nn.Module, inputs: tuple, norm: float, *, unsupported: str = "error",
                frontend: str = "auto", then: Sequence[Pass] = ()) -> Analysis:
    """The recipe of the penalty and of ``certify``: the graph passes of ``analyze`` (trace, rules, fusion chains,
    :func:`lipgraph.pipeline.graph_passes`) on ``model`` in eval mode with the built-in rules, then the passes
    ``then`` (``certify``: AutoLip)."""
    registry = default_registry()
    model = traceable_root(model, registry)
    with eval_mode(model, []):
        state = Analysis(model, inputs, norm, registry, frontend=frontend, unsupported=unsupported)
        return run_passes([*graph_passes(), *then], state)


class Replay:
    """Replays runs of graph ops on new tensors. Each run is a list of ops whose only input-dependent argument is
    the previous op's result (the first op's is the run's input). Constant arguments that derive from the module
    alone (parameters, buffers, weights computed from them in ``forward``) are recomputed from the module's current
    state by :meth:`constants`, so they are never stale snapshots; the rest (sizes read off the input) are the
    values recorded at trace time. ``gm`` may be a copy of the traced module (e.g. in float64)."""

    def __init__(self, gm: fx.GraphModule, runs: Sequence[Sequence[fx.Node]]) -> None:
        self.interpreter = fx.Interpreter(gm)
        self.live = _live_constants([n for run in runs for n in run])

    def constants(self) -> dict[fx.Node, Any]:
        env: dict[fx.Node, Any] = {}
        for node in self.live:
            env[node] = self._op(node, env)
        return env

    def run(self, nodes: Sequence[fx.Node], x: Tensor, constants: dict[fx.Node, Any]) -> Tensor:
        env = {**constants, record(nodes[0]).inputs[0]: x}
        for node in nodes:
            env[node] = self._op(node, env)
        return env[nodes[-1]]

    def _op(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        args, kwargs = map_args(node, lambda a: env[a] if a in env else record(a).value)
        return getattr(self.interpreter, node.op)(node.target, args, kwargs)


def _live_constants(nodes: Sequence[fx.Node]) -> list[fx.Node]:
    """The input-independent nodes that ``nodes`` read and that derive from the module alone, in graph order."""
    live: dict[fx.Node, None] = {}
    dead: set[fx.Node] = set()

    def visit(n: fx.Node) -> bool:
        if n in live or n in dead:
            return n in live
        ok = n.op != "placeholder" and not record(n).dep and (
            n.op == "get_attr" or all([visit(a) for a in n.all_input_nodes]))
        if ok:
            live[n] = None  # after its own inputs: a topological order
        else:
            dead.add(n)
        return ok

    for node in nodes:
        for arg in node.all_input_nodes:
            visit(arg)
    return list(live)


class _Operator:
    """A linear operator A x = g(x) − g(0), g the composition of runs of affine ops (one run: a layer or a fused
    chain; runs j..k of a sequential chain with its activations skipped: the partial product W_k⋯W_j), with a
    ``shortcut`` (a residual block's P: an affine run, ``()`` the identity) g(x) = P x + scale · (the composition),
    and its persistent power-iteration vector."""

    def __init__(self, runs: Iterable[Sequence[fx.Node]], shortcut: Sequence[fx.Node] | None = None,
                 scale: float = 1.0) -> None:
        self.runs = tuple(tuple(run) for run in runs)
        self.shortcut = None if shortcut is None else tuple(shortcut)
        self.scale = scale
        self.nodes = [n for run in self.runs for n in run] + list(self.shortcut or ())
        self.source = record(self.nodes[0]).inputs[0]
        self.info = record(self.source).info
        self.vector: Tensor | None = None  # unit, float64, the shape of the operator's input


class _CpChain:
    """A sequential chain W_K ∘ φ_{K−1} ∘ ⋯ ∘ φ_1 ∘ W_1 and the operators of its K(K+1)/2 partial products."""

    def __init__(self, chain: SeqChain, store: dict[tuple, _Operator]) -> None:
        self.chain = chain
        K = len(chain.runs)
        self.products = {(j, k): _stored(store, chain.runs[j:k + 1]) for k in range(K) for j in range(k + 1)}

    def value(self, norms: dict[_Operator, Tensor]) -> Tensor:
        """CP/LipLT (``estimators.cp.cp_value``, docs/mathematics.md §6) on the partial products' estimated norms."""
        return cp_value(lambda j, k: norms[self.products[j, k]], self.chain.slopes)


class _ResidualCp:
    """A residual add P x + branch(x), the branch a sequential chain: CP/LipLT with the shortcut in its linear term
    (docs/residual.md), from the branch's partial products and the operator x ↦ P x + (Π m_k) W_l⋯W_0 x."""

    def __init__(self, add: fx.Node, branch: _CpChain, shortcut: Sequence[fx.Node], store: dict[tuple, _Operator]
                 ) -> None:
        self.add, self.branch = add, branch
        scale = math.prod((lo + hi) / 2 for lo, hi in branch.chain.slopes)
        self.top = _stored(store, branch.chain.runs, shortcut, scale)

    def value(self, norms: dict[_Operator, Tensor]) -> Tensor:
        """``estimators.residual.residual_cp_value`` on the estimated norms."""
        return residual_cp_value(norms[self.top], lambda j, k: norms[self.branch.products[j, k]],
                                 self.branch.chain.slopes)


def _replayable(chain: SeqChain) -> bool:
    """Every run of ``chain`` reads one tensor (not a tuple, e.g. the result of a split): its vector's shape."""
    return all(record(record(run[0]).inputs[0]).info.parts is None for run in chain.runs)


def _stored(store: dict[tuple, _Operator], runs: Sequence[Sequence[fx.Node]],
            shortcut: Sequence[fx.Node] | None = None, scale: float = 1.0) -> _Operator:
    """The operator of ``runs`` (and ``shortcut``) in ``store``, added if new (a run that is already a layer's
    operator is shared)."""
    key = (tuple(tuple(run) for run in runs), None if shortcut is None else tuple(shortcut), scale)
    if key not in store:
        store[key] = _Operator(key[0], shortcut, scale)
    return store[key]


class _Plan:
    """The traced state of one model at one input shape: its graph, operators and their vectors."""

    def __init__(self, model: nn.Module, inputs: tuple, method: str) -> None:
        self.model = model
        self.graph = build_graph(model, inputs, 2.0, frontend="fx").graph  # export copies parameters: no gradients
        store: dict[tuple, _Operator] = {}
        self.operators = [_stored(store, [run]) for run in _operator_runs(self.graph)]
        chains = sequential_chains(self.graph) if method == "cp" else []
        self.chains = [_CpChain(chain, store) for chain in chains if _replayable(chain)]
        branches = {c.chain.last: c for c in self.chains}
        self.blocks = [_ResidualCp(add, branches[chain.last], shortcut, store) for add, chain, shortcut
                       in residual_adds(self.graph, {c.chain.last: c.chain for c in self.chains})]
        self.store = list(store.values())  # every operator whose norm a call estimates
        self.replay = Replay(self.graph.gm, [op.nodes for op in self.store])
        self.ending = {op.nodes[-1]: op for op in self.operators}
        self.inside = {n for op in self.operators for n in op.nodes[:-1]}
        self.one = torch.ones((), dtype=inputs[0].dtype, device=inputs[0].device)
        self.warm = False  # vectors are random until the first call has run WARMUP_ITERS steps
        generator = torch.Generator().manual_seed(0)
        for op in self.store:
            op.vector = torch.randn(op.info.shape, dtype=torch.float64, generator=generator).to(self.one.device)

    def __call__(self, iters: int, tol: float) -> Tensor:
        steps = iters if self.warm else max(iters, WARMUP_ITERS)
        with eval_mode(self.model, []):
            constants = self.replay.constants()
            norms = {op: self._norm(op, constants, steps, tol) for op in self.store}
        self.warm = True
        shortcuts = {c.chain.last: (c.chain.first, c.value(norms)) for c in self.chains}
        shortcuts.update({b.add: (b.branch.chain.first, b.value(norms)) for b in self.blocks})
        return self._autolip(norms, shortcuts)

    def _norm(self, op: _Operator, constants: dict[fx.Node, Any], steps: int, tol: float) -> Tensor:
        """‖A v‖₂ after ``steps`` no-grad power steps from the stored v (Scaman & Virmaux 2018, Alg. 1)."""
        shape, dtype = op.info.shape, op.info.dtype

        def apply(x: Tensor) -> Tensor:
            x = y = x.reshape(shape).to(dtype)
            for run in op.runs:  # activations between runs are skipped: the partial product's linear part
                y = self.replay.run(run, y, constants)
            if op.shortcut is None:
                return y
            return (self.replay.run(op.shortcut, x, constants) if op.shortcut else x) + op.scale * y

        offset = apply(torch.zeros_like(op.vector))  # f(0): A x = f(x) − f(0)
        if steps:
            fixed = offset.detach()
            with torch.no_grad():
                _, op.vector = power_iteration(lambda x: apply(x) - fixed, shape, iters=steps, tol=tol,
                                               v0=op.vector)
        return torch.linalg.vector_norm(apply(op.vector) - offset)

    def _autolip(self, norms: dict[_Operator, Tensor], chains: dict[fx.Node, tuple[fx.Node, Tensor]]) -> Tensor:
        """AutoLip over the DAG in torch (``passes.autolip.propagate``), operators' gains replaced by ``norms``;
        ``chains`` maps a chain's last op to (its first op, its CP value), and a residual add to (its branch's first op,
        the block's CP value): shortcuts, as the chain and residual passes record."""
        lg = self.graph
        bounds = self._propagate(lg.ops(), {p: self.one for p in lg.placeholders}, norms, chains)
        return self._qnorm([bounds[n] for n in record(lg.output).inputs], 2.0)

    def _propagate(self, nodes: Iterable[fx.Node], entry: dict[fx.Node, Tensor], norms: dict[_Operator, Tensor],
                   chains: dict[fx.Node, tuple[fx.Node, Tensor]]) -> dict[fx.Node, Tensor]:
        """:meth:`_autolip`'s propagation over ``nodes`` from the bounds ``entry``; an operator whose source is not
        reached stops it (``KeyError``: a joint op's branch that does not start at its pieces)."""
        bounds = dict(entry)
        for node in nodes:
            if node in self.inside or node in entry:  # an op inside an operator only feeds the next one
                continue
            if node in self.ending:  # its fusion shortcut is the operator itself
                op = self.ending[node]
                bounds[node] = norms[op] * bounds[op.source]
                shortcuts = []
            else:
                transfer = record(node).transfer
                terms = [g.value * bounds[a] for g, a in zip(transfer.gains, record(node).inputs)
                         if g.value != 0]
                bounds[node] = self._qnorm(terms, transfer.combine)
                shortcuts = [(s.first, s.bound.value) for s in record(node).shortcuts]  # fusion
                shortcuts += self._joint(node, bounds, norms, chains)
            for first, value in shortcuts + ([chains[node]] if node in chains else []):
                source = record(first).inputs[0]
                if source in bounds:  # as passes.autolip: min(AutoLip so far, shortcut · L(source))
                    bounds[node] = torch.minimum(bounds[node], value * bounds[source])
        return bounds

    def _joint(self, node: fx.Node, bounds: dict[fx.Node, Tensor], norms: dict[_Operator, Tensor],
               chains: dict[fx.Node, tuple[fx.Node, Tensor]]) -> list[tuple[fx.Node, Tensor]]:
        """A joint op on functions of disjoint selections (:func:`lipgraph.passes.autolip.joint_shortcut`): the
        shortcut max_i g_i·L_i from its first selection, L_i each branch's value from its pieces at 1."""
        transfer = record(node).transfer
        split = joint_split(node) if transfer.joint and len(transfer.gains) > 1 else None
        if split is None or not all(t in bounds for ts in split.pieces for t in ts):
            return []
        inner = []
        for u, gain, pieces, branch in zip(record(node).inputs, transfer.gains, split.pieces, split.branches):
            try:
                value = self._propagate(branch, {t: self.one for t in pieces}, norms, chains)[u] if branch else self.one
            except KeyError:  # a fused run that starts before the pieces
                return []
            inner.append(gain.value * value)
        return [(split.first, torch.stack(inner).amax())]

    def _qnorm(self, terms: list[Tensor], q: float) -> Tensor:
        """‖(t_i)_i‖_q, as ``passes.autolip.combine`` (q = 1: sum, 2: root of squares, ∞: max)."""
        return torch.linalg.vector_norm(torch.stack(terms), ord=q) if terms else self.one * 0


def _operator_runs(lg: LipGraph) -> list[list[fx.Node]]:
    """analyze's fusion chains that hold a weight-carrying op, and every other weight-carrying affine op."""
    chains = [chain for chain in affine_chains(lg) if any(_has_weights(lg, n) for n in chain)]
    taken = {n for chain in chains for n in chain}
    singles = [[n] for n in lg.ops() if n not in taken and _has_weights(lg, n) and is_linear_op(n)]
    return chains + singles


def is_linear_op(node: fx.Node) -> bool:
    """An affine op (its rule says so) of one input-dependent tensor argument: x ↦ A x + b."""
    transfer = record(node).transfer
    return (transfer is not None and transfer.affine and len(record(node).inputs) == 1
            and record(record(node).inputs[0]).info.parts is None)


def _has_weights(lg: LipGraph, node: fx.Node) -> bool:
    """A module with parameters, or an op reading a constant computed from parameters."""
    if node.op == "call_module":
        return any(True for _ in lg.gm.get_submodule(node.target).parameters())
    if isinstance(getattr(node.target, "module", None), nn.Module):  # a pattern's compound (frontend/patterns.py)
        return any(True for _ in node.target.module.parameters())
    return any(n.op == "get_attr" and isinstance(reduce(getattr, n.target.split("."), lg.gm), nn.Parameter)
               for n in _live_constants([node]))


_PLANS = "_lipgraph_penalty_plans"


class _PlanCache(dict):
    """Per-model plans, kept in the model's ``__dict__``; a copy or a pickle of the model starts without them
    (its modules are other objects: it re-traces)."""

    def __deepcopy__(self, memo: dict) -> "_PlanCache":
        return _PlanCache()

    def __reduce__(self) -> tuple:
        return (_PlanCache, ())


