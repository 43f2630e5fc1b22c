"""JSON rendering: ``Report.to_dict()`` with stable key order; unbounded values are ``null``."""
from __future__ import annotations

import json

from ..report import Report


def to_json(report: Report, *, indent: int | None = 2) -> str:
    return json.dumps(report.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)
