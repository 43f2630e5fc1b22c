"""A report as one self-contained HTML page (``lipgraph explain --format html > report.html``): no network, the CSS
and the few lines of JavaScript inline.

At the top: the certified bound, the proven lower bound and their ratio (how tight the bound is). Below, the
bound tree, collapsible (``<details>``); each node is coloured by its elasticity ``∂log L/∂log L_i`` (attribution,
:meth:`lipgraph.report.Report.attribution`): a layer by its own constant's, a module by the largest of the layers
inside it, so the hot path of a large model stands out. Hovering a node shows its formula, its fused run and its
chain (``title`` attributes). ``#expand`` in the address opens every node; the buttons do the same by hand.

This module with its one registration line in ``lipgraph/render/__init__.py`` is the worked example of an output
format (docs/architecture.md).
"""
from __future__ import annotations

import html
from typing import IO, Any

from ..bound import Kind
from ..report import Report, ReportNode, norm_name
from .rich_tree import chain_summary, format_bound, power_lower

#: Nodes at this depth and above start open.
OPEN_DEPTH = 1

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em} .dim{color:#666} .mono{font-family:ui-monospace,monospace}
.summary{display:flex;gap:2em;flex-wrap:wrap;margin:.6em 0 1em} .summary div{font-size:1.1em}
.summary b{font-size:1.3em} details{margin-left:1.2em} summary{cursor:pointer}
.leaf{margin-left:2.4em} .node{padding:1px 6px;border-radius:4px}
.certified{color:#17692c} .estimate{color:#8a6d00} .lower{color:#0b6b80} .unbounded{color:#b00020;font-weight:bold}
.notes{margin-top:1em} .legend span{display:inline-block;width:2.2em;text-align:center;border-radius:3px}
button{margin-right:.5em}
"""

_JS = """
function setAll(open){document.querySelectorAll('details').forEach(d=>{d.open=open;});}
if(location.hash==='#expand'){setAll(true);}
"""


def write_html(report: Report, file: IO[str], *, title: str | None = None, **_ignored: Any) -> None:
    """The ``html`` format (module docstring); display options of the tree do not apply."""
    heat = elasticities(report)
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title or f'lipgraph: {report.model}')}</title>",
        f"<style>{_CSS}</style></head><body>",
        *_header(report),
        '<p><button type="button" onclick="setAll(true)">expand all</button>'
        '<button type="button" onclick="setAll(false)">collapse all</button>'
        '<span class="legend dim">elasticity ∂log L/∂log L<sub>i</sub>: '
        + "".join(f'<span style="background:{_colour(e)}">{e:g}</span>' for e in (0, 0.25, 0.5, 0.75, 1))
        + "</span></p>",
        '<div id="tree">',
        *_node(report, report.tree, heat, 0),
        "</div>",
        *_notes(report),
        f"<script>{_JS}</script>",
        "</body></html>",
    ]
    file.write("\n".join(page) + "\n")


def elasticities(report: Report) -> dict[str, float]:
    """Tree path -> the largest elasticity of the constants inside that node (a fused run or chain counts for the
    node that shows it and for its members); empty without formulas."""
    if report.formulas is None:
        return {}
    paths = {node.path for node in report.tree.walk()}
    own: dict[str, float] = {}
    for a in report.attribution():
        for path in ([a.name] if a.name in paths else [p for p in a.paths if p in paths]):
            own[path] = max(own.get(path, 0.0), a.elasticity)
    heat: dict[str, float] = {}

    def visit(node: ReportNode) -> float:
        value = max([own.get(node.path, 0.0), *(visit(child) for child in node.children)])
        heat[node.path] = value
        return value

    visit(report.tree)
    return heat


def _header(report: Report) -> list[str]:
    b = report.bound
    shapes = " ".join("×".join(map(str, s)) for s in report.input_shape)
    lines = [f"<h1>{_e(report.model)}</h1>",
             f'<div class="dim">{_e(b.kind.value)} · {_e(b.method)} · ℓ{_e(norm_name(report.norm))}'
             + (f" · input {_e(shapes)}" if shapes else "") + f" · {report.seconds:.2f} s · frontend "
             f"{_e(report.frontend)}</div>", '<div class="summary">',
             f'<div id="upper">upper bound <b class="{b.kind.value}">L {_e(format_bound(b))}</b></div>']
    if report.lower is not None:
        lines.append(f'<div id="lower">lower bound <b class="lower">L ≥ {report.lower.value:.4g}</b> '
                     f'<span class="dim">({_e(report.lower.method)})</span></div>')
    if report.ratio is not None:
        lines.append(f'<div id="ratio">upper / lower <b>{report.ratio:.3g}</b></div>')
    if report.estimate is not None:
        lines.append(f'<div id="estimate">estimate <b class="estimate">{_e(format_bound(report.estimate))}</b> '
                     f'<span class="dim">({_e(report.estimate.method)})</span></div>')
    lines.append("</div>")
    return lines


def _node(report: Report, node: ReportNode, heat: dict[str, float], depth: int) -> list[str]:
    label = _label(report, node, heat.get(node.path, 0.0))
    if not node.children:
        return [f'<div class="leaf">{label}</div>']
    lines = [f"<details{' open' if depth <= OPEN_DEPTH else ''}><summary>{label}</summary>"]
    for child in node.children:
        lines += _node(report, child, heat, depth + 1)
    return lines + ["</details>"]


def _label(report: Report, node: ReportNode, elasticity: float) -> str:
    b = node.bound
    name = node.path or node.type
    text = f"<b>{_e(name)}</b>"
    if node.path:
        text += f' <span class="dim">({_e(node.type)})</span>'
    if node.op and node.op != node.type:
        text += f" {_e(node.op)}"
    text += f' <span class="{b.kind.value}">L {_e(format_bound(b) if b.kind is not Kind.UNBOUNDED else "≤ ∞")}</span>'
    text += f' <span class="dim">{_e(b.kind.value)} · {_e(b.method)}</span>'
    if node.layer_lower is not None:
        text += f' <span class="lower">({_e(power_lower(node.layer_lower))})</span>'
    for note in node.notes:
        text += f' <i class="dim">({_e(note)})</i>'
    hover = [f"elasticity {elasticity:.3g}"] + _details(report, node)
    return (f'<span class="node" data-path="{_e(node.path)}" data-elasticity="{elasticity:.6g}" '
            f'style="background:{_colour(elasticity)}" title="{_e(chr(10).join(hover))}">{text}</span>')


def _details(report: Report, node: ReportNode) -> list[str]:
    """What a hover shows besides the elasticity: the formula, the fused run, the chain's estimators."""
    out = []
    if node.formula:
        out.append(node.formula)
    elif report.formulas is not None and node.expr is not None and not node.expr.is_Symbol:
        out.append(f"L = {report.formulas.text(node.expr, node.path)}")
    if node.fused:
        out.append(f"fused run {' + '.join(node.fused.members)}: L {format_bound(node.fused.bound)} "
                   f"({node.fused.bound.method}), product of the layers {node.fused.product:.4g}")
    if node.chain:
        out.append(f"chain {chain_summary(node.chain)}; winner {node.chain.winner}")
    return out


def _notes(report: Report) -> list[str]:
    lines = [f'<div class="notes">output {_e(name)}: L {_e(format_bound(b))} ({b.kind.value})</div>'
             for name, b in report.outputs] if len(report.outputs) > 1 else []
    return lines + [f'<div class="notes dim">note: {_e(note)}</div>' for note in report.notes]


def _colour(elasticity: float) -> str:
    """White (0) to red (1): the share of the bound's sensitivity a node carries."""
    e = min(max(elasticity, 0.0), 1.0)
    return f"hsl(0, {round(85 * e)}%, {round(100 - 28 * e)}%)"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
