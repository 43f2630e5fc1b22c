"""The annotated bound tree, printed with rich.

Each line: name, type, op, the bound with its relation (``=`` exact, ``≤`` certified, ``≈`` estimate,
``≥`` lower), its kind and method; merges show their formula (``1 + L(bn2) = 1 + 3.21``); with
``analyze(layer_lower=True)`` a layer's power-iteration lower bound follows its gain
(``L ≤ 2.934  certified · fft-circular (power iteration ≥ 2.93)``).
"""
from __future__ import annotations

import sys
from typing import IO

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from ..bound import Bound, Kind
from ..report import ChainInfo, Report, ReportNode, norm_name

_STYLE = {Kind.CERTIFIED: "green", Kind.ESTIMATE: "yellow", Kind.LOWER: "cyan", Kind.UNBOUNDED: "bold red"}


class _AsciiConsole(Console):
    """A console that draws tree guides with ASCII characters only (``--ascii``)."""

    @property
    def encoding(self) -> str:
        return "ascii"


def make_console(file: IO[str] | None = None, *, ascii_only: bool = False, width: int | None = None,
                 color: bool | None = None) -> Console:
    cls = _AsciiConsole if ascii_only else Console
    return cls(file=file or sys.stdout, width=width, color_system="auto" if color is not False else None,
               no_color=color is False, highlight=False, emoji=False)


def format_bound(b: Bound) -> str:
    if b.kind is Kind.UNBOUNDED:
        return "∞"
    relation = "=" if b.exact else {Kind.CERTIFIED: "≤", Kind.ESTIMATE: "≈", Kind.LOWER: "≥"}[b.kind]
    return f"{relation} {b.value:.4g}"


def power_lower(b: Bound) -> str:
    """A per-layer lower bound beside its certified gain: ``power iteration ≥ 2.93``."""
    return f"{b.method.replace('-', ' ')} {format_bound(b)}"


def label(node: ReportNode, *, root: bool = False) -> Text:
    text = Text()
    text.append(node.path if node.path else node.type, style="bold")
    if node.path:
        text.append(f" ({node.type})", style="dim")
    if node.op and node.op != node.type:
        text.append(f" {node.op}", style="blue")
    text.append(f"  L {format_bound(node.bound)}", style=_STYLE[node.bound.kind])
    text.append(f"  {node.bound.kind.value} · {node.bound.method}", style="dim")
    if node.layer_lower is not None:
        text.append(f" ({power_lower(node.layer_lower)})", style=_STYLE[Kind.LOWER])
    if node.formula:
        text.append(f"  [{node.formula}]", style="magenta")
    if node.fused:
        names = "+".join(m.rsplit(".", 1)[-1] for m in node.fused.members)
        lower = f", {power_lower(node.fused.lower)}" if node.fused.lower is not None else ""
        text.append(f"  [{names} fused: L {format_bound(node.fused.bound)} by {node.fused.bound.method[6:]}, "
                    f"product {node.fused.product:.4g}{lower}]", style="green")
    if node.chain:
        text.append(f"  [{chain_summary(node.chain)}]", style="green")
    for note in node.notes:
        text.append(f"  ({note})", style="italic")
    return text


def chain_summary(chain: ChainInfo) -> str:
    """``conv1+bn1 → relu → conv2+bn2: autolip 3.19 · cp ≤ 1.88 · seqlip ≤ 1.95 · seqlip-greedy ≈ 1.29``."""
    values = [f"autolip {chain.product:.4g}"] + [f"{name} {format_bound(b)}" for name, b in chain.results.items()]
    return f"{' → '.join(chain.members)}: {' · '.join(values)}"


def build_rich_tree(report: Report, depth: int | None = None) -> Tree:
    b = report.bound
    title = Text()
    title.append(f"{report.model}", style="bold")
    if report.lower is not None:  # tightness: lower ≤ L ≤ upper
        title.append(f"  {report.lower.value:.4g} ≤", style="bold " + _STYLE[Kind.LOWER])
        title.append(f" L {format_bound(b) if b.kind is not Kind.UNBOUNDED else '≤ ∞'}", style="bold " + _STYLE[b.kind])
        if report.ratio is not None:
            title.append(f"  (upper/lower {report.ratio:.3g})", style="bold")
    else:
        title.append(f"  L {format_bound(b)}", style="bold " + _STYLE[b.kind])
    if report.estimate is not None:
        title.append(f"  (estimate {format_bound(report.estimate)} by {report.estimate.method})",
                     style=_STYLE[Kind.ESTIMATE])
    title.append(f"  {b.kind.value} · {b.method} · ℓ{norm_name(report.norm)} · input "
                 f"{' '.join('×'.join(map(str, s)) for s in report.input_shape)}", style="dim")
    tree = Tree(title)

    def add(parent: Tree, node: ReportNode, level: int) -> None:
        if depth is not None and level > depth:
            return
        branch = parent.add(label(node))
        for child in node.children:
            add(branch, child, level + 1)

    for child in report.tree.children:
        add(tree, child, 1)
    return tree


_ASCII = str.maketrans({"≤": "<=", "≈": "~", "≥": ">=", "∞": "inf", "ℓ": "l", "×": "x", "·": "*", "√": "sqrt"})


def print_report(report: Report, *, console: Console | None = None, depth: int | None = None,
                 ascii_only: bool = False, width: int | None = None) -> None:
    console = console or make_console(ascii_only=ascii_only, width=width)
    if ascii_only and not console.options.ascii_only:  # a caller's UTF-8 console would draw unicode guides
        console = _AsciiConsole(file=console.file, width=console.width, color_system=console.color_system,
                                no_color=console.no_color, highlight=False, emoji=False)
    if ascii_only:
        with console.capture() as captured:
            _print(report, console, depth)
        console.file.write(captured.get().translate(_ASCII))
    else:
        _print(report, console, depth)


def _print(report: Report, console: Console, depth: int | None) -> None:
    console.print(build_rich_tree(report, depth))
    if len(report.outputs) > 1:
        for name, b in report.outputs:
            console.print(f"output {name}: L {format_bound(b)} ({b.kind.value})")
    if report.lower is not None:
        console.print(f"lower bound: L ≥ {report.lower.value:.6g} ({report.lower.method}, an attained ratio "
                      f"|f(x) - f(y)| / |x - y|)", style=_STYLE[Kind.LOWER])
    for note in report.notes:
        console.print(f"note: {note}", style="italic")
    console.print(f"{report.seconds:.2f} s · frontend {report.frontend}", style="dim")
