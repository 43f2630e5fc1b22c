"""Annotate every input-dependent op with its rule's transfer (``lip.rule``, ``lip.transfer``).

All problems are collected before failing: one error lists every op without a rule (with a rule stub),
another every op that is not globally Lipschitz. With ``unsupported="inf"`` ops without a rule get an
unbounded gain instead, and the report marks them.
"""
from __future__ import annotations

import math

from torch import fx

from ..bound import unbounded
from ..errors import LipgraphError, NormNotSupported, NotLipschitzError, RuleError, UnsupportedOpsError
from ..ir import LipGraph, map_args, op_spelling
from ..registry import Registry
from ..ruleapi import OpContext, Transfer, Var

UNSUPPORTED_MODES = ("error", "inf")


def annotate(lg: LipGraph, registry: Registry, norm: float = 2, unsupported: str = "error") -> None:
    if unsupported not in UNSUPPORTED_MODES:
        raise RuleError(f"unsupported= must be one of {UNSUPPORTED_MODES}, got {unsupported!r}")
    missing: list[fx.Node] = []
    not_lipschitz: list[str] = []
    for node in lg.ops():
        key = node.meta["lip.key"]
        rule = registry.get(key) if key else None
        if rule is None:
            missing.append(node)
            continue
        ctx = context(lg, node, norm)
        try:
            node.meta["lip.transfer"] = rule.apply(ctx)
        except NotLipschitzError as exc:
            not_lipschitz.append(f"  - {exc}{_at(node)}")
            continue
        except NormNotSupported:
            missing.append(node)
            continue
        except LipgraphError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken rule must say which rule and where
            raise RuleError(f"rule {rule.name!r} (from {rule.source}) failed on {ctx.describe()}: "
                            f"{type(exc).__name__}: {exc}{_at(node)}") from exc
        node.meta["lip.rule"] = rule
    if not_lipschitz:
        raise NotLipschitzError(
            "the network is not globally Lipschitz, so no finite bound exists:\n" + "\n".join(not_lipschitz)
            + "\nA product or quotient of two input-dependent tensors (gating, dot-product attention, "
              "normalising by a branch) can grow without limit; bound the input domain or replace the op "
              "by a Lipschitz variant (e.g. L2 attention, Kim et al. 2021).")
    if missing and unsupported == "error":
        raise UnsupportedOpsError(_unsupported_message(lg, missing, norm), missing)
    for node in missing:
        node.meta["lip.transfer"] = Transfer(gains=(unbounded("no rule"),) * len(node.meta["lip.inputs"]))


def context(lg: LipGraph, node: fx.Node, norm: float) -> OpContext:
    """What the rule of ``node`` sees: constants as values, input-dependent arguments as :class:`Var`."""
    counter = iter(range(len(node.meta["lip.inputs"])))

    def value(arg: fx.Node):
        if arg.meta.get("lip.dep"):
            info = arg.meta["lip.info"]
            return Var(info.shape, info.dtype, next(counter), parts=info.parts)
        return arg.meta.get("lip.value")

    args, kwargs = map_args(node, value)
    module = lg.gm.get_submodule(node.target) if node.op == "call_module" else None
    return OpContext(key=node.meta["lip.key"], target=lg.target_of(node), module=module, args=args,
                     kwargs=kwargs, output=node.meta["lip.info"], norm=norm, name=node.name,
                     path=node.meta["lip.path"])


def _at(node: fx.Node) -> str:
    source = node.meta.get("lip.source")
    return f"\n      at {source}" if source else ""


def _unsupported_message(lg: LipGraph, nodes: list[fx.Node], norm: float) -> str:
    rows = []
    for n in nodes:
        key = n.meta["lip.key"] or "(no key)"
        rows.append(f"  - {key:<16} {op_spelling(lg, n):<40} at {n.meta['lip.path']}{_at(n)}")
    first = nodes[0]
    spelling = op_spelling(lg, first)
    # an op key covers every spelling and is always valid Python; torch functions' display names may not be
    # (torch.fft.fft displays as torch.fft_fft, torch.cumsum as torch._VariableFunctionsClass.cumsum)
    key = first.meta["lip.key"]
    target = f'"{key}"' if key and first.op != "call_module" else spelling
    norm_text = "inf" if math.isinf(norm) else f"{norm:g}"
    return (
        f"lipgraph has no rule (for the ℓ{norm_text} norm) for {len(nodes)} op(s); an op without a rule is never "
        "treated as the identity:\n" + "\n".join(rows) + "\n\n"
        "Register a rule for each, e.g. (copy, paste, and replace the constant by a proven one):\n\n"
        "    import lipgraph\n\n"
        f"    @lipgraph.rule({target})\n"
        f"    def {_identifier(first.meta['lip.key'] or 'my_op')}_rule(ctx):\n"
        '        """Lipschitz constant of this op in its input (state the proof or source)."""\n'
        "        return lipgraph.certified(1.0, \"my derivation\")  # or lipgraph.elementwise(slope=(lo, hi))\n\n"
        "Load it with --rules my_rules.py (CLI) or by importing it before lipgraph.analyze(...); "
        "or pass unsupported='inf' (--unsupported inf) for a partial tree with these ops unbounded."
    )


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "my_op"
