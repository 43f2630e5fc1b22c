"""JSON rendering: a result's ``to_dict()`` with stable key order; unbounded values are ``null``."""
from __future__ import annotations

import json
from typing import IO, Any

from ..report import Report


def to_json(result: Report | Any, *, indent: int | None = 2) -> str:
    """``result.to_dict()`` (a report, comparison or certificate) as JSON text."""
    return json.dumps(result.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)


def write_json(result: Report | Any, file: IO[str], *, indent: int | None = 2, **_ignored: Any) -> None:
    """The ``json`` format of every result: :func:`to_json` and a newline (display options do not apply)."""
    file.write(to_json(result, indent=indent) + "\n")
