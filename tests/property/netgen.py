"""Random networks from the rule catalogue, for the soundness fuzzer.

A network is described by a JSON-able *spec* (so a violation can be saved and rebuilt exactly) drawn through a
small ``Draw`` interface, driven either by hypothesis (``HypothesisDraw``: shrinking, CI profile) or by
``random.Random`` (``RandomDraw``: the long ``python -m tests.fuzz`` runs). ``build(spec)`` turns a spec into an
``nn.Module`` (eval mode, seeded weights) and its example input.

Covered: chains; residual adds (identity, scaled, subtracted, 1×1-conv downsample shortcuts); concatenations;
elementwise maxima of two branches; convolutions (random kernel, stride, padding and padding mode, dilation,
groups, bias), transposed convolutions; BatchNorm with random running statistics (negative γ, small variances);
every activation of ``rules/activations.py`` with random parameters, as modules and functionally; max-pooling
(overlapping windows, padding, dilation, ceil mode), average pooling (padding, count_include_pad, ceil mode,
divisor_override), adaptive pools (overlapping windows), upsampling; structural ops (flip, roll, pad,
pixel/channel shuffle, transpose); LayerNorm/GroupNorm (ℓ2 only); softmax/log-softmax; clamp, abs, sort;
Linear heads.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# -- the draw interface -----------------------------------------------------------------------------------


class Draw:
    def integer(self, lo: int, hi: int) -> int:  # inclusive
        raise NotImplementedError

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.integer(0, len(options) - 1)]

    def boolean(self) -> bool:
        return bool(self.integer(0, 1))


class RandomDraw(Draw):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class HypothesisDraw(Draw):
    def __init__(self, data: Any) -> None:  # hypothesis' st.data() object
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))


# -- activations ------------------------------------------------------------------------------------------
def _act_params(name: str, d: Draw) -> dict[str, Any]:
    if name == "hardtanh":
        return {"min_val": d.choice([-1.0, -2.0, -0.5]), "max_val": d.choice([1.0, 0.5, 2.0])}
    if name == "softplus":
        return {"beta": d.choice([1.0, 0.5, 2.0])}
    if name == "leaky_relu":
        return {"negative_slope": d.choice([0.01, 0.2, -0.5, 1.7, -2.0])}
    if name == "rrelu":
        return dict(zip(("lower", "upper"), d.choice([(1 / 8, 1 / 3), (0.1, 0.9), (-0.5, 0.5), (1.5, 2.5)])))
    if name == "elu":
        return {"alpha": d.choice([1.0, 2.5, 0.5, -1.0])}
    if name == "celu":
        return {"alpha": d.choice([1.0, 0.5, 2.0])}
    if name == "threshold":
        t = d.choice([0.0, 0.5, -1.0])
        return {"threshold": t, "value": t}
    if name == "gelu":
        return {"approximate": d.choice(["none", "tanh"])}
    if name == "softshrink":
        return {"lambd": d.choice([0.5, 1.0])}
    if name == "prelu":
        return {"per_channel": d.boolean()}
    return {}


#: name -> (module constructor from params, functional (fn, params -> kwargs) or None)
MODULE_ACTS: dict[str, Callable[..., nn.Module]] = {
    "relu": lambda **k: nn.ReLU(), "relu6": lambda **k: nn.ReLU6(), "hardtanh": lambda **k: nn.Hardtanh(**k),
    "sigmoid": lambda **k: nn.Sigmoid(), "tanh": lambda **k: nn.Tanh(), "softsign": lambda **k: nn.Softsign(),
    "softplus": lambda **k: nn.Softplus(**k), "logsigmoid": lambda **k: nn.LogSigmoid(),
    "tanhshrink": lambda **k: nn.Tanhshrink(), "softshrink": lambda **k: nn.Softshrink(**k),
    "hardsigmoid": lambda **k: nn.Hardsigmoid(), "celu": lambda **k: nn.CELU(**k), "gelu": lambda **k: nn.GELU(**k),
    "silu": lambda **k: nn.SiLU(), "mish": lambda **k: nn.Mish(), "hardswish": lambda **k: nn.Hardswish(),
    "selu": lambda **k: nn.SELU(), "leaky_relu": lambda **k: nn.LeakyReLU(**k), "rrelu": lambda **k: nn.RReLU(**k),
    "elu": lambda **k: nn.ELU(**k), "threshold": lambda **k: nn.Threshold(**k),
}
FUNCTIONAL_ACTS: dict[str, Callable[..., Tensor]] = {
    "relu": F.relu, "relu6": F.relu6, "hardtanh": F.hardtanh, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "softsign": F.softsign, "softplus": F.softplus, "logsigmoid": F.logsigmoid, "tanhshrink": F.tanhshrink,
    "softshrink": F.softshrink, "hardsigmoid": F.hardsigmoid, "celu": F.celu, "gelu": F.gelu, "silu": F.silu,
    "mish": F.mish, "hardswish": F.hardswish, "selu": F.selu, "leaky_relu": F.leaky_relu, "elu": F.elu,
    "threshold": F.threshold,
}
ACTIVATIONS = sorted(set(MODULE_ACTS) | {"prelu"})


class FunctionalAct(nn.Module):
    def __init__(self, name: str, params: dict[str, Any]) -> None:
        super().__init__()
        self.name, self.params = name, dict(params)

    def forward(self, x: Tensor) -> Tensor:
        return FUNCTIONAL_ACTS[self.name](x, **self.params)


def make_act(spec: dict[str, Any], channels: int) -> nn.Module:
    name, params = spec["name"], dict(spec["params"])
    if name == "prelu":
        act = nn.PReLU(channels if params["per_channel"] else 1)
        with torch.no_grad():
            act.weight.uniform_(-2.0, 2.0)
        return act
    if spec["functional"] and name in FUNCTIONAL_ACTS:
        return FunctionalAct(name, params)
    return MODULE_ACTS[name](**params)


# -- blocks -----------------------------------------------------------------------------------------------
class Residual(nn.Module):
    def __init__(self, branch: nn.Module, shortcut: nn.Module | None, alpha: float, subtract: bool) -> None:
        super().__init__()
        self.branch, self.shortcut, self.alpha, self.subtract = branch, shortcut, alpha, subtract

    def forward(self, x: Tensor) -> Tensor:
        s = x if self.shortcut is None else self.shortcut(x)
        b = self.branch(x)
        if self.alpha != 1.0:
            b = b * self.alpha
        return s - b if self.subtract else s + b


class Concat(nn.Module):
    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.branch(x)], 1)


class Maximum(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor) -> Tensor:
        return torch.maximum(self.a(x), self.b(x))


class Op(nn.Module):
    """A structural / functional op by name (traced by fx as the op itself)."""

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        super().__init__()
        self.name, self.params = name, dict(params)

    def forward(self, x: Tensor) -> Tensor:
        n, k = self.name, self.params
        if n == "flatten":
            return torch.flatten(x, 1)
        if n == "flip":
            return torch.flip(x, k["dims"])
        if n == "roll":
            return torch.roll(x, k["shifts"], k["dims"])
        if n == "pad":
            return F.pad(x, k["pad"], mode=k["mode"])
        if n == "pixel_shuffle":
            return F.pixel_shuffle(x, k["r"])
        if n == "pixel_unshuffle":
            return F.pixel_unshuffle(x, k["r"])
        if n == "channel_shuffle":
            return F.channel_shuffle(x, k["groups"])
        if n == "transpose":
            return x.transpose(2, 3)
        if n == "upsample":
            return F.interpolate(x, scale_factor=k["scale"], mode=k["mode"],
                                 align_corners=k.get("align_corners"))
        if n == "adaptive_avg":
            return F.adaptive_avg_pool2d(x, k["out"])
        if n == "adaptive_max":
            return F.adaptive_max_pool2d(x, k["out"])
        if n == "softmax":
            return F.softmax(x, dim=1)
        if n == "log_softmax":
            return F.log_softmax(x, dim=1)
        if n == "clamp":
            return torch.clamp(x, k["lo"], k["hi"])
        if n == "abs":
            return torch.abs(x)
        if n == "sort":
            return torch.sort(x, dim=1).values
        if n == "scale":
            return x * k["c"]
        if n == "neg":
            return -x
        raise KeyError(n)


# -- drawing a spec ----------------------------------------------------------------------------------------
def _conv_out(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _act_spec(d: Draw) -> dict[str, Any]:
    name = d.choice(ACTIVATIONS)
    return {"op": "act", "name": name, "params": _act_params(name, d), "functional": d.boolean()}


def draw_spec(d: Draw, norm: str | None = None, max_blocks: int = 4) -> dict[str, Any]:
    """A random network spec; ``norm`` ("1", "2", "inf") excludes ops whose rules only support ℓ2."""
    norm = norm or d.choice(["2", "2", "2", "inf", "1"])
    l2 = norm == "2"
    image = d.integer(0, 3) > 0
    if image:
        shape: list[int] = [d.integer(1, 4), d.integer(3, 9), 0]
        shape[2] = shape[1] if d.boolean() else d.integer(3, 9)
    else:
        shape = [d.integer(1, 10)]
    spec: dict[str, Any] = {"seed": d.integer(0, 2**31 - 1), "norm": norm, "input": [1, *shape], "body": []}
    state = {"shape": list(shape)}
    for _ in range(d.integer(1, max_blocks)):
        block = _image_block(d, state, l2) if len(state["shape"]) == 3 else _vector_block(d, state, l2)
        if block is not None:
            spec["body"].append(block)
    if len(state["shape"]) == 3 and d.integer(0, 2) > 0:
        spec["body"].append({"op": "flatten"})
        state["shape"] = [math.prod(state["shape"])]
    spec["head"] = d.integer(1, 4) if d.integer(0, 3) > 0 else None  # sometimes no head: single rules stay tight
    if spec["head"] is not None and len(state["shape"]) == 3:
        spec["body"].append({"op": "flatten"})
    return spec


def _image_block(d: Draw, state: dict, l2: bool) -> dict[str, Any] | None:
    c, h, w = state["shape"]
    kinds = ["conv", "conv", "act", "act", "bn", "maxpool", "maxpool", "avgpool", "adaptive", "residual",
             "concat", "maximum", "convT", "upsample", "struct", "chain"]
    if l2:
        kinds.append("norm")
    kind = d.choice(kinds)
    if kind == "chain":  # conv-BN-act, the classic
        first = _image_block_of(d, state, "conv")
        if first is None:
            return None
        second = {"op": "bn", "c": state["shape"][0]}
        return {"op": "seq", "blocks": [first, second, _act_spec(d)]}
    return _image_block_of(d, state, kind)


def _image_block_of(d: Draw, state: dict, kind: str) -> dict[str, Any] | None:
    c, h, w = state["shape"]
    if kind == "conv":
        k, s, dil = d.integer(1, 3), d.integer(1, 2), d.integer(1, 2)
        p = d.integer(0, 2)
        mode = d.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
        if mode == "reflect" and (p >= h or p >= w) or mode == "circular" and (p > h or p > w):
            mode = "zeros"
        groups = d.choice([g for g in (1, 2, 3, 4) if c % g == 0])
        out = groups * d.integer(1, max(1, 8 // groups))
        ho, wo = _conv_out(h, k, s, p, dil), _conv_out(w, k, s, p, dil)
        if ho < 1 or wo < 1:
            return None
        state["shape"] = [out, ho, wo]
        return {"op": "conv", "cin": c, "cout": out, "k": k, "stride": s, "pad": p, "dil": dil, "groups": groups,
                "bias": d.boolean(), "mode": mode}
    if kind == "convT":
        k, s, dil, p = d.integer(1, 3), d.integer(1, 2), d.integer(1, 2), d.integer(0, 1)
        op = d.integer(0, max(s, dil) - 1)
        groups = d.choice([g for g in (1, 2) if c % g == 0])
        out = groups * d.integer(1, max(1, 6 // groups))
        ho, wo = [(n - 1) * s - 2 * p + dil * (k - 1) + op + 1 for n in (h, w)]
        if ho < 1 or wo < 1 or ho > 14 or wo > 14:
            return None
        state["shape"] = [out, ho, wo]
        return {"op": "convT", "cin": c, "cout": out, "k": k, "stride": s, "pad": p, "dil": dil, "groups": groups,
                "out_pad": op, "bias": d.boolean()}
    if kind == "act":
        return _act_spec(d)
    if kind == "bn":
        return {"op": "bn", "c": c}
    if kind == "maxpool":
        k, s, dil = d.integer(2, 3), d.integer(1, 3), d.integer(1, 2)
        p = d.integer(0, k // 2)
        ceil = d.boolean()
        ho, wo = [_pool_out(n, k, s, p, dil, ceil) for n in (h, w)]
        if min(ho, wo) < 1 or not (_windows_hit(h, ho, k, s, p, dil) and _windows_hit(w, wo, k, s, p, dil)):
            return None
        state["shape"] = [c, ho, wo]
        return {"op": "maxpool", "k": k, "stride": s, "pad": p, "dil": dil, "ceil": ceil}
    if kind == "avgpool":
        k, s = d.integer(2, 3), d.integer(1, 3)
        p = d.integer(0, k // 2)
        ceil, include = d.boolean(), d.boolean()
        div = d.choice([None, None, 1, k * k + 1])
        ho, wo = [_pool_out(n, k, s, p, 1, ceil) for n in (h, w)]
        if min(ho, wo) < 1:
            return None
        state["shape"] = [c, ho, wo]
        return {"op": "avgpool", "k": k, "stride": s, "pad": p, "ceil": ceil, "include": include, "div": div}
    if kind == "adaptive":
        out = [d.integer(1, h), d.integer(1, w)]
        state["shape"] = [c, *out]
        return {"op": "struct", "name": d.choice(["adaptive_avg", "adaptive_max"]), "params": {"out": out}}
    if kind == "upsample":
        if h * w > 40:
            return None
        mode = d.choice(["nearest", "bilinear", "bicubic"])
        state["shape"] = [c, 2 * h, 2 * w]
        return {"op": "struct", "name": "upsample",
                "params": {"scale": 2, "mode": mode, "align_corners": d.boolean() if mode != "nearest" else None}}
    if kind == "residual":
        sub = {"shape": list(state["shape"])}
        down = d.integer(0, 2) == 0
        branch = []
        for _ in range(d.integer(1, 2)):
            if down and not branch:
                s = 2 if min(h, w) >= 3 else 1
                out = d.integer(1, 6)
                blk = {"op": "conv", "cin": c, "cout": out, "k": 3, "stride": s, "pad": 1, "dil": 1, "groups": 1,
                       "bias": d.boolean(), "mode": "zeros"}
                sub["shape"] = [out, _conv_out(h, 3, s, 1, 1), _conv_out(w, 3, s, 1, 1)]
            else:
                cc = sub["shape"][0]
                blk = d.choice([
                    {"op": "conv", "cin": cc, "cout": cc, "k": 3, "stride": 1, "pad": 1, "dil": 1, "groups": 1,
                     "bias": True, "mode": "zeros"},
                    {"op": "bn", "c": cc}, _act_spec(d)])
            branch.append(blk)
        shortcut = None
        if sub["shape"] != state["shape"]:
            s = branch[0]["stride"]
            shortcut = [{"op": "conv", "cin": c, "cout": sub["shape"][0], "k": 1, "stride": s, "pad": 0, "dil": 1,
                         "groups": 1, "bias": False, "mode": "zeros"}]
            if _conv_out(h, 1, s, 0, 1) != sub["shape"][1] or _conv_out(w, 1, s, 0, 1) != sub["shape"][2]:
                return None
            if d.boolean():
                shortcut.append({"op": "bn", "c": sub["shape"][0]})
        state["shape"] = sub["shape"]
        return {"op": "residual", "branch": branch, "shortcut": shortcut, "alpha": d.choice([1.0, 1.0, 0.5, -2.0]),
                "subtract": d.integer(0, 3) == 0}
    if kind == "concat":
        growth = d.integer(1, 3)
        if c + growth > 10:
            return None
        state["shape"] = [c + growth, h, w]
        branch = [{"op": "conv", "cin": c, "cout": growth, "k": 3, "stride": 1, "pad": 1, "dil": 1, "groups": 1,
                   "bias": d.boolean(), "mode": "zeros"}, _act_spec(d)]
        if d.boolean():
            branch.insert(0, {"op": "bn", "c": c})
        return {"op": "concat", "branch": branch}
    if kind == "maximum":
        conv = {"op": "conv", "cin": c, "cout": c, "k": 1, "stride": 1, "pad": 0, "dil": 1, "groups": 1,
                "bias": True, "mode": "zeros"}
        return {"op": "maximum", "a": [conv], "b": [dict(conv)] if d.boolean() else [_act_spec(d)]}
    if kind == "norm":
        if d.boolean():
            return {"op": "layernorm", "shape": [c, h, w]}
        return {"op": "groupnorm", "groups": d.choice([g for g in (1, 2) if c % g == 0]), "c": c}
    if kind == "struct":
        options = ["flip", "roll", "pad", "transpose", "clamp", "abs", "scale", "neg"]
        if h % 2 == 0 and w % 2 == 0:
            options.append("pixel_unshuffle")
        if c % 4 == 0:
            options.append("pixel_shuffle")
        if c % 2 == 0 and c > 2:
            options.append("channel_shuffle")
        name = d.choice(options)
        params: dict[str, Any] = {}
        if name == "flip":
            params = {"dims": d.choice([[1], [2], [3], [2, 3]])}
        elif name == "roll":
            params = {"shifts": d.integer(1, 3), "dims": d.choice([2, 3])}
        elif name == "pad":
            pad = [d.integer(0, 2) for _ in range(4)]
            mode = d.choice(["constant", "constant", "reflect", "replicate", "circular"])
            if mode == "reflect" and (max(pad[:2]) >= w or max(pad[2:]) >= h) or \
                    mode == "circular" and (max(pad[:2]) > w or max(pad[2:]) > h):
                mode = "constant"
            params = {"pad": pad, "mode": mode}
            state["shape"] = [c, h + pad[2] + pad[3], w + pad[0] + pad[1]]
        elif name == "transpose":
            state["shape"] = [c, w, h]
        elif name == "clamp":
            params = {"lo": d.choice([-1.0, 0.0]), "hi": d.choice([0.5, 2.0])}
        elif name == "scale":
            params = {"c": d.choice([-1.5, 0.5, 3.0])}
        elif name == "pixel_unshuffle":
            params = {"r": 2}
            state["shape"] = [c * 4, h // 2, w // 2]
        elif name == "pixel_shuffle":
            params = {"r": 2}
            state["shape"] = [c // 4, h * 2, w * 2]
        elif name == "channel_shuffle":
            params = {"groups": 2}
        return {"op": "struct", "name": name, "params": params}
    raise KeyError(kind)


def _windows_hit(n: int, out: int, k: int, s: int, p: int, dil: int) -> bool:
    """Every max-pool window holds at least one input position (torch accepts windows that lie entirely in the
    padding, with dilation: their output is -inf and their index out of range, and autograd through them writes
    out of bounds)."""
    return all(any(0 <= o * s - p + dil * j < n for j in range(k)) for o in range(out))


def _pool_out(n: int, k: int, s: int, p: int, dil: int, ceil: bool) -> int:
    eff = dil * (k - 1) + 1
    num = n + 2 * p - eff
    if num < 0:
        return 0
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= n + p:  # torch: the last window must start inside the input or left padding
        out -= 1
    return out


def _vector_block(d: Draw, state: dict, l2: bool) -> dict[str, Any] | None:
    (n,) = state["shape"]
    kinds = ["linear", "linear", "act", "act", "bn1d", "residual", "concat", "maximum", "struct", "dropout"]
    if l2:
        kinds.append("layernorm")
    kind = d.choice(kinds)
    if kind == "linear":
        out = d.integer(1, 10)
        state["shape"] = [out]
        return {"op": "linear", "din": n, "dout": out, "bias": d.boolean()}
    if kind == "act":
        return _act_spec(d)
    if kind == "bn1d":
        return {"op": "bn1d", "c": n}
    if kind == "dropout":
        return {"op": "dropout"}
    if kind == "layernorm":
        return {"op": "layernorm", "shape": [n]}
    if kind == "residual":
        hid = d.integer(1, 10)
        branch = [{"op": "linear", "din": n, "dout": hid, "bias": True}, _act_spec(d),
                  {"op": "linear", "din": hid, "dout": n, "bias": d.boolean()}]
        return {"op": "residual", "branch": branch, "shortcut": None, "alpha": d.choice([1.0, 0.5, -2.0]),
                "subtract": d.integer(0, 3) == 0}
    if kind == "concat":
        g = d.integer(1, 4)
        state["shape"] = [n + g]
        return {"op": "concat", "branch": [{"op": "linear", "din": n, "dout": g, "bias": True}, _act_spec(d)]}
    if kind == "maximum":
        lin = {"op": "linear", "din": n, "dout": n, "bias": True}
        return {"op": "maximum", "a": [lin], "b": [dict(lin)] if d.boolean() else [_act_spec(d)]}
    if kind == "struct":
        name = d.choice(["softmax", "log_softmax", "clamp", "abs", "sort", "scale", "neg", "flip"])
        params: dict[str, Any] = {}
        if name == "clamp":
            params = {"lo": d.choice([-1.0, 0.0]), "hi": d.choice([0.5, 2.0])}
        elif name == "scale":
            params = {"c": d.choice([-1.5, 0.5, 3.0])}
        elif name == "flip":
            params = {"dims": [1]}
        return {"op": "struct", "name": name, "params": params}
    raise KeyError(kind)


# -- building ---------------------------------------------------------------------------------------------
def _bn(cls: type, c: int, g: torch.Generator) -> nn.Module:
    bn = cls(c)
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
        bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.05)
        bn.weight.copy_(torch.rand(c, generator=g) * 4 - 2)  # negative γ too
        bn.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return bn


def _build_block(b: dict[str, Any], g: torch.Generator, channels: list[int]) -> nn.Module:
    op = b["op"]
    if op == "seq":
        return nn.Sequential(*[_build_block(x, g, channels) for x in b["blocks"]])
    if op == "conv":
        channels[0] = b["cout"]
        return nn.Conv2d(b["cin"], b["cout"], b["k"], b["stride"], b["pad"], b["dil"], b["groups"], b["bias"],
                         padding_mode=b["mode"])
    if op == "convT":
        channels[0] = b["cout"]
        return nn.ConvTranspose2d(b["cin"], b["cout"], b["k"], b["stride"], b["pad"], b["out_pad"], b["groups"],
                                  b["bias"], b["dil"])
    if op == "linear":
        channels[0] = b["dout"]
        return nn.Linear(b["din"], b["dout"], b["bias"])
    if op == "act":
        return make_act(b, channels[0])
    if op == "bn":
        channels[0] = b["c"]
        return _bn(nn.BatchNorm2d, b["c"], g)
    if op == "bn1d":
        channels[0] = b["c"]
        return _bn(nn.BatchNorm1d, b["c"], g)
    if op == "maxpool":
        return nn.MaxPool2d(b["k"], b["stride"], b["pad"], b["dil"], ceil_mode=b["ceil"])
    if op == "avgpool":
        return nn.AvgPool2d(b["k"], b["stride"], b["pad"], ceil_mode=b["ceil"], count_include_pad=b["include"],
                            divisor_override=b["div"])
    if op == "dropout":
        return nn.Dropout(0.3)
    if op == "layernorm":
        ln = nn.LayerNorm(b["shape"])
        with torch.no_grad():
            ln.weight.copy_(torch.rand(b["shape"], generator=g) * 4 - 2)
        return ln
    if op == "groupnorm":
        return nn.GroupNorm(b["groups"], b["c"])
    if op == "flatten":
        return Op("flatten", {})
    if op == "struct":
        if b["name"] == "pixel_unshuffle":
            channels[0] *= 4
        elif b["name"] == "pixel_shuffle":
            channels[0] //= 4
        return Op(b["name"], b["params"])
    if op == "residual":
        start = channels[0]
        branch = nn.Sequential(*[_build_block(x, g, channels) for x in b["branch"]])
        end = channels[0]
        shortcut = None
        if b["shortcut"]:
            channels[0] = start
            shortcut = nn.Sequential(*[_build_block(x, g, channels) for x in b["shortcut"]])
        channels[0] = end
        return Residual(branch, shortcut, b["alpha"], b["subtract"])
    if op == "concat":
        start = channels[0]
        branch = nn.Sequential(*[_build_block(x, g, channels) for x in b["branch"]])
        channels[0] += start
        return Concat(branch)
    if op == "maximum":
        start = channels[0]
        a = nn.Sequential(*[_build_block(x, g, channels) for x in b["a"]])
        channels[0] = start
        bb = nn.Sequential(*[_build_block(x, g, channels) for x in b["b"]])
        return Maximum(a, bb)
    raise KeyError(op)


class FuzzNet(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module | None) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(x)
        return x if self.head is None else self.head(x)


def build(spec: dict[str, Any]) -> tuple[nn.Module, Tensor]:
    """The eval-mode network and example input of a spec (deterministic)."""
    torch.manual_seed(spec["seed"])
    g = torch.Generator().manual_seed(spec["seed"])
    channels = [spec["input"][1]]
    body = nn.Sequential(*[_build_block(b, g, channels) for b in spec["body"]])
    x = torch.randn(*spec["input"], generator=g)
    head = None
    if spec["head"] is not None:
        with torch.no_grad():
            features = body.eval()(x).reshape(1, -1).shape[1]
        head = nn.Linear(features, spec["head"])
    return FuzzNet(body, head).eval(), x


def norm_value(spec: dict[str, Any]) -> float:
    return math.inf if spec["norm"] == "inf" else float(spec["norm"])


def describe(spec: dict[str, Any]) -> str:
    """A one-line summary: the ops in order."""
    def ops(blocks: list[dict]) -> list[str]:
        out = []
        for b in blocks:
            if b["op"] in ("residual", "concat"):
                out.append(f"{b['op']}[{', '.join(ops(b['branch']))}]")
            elif b["op"] == "maximum":
                out.append(f"maximum[{', '.join(ops(b['a']))} | {', '.join(ops(b['b']))}]")
            elif b["op"] == "seq":
                out.extend(ops(b["blocks"]))
            elif b["op"] in ("act", "struct"):
                out.append(b["name"])
            else:
                out.append(b["op"])
        return out

    head = f" -> linear({spec['head']})" if spec["head"] else ""
    return f"ℓ{spec['norm']} input {spec['input']}: " + " -> ".join(ops(spec["body"])) + head


# -- the soundness check ----------------------------------------------------------------------------------
#: a lower bound above a certified bound by more than this (relative) is a violation: both sides carry their own
#: float allowances (certified: +1e-6 margins on float results; lower: float64 evaluation minus 1e-12), so
#: anything larger means a rule's constant is below the true one
TOLERANCE = 1e-7


#: ``cp`` with every residual block sent to the frequency-domain bound (docs/residual.md), which real networks
#: only reach with layers too large for dense matrices
FREQUENCY_ROUTE = "cp+residual-frequency"


def _analyze(model: nn.Module, x: Tensor, p: float, method: str):
    import lipgraph
    import lipgraph.passes.residual as residual_pass

    if method != FREQUENCY_ROUTE:
        return lipgraph.analyze(model, x, norm=p, method=method, lower=False)
    limit, residual_pass.MAX_DENSE_LMI = residual_pass.MAX_DENSE_LMI, 0
    try:
        return lipgraph.analyze(model, x, norm=p, method="cp", lower=False)
    finally:
        residual_pass.MAX_DENSE_LMI = limit


def check(spec: dict[str, Any], **search: Any) -> tuple[float, dict[str, float], list[str]]:
    """(lower bound, {method: certified bound}, violations) for one spec; every certified method is checked."""
    import lipgraph
    from lipgraph import Kind
    from lipgraph.api import METHODS

    model, x = build(spec)
    p = norm_value(spec)
    options = {"starts": 4, "steps": 20, "seed": spec["seed"] % 1000, **search}
    lo = lipgraph.lower_bound(model, x, norm=p, **options).value
    uppers, violations = {}, []
    for method in [*METHODS, FREQUENCY_ROUTE]:
        report = _analyze(model, x, p, method)
        if report.kind is not Kind.CERTIFIED:
            continue
        uppers[method] = report.bound.value
        if lo > report.bound.value * (1 + TOLERANCE):
            violations.append(f"{method}: certified {report.bound.value!r} < attained {lo!r} ({describe(spec)})")
    for method, value in uppers.items():  # chain estimators only ever replace AutoLip where they are tighter
        if "autolip" in uppers and value > uppers["autolip"] * (1 + 1e-9):
            violations.append(f"{method}: {value!r} above AutoLip's {uppers['autolip']!r} ({describe(spec)})")
    return lo, uppers, violations
