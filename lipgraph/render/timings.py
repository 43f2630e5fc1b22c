"""Where the time went: the slowest layers of an analysis (``lipgraph explain --timings``)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..report import Report


def print_timings(report: Report, console: Console, top: int = 15) -> None:
    """Where the time went: the ``top`` ops whose rules and norms took longest (``ReportNode.seconds``), each with
    its share of the analysis' wall time. With several torch threads, layers run in parallel and the shares may
    add up to more than 100 %."""
    ops = sorted((n for n in report.tree.walk() if n.op is not None and not n.children), key=lambda n: -n.seconds)
    total = max(report.seconds, 1e-9)
    table = Table(title=f"slowest layers (of {len(ops)} ops; analysis {report.seconds:.2f} s, their sum "
                        f"{report.tree.seconds:.2f} s)")
    for column in ("layer", "type", "method", "seconds", "share"):
        table.add_column(column, justify="right" if column in ("seconds", "share") else "left")
    for n in ops[:top]:
        method = n.bound.method + (f" (fused chain: {n.fused.bound.method.removeprefix('fused ')})" if n.fused else "")
        table.add_row(n.path, n.type, method, f"{n.seconds:.3f}", f"{100 * n.seconds / total:.1f} %")
    console.print(table)
