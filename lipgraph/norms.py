"""The ℓp norms lipgraph bounds in, and how users may spell them."""
from __future__ import annotations

import math
from typing import Any

from .errors import InputError

NORMS = {"1": 1.0, "2": 2.0, "inf": math.inf}


def parse_norm(norm: Any) -> float:
    """1, 2, inf (also as strings, ``"linf"`` or ``math.inf``) -> 1.0, 2.0 or ``math.inf``."""
    key = str(norm).lower().removeprefix("l").removesuffix(".0")
    if key in ("infinity", "∞"):
        key = "inf"
    if key not in NORMS:
        raise InputError(f"norm must be 1, 2 or inf, got {norm!r}")
    return NORMS[key]
