"""Names of the report's shortcuts, shared by the tree, the report and the formulas (no sympy here)."""
from __future__ import annotations


def joined_name(paths: list[str]) -> str:
    """``layer1.0.conv1+bn1`` for a run of ``layer1.0.conv1`` and ``layer1.0.bn1`` (common module prefix once)."""
    parts = [p.split(".") for p in paths]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    prefix = ".".join(parts[0][:common])
    return (prefix + "." if prefix else "") + "+".join(".".join(p[common:]) for p in parts)


def chain_path(result) -> str:
    """The tree path of a chain (a :class:`lipgraph.passes.seqlip.ChainResult`): ``<scope>.chain(<first>)``."""
    first, scope = result.chain.members()[0], result.chain.scope
    return f"{scope}.chain({first})" if scope else f"chain({first})"
