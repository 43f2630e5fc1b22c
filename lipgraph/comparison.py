"""Two reports of the same model side by side (two checkpoints, before and after a constraint): per tree node,
the bound in each and their ratio."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from .bound import Bound
from .formats import default_formats

if TYPE_CHECKING:
    from .report import Report, ReportNode


@dataclass(frozen=True)
class ComparisonRow:
    path: str  # "" for the model
    type: str
    depth: int
    before: Bound
    after: Bound | None  # None: the other report has no node with this path

    @property
    def ratio(self) -> float | None:
        """after / before, when both are finite and ``before`` is positive."""
        if self.after is None or not 0 < self.before.value < math.inf or math.isinf(self.after.value):
            return None
        return self.after.value / self.before.value


@dataclass
class Comparison:
    """``before.compare(after)``: one row per node of ``before``'s tree (execution order), matched by path."""

    before: str  # model names
    after: str
    rows: list[ComparisonRow]
    only_after: list[str]  # paths of ``after`` that ``before`` lacks

    @property
    def ratio(self) -> float | None:
        """The model's bound after / before."""
        return self.rows[0].ratio

    def find(self, path: str) -> ComparisonRow:
        return next(r for r in self.rows if r.path == path)

    def largest(self, n: int = 10) -> list[ComparisonRow]:
        """The ``n`` nodes (not the model) whose bound changed most, by |log(after / before)|."""
        changed = [r for r in self.rows[1:] if r.ratio is not None and r.ratio > 0]
        return sorted(changed, key=lambda r: -abs(math.log(r.ratio)))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "ratio": self.ratio, "only_after": list(self.only_after),
                "rows": [{"path": r.path, "type": r.type, "before": _value(r.before), "after": _value(r.after),
                          "ratio": r.ratio} for r in self.rows]}

    def print(self, format: str = "table", file: IO | None = None, **options: Any) -> None:
        """Render in an output format (default a rich table: ``depth=``, ``largest=n``, ``ascii_only=``,
        ``width=``, ``console=``) onto ``file`` (default standard output)."""
        default_formats().write(self, "comparison", format, file, **options)


def compare(before: Report, after: Report) -> Comparison:
    theirs = {node.path: node for node in after.tree.walk()}
    rows: list[ComparisonRow] = []

    def visit(node: ReportNode, depth: int) -> None:
        match = theirs.get(node.path)  # the roots match: their path is ""
        rows.append(ComparisonRow(node.path, node.type, depth, node.bound, match.bound if match else None))
        for child in node.children:
            visit(child, depth + 1)

    visit(before.tree, 0)
    ours = {r.path for r in rows}
    return Comparison(before.model, after.model, rows, [p for p in theirs if p not in ours])


def _value(b: Bound | None) -> float | None:
    return None if b is None or math.isinf(b.value) else b.value
