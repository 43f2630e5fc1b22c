"""What leaving the model untouched costs (lipgraph/frontend/untouched.py): ``lipgraph.analyze`` (with its lower
bound) with its snapshots and restores against the same code without any (the decorated entry points unwrapped,
the input check's block a no-op), alternated in one process, and one block alone against a bare copy of every
parameter and buffer. Prints a markdown table.

    python benchmarks/untouched.py            # about a minute on 2 shared cores
    python benchmarks/untouched.py --write    # also rewrite its section of benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

import lipgraph
import lipgraph.api
from lipgraph.frontend import prepare
from lipgraph.frontend.untouched import untouched
from lipgraph.userfile import run_user_file
from results_file import publish

SEARCH = importlib.import_module("lipgraph.lower")  # (the attribute lipgraph.lower is the function of that name)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REPEATS = 5


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


@contextlib.contextmanager
def without_snapshots() -> Iterator[None]:
    """The baseline: no block anywhere (the entry points' decorators unwrapped, the input check's block a no-op)."""
    search, block = SEARCH.search, prepare.untouched
    SEARCH.search = search.__wrapped__
    prepare.untouched = lambda *args: contextlib.nullcontext()
    try:
        yield
    finally:
        SEARCH.search, prepare.untouched = search, block


def plain_analyze(model: nn.Module, x: torch.Tensor, **options: object) -> object:
    with without_snapshots():
        return lipgraph.api.analyze.__wrapped__(model, x, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite this section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    resnet18 = run_user_file(EXAMPLES / "resnet.py", "bench")["resnet18"]
    model, x = resnet18(), torch.randn(1, 3, 32, 32)
    options = dict(cache=False, quiet=True)
    lipgraph.analyze(model, x, **options)  # first-use start-up, not timed
    with_restore, without = [], []
    for _ in range(REPEATS):
        with_restore.append(seconds(lambda: lipgraph.analyze(model, x, **options)))
        without.append(seconds(lambda: plain_analyze(model, x, **options)))
    snap = statistics.median(seconds(lambda: snapshot_only(model, x)) for _ in range(20))
    full = statistics.median(seconds(lambda: clone_all(model)) for _ in range(20))
    tensors = len([*model.parameters(), *model.buffers()])
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    a, b = statistics.median(with_restore), statistics.median(without)
    lines = [
        f"ResNet-18 (CIFAR, 1×3×32×32; {tensors} tensors, {size:.0f} MiB), `analyze(cache=False)` (with its lower "
        f"bound: three blocks, analyze's, the input check's, the search's, one copy), median of {REPEATS}, alternated:",
        "",
        "| | seconds |",
        "|---|---:|",
        f"| analyze without any snapshot (baseline) | {b:.3f} |",
        f"| analyze with its snapshots and restores | {a:.3f} (×{a / b:.3f}) |",
        f"| one block alone: copy, then compare every tensor (median of 20) | {snap * 1e3:.1f} ms |",
        f"| a bare copy of every parameter and buffer (median of 20) | {full * 1e3:.1f} ms |",
    ]
    publish("untouched", "Leaving the model untouched: the snapshot's cost", lines, args.write)


if __name__ == "__main__":
    main()
