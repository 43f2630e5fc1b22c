"""``Comparison`` as a rich table: each node's bound before and after, and the ratio (red when it grew)."""
from __future__ import annotations

from typing import IO, Any

from rich.console import Console
from rich.table import Table

from ..comparison import Comparison, ComparisonRow
from .rich_tree import format_bound, make_console, print_ascii, to_ascii


def comparison_table(comparison: Comparison, *, depth: int | None = None, largest: int | None = None,
                     ascii_only: bool = False) -> Table:
    rows = comparison.largest(largest) if largest else [r for r in comparison.rows if depth is None or r.depth <= depth]
    table = Table(title=f"{comparison.before} → {comparison.after}: L × {_ratio(comparison.rows[0])}")
    for column, justify in (("node", "left"), ("type", "left"), ("before", "right"), ("after", "right"),
                            ("after/before", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for row in rows:
        name = row.path or row.type
        indent = "" if largest else "  " * row.depth
        ratio = row.ratio
        style = "" if ratio is None or abs(ratio - 1) < 1e-9 else "red" if ratio > 1 else "green"
        cells = [indent + name, row.type, format_bound(row.before),
                 format_bound(row.after) if row.after is not None else "-", _ratio(row)]
        table.add_row(*(map(to_ascii, cells) if ascii_only else cells), style=style)
    return table


def print_comparison(comparison: Comparison, *, console: Console | None = None, depth: int | None = None,
                     largest: int | None = None, ascii_only: bool = False, width: int | None = None) -> None:
    console = console or make_console(ascii_only=ascii_only, width=width)
    table = comparison_table(comparison, depth=depth, largest=largest, ascii_only=ascii_only)
    print_ascii(console, ascii_only, lambda c: c.print(table))
    if comparison.only_after:
        console.print(f"only in {comparison.after}: {', '.join(comparison.only_after)}", style="italic")


def _ratio(row: ComparisonRow) -> str:
    return "-" if row.ratio is None else f"{row.ratio:.4g}"


def write_comparison(comparison: Comparison, file: IO[str] | None = None, **options: Any) -> None:
    """The ``table`` format of a comparison: :func:`print_comparison` onto ``file``."""
    if file is not None and options.get("console") is None:
        options["console"] = make_console(file, ascii_only=options.get("ascii_only", False), width=options.get("width"))
    print_comparison(comparison, **options)
