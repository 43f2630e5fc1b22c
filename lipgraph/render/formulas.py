"""Formulas and attribution for ``lipgraph explain --formula / --latex / --top N``.

``--latex`` prints one equation per module node (``align*``, names relative to the node, each with its value);
``--top N`` a table of the constants of layers with weights that the bound depends on most (elasticity
``∂log L/∂log L_i``) and what the bound would be with each of them at 1 (e.g. spectrally normalised).
"""
from __future__ import annotations

import math

from rich.table import Table

from ..report import Report, ReportNode


def latex_block(report: Report, depth: int | None = None) -> str:
    """``\\begin{align*} L &= … \\approx 412.7 \\\\ L_{\\text{layer1}} &= … \\end{align*}``: every node with a
    formula of its own (modules and the model; merges are part of their module's formula), then the shared
    values ``L_{→x}`` those formulas use."""
    from ..formula import latex_name  # sympy: only when formulas are shown

    f = report.formulas
    lines, shared = [], {}

    def equation(name: str, expr, relative_to: str) -> str:
        return f"{latex_name(name)} &= {f.latex(expr, relative_to)} \\approx {_latex_number(f.evaluate(expr))}"

    def visit(node: ReportNode, level: int) -> None:
        if depth is not None and level > depth:
            return
        if node.expr is not None and not node.expr.is_Symbol and node.formula is None:
            lines.append(equation(node.path, node.expr, node.path))
            shared.update({s: node.path for s in node.expr.free_symbols if f.names[s].startswith("→")})
        for child in node.children:
            visit(child, level + 1)

    visit(report.tree, 0)
    for s, where in shared.items():
        lines.append(equation(f.display_name(s, where), f.definitions[s], where))
    return "\\begin{align*}\n" + " \\\\\n".join(lines) + "\n\\end{align*}"


def top_marks(report: Report, n: int) -> dict[str, str]:
    """Tree path -> ``#k elasticity 0.93`` for the ``n`` constants that matter most (a fused run is marked
    on its last layer, which shows it)."""
    paths = {node.path for node in report.tree.walk()}
    return {(a.name if a.name in paths else a.paths[-1]): f"#{k} elasticity {a.elasticity:.3g}"
            for k, a in enumerate(report.top(n), 1)}


def top_table(report: Report, n: int) -> Table:
    f = report.formulas
    table = Table(title="layer constants the bound depends on most")
    for column, justify in (("#", "right"), ("constant", "left"), ("L_i", "right"), ("∂log L/∂log L_i", "right"),
                            ("L if L_i = 1", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for k, a in enumerate(report.top(n), 1):
        at_one = f.with_overrides({s: 1.0 for s in f.symbols_named(a.name)}).evaluate(report.tree.expr)
        table.add_row(str(k), a.name, f"{a.value:.4g}", f"{a.elasticity:.3g}", f"{at_one:.4g}")
    return table


def _latex_number(value: float) -> str:
    """``412.7``, ``1.778 \\times 10^{7}``."""
    if math.isinf(value):
        return r"\infty"
    mantissa, _, exponent = f"{value:.4g}".partition("e")
    return f"{mantissa} \\times 10^{{{int(exponent)}}}" if exponent else mantissa
