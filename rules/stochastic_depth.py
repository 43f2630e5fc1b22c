"""``torchvision.ops.stochastic_depth`` / ``StochasticDepth`` (ConvNeXt, EfficientNet, Swin): the identity in eval
mode (``training=False``), so Lipschitz 1 and its interval is its input's. In training mode it drops rows at
random: refused. Registered only when torchvision is installed."""
from __future__ import annotations

from typing import Any

from lipgraph.bound import exact
from lipgraph.errors import RuleError
from lipgraph.registry import Registry
from lipgraph.ruleapi import OpContext, Transfer


def _check_eval(ctx: OpContext) -> None:
    if ctx.arg("training", 3, True):
        raise RuleError(f"{ctx.describe()}: stochastic depth in training mode drops rows at random; lipgraph "
                        "bounds eval-mode networks")


def stochastic_depth(ctx: OpContext) -> Transfer:
    """The identity in eval mode: Lipschitz 1, exact."""
    _check_eval(ctx)
    return Transfer(gains=(exact(1.0, "eval-identity"),), slope=(1.0, 1.0), affine=True)


def interval(ctx: OpContext) -> Any:
    _check_eval(ctx)
    return ctx.bounds[0]


def register(registry: Registry) -> None:
    try:
        from torchvision.ops import stochastic_depth as function
    except ImportError:  # torchvision is optional
        return
    registry.register(function, stochastic_depth, key="stochastic_depth", exact=True)
    registry.register_interval("stochastic_depth", interval)
