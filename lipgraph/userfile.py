"""Running a user's Python file (a model file or a rules file), as ``python file.py`` would."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path


def run_user_file(file: Path, prefix: str) -> dict:
    """Execute ``file`` with its folder first on ``sys.path`` (so its sibling modules import); return its globals."""
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return runpy.run_path(str(file), run_name=f"{prefix}_{file.stem}")
