"""Lower bounds on the Lipschitz constant: the largest ratio we can actually exhibit (docs/mathematics.md §9).

    bound = lipgraph.lower_bound(model, x)                  # Bound(kind=LOWER, method="jacobian-ascent")
    bound, x_star = lipgraph.lower_bound(model, x, return_input=True)
    result = lipgraph.lower_search(model, x, seconds=10)    # LowerResult: the witness pair, direction, history

(``lipgraph.lower`` is the Bound factory; import from this module with ``from lipgraph.lower import ...``.)

**Why the returned number is ≤ L.** By definition L ≥ ‖f(a) − f(b)‖_p / ‖a − b‖_p for *every* pair a ≠ b. The
value returned is such a ratio, evaluated in float64 at an explicit pair (``result.input``, ``result.other``,
representable in the example's dtype, so the witness reproduces), minus a rounding allowance: 1e-12 ·
(‖f(a)‖_p + ‖f(b)‖_p) off the numerator (≈ 4500 float64 ulps) and a relative 1e-12; 1e-5 instead where the
computation rounds to float32 inside (a ``.float()`` in forward, or no float64 copy), more in half or bfloat16
(:func:`_allowance`). No differentiability is needed, so kinks (ReLU at 0, max-pool ties) cannot make it
unsound. The pairs are a = x + h·v, b = x − h·v around the best points x and directions v found by the search
(several h, the best kept), plus the wider pairs the ascent itself used and a few random nearby pairs. Where f
is differentiable at x the ratio tends to ‖J_f(x) v‖_p / ‖v‖_p as h → 0: it *is* the attained Jacobian norm (to
~1e-8), which the search maximises.

**The search** (batched over starts, in the model's own dtype):

- starts: the example input's rows, rows of ``data``, scaled copies of them, Gaussian and uniform points at
  the data's scale, and (in later rounds) perturbations of the best point so far;
- at each point, the dual power method for ‖J‖_{p→p} (Higham): u = J v, g = Jᵀ dual_p(u),
  v ← argmax_{‖v‖_p=1} ⟨g, v⟩, on one forward pass kept per batch of points: Jᵀu by a backward pass, J v by a
  double backward (J v = ∂/∂w ⟨Jᵀw, v⟩); ℓ2: power iteration on JᵀJ. ℓ∞: v is a sign
  vector and dual_∞(u) picks the largest output coordinate, so g is a Jacobian *row* and ‖J v‖_∞ its abs-sum
  (‖J‖_{∞→∞} = max row abs-sum). ℓ1: dual_1(u) = sign(u) and v becomes the best coordinate vector e_j, so
  ‖J v‖_1 is a Jacobian *column* abs-sum (‖J‖_{1→1} = max column abs-sum). Each ‖J v‖_p/‖v‖_p is a lower bound
  of ‖J(x)‖_{p→p}, hence of L where f is differentiable;
- gradient ascent (Adam) on x of the symmetric difference quotient ‖f(x + εv) − f(x − εv)‖_p / (2ε‖v‖_p) with
  the power-iterated v, ε shrinking geometrically: for small ε this is the Jacobian norm ‖J(x) v‖ as a function
  of x (with first-order autodiff only), and for larger ε it still has a useful gradient on piecewise-linear
  (ReLU) networks, whose Jacobian is piecewise constant (zero gradient almost everywhere);
- rounds alternate between that ascent (the best ``starts`` of ``4·starts`` candidates) and *sampling*: power
  iteration alone at many fresh points (Gaussian at 0.3–30× the data's scale, half of them around the best point
  so far), sized to cost about as much as an ascent round. The ascent climbs within and across linear regions;
  sampling finds regions it cannot reach (on ReLU networks the best activation pattern can be a thin cone).
  Without ``seconds``: one round of each; with ``seconds``: rounds until the budget is spent, checked after
  every step, the verification below included (its optional parts run only when they fit);
- the report's search (``REPORT_BUDGET``) is a fixed amount of work in multiply-adds, deterministic: small
  networks get the schedule above, large ones only the ascent from 1–4 starts (:func:`_schedule`);
- at the end, the best candidates are re-examined in float64: the exact local norm from the full Jacobian
  when it is small (ℓ2: its top singular vector; ℓ∞: its largest row; ℓ1: its largest column), else a few
  float64 power steps, then the difference quotients above.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .bound import Bound, lower
from .errors import InputError, LipgraphError
from .frontend.prepare import as_inputs, eval_mode, frozen_parametrizations, to_model_device, unwrap
from .frontend.untouched import leaves_untouched
from .norms import parse_norm

METHOD = "jacobian-ascent"
#: numerator allowance (relative to ‖f(a)‖ + ‖f(b)‖) and relative allowance for float64 rounding
ROUNDING = 1e-12
#: the allowance when f runs in float32 only (no float64 copy computes it)
FLOAT32_ROUNDING = 1e-5
#: the full Jacobian is materialised at the final candidates when it has at most this many entries
DENSE_JACOBIAN = 1 << 21
#: ... and built row by row (one backward pass each) up to this many outputs: torch's vectorised Jacobian, like any
#: ``autograd.grad`` with a seed tensor, imports sympy (≈ 0.4 s of a fresh process's start)
LOOPED_JACOBIAN_ROWS = 32
#: h for the final difference quotients (largest step of a coordinate, relative to the input's size)
STEP_SIZES = (1e-2, 1e-3, 1e-4, 1e-6)
#: the budget of the search every report runs (``analyze``, ``lipgraph explain``): an amount of work in
#: multiply-adds of forward passes, deterministic (no clock), so reports and golden files are reproducible. Sized so
#: that on large networks the search costs a small fraction of the certified bound's norms (benchmarks/RESULTS.md)
REPORT_BUDGET = {"work": 2e10}
#: the report search's full schedule (small networks: a budget of at least FULL_WORK point-steps, about what it
#: costs; 0.02–0.5 s per tiny model, median 66 % of the best lower bound a 20 s search finds) and its lean one
FULL = {"starts": 4, "steps": 5, "power_steps": 2, "screen": 4, "verify": 1, "sample": 64}
FULL_WORK = 250
LEAN = {"starts": 4, "steps": 8, "power_steps": 0, "screen": 1, "lr": 0.15}
#: the share of a ``seconds`` budget the search may use before the float64 verification
SEARCH_SHARE = 0.8
#: the ascent: ε from eps0 to eps1 (× the data's scale per coordinate), Adam learning rate lr (× the scale)
ASCENT = {"eps0": 0.3, "eps1": 3e-4, "lr": 0.05}


@dataclass
class LowerResult:
    """A proven lower bound with its witness pair: ``bound.value`` ≤ ‖f(input) − f(other)‖_p/‖input − other‖_p."""

    bound: Bound
    input: Tensor | tuple[Tensor, ...]  # a = x + h·v: same structure as the example input, batch 1
    other: Tensor | tuple[Tensor, ...]  # b
    point: Tensor | tuple[Tensor, ...]  # x, the point where the Jacobian norm is attained
    direction: Tensor  # v, flat, unit p-norm
    jacobian: float | None  # ‖J_f(x) v‖_p in float64 (None when it could not be computed)
    norm: float
    evaluations: int  # points at which the Jacobian was probed
    rounds: int
    seconds: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (seconds, best value found so far)

    @property
    def value(self) -> float:
        return self.bound.value


def lower_bound(model: nn.Module, x: Any, *, norm: Any = 2, starts: int = 8, steps: int = 50,
                seconds: float | None = None, data: Any = None, seed: int = 0, return_input: bool = False,
                progress: bool | Callable[[float, float], None] = False) -> Bound | tuple[Bound, Any]:
    """A proven lower bound on the ℓp Lipschitz constant of ``model`` (eval mode), kind ``LOWER``.

    ``x`` fixes the input shape (dim 0 is the batch; its rows are also starting points), ``data`` adds rows
    of real inputs as starts. ``starts`` points are searched at once, ``steps`` ascent steps each; with
    ``seconds`` the search keeps drawing new rounds of starts until that many seconds have passed.
    ``return_input=True`` also returns the input (batch 1) at which the Jacobian norm is attained.
    """
    result = search(model, x, norm=norm, starts=starts, steps=steps, seconds=seconds, data=data, seed=seed,
                    progress=progress)
    return (result.bound, result.point) if return_input else result.bound


# -- the function as a map between flat vectors ----------------------------------------------------------
def _flatten_outputs(out: Any, rows: int | None) -> list[Tensor]:
    if isinstance(out, Tensor):
        if not out.is_floating_point():
            return []
        if rows is None:
            return [out.reshape(1, -1)]
        if out.dim() == 0 or out.shape[0] != rows:
            raise _NotBatched
        return [out.reshape(rows, -1)]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten_outputs(o, rows)]
    return []


class _NotBatched(Exception):
    pass


class _OtherFunction(Exception):
    """The float64 net's outputs are not f's (another width): its ratios are no lower bound of f's constant."""


class _Net:
    """f as a map from (B, n) to (B, m): B points, each the concatenation of the flattened inputs.

    ``batched``: the B points run as one batch (checked to match one-at-a-time evaluation); ``loop``: one
    point at a time with batch 1; ``whole``: the model only runs on the example's exact shape, so a point is
    the whole example (its batch dimension included).
    """

    def __init__(self, model: nn.Module, inputs: tuple[Tensor, ...], dtype: torch.dtype | None,
                 deep: bool = False, like: "_Net | None" = None) -> None:
        self.device = inputs[0].device
        self.dtype = dtype or inputs[0].dtype
        if deep:
            self.module = copy.deepcopy(model).to(self.dtype)
            self.state = None
        else:
            self.module = model
            self.state = {k: (v.detach().to(self.dtype) if v.is_floating_point() else v)
                          for k, v in [*model.named_parameters(), *model.named_buffers()]}
        self.example = tuple(x.detach().to(self.dtype) for x in inputs)
        self.mode, self.jvp_mode = "batched", "double-vjp"
        self.shapes = [tuple(x.shape[1:]) for x in self.example]
        if like is not None:  # the same function in another dtype: no need to probe how it runs
            self.mode, self.shapes, self.m = like.mode, like.shapes, like.m
            return
        rows = self.pack(self.example)
        try:
            single = [self(rows[i:i + 1], mode="loop") for i in range(min(len(rows), 2))]
        except Exception:  # noqa: BLE001 - the model only accepts the example's exact shape
            self.mode, self.shapes = "whole", [tuple(x.shape) for x in self.example]
            out = self(self.pack(self.example))
            _same_twice(out, self(self.pack(self.example)))
            self.m = out.shape[1]
            return
        probe = torch.cat([rows[:1], rows[:1] * 0.5 + 0.1], 0)
        try:
            both = self(probe, mode="batched")
            ref = torch.cat([single[0], self(probe[1:], mode="loop")], 0)
            tol = 1e-4 * (1.0 + float(ref.abs().max()))
            if both.shape != ref.shape or not bool(((both - ref).abs() <= tol).all()):
                raise _NotBatched
        except Exception:  # noqa: BLE001 - points interact across the batch: run them one by one
            self.mode = "loop"
            _same_twice(single[0], self(rows[:1], mode="loop"))
        self.m = single[0].shape[1]

    @property
    def n(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def pack(self, inputs: tuple[Tensor, ...]) -> Tensor:
        """Example-structured inputs -> (B, n) rows."""
        if self.mode == "whole":
            return torch.cat([x.reshape(1, -1) for x in inputs], 1).to(self.dtype)
        return torch.cat([x.reshape(x.shape[0], -1) for x in inputs], 1).to(self.dtype)

    def unpack(self, z: Tensor) -> tuple[Tensor, ...]:
        """(B, n) rows -> the model's positional inputs (batch B; ``whole``: B must be 1)."""
        parts, start = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            chunk = z[:, start:start + size]
            parts.append(chunk.reshape(*shape) if self.mode == "whole" else chunk.reshape(z.shape[0], *shape))
            start += size
        return tuple(parts)

    def _call(self, args: tuple[Tensor, ...]) -> Any:
        args = tuple(a.clone() for a in args)  # a model may update its input in place (a first ReLU(inplace=True))
        if self.state is None:
            return self.module(*args)
        return functional_call(self.module, self.state, args)

    def __call__(self, z: Tensor, mode: str | None = None) -> Tensor:
        mode = mode or self.mode
        if mode == "batched":
            return torch.cat(_flatten_outputs(self._call(self.unpack(z)), z.shape[0]), 1)
        rows = None if mode == "whole" else 1
        return torch.cat([torch.cat(_flatten_outputs(self._call(self.unpack(z[i:i + 1])), rows), 1)
                          for i in range(z.shape[0])], 0)

    def structured(self, z: Tensor, like: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        """One row as the example's structure (batch 1), in the example's dtype."""
        parts = self.unpack(z.reshape(1, -1))
        parts = tuple(p.detach().to(x.dtype) for p, x in zip(parts, like))
        return parts[0] if len(parts) == 1 else parts


def _same_twice(first: Tensor, again: Tensor) -> None:
    """Two runs at one input must agree (checked where the batched run did not reproduce the single ones, or could
    not run): a random op, or a forward that updates the model's own state, makes the model no function, whose
    quotients bound nothing."""
    if again.shape != first.shape or not bool(torch.equal(again, first)):
        raise InputError("the model's output at one input changes from one call to the next (a random op, or a "
                         "forward that updates the model's parameters or buffers): it is no function, so no "
                         "difference quotient bounds its Lipschitz constant")


def _jvp(fn: _Net, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(f(z), J(z) v) for ops without a double backward: forward-mode AD; else, for ops without that either
    (e.g. hardsigmoid, some dilated max-pools), a central difference. Only the search uses it: a poor J v makes the
    search weaker, never the returned bound wrong (that one is a float64 difference quotient)."""
    if fn.jvp_mode != "difference":
        try:
            with warnings.catch_warnings():  # torch's first jvp registers decompositions with torch.jit.script
                warnings.simplefilter("ignore", DeprecationWarning)
                return jvp(fn, (z,), (v,))
        except Exception:  # noqa: BLE001
            fn.jvp_mode = "difference"
    with torch.no_grad():
        size = max(float(z.abs().max()), 1.0)
        h = (3e-3 if z.dtype == torch.float32 else 1e-6) * size / v.abs().amax(1, keepdim=True).clamp_min(1e-30)
        return fn(z), (fn(z + h * v) - fn(z - h * v)) / (2 * h)


# -- norms and their duals, row by row -------------------------------------------------------------------
def _norm(u: Tensor, p: float, smooth: bool = False) -> Tensor:
    """Row-wise ℓp norms; ``smooth`` keeps the ℓ2 gradient finite at 0 (for the ascent objective only)."""
    if math.isinf(p):
        return u.abs().amax(1)
    if p == 1:
        return u.abs().sum(1)
    if smooth:
        return u.pow(2).sum(1).add(1e-300 if u.dtype == torch.float64 else 1e-30).sqrt()
    return torch.linalg.vector_norm(u, 2, dim=1)


def _one_hot_max(g: Tensor) -> Tensor:
    idx = g.abs().argmax(1, keepdim=True)
    out = torch.zeros_like(g)
    sign = torch.gather(g, 1, idx).sign()
    return out.scatter_(1, idx, torch.where(sign == 0, torch.ones_like(sign), sign))


def _dual_out(u: Tensor, p: float) -> Tensor:
    """A norming functional of u: ⟨w, u⟩ = ‖u‖_p with ‖w‖_q = 1 (1/p + 1/q = 1)."""
    if math.isinf(p):
        return _one_hot_max(u)
    if p == 1:
        return u.sign()
    return u / _norm(u, 2).clamp_min(torch.finfo(u.dtype).tiny)[:, None]


def _unit_in(g: Tensor, p: float) -> Tensor:
    """argmax over ‖v‖_p = 1 of ⟨g, v⟩."""
    if math.isinf(p):
        return torch.where(g >= 0, 1.0, -1.0).to(g.dtype)
    if p == 1:
        return _one_hot_max(g)
    return g / _norm(g, 2).clamp_min(torch.finfo(g.dtype).tiny)[:, None]


class _Linearized:
    """J(z) and J(z)ᵀ at fixed points z, with one forward pass whose graph is kept: Jᵀu is a backward pass, J v
    the double-backward trick (J v = ∂/∂w ⟨Jᵀw, v⟩, Jᵀw being linear in w), so that power steps at the same
    points rerun no forward pass and need no forward-mode AD. Ops without a double backward fall back to
    :func:`_jvp` (forward mode, else a central difference)."""

    def __init__(self, fn: _Net, z: Tensor) -> None:
        self.fn = fn
        self.z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            self.y = fn(self.z)
        self.w: Tensor | None = None
        self.jtw: Tensor | None = None

    def _grad(self, out: Tensor, wrt: Tensor, seed: Tensor, create_graph: bool = False) -> Tensor:
        if not out.requires_grad:
            return torch.zeros_like(wrt)
        # the vector-Jacobian product as the gradient of <out, seed>: no seed tensor, so torch imports no sympy
        (g,) = torch.autograd.grad((out * seed).sum(), wrt, retain_graph=True, create_graph=create_graph,
                                   allow_unused=True)
        return torch.zeros_like(wrt) if g is None else g

    def transposed(self, u: Tensor) -> Tensor:
        """Jᵀ u, row by row."""
        return self._grad(self.y, self.z, u).detach()

    def forward(self, v: Tensor) -> Tensor:
        """J v, row by row."""
        if self.fn.jvp_mode == "double-vjp":
            try:
                if self.jtw is None:
                    self.w = torch.zeros_like(self.y, requires_grad=True)
                    with torch.enable_grad():
                        self.jtw = self._grad(self.y, self.z, self.w, create_graph=True)
                if not self.y.requires_grad:  # f is constant
                    return torch.zeros_like(self.y)
                if self.jtw.requires_grad:
                    return self._grad(self.jtw, self.w, v).detach()
                self.fn.jvp_mode = "forward"  # a backward that autograd cannot differentiate
            except Exception:  # noqa: BLE001 - an op without a double backward
                self.fn.jvp_mode = "forward"
        return _jvp(self.fn, self.z.detach(), v)[1].detach()


def _power_steps(fn: _Net, z: Tensor, v: Tensor, p: float, steps: int,
                 record: Callable[[Tensor, Tensor], bool] | None = None) -> tuple[Tensor, Tensor]:
    """``steps`` steps of the dual power method at the points z: (‖J v‖_p / ‖v‖_p per row at the last step,
    the next direction). ``record(value, v)`` sees every step and stops the iteration by returning True."""
    lin = _Linearized(fn, z)
    value = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for _ in range(steps):
        u = lin.forward(v)
        value = _norm(u, p) / _norm(v, p)
        value = torch.where(v.abs().amax(1) > 0, value, torch.zeros_like(value))
        g = lin.transposed(_dual_out(u, p))
        dead = ~(g.abs().amax(1) > 0)  # J = 0 there (or exactly orthogonal): try a fresh random direction
        nxt = _unit_in(g, p)
        if bool(dead.any()):
            nxt[dead] = _unit_in(torch.randn_like(g[dead]), p)
        stop = record is not None and record(value.detach(), v)
        v = nxt.detach()
        if stop:
            break
    return value.detach(), v


# -- starting points -----------------------------------------------------------------------------------
def _data_rows(fn: _Net, data: Any) -> Tensor | None:
    if data is None:
        return None
    items = tuple(t.to(fn.device) for t in as_inputs(data))
    if fn.mode == "whole":
        if tuple(tuple(t.shape) for t in items) == tuple(fn.shapes):
            return fn.pack(items)
        if all(tuple(t.shape[1:]) == s for t, s in zip(items, fn.shapes)):
            return torch.cat([fn.pack(tuple(t[i] for t in items)) for i in range(items[0].shape[0])], 0)
    else:
        if all(tuple(t.shape) == s for t, s in zip(items, fn.shapes)):  # one sample without a batch dim
            items = tuple(t.unsqueeze(0) for t in items)
        if len(items) == len(fn.shapes) and all(tuple(t.shape[1:]) == s for t, s in zip(items, fn.shapes)):
            return fn.pack(tuple(t.to(fn.device) for t in items))
    want = ", ".join("(N, " + ", ".join(map(str, s)) + ")" for s in fn.shapes)
    got = ", ".join(str(tuple(t.shape)) for t in items)
    raise InputError(f"data of shape {got} does not match the model's input: expected {want}")


def _first_starts(fn: _Net, example: Tensor, data: Tensor | None, count: int, scale: float, mean: float,
                  lo: float, hi: float, gen: torch.Generator) -> Tensor:
    n, kw = fn.n, dict(dtype=fn.dtype, device=fn.device)

    def gauss(c: float, k: int = 1) -> Tensor:
        return mean + c * scale * torch.randn(k, n, generator=gen, dtype=fn.dtype).to(fn.device)

    picks: list[Tensor] = [example[:max(1, count // 4)]]
    if data is not None and len(data):
        idx = torch.randperm(len(data), generator=gen)[:max(1, count // 2)]
        picks.append(data[idx.to(data.device)])
    pool = torch.cat(picks, 0)
    extra = [pool * 2.0, pool * 0.5, gauss(1.0), gauss(3.0), gauss(0.3),
             lo + (hi - lo) * torch.rand(1, n, generator=gen, dtype=fn.dtype).to(fn.device),
             pool[:1] + gauss(0.3) - mean, torch.randn(1, n, generator=gen, dtype=fn.dtype).to(fn.device)]
    out = torch.cat([pool] + extra, 0)[:count]
    if len(out) < count:
        cs = (1.0, 3.0, 0.3, 10.0)
        more = [gauss(cs[i % 4]) for i in range(count - len(out))]
        out = torch.cat([out, *more], 0)
    return out.to(**kw)


def _later_starts(fn: _Net, best: Tensor | None, count: int, scale: float, mean: float, gen: torch.Generator,
                  round_: int) -> Tensor:
    n = fn.n
    rand = torch.randn(count, n, generator=gen, dtype=fn.dtype).to(fn.device)
    cs = torch.tensor([(0.3, 1.0, 3.0, 10.0, 30.0)[(i + round_) % 5] for i in range(count)], dtype=fn.dtype,
                      device=fn.device)[:, None]
    out = mean + cs * scale * rand
    if best is not None:  # half of them explore around the best point so far
        k = count // 2
        local = torch.tensor([(0.01, 0.1, 0.3)[i % 3] for i in range(k)], dtype=fn.dtype, device=fn.device)[:, None]
        out[:k] = best + local * scale * rand[:k]
    return out


# -- the search ------------------------------------------------------------------------------------------
@dataclass
class _Pool:
    """The best (value, x, v, ε) candidates found so far, one per start, kept across rounds."""

    size: int
    items: list[tuple[float, Tensor, Tensor, float]] = field(default_factory=list)

    def offer(self, values: Tensor, z: Tensor, v: Tensor, eps: Tensor) -> None:
        for i in torch.argsort(values, descending=True)[:self.size].tolist():
            val = float(values[i])
            if math.isfinite(val):
                self.items.append((val, z[i].detach().clone(), v[i].detach().clone(), float(eps[i])))
        self.items.sort(key=lambda t: -t[0])
        del self.items[self.size:]

    @property
    def best(self) -> float:
        return self.items[0][0] if self.items else 0.0


class _Progress:
    def __init__(self, progress: bool | Callable[[float, float], None], total: int | None,
                 seconds: float | None) -> None:
        self.callback = progress if callable(progress) else None
        self.bar = None
        self.done = 0
        if progress is True:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("lower bound"), BarColumn(), TextColumn("{task.description}"),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("", total=seconds if seconds else total)
            self.by_time = bool(seconds)
            self.bar.start()

    def update(self, elapsed: float, best: float) -> None:
        self.done += 1
        if self.callback:
            self.callback(elapsed, best)
        if self.bar is not None:
            self.bar.update(self.task, completed=elapsed if self.by_time else self.done, description=f"≥ {best:.4g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextlib.contextmanager
def _threads(model: nn.Module, inputs: tuple[Tensor, ...]) -> Iterator[None]:
    """One CPU thread for small networks: their ops are too small to split, and on a busy machine OpenMP's
    spinning threads make the many tiny calls of the search an order of magnitude slower; for larger ones no more
    than the cores other processes leave idle (:func:`lipgraph.threads.idle_threads`)."""
    from .threads import idle_threads

    small = sum(p.numel() for p in model.parameters()) <= 2_000_000 and sum(x.numel() for x in inputs) <= 20_000
    saved = torch.get_num_threads()
    if inputs[0].device.type == "cpu" and saved > 1:
        torch.set_num_threads(1 if small else min(saved, idle_threads()))
    try:
        yield
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)


@dataclass(frozen=True)
class _Schedule:
    """How much the search does: ``starts·screen`` first candidates, ``power_steps`` power steps at each point,
    ``steps`` ascent steps (Adam's learning rate ``lr`` × the data's scale; the direction ``steer``-ed by their
    backward pass instead of a power step each; both ends of each difference quotient ``paired`` in one batch) at
    the ``starts`` best, ``sample`` fresh points per sampling round,
    ``rounds`` rounds (without a clock), ``verify`` candidates re-examined in float64, with float64 power steps and
    random pairs when ``polish``."""

    starts: int
    steps: int
    power_steps: int
    screen: int
    verify: int
    sample: int
    rounds: int = 2
    polish: bool = True
    lr: float = ASCENT["lr"]
    steer: bool = False
    paired: bool = False


def _schedule(cost: float, work: float | None, starts: int, steps: int, power_steps: int, screen: int,
              verify: int) -> _Schedule:
    """The explicit sizes, or, for a ``work`` budget (multiply-adds of forward passes), sizes that fit it: a power
    step at one point costs about four forward passes (forward, backward, double backward, backward); ``cost``: the
    multiply-adds of one forward pass at one point (:func:`_forward_cost`). Small
    networks, whose steps cost their per-call overhead more than their arithmetic, get the full schedule (ascent and
    a sampling round, ``FULL``); larger ones the ascent alone (``LEAN``) from as many starts as the budget pays for
    (1 to ``LEAN["starts"]``), no sampling round, no float64 power steps: on ResNet-18 the ascent is what climbs
    (from ‖J(x)‖ ≈ 0.068 at the example to 0.107 in five steps), the sampling round adds nothing, and at equal work
    more ascent steps with larger Adam steps (``LEAN["lr"]``) climb further than more candidates or power steps at
    the start; their direction is steered by their own backward pass (:func:`_steered`; docs/speed.md)."""
    if work is None:
        return _Schedule(starts, steps, power_steps, screen, verify, sample=min(4096, starts * screen * 4))
    point_steps = work / (4.0 * cost)
    if point_steps >= FULL_WORK:
        return _Schedule(**FULL)
    ascended = int(min(LEAN["starts"], max(1, point_steps // _lean_cost())))
    return _Schedule(starts=ascended, steps=LEAN["steps"], power_steps=LEAN["power_steps"], screen=LEAN["screen"],
                     verify=1, sample=0, rounds=1, polish=False, lr=LEAN["lr"], steer=True,
                     paired=True)


def _lean_cost() -> float:
    """Point-steps of the lean schedule per ascended start: its candidates' power steps, then per ascent step a
    difference quotient with its gradient (about 1.5 power steps; the direction is steered by the same pass)."""
    return LEAN["screen"] * LEAN["power_steps"] + LEAN["steps"] * 1.5


def _forward_cost(fn: _Net, z: Tensor) -> tuple[float, _Linearized]:
    """(multiply-adds of the forward pass at the points z, J at z): the cost from the leaf modules' outputs, counted
    on the forward pass of the linearization, which the lean search's first (half) power step then reuses. A module
    with a weight of ≥ 2 dimensions (linear, conv) costs its output size × its weight's fan-in, any other leaf its
    output size. Deterministic (no clock); ops called as functions, and TorchScript modules (which take no hooks),
    count nothing, so this can only err low."""
    total = [0.0]

    def hook(module: nn.Module, _args: Any, out: Any) -> None:
        weight = getattr(module, "weight", None)
        fan_in = weight[0].numel() if isinstance(weight, Tensor) and weight.dim() >= 2 else 1
        total[0] += sum(t.numel() for t in _flatten_outputs(out, None)) * fan_in

    leaves = [m for m in fn.module.modules()
              if not any(True for _ in m.children()) and not isinstance(m, torch.jit.ScriptModule)]
    hooks = [m.register_forward_hook(hook) for m in leaves]
    try:
        lin = _Linearized(fn, z)
    finally:
        for h in hooks:
            h.remove()
    return max(total[0], float(len(z) * (fn.n + fn.m))), lin


class _Clock:
    """The wall-time budget (``seconds``): the search stops at ``SEARCH_SHARE`` of it, or earlier to leave the
    float64 verification the time its difference quotients take (``reserve``); the verification does its optional
    parts only when they fit, and always its first candidate's difference quotients."""

    def __init__(self, t0: float, seconds: float | None) -> None:
        self.t0, self.seconds, self.reserve = t0, seconds, 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def search_over(self) -> bool:
        return (self.seconds is not None
                and self.elapsed() >= min(SEARCH_SHARE * self.seconds, self.seconds - self.reserve))

    def fits(self, seconds: float) -> bool:
        return self.seconds is None or self.elapsed() + seconds <= self.seconds


@leaves_untouched
def search(model: nn.Module, x: Any, *, norm: Any = 2, starts: int = 8, steps: int = 50,
           seconds: float | None = None, data: Any = None, seed: int = 0, power_steps: int = 8, screen: int = 4,
           verify: int = 3, work: float | None = None,
           progress: bool | Callable[[float, float], None] = False) -> LowerResult:
    """The lower-bound search of :func:`lower_bound`, returning the witness pair and the search history.

    ``power_steps``: power-iteration steps at each candidate point; ``screen``: candidates per ascended start in
    the first round; ``verify``: best candidates re-examined in float64 at the end. ``work`` (multiply-adds of
    forward passes, e.g. ``REPORT_BUDGET``) replaces all of these by sizes that fit it (:func:`_schedule`).
    ``seconds`` caps the wall time, the final verification included (it returns after at most one batch of
    Jacobian products past the budget).
    """
    p = parse_norm(norm)
    if starts < 1 or steps < 0 or power_steps < 1 or screen < 1 or verify < 1:
        raise InputError("starts, power_steps, screen and verify must be >= 1 and steps >= 0")
    if seconds is not None and seconds <= 0:
        raise InputError("seconds must be positive")
    if work is not None and work <= 0:
        raise InputError("work must be positive")
    model = unwrap(model)
    inputs = to_model_device(model, as_inputs(x))
    t0 = time.perf_counter()
    clock = _Clock(t0, seconds)
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(model, []), torch.random.fork_rng(devices=[]), _threads(model, inputs):
        torch.manual_seed(seed)
        model = frozen_parametrizations(model)
        try:
            fn = _Net(model, inputs, None)
        except LipgraphError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"the model does not run on the example input: {type(exc).__name__}: {exc}") from None
        example = fn.pack(fn.example)
        started = time.perf_counter()
        cost, at_example = _forward_cost(fn, example)
        if not bool(torch.isfinite(at_example.y.detach()).all()):
            raise InputError("the model's output is not finite (NaN or Inf) at the example input: no lower bound")
        forward_seconds = (time.perf_counter() - started) / len(example)
        plan = _schedule(cost / len(example), work, starts, steps, power_steps, screen, verify)
        started = time.perf_counter()
        # a report's lean search checks the float64 net on its own pairs (a pass saved); a timed one measures it
        unchecked = seconds is None and not plan.polish
        exact = _float64_net(model, inputs, fn, check=not unchecked)
        exact_seconds = time.perf_counter() - started  # one float64 forward pass at one point (its check)
        clock.reserve = _pairs_seconds(plan.polish, exact_seconds)
        rows = _data_rows(fn, data)
        ref = rows if rows is not None else example
        scale = float(ref.std()) if ref.numel() > 1 else 0.0
        scale = scale if scale > 1e-6 else max(float(ref.abs().mean()), 1.0)
        mean, lo, hi = float(ref.mean()), float(ref.min()), float(ref.max())
        if hi - lo < 1e-6:
            lo, hi = mean - scale, mean + scale
        first = plan.starts * plan.screen
        if seconds is not None:  # the first round's power steps fit in a quarter of the budget
            first = int(min(first, max(1, 0.25 * seconds / (4 * plan.power_steps * max(forward_seconds, 1e-9)))))
        pool = _Pool(size=max(4, plan.starts))
        history: list[tuple[float, float]] = []
        bar = _Progress(progress, 2 * (plan.steps + plan.power_steps), seconds)
        # rounds alternate: ascent (the best `starts` of `starts·screen` candidates, `steps` Adam steps) and
        # sampling (power iteration only, at as many fresh points as an ascent round costs): the ascent climbs
        # within and across linear regions, the sampling finds regions the ascent does not reach
        # (the sample size adapts so that both kinds take about as long; small networks are dominated by the
        # per-call overhead, so a batch of thousands of points costs little more than a batch of 8)
        cap = max(plan.starts, min(4096, (1 << 22) // max(1, fn.n)))
        sample, spent = min(cap, plan.sample), [0.0, 0.0]
        evaluations, round_ = 0, 0
        try:
            while True:
                kind = round_ % 2 if plan.steps else 1  # 0: ascent, 1: sampling
                best_z = pool.items[0][1][None] if pool.items else None
                started = time.perf_counter()
                if round_ == 0:
                    z0 = _first_starts(fn, example, rows, first, scale, mean, lo, hi, gen)
                else:
                    z0 = _later_starts(fn, best_z, plan.starts * plan.screen if kind == 0 else sample, scale, mean,
                                       gen, round_)
                evaluations += _ascend(fn, z0, plan.starts, p, plan.steps if kind == 0 else 0, plan.power_steps,
                                       plan.lr, plan.steer, plan.paired, scale, pool, history, clock, bar, gen,
                                       at_example)
                at_example = None  # its graph is freed
                if round_ > 0 and seconds is not None:
                    spent[kind] = time.perf_counter() - started
                    if kind == 1 and spent[0] > 0 and spent[1] > 0:
                        sample = int(min(cap, max(plan.starts, sample * min(4.0, max(0.25, spent[0] / spent[1])))))
                round_ += 1
                if seconds is None and round_ >= plan.rounds or clock.search_over():
                    break
            try:
                verified = _verify(exact, fn, pool.items[:plan.verify], p, scale, plan.polish, clock, exact_seconds)
            except Exception:  # noqa: BLE001 - the unchecked float64 net does not compute f: the checked one
                if not unchecked:
                    raise
                exact = _float64_net(model, inputs, fn)
                verified = _verify(exact, fn, pool.items[:plan.verify], p, scale, plan.polish, clock, exact_seconds)
            if exact[0] is not fn:  # the witness's quotient in f itself, unless the float64 copy computes f there
                pair = (verified[1][None].to(fn.dtype), verified[2][None].to(fn.dtype))
                want = _ends(fn, *pair)
                if not _computes_f(want, verified[6]):
                    value = float(_ratio(fn, *pair, p, FLOAT32_ROUNDING, want)[0])
                    verified = (value, *verified[1:5], None, verified[6])
        finally:
            bar.close()
    value, a, b, z, v, jac, _ = verified
    elapsed = time.perf_counter() - t0
    history.append((elapsed, max(value, history[-1][1] if history else 0.0)))
    like = fn.example
    return LowerResult(bound=lower(value, METHOD), input=fn.structured(a, like), other=fn.structured(b, like),
                       point=fn.structured(z, like), direction=v.to(like[0].dtype), jacobian=jac, norm=p,
                       evaluations=evaluations, rounds=round_, seconds=elapsed, history=history)


def _ascend(fn: _Net, z0: Tensor, keep: int, p: float, steps: int, power_steps: int, lr: float, steer: bool,
            paired: bool, scale: float, pool: _Pool, history: list[tuple[float, float]], clock: _Clock,
            bar: _Progress, gen: torch.Generator, known: _Linearized | None = None) -> int:
    """Power iteration at all the candidate points (``power_steps = 0``: half a step, nothing to rank them by, on
    the forward pass of ``known`` when it is J at exactly these points), then Adam on the ``keep`` best ones with
    their power-iterated directions, Adam's learning rate ``lr`` × ``scale``; after each ascent step the direction
    takes a power step at the new point, or with ``steer`` one from the ascent's own backward pass
    (:func:`_steered`, no extra pass; after the last step, whose quotient is recorded, no backward pass: its
    gradients would move a point nobody evaluates); ``paired``: see :func:`_difference`. Stops as soon as the
    clock's search share is spent."""
    b, n = z0.shape
    v = _unit_in(torch.randn(b, n, generator=gen, dtype=fn.dtype).to(fn.device), p)
    z = z0.detach().clone()
    no_eps = torch.zeros(b, dtype=fn.dtype, device=fn.device)
    evaluations = [0]

    def record(values: Tensor, pts: Tensor, dirs: Tensor, eps: Tensor) -> bool:
        values = torch.nan_to_num(values, nan=0.0, posinf=0.0)
        pool.offer(values, pts, dirs, eps)
        elapsed = clock.elapsed()
        # the history follows the Jacobian values (float32 difference quotients at small ε can be inflated by
        # cancellation; the final float64 check decides what is reported)
        jac = float(values.max()) if not bool((eps > 0).any()) and len(values) else 0.0
        best = max(jac, history[-1][1] if history else 0.0)
        history.append((elapsed, best))
        bar.update(elapsed, best)
        return clock.search_over()

    def power_record(at: Tensor, eps: Tensor) -> Callable[[Tensor, Tensor], bool]:
        def seen(values: Tensor, dirs: Tensor) -> bool:
            evaluations[0] += len(values)
            return record(values, at, dirs, eps)
        return seen

    if power_steps:
        value, v = _power_steps(fn, z, v, p, power_steps, power_record(z, no_eps))
    else:  # half a power step: v ∝ Jᵀw for a random w, in J's row space (no J v, no double backward)
        same = known is not None and known.z.shape == z.shape and bool(torch.equal(known.z.detach(), z))
        g = (known if same else _Linearized(fn, z)).transposed(
            _dual_out(torch.randn(b, fn.m, generator=gen, dtype=fn.dtype).to(fn.device), p))
        value, v = torch.zeros(b, dtype=fn.dtype, device=fn.device), torch.where(
            (g.abs().amax(1) > 0)[:, None], _unit_in(g, p), v)
    if steps == 0 or clock.search_over():
        return evaluations[0]
    top = torch.argsort(torch.nan_to_num(value, nan=0.0), descending=True)[:keep]
    z, v, b = z[top], v[top], len(top)
    no_eps = no_eps[:b]
    # ε: the half-width of the difference quotient, per-coordinate size of ε·v from 0.3·scale down to 3e-4·scale
    width = scale * math.sqrt(n) if p == 2 else scale  # ℓ2: v is spread out; ℓ∞: signs; ℓ1: e_j
    eps0, eps1 = ASCENT['eps0'] * width, ASCENT['eps1'] * width
    zp = z.clone().requires_grad_(True)
    opt = _Adam(zp, lr * scale, max(1, steps), 0.002 * scale)
    for t in range(steps):
        eps = eps0 * (eps1 / eps0) ** (t / max(1, steps - 1))
        vv = v.clone().requires_grad_(steer)
        d = eps * vv
        q = _norm(_difference(fn, zp, d, paired), p, smooth=True) / (2 * eps * _norm(v, p))
        q = torch.nan_to_num(q, nan=0.0, posinf=0.0)
        if record(q.detach(), zp.detach(), v, torch.full((b,), eps, dtype=fn.dtype, device=fn.device)) or (
                steer and t == steps - 1):
            break
        if not q.requires_grad:  # a forward under torch.no_grad() (or detached): nothing to climb along
            break
        zp.grad = None
        (-q.sum()).backward()
        if zp.grad is not None:
            opt.step(torch.nan_to_num(zp.grad, nan=0.0, posinf=0.0, neginf=0.0))
        if steer:
            v_next = _steered(vv, p)
            evaluations[0] += b
        else:
            at = zp.detach().clone()
            _, v_next = _power_steps(fn, at, v, p, 1, power_record(at, no_eps))
        if clock.search_over():
            break
        v = v_next
    return evaluations[0]


def _difference(fn: _Net, z: Tensor, d: Tensor, paired: bool) -> Tensor:
    """f(z + d) − f(z − d) per row; ``paired``: both ends in one batch where the points run batched (one pass over
    the network instead of two, its backward likewise). On ResNet-18 at 112² on one thread an ascent step costs
    half as much so: at batch 1 torch's CPU convolution takes its slow non-oneDNN path on 8 of the 20 layers (the
    small late ones), at batch 2 none. The results differ from two passes in the last float32 bits."""
    if not paired or fn.mode != "batched":
        return fn(z + d) - fn(z - d)
    both = fn(torch.cat([z + d, z - d], 0))
    return both[:len(z)] - both[len(z):]


def _steered(v: Tensor, p: float) -> Tensor:
    """The next direction from the quotient's gradient in v: with u = (f(z + εv) − f(z − εv))/(2ε),
    ∂‖u‖_p/∂v = J̄ᵀ dual_p(u), J̄ the mean of J(z ± εv) (→ J(z) as ε → 0), so this is a power step (the
    v ← argmax ⟨Jᵀ dual_p(Jv), v⟩ of :func:`_power_steps`) on the same backward pass as the ascent's gradient in z.
    Rows with a zero gradient keep their direction."""
    g = -v.grad if v.grad is not None else torch.zeros_like(v)
    g = torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    alive = g.abs().amax(1) > 0
    return torch.where(alive[:, None], _unit_in(g, p), v.detach())


class _Adam:
    """Adam (Kingma & Ba 2015, torch's default β = (0.9, 0.999), ε = 1e-8) with a cosine-annealed learning rate
    (Loshchilov & Hutter 2017; torch's recursive form), the same arithmetic as ``torch.optim.Adam`` with
    ``CosineAnnealingLR``, whose first use imports torch._dynamo (seconds on a fresh process)."""

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, param: Tensor, lr: float, t_max: int, eta_min: float) -> None:
        self.param, self.lr, self.t_max, self.eta_min = param, lr, t_max, eta_min
        self.avg, self.avg_sq, self.t = torch.zeros_like(param), torch.zeros_like(param), 0

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        (beta1, beta2), self.t = self.BETAS, self.t + 1
        self.avg.lerp_(grad, 1 - beta1)
        self.avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (self.avg_sq.sqrt() / (1 - beta2 ** self.t) ** 0.5).add_(self.EPS)
        self.param.addcdiv_(self.avg, denom, value=-self.lr / (1 - beta1 ** self.t))
        t, t_max = self.t, self.t_max
        self.lr = ((1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max))
                   * (self.lr - self.eta_min) + self.eta_min)


# -- float64 verification: the returned value is an explicit difference quotient ---------------------------
def _float64_net(model: nn.Module, inputs: tuple[Tensor, ...], fn: _Net, check: bool = True) -> tuple[_Net, float]:
    """f in float64 (the parameters cast for the call, else a float64 copy), checked on one point; float32 as the
    last resort. ``check=False``: the first, unchecked (:func:`_ratio` then checks the output's width and raises
    where it differs; a failing call raises too)."""
    for deep in (False, True):
        try:
            net = _Net(model, inputs, torch.float64, deep=deep, like=fn)
            if not check:
                return net, ROUNDING
            with torch.no_grad():
                if net(net.pack(net.example)[:1]).shape[1] == fn.m:  # (float32 inside: :func:`_ratio`'s allowance)
                    return net, ROUNDING
        except Exception:  # noqa: BLE001
            continue
    return fn, FLOAT32_ROUNDING  # the model does not run in float64


def _computes_f(want: tuple[Tensor, Tensor], got: tuple[Tensor, Tensor]) -> bool:
    """Whether f's float64 copy, whose outputs at the witness pair (a, b) are ``got`` (from the verification's own
    pass), agrees with f's own outputs ``want`` there, at both ends, up to float32 error: a model may compute another
    function in float64 (a branch on the dtype), whose quotients say nothing of f's constant."""
    for w, g in zip(want, got):
        w, g = w.to(g.dtype), g[None]
        if w.shape != g.shape or not bool(((w - g).abs() <= 1e-3 * (1 + float(w.abs().max()))).all()):
            return False
    return True


class _Downcasts(TorchFunctionMode):
    """Records the coarsest floating dtype a torch function rounds to from a finer floating input (``x.float()``,
    ``x.bfloat16()``, ``buf.copy_(x)`` or ``buf[...] = x`` into a float32 buffer, a linear layer under
    ``torch.autocast``): below it, the computation has that dtype's precision, whatever the dtype of the output.
    Constants computed in a coarse dtype from coarse constants round the same way in every copy of the model (part
    of f): not recorded. Values that leave torch round where no torch function sees it: Python numbers (``tolist``,
    ``item``), made a tensor again in a coarser dtype (``torch.tensor(x.tolist(), dtype=torch.float32)``): recorded;
    numpy arrays (``x.numpy()``, ``np.asarray(x)``), made a tensor again by ``torch.from_numpy``, which no mode sees:
    the coarsest dtype. (A torch function mode, not a dispatch mode: the first use of a dispatch mode imports
    torch._dynamo, seconds.)"""

    def __init__(self) -> None:
        super().__init__()
        self.eps = 0.0
        self.left: float | None = None  # the finest eps of the floating values that left torch as Python numbers

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        finest = min((torch.finfo(t.dtype).eps for t in tree_leaves((args, kwargs)) if _floating(t)), default=None)
        if finest is not None and func in _TO_NUMPY:
            self.eps = max(self.eps, COARSEST_EPS)
        elif finest is not None and func in _TO_PYTHON:
            self.left = finest if self.left is None else min(self.left, finest)
        finest = self.left if finest is None else finest  # a tensor made of numbers that left torch
        if finest is not None:
            written = (out, args[0]) if func is Tensor.__setitem__ else out  # ``b[...] = x`` returns None
            coarsest = max((torch.finfo(t.dtype).eps for t in tree_leaves(written) if _floating(t)), default=0.0)
            if coarsest > finest:
                self.eps = max(self.eps, coarsest)
        return out


_TO_NUMPY = (Tensor.numpy, Tensor.__array__)
_TO_PYTHON = (Tensor.tolist, Tensor.item, Tensor.__float__)
COARSEST_EPS = max(torch.finfo(t).eps for t in (torch.float16, torch.bfloat16))


def _floating(t: Any) -> bool:
    return isinstance(t, Tensor) and (t.dtype.is_floating_point or t.dtype.is_complex)


def _allowance(eps: float) -> float:
    """The rounding allowance of a computation in a dtype of machine epsilon ``eps``: ROUNDING in float64,
    FLOAT32_ROUNDING in float32, scaled like FLOAT32_ROUNDING below (half, bfloat16)."""
    if eps <= torch.finfo(torch.float64).eps:
        return ROUNDING
    return FLOAT32_ROUNDING * max(1.0, eps / torch.finfo(torch.float32).eps)


def _ends(net: _Net, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, float]:
    """(f(a), f(b)) row by row, both ends in one pass where the points run batched, and the machine epsilon of the
    coarsest dtype the computation rounded to inside (:class:`_Downcasts`, the output's included)."""
    with torch.no_grad(), _Downcasts() as downcasts:
        if net.mode == "batched":
            both = net(torch.cat([a, b], 0))
            fa, fb = both[:len(a)], both[len(a):]
        else:
            fa, fb = net(a), net(b)
    if fa.shape[1] != net.m:
        raise _OtherFunction
    return fa, fb, max(downcasts.eps, torch.finfo(fa.dtype).eps if _floating(fa) else 0.0)


def _ratio(net: _Net, a: Tensor, b: Tensor, p: float, rounding: float,
           ends: tuple[Tensor, Tensor, float] | None = None) -> Tensor:
    """‖f(a) − f(b)‖_p / ‖a − b‖_p per row, minus the rounding allowance (each one ≤ L): ``rounding``, or the
    allowance of the coarsest dtype the computation rounds to inside; ``ends``: :func:`_ends`, when already
    computed."""
    fa, fb, eps = _ends(net, a, b) if ends is None else ends
    rounding = max(rounding, _allowance(eps))
    with torch.no_grad():
        num = _norm(fa - fb, p) - rounding * (_norm(fa, p) + _norm(fb, p))
        den = _norm(a - b, p)
        out = num.clamp_min(0) / den * (1 - rounding)
    return torch.where(den > 0, torch.nan_to_num(out, nan=0.0, posinf=0.0), torch.zeros_like(out))


def _dense_direction(net: _Net, z: Tensor, p: float) -> tuple[Tensor, float] | None:
    """The best direction at z from the full Jacobian (and ‖J(z)‖_p), when it is small enough to build."""
    if net.n * net.m > DENSE_JACOBIAN:
        return None
    try:
        jac = torch.autograd.functional.jacobian(lambda r: net(r[None])[0], z,
                                                 vectorize=net.m > LOOPED_JACOBIAN_ROWS)
    except Exception:  # noqa: BLE001
        try:
            jac = torch.autograd.functional.jacobian(lambda r: net(r[None])[0], z)
        except Exception:  # noqa: BLE001
            return None
    jac = jac.reshape(net.m, net.n)
    if math.isinf(p):
        sums = jac.abs().sum(1)
        i = int(sums.argmax())
        return torch.where(jac[i] >= 0, 1.0, -1.0).to(z.dtype), float(sums[i])
    if p == 1:
        sums = jac.abs().sum(0)
        j = int(sums.argmax())
        return torch.zeros_like(z).index_fill_(0, torch.tensor(j, device=z.device), 1.0), float(sums[j])
    _, s, vh = torch.linalg.svd(jac, full_matrices=False)
    return vh[0], float(s[0])


def _pairs_seconds(polish: bool, exact_seconds: float) -> float:
    """Wall time of one candidate's float64 difference quotients: the pairs (a, b) of :func:`_verify`."""
    return 2 * (len(STEP_SIZES) + 3 if polish else 2) * exact_seconds


_Verified = tuple[float, Tensor, Tensor, Tensor, Tensor, float | None, tuple[Tensor, Tensor]]


def _verify(exact: tuple[_Net, float], fn: _Net, candidates: list, p: float, scale: float, polish: bool,
            clock: _Clock, exact_seconds: float) -> _Verified:
    """The candidates' difference quotients in float64 (after ``polish``: the exact local direction from a small
    dense Jacobian, else float64 power steps), each part only when the clock says it fits (``exact_seconds``:
    one float64 forward pass at one point); the first candidate's quotients always (at its smallest). The best:
    (value, a, b, the point, the direction, ‖J‖ there when computed, (f(a), f(b)) as the verification computed them)."""
    net, rounding = exact
    best: _Verified | None = None
    gen = torch.Generator().manual_seed(12345)
    pairs_seconds = _pairs_seconds(polish, exact_seconds)
    for _, z32, v32, eps in candidates:
        if best is not None and not clock.fits(pairs_seconds):
            break
        polish = polish and clock.fits(pairs_seconds)
        z, v = z32.to(net.dtype), v32.to(net.dtype)
        jac_value = None
        dense = (_dense_direction(net, z, p)
                 if polish and clock.fits(pairs_seconds + 2 * net.m * exact_seconds) else None)
        if dense is not None:
            v, jac_value = dense
        elif polish and clock.fits(pairs_seconds + 4 * 4 * exact_seconds):
            try:
                value, v = _power_steps(net, z[None], v[None], p, 4,
                                        lambda *_: not clock.fits(pairs_seconds + 4 * exact_seconds))
                jac_value, v = float(value[0]), v[0]
            except Exception:  # noqa: BLE001
                pass
        v = v / _norm(v[None], p)[0]
        vmax = float(v.abs().max())
        size = max(float(z.abs().max()), scale, 1e-3)
        a_rows, b_rows = [], []
        for h in STEP_SIZES if polish else STEP_SIZES[1:2]:
            step = (h * size / vmax) * v
            a_rows.append(z + step)
            b_rows.append(z - step)
        if eps > 0:  # the ascent's own (wider) pair at this point
            a_rows.append(z + eps * v32.to(net.dtype))
            b_rows.append(z - eps * v32.to(net.dtype))
        for r in (1e-1, 1e-2) if polish else ():  # a few random nearby pairs
            xi = torch.randn(z.shape, generator=gen, dtype=net.dtype).to(z.device)
            a_rows.append(z + r * scale * xi)
            b_rows.append(z.clone())
        # the pair is rounded to the example's dtype first, so that the returned witness reproduces the value
        a, b = (torch.stack(rows).to(fn.dtype).to(net.dtype) for rows in (a_rows, b_rows))
        ends = _ends(net, a, b)
        ratios = _ratio(net, a, b, p, rounding, ends)
        k = int(ratios.argmax())
        value = float(ratios[k])
        if best is None or value > best[0]:
            best = (value, a[k], b[k], z, v, jac_value, (ends[0][k], ends[1][k]))
    if best is None:  # nothing was found (no steps ran): the example itself, any direction
        z = fn.pack(fn.example)[0].to(net.dtype)
        v = _unit_in(torch.ones(1, net.n, dtype=net.dtype, device=z.device), p)[0]
        a, b = (t.to(fn.dtype).to(net.dtype) for t in (z + 1e-3 * v, z - 1e-3 * v))
        ends = _ends(net, a[None], b[None])
        best = (float(_ratio(net, a[None], b[None], p, rounding, ends)[0]), a, b, z, v, None, (ends[0][0], ends[1][0]))
    return best
