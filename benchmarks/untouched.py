"""What leaving the model untouched costs (lipgraph/frontend/untouched.py): ``lipgraph.analyze`` with its snapshot
and restore against the same function without them (``analyze.__wrapped__``), alternated in one process, and
the snapshot alone (copy-on-write) against cloning every parameter and buffer. Prints a markdown table.

    python benchmarks/untouched.py            # about a minute on 2 shared cores
    python benchmarks/untouched.py --write    # also rewrite its section of benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import lipgraph
from lipgraph.frontend.untouched import untouched
from lipgraph.userfile import run_user_file
from results_file import publish

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REPEATS = 3


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def snapshot_only(model: nn.Module, x: torch.Tensor) -> None:
    with untouched(model, x):
        pass


def clone_all(model: nn.Module) -> None:
    with torch.no_grad():
        [t.clone() for t in [*model.parameters(), *model.buffers()]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite this section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    resnet18 = run_user_file(EXAMPLES / "resnet.py", "bench")["resnet18"]
    model, x = resnet18(), torch.randn(1, 3, 32, 32)
    plain = lipgraph.api.analyze.__wrapped__
    options = dict(lower=False, cache=False, quiet=True)
    lipgraph.analyze(model, x, **options)  # first-use start-up, not timed
    with_restore, without = [], []
    for _ in range(REPEATS):
        with_restore.append(seconds(lambda: lipgraph.analyze(model, x, **options)))
        without.append(seconds(lambda: plain(model, x, **options)))
    snap = statistics.median(seconds(lambda: snapshot_only(model, x)) for _ in range(20))
    full = statistics.median(seconds(lambda: clone_all(model)) for _ in range(20))
    tensors = len([*model.parameters(), *model.buffers()])
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    a, b = statistics.median(with_restore), statistics.median(without)
    lines = [
        f"ResNet-18 (CIFAR, 1×3×32×32; {tensors} tensors, {size:.0f} MiB), `analyze(lower=False, cache=False)`, "
        f"median of {REPEATS}, alternated:",
        "",
        "| | seconds |",
        "|---|---:|",
        f"| analyze without the snapshot (baseline) | {b:.3f} |",
        f"| analyze with snapshot and restore | {a:.3f} (×{a / b:.3f}) |",
        f"| the snapshot and its check alone (copy-on-write) | {snap * 1e3:.2f} ms |",
        f"| cloning every parameter and buffer instead | {full * 1e3:.2f} ms |",
    ]
    publish("untouched", "Leaving the model untouched: the snapshot's cost", lines, args.write)


if __name__ == "__main__":
    main()
