"""Per-layer lower bounds: power iteration next to each certified layer norm (ℓ2 only; docs/mathematics.md §3).

For an affine op f(x) = A x + b (linear, conv, conv-transpose, BatchNorm, average pooling, …) the linear part
A x = f(x) − f(0) is replayed per sample in float64 (:func:`lipgraph.passes.fuse.linear_part`) and power
iteration (:func:`lipgraph.linalg.power_iteration`, Scaman & Virmaux 2018, Alg. 1) runs on AᵀA. For the unit
vector v of its last step, √‖AᵀA v‖ ≤ ‖AᵀA‖^{1/2} = ‖A‖₂: the value is *attained*, so it is a proven **lower**
bound on the layer's norm (kind ``lower``, method ``power-iteration``), less a relative rounding allowance
(``ROUNDING``). The certified gain is
≥ it; the pair shows how tight each certified number is (exact methods such as ``dense-svd`` coincide up to
convergence, ``fft-circular`` sits slightly above). A lower value above a certified gain proves that rule wrong:
the analysis fails with :class:`~lipgraph.errors.UnsoundBoundError` naming every such layer.

Measured: every single-input affine op with a certified gain that is not the exact constant 1 (isometries and
projections have nothing to measure), and every fused chain (:class:`~lipgraph.record.FusedRun`, :mod:`lipgraph.passes.fuse`). A chain's
iteration is not warm-started from its first op's vector: on ResNet-18 that took longer and ended no higher
(BatchNorm reweights the channels). ℓ1/ℓ∞ are skipped: their certified norms are exact there.

Writes ``record(node).layer_lower`` (a :class:`~lipgraph.bound.Bound` of kind ``lower``) on each measured
op and ``FusedRun.lower`` on the fused run of each chain.
"""
from __future__ import annotations

from torch import fx

from ..bound import Bound, lower
from ..errors import UnsoundBoundError
from ..ir import LipGraph
from ..linalg import power_iteration
from .fuse import fused_members, is_affine_link, linear_part
from ..record import record

METHOD = "power-iteration"
#: relative allowance for float64 rounding of A v and Aᵀ(A v) (≈ 10⁷ ulps)
ROUNDING = 1e-9
#: power-iteration steps per layer and the relative change at which it stops (it converges from below)
ITERATIONS, TOLERANCE = 100, 1e-6


def layer_lower_bounds(lg: LipGraph, norm: float, *, iters: int = ITERATIONS, tol: float = TOLERANCE) -> list[str]:
    """Record power-iteration lower bounds on the layers' ℓ2 norms; returns notes for the report. Records nothing
    for ℓ1/ℓ∞. Raises :class:`UnsoundBoundError` when a certified gain is below its lower bound."""
    if norm != 2:
        return ["layer lower bounds are computed for ℓ2 only: the ℓ1/ℓ∞ layer norms are exact (abs row/column sums)"]
    wrong: dict[str, str] = {}  # where -> what power iteration attains there
    for node in lg.ops():
        if is_affine_link(node) and not _isometry(gain := record(node).transfer.gains[0]):
            found = _power_lower(lg, [node], iters, tol)
            if found is not None:
                record(node).layer_lower = found
                wrong.update(_check(record(node).path, found, gain))
        fused = record(node).fused
        if fused is not None:
            found = _power_lower(lg, fused_members(node), iters, tol)
            if found is not None:
                fused.lower = found
                wrong.update(_check(f"the fused chain ending at {record(node).path}", found, fused.bound))
    if wrong:
        listed = "\n".join(f"  - {where}: {what}" for where, what in wrong.items())
        raise UnsoundBoundError(f"unsound bound: power iteration attains more than the certified norm of "
                                f"{len(wrong)} layer(s):\n{listed}", list(wrong))
    return []


def _isometry(gain: Bound) -> bool:
    return gain.exact and gain.value == 1.0


def _power_lower(lg: LipGraph, nodes: list[fx.Node], iters: int, tol: float) -> Bound | None:
    """Power iteration on the linear part of ``nodes``: a proven lower bound on its ℓ2 norm, or None when the ops
    cannot be replayed on their own (a batch of several samples, tuple inputs, ops vmap cannot batch)."""
    part = linear_part(lg, nodes)
    if part is None:
        return None
    try:
        estimate, _ = power_iteration(part.fn, part.in_shape, iters=iters, tol=tol)
    except Exception:  # noqa: BLE001 - an op without a vector-Jacobian product: no value, the certified gain stands
        return None
    return lower(estimate.value * (1 - ROUNDING), METHOD)


def _check(where: str, found: Bound, certified: Bound) -> dict[str, str]:
    if found.value <= certified.value:
        return {}
    return {where: f"{found.value:.6g} > certified {certified.value:.6g} ({certified.method})"}
