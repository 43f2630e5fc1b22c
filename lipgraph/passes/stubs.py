"""Rule stubs for ops without a rule: a complete rules file that imports what it names and loads with ``--rules``.

A stub never proposes a number: its rule raises ``NotImplementedError`` until a proven constant replaces it, so
loading an unedited stub makes the analysis fail on that op, naming the stub, instead of certifying anything.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from torch import fx, nn

from ..ir import LipGraph
from ..registry import Registry
from ..record import record

MAX_RULES = 4  # one stub rule per distinct op, up to this many


def rule_stub(lg: LipGraph, nodes: list[fx.Node], registry: Registry) -> str:
    """The stub (indented by four spaces) and a line saying how to load it."""
    imports = {"import lipgraph"}
    rules: list[str] = []
    in_place: list[str] = []  # functions defined where no rules file can import them (a model file run by path)
    seen: set[str] = set()
    for node in nodes:
        target, imported, where = _decorator_target(lg, node, registry)
        if target in seen:
            continue
        seen.add(target)
        if len(rules) == MAX_RULES:
            rules.append("# … and one such rule for each other op listed above")
            break
        imports |= imported
        if where:
            in_place.append(where)
        label = record(node).key or target.split(",")[0]
        replaces = (f"# override=True replaces the built-in rule for every {label} op, and it declined only this "
                    f"case: keep its checks (lipgraph rules --op {label})\n") if "override=True" in target else ""
        rules.append(
            f"{replaces}@lipgraph.rule({target})\n"
            f"def {_identifier(label.rpartition('.')[2])}_rule(ctx):\n"
            f'    """Lipschitz constant of {label} in its input (state the proof or its source)."""\n'
            '    # TODO: return a proven bound, e.g. lipgraph.certified(value, "source"); until then it refuses.\n'
            f'    raise NotImplementedError("{label}: replace this stub by a proven Lipschitz constant")\n')
    header = sorted(imports, key=lambda line: (line != "import lipgraph", line))
    header.append("# an elementwise op with slopes in [lo, hi]: "
                  "lipgraph.register(KEY, lipgraph.elementwise(slope=(lo, hi)))")
    text = "\n".join(header) + "\n\n\n" + "\n\n".join(rules)
    stub = "\n".join(f"    {line}" if line else "" for line in text.splitlines())
    if in_place:
        how = (f"Paste it into {', '.join(sorted(set(in_place)))} (below the definition it names: a rules file "
               "would import a second copy of it), or import it before lipgraph.analyze(...).")
    else:
        how = ("Save it as my_rules.py and load it with --rules my_rules.py (CLI), or import it before "
               "lipgraph.analyze(...).")
    return stub + "\n\n" + how


def _decorator_target(lg: LipGraph, node: fx.Node, registry: Registry) -> tuple[str, set[str], str | None]:
    """What ``@lipgraph.rule(...)`` names for this op, the imports that name needs, and the file it must be
    pasted into when it cannot be imported (else ``None``)."""
    key = record(node).key
    if key:  # an op key covers every spelling of the op and is always valid Python
        return (f'"{key}", override=True' if registry.get(key) is not None else f'"{key}"'), set(), None
    target = lg.target_of(node)
    cls_or_fn: Any = type(target) if isinstance(target, nn.Module) else target
    module = getattr(cls_or_fn, "__module__", "") or ""
    name = getattr(cls_or_fn, "__qualname__", "") or getattr(cls_or_fn, "__name__", "")
    if module.startswith("torch."):
        if getattr(nn, name, None) is cls_or_fn:
            return f"torch.nn.{name}", {"import torch"}, None
        return f"{module}.{name}", {"import torch"}, None
    if _importable(module, name, cls_or_fn):
        return name, {f"from {module} import {name}"}, None
    try:
        file = inspect.getsourcefile(cls_or_fn)
    except TypeError:  # a builtin, or a class whose module is gone
        file = None
    return name, set(), file or f"the file that defines {name}"


def _importable(module: str, name: str, obj: Any) -> bool:
    """``from module import name`` gives ``obj`` itself (the registry matches functions and classes by identity)."""
    if not module or module == "__main__" or "." in name or module not in sys.modules:
        return False
    try:
        return getattr(importlib.import_module(module), name, None) is obj
    except Exception:  # noqa: BLE001 - a module that cannot be imported again
        return False


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "my_op"
