"""``benchmarks/RESULTS.md``: each benchmark script owns one section between its own markers and rewrites only that;
the rest of the file (other sections, hand-written reading notes) is left alone."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"
    path.write_text(text, encoding="utf-8")


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}; nproc {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}); torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s); Python {platform.python_version()}; "
            f"load average {os.getloadavg()[0]:.1f} at the end (a shared VM: times are indicative)")


def publish(section: str, title: str, lines: list[str], write: bool) -> None:
    """Print the table ``lines`` with the machine line; with ``write``, also make it the section ``section`` of
    RESULTS.md under the heading ``title``."""
    table = "\n".join(lines) + f"\n\n{machine()}"
    print(table)
    if write:
        write_section(section, f"## {title}\n\n" + table)
