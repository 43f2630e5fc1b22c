"""The annotated bound tree, printed with rich.

Each line: name, type, op, the bound with its relation (``=`` exact, ``≤`` certified, ``≈`` estimate,
``≥`` lower), its kind and method; merges show their formula (``1 + L(conv2+bn2)·L(relu)·L(conv1+bn1) = 1 + 8.99``,
with ``--formula`` every node does); with ``analyze(layer_lower=True)`` a layer's power-iteration lower bound
follows its gain (``L ≤ 2.934  certified · fft-circular (power iteration ≥ 2.93)``).
"""
from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from ..bound import Bound, Kind
from ..hints import loose_bound_hint
from ..report import ChainInfo, Report, ReportNode, norm_name
from .formulas import latex_block, top_marks, top_table

if TYPE_CHECKING:
    from ..formula import Formulas

KIND_STYLE = {Kind.CERTIFIED: "green", Kind.ESTIMATE: "yellow", Kind.LOWER: "cyan", Kind.UNBOUNDED: "bold red"}


class _AsciiConsole(Console):
    """A console that draws tree guides with ASCII characters only (``--ascii``)."""

    @property
    def encoding(self) -> str:
        return "ascii"


#: width of output that goes to a file or a pipe: lines are not wrapped (a reader or `less -S` does that)
UNWRAPPED_WIDTH = 10_000


def make_console(file: IO[str] | None = None, *, ascii_only: bool = False, width: int | None = None,
                 color: bool | None = None) -> Console:
    """A console on ``file`` (stdout); ``width`` None: the terminal's, or unwrapped lines when the output is not a
    terminal (piped, redirected) and ``$COLUMNS`` is not set."""
    cls = _AsciiConsole if ascii_only else Console
    file = file or sys.stdout
    if width is None and "COLUMNS" not in os.environ and not _is_terminal(file):
        width = UNWRAPPED_WIDTH
    return cls(file=file, width=width, color_system="auto" if color is not False else None,
               no_color=color is False, highlight=False, emoji=False)


def _is_terminal(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def format_bound(b: Bound) -> str:
    if b.kind is Kind.UNBOUNDED:
        return "∞"
    relation = "=" if b.exact else {Kind.CERTIFIED: "≤", Kind.ESTIMATE: "≈", Kind.LOWER: "≥"}[b.kind]
    return f"{relation} {b.value:.4g}"


def power_lower(b: Bound) -> str:
    """A per-layer lower bound beside its certified gain: ``power iteration ≥ 2.93``."""
    return f"{b.method.replace('-', ' ')} {format_bound(b)}"


def label(node: ReportNode, *, root: bool = False, formulas: Formulas | None = None, mark: str | None = None,
          ) -> Text:
    """One line of the tree; ``formulas`` (``--formula``) adds the node's formula, ``mark`` (``--top``) its rank."""
    text = Text()
    text.append(node.path if node.path else node.type, style="bold")
    if node.path:
        text.append(f" ({node.type})", style="dim")
    if node.op and node.op != node.type:
        text.append(f" {node.op}", style="blue")
    text.append(f"  L {format_bound(node.bound)}", style=KIND_STYLE[node.bound.kind])
    text.append(f"  {node.bound.kind.value} · {node.bound.method}", style="dim")
    if node.layer_lower is not None:
        text.append(f" ({power_lower(node.layer_lower)})", style=KIND_STYLE[Kind.LOWER])
    if node.formula:
        text.append(f"  [{node.formula}]", style="magenta")
    elif formulas is not None and node.expr is not None and not node.expr.is_Symbol:
        text.append(f"  [L = {formulas.text(node.expr, node.path)}]", style="magenta")
    if mark:
        text.append(f"  [{mark}]", style="bold red")
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
    """``conv1+bn1 → relu → conv2+bn2: autolip 3.19 · cp ≤ 1.88 (0.01 s) · seqlip-greedy ≈ 1.29 (0.1 s)``: every
    estimator's value (its relation says certified ≤ or estimate ≈) and how long it took."""
    values = [f"autolip {chain.product:.4g}"] + [
        f"{name} {format_bound(b)} ({chain.seconds.get(name, 0.0):.2g} s)" for name, b in chain.results.items()]
    return f"{' → '.join(chain.members)}: {' · '.join(values)}"


def build_rich_tree(report: Report, depth: int | None = None, *, formulas: bool = False, top: int | None = None,
                    ) -> Tree:
    """The tree; ``formulas`` shows each node's formula, ``top`` marks the constants that matter most."""
    b = report.bound
    title = Text()
    title.append(f"{report.model}", style="bold")
    if report.region is not None:
        title.append(f"  on the {report.region}", style="bold")
    if report.lower is not None:  # tightness: lower ≤ L ≤ upper
        title.append(f"  {report.lower.value:.4g} ≤", style="bold " + KIND_STYLE[Kind.LOWER])
        title.append(f" L {format_bound(b) if b.kind is not Kind.UNBOUNDED else '≤ ∞'}", style="bold " + KIND_STYLE[b.kind])
        if report.ratio is not None:
            title.append(f"  (upper/lower {report.ratio:.3g})", style="bold")
    else:
        title.append(f"  L {format_bound(b)}", style="bold " + KIND_STYLE[b.kind])
    if report.estimate is not None:
        title.append(f"  (estimate {format_bound(report.estimate)} by {report.estimate.method})",
                     style=KIND_STYLE[Kind.ESTIMATE])
    shapes = " ".join("×".join(map(str, s)) for s in report.input_shape)  # none for a subtree's report
    where = f" · input {shapes}" if shapes else ""
    title.append(f"  {b.kind.value} · {b.method} · ℓ{norm_name(report.norm)}{where}", style="dim")
    shown = report.formulas if formulas else None
    if shown is not None:
        title.append(f"  [L = {shown.text(report.tree.expr, report.tree.path)}]", style="magenta")
    marks = top_marks(report, top) if top else {}
    tree = Tree(title)

    def add(parent: Tree, node: ReportNode, level: int) -> None:
        if depth is not None and level > depth:
            return
        branch = parent.add(label(node, formulas=shown, mark=marks.get(node.path)))
        for child in node.children:
            add(branch, child, level + 1)

    for child in report.tree.children:
        add(tree, child, 1)
    return tree


_ASCII = str.maketrans({"≤": "<=", "≈": "~", "≥": ">=", "∞": "inf", "ℓ": "l", "×": "x", "·": "*", "√": "sqrt",
                        "→": "->", "∂": "d", "‖": "|", "−": "-"})


def to_ascii(text: str) -> str:
    return text.translate(_ASCII)


def print_ascii(console: Console, ascii_only: bool, draw: Callable[[Console], None]) -> None:
    """``draw(console)``; with ``ascii_only`` through an ASCII console, its output mapped to ASCII (``≤`` -> ``<=``)."""
    if ascii_only and not console.options.ascii_only:  # a caller's UTF-8 console would draw unicode guides
        console = _AsciiConsole(file=console.file, width=console.width, color_system=console.color_system,
                                no_color=console.no_color, highlight=False, emoji=False)
    if ascii_only:
        with console.capture() as captured:
            draw(console)
        console.file.write(to_ascii(captured.get()))
    else:
        draw(console)


def print_report(report: Report, *, console: Console | None = None, depth: int | None = None,
                 ascii_only: bool = False, width: int | None = None, formulas: bool = False, latex: bool = False,
                 top: int | None = None) -> None:
    """The tree (``formulas``: with each node's formula; ``top``: with the ``top`` constants that matter most
    marked and listed), or with ``latex`` only the formulas as a LaTeX ``align*`` block."""
    console = console or make_console(ascii_only=ascii_only, width=width)
    if latex:
        console.print(latex_block(report, depth), markup=False, highlight=False, soft_wrap=True)
        return
    print_ascii(console, ascii_only, lambda c: _print(report, c, depth, formulas, top))


def _print(report: Report, console: Console, depth: int | None, formulas: bool, top: int | None) -> None:
    console.print(build_rich_tree(report, depth, formulas=formulas, top=top))
    if top:
        console.print(top_table(report, top))
    if len(report.outputs) > 1:
        for name, b in report.outputs:
            console.print(f"output {name}: L {format_bound(b)} ({b.kind.value})")
    if report.lower is not None:
        console.print(f"lower bound: L ≥ {report.lower.value:.6g} ({report.lower.method}, an attained ratio "
                      f"|f(x) - f(y)| / |x - y|)", style=KIND_STYLE[Kind.LOWER])
    for note in report.notes:
        console.print(f"note: {note}", style="italic")
    hint = loose_bound_hint(report.ratio, report.method)
    if hint:
        console.print(f"hint: {hint}", style="italic")
    console.print(f"{report.seconds:.2f} s · frontend {report.frontend}", style="dim")


def write_tree(report: Report, file: IO[str] | None = None, **options: Any) -> None:
    """The ``tree`` format: :func:`print_report` onto ``file`` (options: ``depth``, ``ascii_only``, ``width``,
    ``formulas``, ``latex``, ``top``, ``console``)."""
    if file is not None and options.get("console") is None:
        options["console"] = make_console(file, ascii_only=options.get("ascii_only", False), width=options.get("width"))
    print_report(report, **options)


def write_latex(report: Report, file: IO[str] | None = None, **options: Any) -> None:
    """The ``latex`` format: the formulas as a LaTeX ``align*`` block (``depth``: down to that depth)."""
    write_tree(report, file, **{**options, "latex": True})
