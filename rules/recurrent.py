"""Recurrent layers (nn.RNN, nn.GRU, nn.LSTM and their Cell variants), unrolled over the example's sequence length.

Derivation (docs/recurrent.md). Every step's map is differentiable with bounded slopes, so the Lipschitz constant
of x = (x_1 … x_T) ↦ y (the whole tuple the module returns) is sup ‖∂y/∂x‖_p. For a perturbation δx write
e_t = ‖δx_t‖_p (so ‖e‖_p = ‖δx‖_p) and bound every step's ‖δh_t‖_p, ‖δc_t‖_p by functions φ(e) (:class:`_Form`),
using only ‖D v‖_p ≤ max|D| ‖v‖_p for a diagonal D, the triangle inequality, ‖max(|a|, |b|)‖_p ≤ ‖(a, b)‖_p, and
σ ∈ (0, 1), |σ'| ≤ ¼, tanh ∈ (−1, 1), |tanh'| ≤ 1, |relu'| ≤ 1. ‖W‖ is the exact ℓp operator norm of a weight
block (:func:`lipgraph.linalg.matrix_norm`); a_t bounds ‖W_ih δx_t‖ (per gate):

- Elman, h_t = φ(W_ih x_t + W_hh h_{t−1} + b): ‖δh_t‖ ≤ a_t + ‖W_hh‖ ‖δh_{t−1}‖.
- GRU: ‖δr‖ ≤ ¼(a^r + ‖W_hr‖ ‖δh‖), ‖δz‖ ≤ ¼(a^z + ‖W_hz‖ ‖δh‖), ‖δn‖ ≤ a^n + Q ‖δr‖ + ‖W_hn‖ ‖δh‖ with
  Q = max_i (Σ_j |W_hn,ij| H + |b_hn,i|) ≥ |W_hn h + b_hn|; δh' = δz ⊙ (h − n) + [(1 − z) ⊙ δn + z ⊙ δh], the
  bracket coordinatewise ≤ max(|δn|, |δh|), so ‖δh'‖ ≤ (H + 1) ‖δz‖ + ‖(δn, δh)‖_p, where |h_t| ≤ H =
  max(1, max|h_0|) (h_t is a coordinatewise convex combination of n ∈ (−1, 1) and h_{t−1}; H = max|h_0| at t = 1).
- LSTM: ‖δi‖, ‖δf‖, ‖δo‖ ≤ ¼(a + ‖W_h·‖ ‖δh‖), ‖δg‖ ≤ a^g + ‖W_hg‖ ‖δh‖,
  ‖δc_t‖ ≤ C_{t−1} ‖δf‖ + ‖δc_{t−1}‖ + ‖δi‖ + ‖δg‖ with |c_t| ≤ C_t = max|c_0| + t (|c_t| ≤ |c_{t−1}| + 1),
  ‖δh_t‖ ≤ ‖W_hr‖ (‖δo‖ + ‖δc_t‖) (W_hr: the projection when proj_size > 0, else the identity).

Layers stack (layer l + 1 reads both directions of layer l through its W_ih: Σ_blocks ‖W_ih[:, block]‖ φ_block or
‖W_ih‖ ‖(φ_fwd, φ_bwd)‖_p, the smaller); the backward direction runs the recursion from t = T down to 1. The output's
disjoint pieces (every h_t of the last layer, every layer's and direction's h_n, and c_n) give
‖δy‖_p ≤ ‖(φ_k(e))_k‖_p, maximised over ‖e‖_p ≤ 1 exactly: φ are kept as linear forms r · e (then ‖R‖_p of the
stacked rows) and, for ℓ2, also as quadratic forms √(eᵀ G e) ((x + y)² ≤ (1 + λ) x² + (1 + 1/λ) y² for sums;
then √λ_max(Σ G)). The recursion runs in float64 on nonnegative numbers; ``FLOAT_MARGIN`` covers its rounding.
Batches are bounded per sample (block diagonal). Constant initial states enter only through H and C_0; initial
states computed from the input are refused (for GRU and for the LSTM's c_0 no global bound exists: δz ⊙ h_{t−1}
and δf ⊙ c_{t−1} grow with them).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lipgraph.bound import FLOAT_MARGIN, certified
from lipgraph.errors import RuleError
from lipgraph.linalg import matrix_norm
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer, Var

#: gate rows of weight_ih / weight_hh, in PyTorch's order, and each gate's slope bound
_GATES = {"RNN_TANH": (("h", 1.0),), "RNN_RELU": (("h", 1.0),),
          "GRU": (("r", 0.25), ("z", 0.25), ("n", 1.0)),
          "LSTM": (("i", 0.25), ("f", 0.25), ("g", 1.0), ("o", 0.25))}


class _Form:
    """Bounds on ‖δq‖_p for one perturbed quantity as functions of the per-step input norms e ≥ 0, both kept:
    a linear form r · e (r ≥ 0) and, for ℓ2, a quadratic one √(eᵀ G e) (G ⪰ 0, T × T), whichever of G and r rᵀ
    has the smaller trace after each operation (both are bounds, so either may be kept)."""

    def __init__(self, p: float, r: torch.Tensor, g: torch.Tensor | None) -> None:
        self.p, self.r = p, r
        self.g = None if g is None else (g if float(g.trace()) <= float(r @ r) else torch.outer(r, r))

    @classmethod
    def step(cls, p: float, length: int, t: int) -> "_Form":
        """e_t itself."""
        r = torch.zeros(length, dtype=torch.float64)
        r[t] = 1.0
        return cls(p, r, torch.outer(r, r) if p == 2 else None)

    def scaled(self, c: float) -> "_Form":
        return _Form(self.p, self.r * c, None if self.g is None else self.g * (c * c))

    def __add__(self, other: "_Form") -> "_Form":
        """‖a + b‖ ≤ φ_a + φ_b; quadratic: (x + y)² ≤ (1 + λ) x² + (1 + 1/λ) y² for any λ > 0 (√(tr G_b / tr G_a))."""
        if self.g is None:
            return _Form(self.p, self.r + other.r, None)
        ta, tb = float(self.g.trace()), float(other.g.trace())
        lam = math.sqrt(tb / ta) if ta > 0 and tb > 0 else 1.0
        g = self.g + other.g if ta == 0 or tb == 0 else (1 + lam) * self.g + (1 + 1 / lam) * other.g
        return _Form(self.p, self.r + other.r, g)

    def joined(self, other: "_Form") -> "_Form":
        """‖(a, b)‖_p for disjoint coordinates, also ≥ ‖max(|a|, |b|)‖_p: ℓ2 adds the quadratic forms (the linear
        ones add), ℓ∞ takes the componentwise max of r (valid as e ≥ 0), ℓ1 adds."""
        r = torch.maximum(self.r, other.r) if self.p == math.inf else self.r + other.r
        return _Form(self.p, r, None if self.g is None else self.g + other.g)


def _value(pieces: list["_Form"], p: float) -> float:
    """max over ‖e‖_p ≤ 1 of ‖(φ_k(e))_k‖_p for the output's disjoint pieces: ‖R‖_p of the stacked rows, and for
    ℓ2 also √λ_max(Σ G_k); the smaller."""
    rows = torch.stack([f.r for f in pieces])
    value = matrix_norm(rows, p).value
    if p == 2:
        gram = sum(f.g for f in pieces)
        value = min(value, math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0)))
    return value


def _join_all(forms: list[_Form]) -> _Form:
    total = forms[0]
    for form in forms[1:]:
        total = total.joined(form)
    return total


def recurrent(ctx: OpContext) -> Transfer:
    """nn.RNN / nn.GRU / nn.LSTM unrolled over the example's length: a certified bound (see the module doc)."""
    module = _module(ctx)
    x = _plain_input(ctx, module)
    batch_first = module.batch_first and len(x.shape) == 3
    length = x.shape[1] if batch_first else x.shape[0]
    h0, c0 = _initial_states(ctx)
    return _transfer(ctx, module, length, module.num_layers, 2 if module.bidirectional else 1, h0, c0,
                     proj=getattr(module, "proj_size", 0), cell=False)


def recurrent_cell(ctx: OpContext) -> Transfer:
    """nn.RNNCell / nn.GRUCell / nn.LSTMCell: one step of the same recursion (see the module doc)."""
    module = _module(ctx)
    _plain_input(ctx, module)
    h0, c0 = _initial_states(ctx)
    return _transfer(ctx, module, 1, 1, 1, h0, c0, proj=0, cell=True)


def _module(ctx: OpContext) -> nn.Module:
    if not isinstance(ctx.module, (nn.RNNBase, nn.RNNCellBase)):
        raise RuleError(f"{ctx.describe()}: recurrent layers are bounded as nn.RNN/GRU/LSTM modules (and their "
                        "Cell variants); this op is a functional or exported form of one, which has no rule "
                        "(use the default fx frontend and the nn module)")
    return ctx.module


def _plain_input(ctx: OpContext, module: nn.Module) -> Var:
    """The sequence (or the cell's step input), the only input-dependent argument allowed."""
    x = ctx.args[0] if ctx.args else ctx.kwargs.get("input")
    if not isinstance(x, Var) or x.parts is not None:
        raise RuleError(f"{ctx.describe()}: the input of {type(module).__name__} must be a tensor computed from the "
                        "network's input (a PackedSequence or a constant input is not supported)")
    others = [v for v in ctx.inputs if v is not x]
    if others:
        raise RuleError(f"{ctx.describe()}: an initial state computed from the input is not supported (pass a "
                        f"constant initial state or none); for GRU and for the LSTM's c_0 no global Lipschitz bound "
                        "exists, since the gates multiply the state")
    return x


def _initial_states(ctx: OpContext) -> tuple[float, float]:
    """max |h_0| and max |c_0| of constant initial states (0 when not given)."""
    state = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("hx")
    if state is None:
        return 0.0, 0.0
    parts = state if isinstance(state, (tuple, list)) else (state,)
    sizes = [float(t.detach().abs().max()) if isinstance(t, torch.Tensor) and t.numel() else 0.0 for t in parts]
    return sizes[0], sizes[1] if len(sizes) > 1 else 0.0


def _mode(module: nn.Module) -> str:
    if isinstance(module, nn.RNNBase):
        return module.mode
    if isinstance(module, nn.LSTMCell):
        return "LSTM"
    if isinstance(module, nn.GRUCell):
        return "GRU"
    return "RNN_RELU" if module.nonlinearity == "relu" else "RNN_TANH"


def _weight(module: nn.Module, name: str, layer: int, direction: int, cell: bool) -> torch.Tensor | None:
    attr = name if cell else f"{name}_l{layer}{'_reverse' if direction else ''}"
    w = getattr(module, attr, None)
    return None if w is None else w.detach().to(torch.float64)


def _transfer(ctx: OpContext, module: nn.Module, length: int, layers: int, directions: int, h0: float, c0: float,
              *, proj: int, cell: bool) -> Transfer:
    p = ctx.norm
    mode = _mode(module)
    # the current layer's input per step: one source (the network's input) or one per direction below
    sources: list[list[_Form]] = [[_Form.step(p, length, t) for t in range(length)]]
    pieces: list[_Form] = []
    for layer in range(layers):
        outputs = []
        for direction in range(directions):
            hs, last_c = _layer(module, mode, sources, length, layer, direction, p, h0, c0, proj, cell)
            outputs.append(hs)
            pieces.append(hs[0 if direction else -1])  # h_n
            if last_c is not None:
                pieces.append(last_c)  # c_n
        sources = outputs
    if not cell:
        pieces += [h for hs in sources for h in hs]  # every h_t of the last layer, each direction
    value = _value(pieces, p)
    return Transfer(gains=(certified(value, f"unrolled-{mode.lower().replace('_', '-')}", margin=FLOAT_MARGIN),),
                    notes=() if cell else (f"{type(module).__name__} unrolled over {length} step(s) of the example "
                                           "input; a longer sequence has a larger constant",))


def _layer(module: nn.Module, mode: str, sources: list[list[_Form]], length: int, layer: int, direction: int,
           p: float, h0: float, c0: float, proj: int, cell: bool) -> tuple[list[_Form], _Form | None]:
    """The bounds of one layer and direction: every step's ‖δh_t‖ in time order, and the last ‖δc‖ (LSTM)."""
    gates = _GATES[mode]
    w_ih = _weight(module, "weight_ih", layer, direction, cell)
    w_hh = _weight(module, "weight_hh", layer, direction, cell)
    hidden = w_ih.shape[0] // len(gates)
    rows = {gate: slice(k * hidden, (k + 1) * hidden) for k, (gate, _) in enumerate(gates)}
    drive = {gate: _drive(w_ih[r], sources, p) for gate, r in rows.items()}
    recur = {gate: matrix_norm(w_hh[r], p).value for gate, r in rows.items()}
    slope = dict(gates)
    w_hr = _weight(module, "weight_hr", layer, direction, cell) if proj else None
    projection = matrix_norm(w_hr, p).value if w_hr is not None else 1.0
    if mode == "GRU":
        bias = _weight(module, "bias_hh", layer, direction, cell)
        b_hn = bias[rows["n"]].abs() if bias is not None else torch.zeros(hidden, dtype=torch.float64)
        w_hn_rows = w_hh[rows["n"]].abs().sum(1)
    zero = _Form(p, torch.zeros(length, dtype=torch.float64),
                 torch.zeros(length, length, dtype=torch.float64) if p == 2 else None)
    dh, dc = zero, zero
    hs: list[_Form] = [zero] * length
    order = range(length) if direction == 0 else range(length - 1, -1, -1)
    for count, t in enumerate(order):
        gate = {g: (drive[g][t] + dh.scaled(recur[g])).scaled(slope[g]) for g in slope}
        if mode in ("RNN_TANH", "RNN_RELU"):
            dh = gate["h"]
        elif mode == "GRU":
            size = h0 if count == 0 else max(1.0, h0)  # |h_{t-1}| ≤ H
            q = float((w_hn_rows * size + b_hn).max())  # |W_hn h + b_hn| ≤ q
            dn = drive["n"][t] + gate["r"].scaled(q) + dh.scaled(recur["n"])
            dh = gate["z"].scaled(size + 1) + dn.joined(dh)
        else:
            dc = dc + gate["i"] + gate["g"] + gate["f"].scaled(c0 + count)  # |c_{t-1}| ≤ max|c_0| + count
            dh = (gate["o"] + dc).scaled(projection)
        hs[t] = dh
    return hs, dc if mode == "LSTM" else None


def _drive(w_ih: torch.Tensor, sources: list[list[_Form]], p: float) -> list[_Form]:
    """Per step, a bound on ‖W_ih δx_t‖: ‖W_ih‖ times the joined input blocks, or Σ_blocks ‖W_ih[:, block]‖ ‖δ
    block‖ when that is smaller (both hold)."""
    if len(sources) == 1:
        whole = matrix_norm(w_ih, p).value
        return [x.scaled(whole) for x in sources[0]]
    width = w_ih.shape[1] // len(sources)
    norms = [matrix_norm(w_ih[:, k * width:(k + 1) * width], p).value for k in range(len(sources))]
    whole = matrix_norm(w_ih, p).value
    out = []
    for blocks in zip(*sources):
        summed = blocks[0].scaled(norms[0])
        for block, n in zip(blocks[1:], norms[1:]):
            summed = summed + block.scaled(n)
        joined = _join_all(list(blocks)).scaled(whole)
        out.append(min(summed, joined, key=lambda f: float(f.r.sum())))
    return out


def register(registry: Registry) -> None:
    for key in ("rnn", "gru", "lstm"):
        registry.register(key, recurrent, key=key)
    for key in ("rnn_cell", "gru_cell", "lstm_cell"):
        registry.register(key, recurrent_cell, key=key)
