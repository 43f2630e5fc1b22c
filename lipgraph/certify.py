"""Certified robustness radii from Lipschitz bounds: ``lipgraph.certify(model, x, y)``.

**Global bound** (Tsuzuku, Sato & Sugiyama, NeurIPS 2018, Prop. 1 for ℓ2). If ‖f(x+δ) − f(x)‖_p ≤ L‖δ‖_p, the
difference of two logits d_ij = f_i − f_j = (e_i − e_j)ᵀ f changes by at most ‖e_i − e_j‖_{p*} · L‖δ‖_p (Hölder,
p* the dual exponent): √2·L in ℓ2, 2·L in ℓ∞ (‖e_i − e_j‖₁ = 2), L in ℓ1 (‖e_i − e_j‖_∞ = 1). The class y
predicted at x stays predicted while every d_yj > 0, hence for every ‖δ‖_p < radius:

    radius = margin / (c_p · L),   margin = f_y(x) − max_{j≠y} f_j(x),   c_p = ‖e_i − e_j‖_{p*} = 2^{1 − 1/p}

**Per-class-pair bounds** (tighter; used when the network allows). If the network ends with affine ops after its
last nonlinearity, f(x) = A h(x) + b with h the input of that affine tail, and d_ij changes by at most
L_ij ‖δ‖_p with L_ij = ‖(a_i − a_j)ᵀ‖_{p*} · L(h): a_i is row i of A (the tail's Jacobian, exact in float64) and
L(h) the certified AutoLip bound of the graph up to h. Each pair uses min(L_ij, c_p · L), and
radius = min_{j≠y} d_yj / L_yj. Misclassified inputs get radius 0 and are never certified.

Radii are certificates when the bound is ``certified``; otherwise (an estimate, or unbounded ops) they are not,
and the result says so. Floating-point rounding of the network's own evaluation is not accounted for.
"""
from __future__ import annotations

import copy
import math
import multiprocessing
import pickle
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, fx, nn

from .bound import FLOAT_MARGIN, Bound, Kind, join_kinds
from .errors import InputError, LipgraphError
from .formats import default_formats
from .frontend.prepare import check_runs, eval_mode, unwrap
from .frontend.untouched import leaves_untouched
from .ir import LipGraph
from .norms import parse_norm
from .penalty import Replay, build_graph, is_linear_op
from .pipeline import Analysis, AutoLip, Crown, LocalChains, graph_passes, run_passes
from .report import Report, bound_dict, norm_name
from .record import record

_DUAL = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}
INPUT_KEYS = ("x", "inputs", "input", "data", "images")
LABEL_KEYS = ("y", "labels", "label", "targets", "target")


def pair_constant(p: float) -> float:
    """c_p = ‖e_i − e_j‖_{p*} = 2^{1 − 1/p}: 1 (ℓ1), √2 (ℓ2), 2 (ℓ∞)."""
    return 2.0 ** (1.0 - 1.0 / p)


@dataclass
class Certificate:
    """Per-input certified radii (``radii[k]``: no ‖δ‖_p < radii[k] changes the class predicted at x_k) and the
    certified accuracy at the radii of ``grid`` (correct and radius ≥ r)."""

    model: str
    norm: float
    bound: Bound  # the global Lipschitz bound L used
    kind: Kind  # certified only when every bound used is: then the radii are certificates
    radii: Tensor  # (N,) float64, 0 where misclassified
    predictions: Tensor
    labels: Tensor
    margins: Tensor  # f_y − max_{j≠y} f_j at the predicted class y
    grid: tuple[float, ...]
    pair_bounds: Tensor | None = None  # (C, C) L_ij used (diagonal 0), None when only the global bound was used
    local_radii: Tensor | None = None  # (N,) radii from local bounds L(B(x, r)) (``local=True``), 0 if misclassified
    tail: tuple[str, Bound] | None = None  # the affine tail's input h and its bound L(h), when pairs were used
    notes: list[str] = field(default_factory=list)

    @property
    def certified(self) -> bool:
        return self.kind is Kind.CERTIFIED

    @property
    def correct(self) -> Tensor:
        return self.predictions == self.labels

    @property
    def accuracy(self) -> float:
        return self.correct.double().mean().item()

    def certified_accuracy(self, radius: float) -> float:
        return (self.correct & (self.radii >= radius)).double().mean().item()

    def summary(self) -> list[tuple[float, float, int]]:
        """(radius, certified accuracy, number certified) for each radius of ``grid``."""
        return [(r, self.certified_accuracy(r), int((self.correct & (self.radii >= r)).sum())) for r in self.grid]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "norm": norm_name(self.norm), **bound_dict(self.bound), "kind": self.kind.value,
            "certified": self.certified, "n": len(self.radii), "accuracy": self.accuracy,
            "pairwise": self.pair_bounds is not None,
            "tail": None if self.tail is None else {"input": self.tail[0], **bound_dict(self.tail[1])},
            "pair_bounds": None if self.pair_bounds is None else [_finite(row) for row in self.pair_bounds.tolist()],
            "summary": [{"radius": r, "certified_accuracy": a, "count": c} for r, a, c in self.summary()],
            "radius": _finite(self.radii.tolist()), "prediction": self.predictions.tolist(),
            "label": self.labels.tolist(),
            "notes": list(self.notes),
            **({"local_radius": _finite(self.local_radii.tolist())} if self.local_radii is not None else {}),
        }

    def plot(self, path: str | Path) -> None:
        """Certified accuracy vs radius as a PNG (needs matplotlib): the ``png`` output format of a certificate."""
        png = default_formats().get("certificate", "png").render(self)
        Path(path).write_bytes(png)


def _finite(values: list[float]) -> list[float | None]:
    """JSON has no infinity: an infinite bound or radius is ``null``."""
    return [v if math.isfinite(v) else None for v in values]


@leaves_untouched
def certify(model: nn.Module, x: Tensor, y: Tensor, *, norm: Any = 2, report: Report | None = None,
            radii: Sequence[float] | None = None, pairwise: bool = True, unsupported: str = "error",
            batch_size: int = 1024, local: bool = False, executor: Executor | None = None,
            workers: int | None = None, progress: bool = False) -> Certificate:
    """Certified radii of ``model`` (a classifier returning logits (N, C), evaluated in eval mode) at inputs ``x``
    (N, ...) with integer labels ``y`` (N,); see the module docstring for the maths.

    The global bound is ``lipgraph.analyze``'s AutoLip bound (same pipeline, computed here once); pass ``report``
    (an ``analyze`` result for the same norm, e.g. another method) to use its bound instead. ``pairwise=False``
    uses the global bound alone. ``radii``: where to report certified accuracy (default: 5 steps up to the largest
    radius).

    ``local=True`` also computes, per correctly classified input, the local radius: for the class pairs (y, j)
    that limit the radius, the largest r (bisection, :func:`pair_radius`) with f_y(x) − f_j(x) > L_j(B_p(x, r))·r,
    L_j the local bound of f_y − f_j on the ball (docs/local.md). One analysis per bisection step and point: the points run on ``executor`` (any
    ``concurrent.futures.Executor``, e.g. dask.distributed's ``Client.get_executor()``), else on a local process
    pool of ``workers`` processes (in this process when ``workers`` is 1 or None).
    """
    p = parse_norm(norm)
    x, y = check_labelled(x, y)
    model = unwrap(model)
    notes: list[str] = []
    with eval_mode(model, notes), torch.no_grad():
        check_runs(model, (x[:1],))
        outputs = [model(chunk) for chunk in x.split(batch_size)]
    logits = torch.cat(outputs).double().cpu() if all(isinstance(o, Tensor) for o in outputs) else None
    if logits is None or logits.ndim != 2 or logits.shape[1] < 2 or len(logits) != len(x):
        got = f"shape {tuple(logits.shape)}" if logits is not None else f"a {type(outputs[0]).__name__}"
        raise InputError(f"certify needs a classifier returning one tensor of logits (N, classes >= 2); "
                         f"{type(model).__name__} returned {got} for {len(x)} inputs")
    if int(y.max()) >= logits.shape[1]:
        raise InputError(f"labels go up to {int(y.max())} but the model has {logits.shape[1]} classes")
    state = build_graph(model, (x[:1],), p, unsupported=unsupported, then=[AutoLip()])
    lg, total = state.graph, state.total
    bound = total if report is None else _report_bound(report, p)
    pairs = torch.full((logits.shape[1],) * 2, pair_constant(p) * bound.value, dtype=torch.float64)
    kinds, tail = [bound.kind], None
    if pairwise:
        found = _tail_pair_bounds(lg, p, logits.shape[1], notes)
        if found is not None:
            tail_bounds, tail = found
            pairs, kinds = torch.minimum(pairs, tail_bounds), kinds + [tail[1].kind]
    pairs.fill_diagonal_(0.0)
    kind = join_kinds(kinds)
    if kind is not Kind.CERTIFIED:
        notes.append(f"the bound is {'unbounded' if kind is Kind.UNBOUNDED else 'an estimate'}, not certified: "
                     "these radii are NOT certificates")
    predictions = logits.argmax(1)
    radius, margins = _radii(logits, predictions, pairs)
    radius[predictions != y.cpu()] = 0.0
    local_radii = None
    if local:
        if kind is not Kind.CERTIFIED:
            raise InputError("local radii need a certified global bound to start from")
        local_radii = local_radii_of(model, x, logits, predictions, pairs, predictions == y.cpu(), p, executor,
                                     workers, progress)
    return Certificate(model=type(model).__name__, norm=p, bound=bound, kind=kind, radii=radius,
                       predictions=predictions, labels=y.cpu(), margins=margins,
                       grid=tuple(float(r) for r in radii) if radii is not None else default_grid(radius),
                       pair_bounds=pairs if tail else None, tail=tail, notes=notes, local_radii=local_radii)


_TRACING = threading.Lock()
#: bisection steps of :func:`pair_radius` (each one a region analysis)
BISECTION_STEPS = 10
#: class pairs (y, j) refined with local bounds per input, closest first
LOCAL_PAIRS = 3


class _Margin(nn.Module):
    """x ↦ f_y(x) − f_j(x): the logit difference whose sign decides between classes y and j."""

    def __init__(self, model: nn.Module, y: int, j: int, classes: int) -> None:
        super().__init__()
        self.model = model
        row = torch.zeros(1, classes)
        row[0, y], row[0, j] = 1.0, -1.0
        self.register_buffer("row", row)  # a linear map: it folds into the network's last affine ops

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(self.model(x), self.row)


#: the bisection of :func:`pair_radius` stops when its bracket is this narrow relative to the certified radius
RADIUS_TOLERANCE = 1e-3


def ball_bound(model: nn.Module, x: Tensor, radius: float, p: float, target: float | None = None) -> float:
    """``lipgraph.analyze(model, x, region=Ball(None, radius, p)).bound`` (method autolip) without the report and
    the lower-bound search: the region's graph passes, crown, local chains and the bound pass; ``target``: only
    ``bound < target`` matters (:func:`lipgraph.passes.localchains.tighten_local_chains`)."""
    from .api import traceable_root
    from .cache import norm_cache
    from .region import Ball
    from .registry import default_registry

    registry = default_registry()
    region = Ball(None, radius, norm=p)
    model = traceable_root(model, registry)
    with _TRACING, eval_mode(model, []), norm_cache(True):  # torch.fx patches module functions while tracing
        state = Analysis(model, (x,), p, registry, region=region)
        total = run_passes([*graph_passes(region), Crown(), LocalChains(target), AutoLip()], state).total
    return total.value if total.kind is Kind.CERTIFIED else math.inf


def pair_radius(model: nn.Module, x: Tensor, y: int, j: int, classes: int, margin: float, start: float, p: float,
                steps: int = BISECTION_STEPS) -> float:
    """Largest r found by bisection with d(x) > L(B_p(x, r)) · r for d = f_y − f_j, never below ``start`` (a
    radius already certified for this pair). Sound: B_p(x, r) is convex, so for ‖δ‖_p < r, |d(x + δ) − d(x)| ≤
    L(B)·‖δ‖_p < d(x) (mean-value inequality along the segment; d is scalar, so its ℓp norm is |d|).

    Each step tests r = mid with a bound L of B(x, mid), asked only whether L·mid < d(x) (``ball_bound``'s
    target). A bound of B(x, mid) also bounds every smaller ball, so a failed step still certifies
    r = min(mid, d(x)/L). The search starts at d(x)/L(B(x, start)) (beyond which a bound growing with r fails;
    where L(B(x, start)) = 0 it doubles r until a step fails) and stops after ``steps`` halvings or when the
    bracket is narrower than ``RADIUS_TOLERANCE`` · r."""
    net = _Margin(model, y, j, classes)
    if margin <= 0:
        return 0.0
    lo = start
    try:
        L = ball_bound(net, x, max(start, 1e-12), p)
    except LipgraphError:
        return start
    hi = margin / L if L > 0 else math.inf  # L = 0: d is constant on that ball (e.g. every ReLU off there)
    mid = hi * (1 - 1e-9) if hi < math.inf else 2 * max(lo, 1e-12)
    for _ in range(steps + 1):
        if mid <= lo:
            break
        try:
            L = ball_bound(net, x, mid, p, target=margin / mid)
        except LipgraphError:  # e.g. a divisor reaching 0 on a larger ball: not certified at mid
            L = math.inf
        if margin > L * mid:
            lo = mid
        else:
            lo, hi = max(lo, margin / L * (1 - 1e-9)), mid
        if hi - lo <= RADIUS_TOLERANCE * lo:
            break
        mid = (lo + hi) / 2 if hi < math.inf else 2 * max(lo, 1e-12)  # no upper end known yet: doubling
    return lo


def local_radius(model: nn.Module, x: Tensor, y: int, gaps: Tensor, starts: Tensor, p: float) -> float:
    """min over classes j ≠ y of the certified radius of the pair (y, j): ``starts[j]`` (from the global bounds)
    for every j, refined by :func:`pair_radius` for the pair that limits the radius, up to ``LOCAL_PAIRS`` times."""
    radii = {j: float(starts[j]) for j in range(len(gaps)) if j != y}
    refined: set[int] = set()
    while radii:
        j = min(radii, key=radii.get)
        if j in refined or len(refined) >= LOCAL_PAIRS:
            break
        radii[j] = pair_radius(model, x, y, j, len(gaps), float(gaps[j]), radii[j], p)
        refined.add(j)
    return min(radii.values(), default=math.inf)


def _shippable(model: nn.Module) -> bytes:
    """``model`` pickled for worker processes. The classes of a model file are not importable by name there:
    cloudpickle (a dependency of dask) pickles them by value; plain pickle refuses them."""
    try:
        import cloudpickle as pickler  # type: ignore[import-not-found]
    except ImportError:
        pickler = pickle
    try:
        return pickler.dumps(model)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise InputError(f"cannot send {type(model).__name__} to worker processes ({exc}): pip install cloudpickle, "
                         "or run the points in this process (workers=1, no executor)") from None


def _local_job(job: tuple) -> float:
    model, *rest = job
    return local_radius(pickle.loads(model) if isinstance(model, bytes) else model, *rest)


def local_radii_of(model: nn.Module, x: Tensor, logits: Tensor, predicted: Tensor, pairs: Tensor, correct: Tensor,
                   p: float, executor: Executor | None, workers: int | None, progress: bool) -> Tensor:
    """:func:`local_radius` of every correctly classified input, run on ``executor`` (see :func:`certify`)."""
    from .progress import LayerProgress

    gaps = logits.gather(1, predicted[:, None]) - logits
    limits = pairs[predicted]
    starts = torch.where(limits > 0, gaps / limits.clamp_min(1e-300), torch.full_like(gaps, math.inf)).clamp_min(0)
    out = torch.zeros(len(x), dtype=torch.float64)
    index = [k for k in range(len(x)) if bool(correct[k])]
    own = None
    if executor is None and workers is not None and workers > 1:  # spawned: torch's thread pools do not survive fork
        own = executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    sent = _shippable(model) if executor is not None and not isinstance(executor, ThreadPoolExecutor) else model
    jobs = [(sent, x[k:k + 1], int(predicted[k]), gaps[k], starts[k], p) for k in index]
    try:
        results = executor.map(_local_job, jobs) if executor is not None else map(_local_job, jobs)
        with LayerProgress(len(jobs), "local radii", progress) as bar:
            for k, r in zip(index, results):
                out[k] = r
                bar.advance(f"input {k}")
    finally:
        if own is not None:
            own.shutdown()
    return out


def check_labelled(x: Any, y: Any) -> tuple[Tensor, Tensor]:
    """Inputs: a floating tensor (N, ...); labels: an integer tensor (N,) of class indices."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or len(x) == 0:
        raise InputError(f"inputs must be a non-empty floating tensor (N, ...) with a batch dimension, got {_what(x)}")
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
        raise InputError(f"labels must be an integer tensor (N,) of class indices, got {_what(y)}")
    if len(y) != len(x):
        raise InputError(f"{len(x)} inputs but {len(y)} labels")
    if int(y.min()) < 0:
        raise InputError(f"labels must be class indices >= 0, got {int(y.min())}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("inputs contain NaN or Inf")
    return x, y.long()


def _what(obj: Any) -> str:
    return f"a {obj.dtype} tensor of shape {tuple(obj.shape)}" if isinstance(obj, Tensor) else type(obj).__name__


def load_labelled(path: str | Path) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` from a ``torch.save`` file holding a tuple/list ``(x, y)`` or a dict with an input key
    (``x``, ``inputs``, …) and a label key (``y``, ``labels``, …); loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise InputError(f"could not load data file {path} with weights_only=True (it must hold tensors only): "
                         f"{reason}") from None
    if isinstance(obj, dict):
        xs, ys = [k for k in INPUT_KEYS if k in obj], [k for k in LABEL_KEYS if k in obj]
        if not xs or not ys:
            raise InputError(f"data file {path} holds a dict with keys {sorted(map(str, obj))}; it needs inputs "
                             f"under one of {INPUT_KEYS} and labels under one of {LABEL_KEYS}")
        obj = (obj[xs[0]], obj[ys[0]])
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise InputError(f"data file {path} must hold (inputs, labels) or {{'x': inputs, 'y': labels}}, got "
                         f"{type(obj).__name__}" + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else ""))
    try:
        return check_labelled(*obj)
    except InputError as exc:
        raise InputError(f"data file {path}: {exc}") from None


def default_grid(radii: Tensor, steps: int = 5) -> tuple[float, ...]:
    """0 and ``steps`` evenly spaced radii up to the largest one, rounded to 2 significant digits."""
    top = float(radii.max()) if len(radii) else 0.0
    if not math.isfinite(top) or top <= 0:
        return (0.0,)
    return (0.0,) + tuple(float(f"{top * k / steps:.2g}") for k in range(1, steps + 1))


def _report_bound(report: Report, p: float) -> Bound:
    if report.norm != p:
        raise InputError(f"the report bounds the ℓ{norm_name(report.norm)} Lipschitz constant; certify was asked "
                         f"for ℓ{norm_name(p)}")
    return report.bound


def _radii(logits: Tensor, predicted: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    """radius_k = min_{j≠y} (f_y − f_j) / L_yj at the predicted class y (a zero L_yj never limits), and the margin."""
    gaps = logits.gather(1, predicted[:, None]) - logits  # d_yj ≥ 0, 0 at j = y
    limits = pairs[predicted]
    ratio = torch.where(limits > 0, gaps / limits.clamp_min(1e-300), torch.full_like(gaps, math.inf))
    ratio.scatter_(1, predicted[:, None], math.inf)
    gaps.scatter_(1, predicted[:, None], math.inf)
    return ratio.min(1).values.clamp_min(0.0), gaps.min(1).values


def _tail_pair_bounds(lg: LipGraph, p: float, classes: int, notes: list[str]) -> tuple[Tensor, tuple] | None:
    """L_ij = ‖(a_i − a_j)ᵀ‖_{p*} · L(h) over the network's affine tail f = A h + b, or None (with a note)."""
    outputs = record(lg.output).inputs
    if len(outputs) != 1:
        notes.append("per-class-pair bounds need a single output tensor: global bound used")
        return None
    tail, h = [], outputs[0]
    while h.op != "placeholder" and is_linear_op(h):
        tail.insert(0, h)
        h = record(h).inputs[0]
    if not tail:
        notes.append("the network does not end with a linear layer: global bound used")
        return None
    try:
        rows = _tail_jacobian(lg, tail).reshape(classes, -1)
    except Exception as exc:  # noqa: BLE001 - the global bound stands on its own
        notes.append(f"per-class-pair bounds unavailable ({type(exc).__name__}: {exc}): global bound used")
        return None
    gain: Bound = record(h).bound
    distances = torch.cdist(rows, rows, p=_DUAL[p], compute_mode="donot_use_mm_for_euclid_dist")
    path = record(h).path or "input"
    kind = lg.module_types.get(path) or record(h).key
    return distances * gain.value * (1 + FLOAT_MARGIN), (f"{path} ({kind})" if kind else path, gain)


def _tail_jacobian(lg: LipGraph, tail: list[fx.Node]) -> Tensor:
    """The matrix A of the affine ops ``tail`` (a Jacobian, constant), in float64 on a copy of the module."""
    gm = copy.deepcopy(lg.gm).double()
    replay = Replay(gm, [tail])
    constants = replay.constants()
    info = record(record(tail[0]).inputs[0]).info
    device = next((t.device for t in [*gm.parameters(), *gm.buffers()]), torch.device("cpu"))
    zero = torch.zeros(info.shape, dtype=torch.float64, device=device)
    return torch.autograd.functional.jacobian(lambda h: replay.run(tail, h, constants), zero).cpu()
