"""Joint ops through branches (docs/by-construction.md §1, lipgraph/passes/joint.py): AutoLip with the bound
max_i g_i·L_i·L(s) for cat/max of functions of disjoint selections, against the baseline measured in the same run
(only plain selections, as before), the lower bound, and the time of one analysis each (the faster of two,
each run first once). Prints a markdown table.

    python benchmarks/joint_branches.py            # about three minutes on 2 shared cores
    python benchmarks/joint_branches.py --write    # also rewrite its section of benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

import lipgraph
from lipgraph.passes import joint
from lipgraph.userfile import run_user_file
from results_file import publish

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REPEATS = 2


@contextmanager
def plain_selections_only() -> Iterator[None]:
    """The baseline: the joint bound only where every input is itself a selection (the rule before branches)."""
    find = joint._find

    def plain(node):
        split = find(node)
        return split if split is not None and split.plain else None

    joint._find = plain
    try:
        yield
    finally:
        joint._find = find


def networks() -> list[tuple[str, nn.Module, torch.Tensor]]:
    rows = []
    for factory, example in (("tiny", "tiny_input"), ("build_model", "example_input")):
        ns = run_user_file(EXAMPLES / "shufflenet.py", "zoo")
        rows.append((f"examples/shufflenet:{factory}", ns[factory](), ns[example]()))
    try:
        from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d
        from orthogonium.layers.residual import ConcatResidual
    except ImportError:
        return rows
    torch.manual_seed(0)
    stack = nn.Sequential(*[ConcatResidual(AdaptiveOrthoConv2d(4, 4, 3, padding=1)) for _ in range(3)])
    rows.append(("3 × orthogonium ConcatResidual(AdaptiveOrthoConv2d)", stack, torch.randn(1, 8, 8, 8)))
    return rows


def analyze(model: nn.Module, x: torch.Tensor, p: float) -> tuple[lipgraph.Report, float]:
    """One analysis without the lower-bound search, and its seconds."""
    start = time.perf_counter()
    report = lipgraph.analyze(model, x, norm=p, quiet=True, cache=False, lower=False)
    return report, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    lines = ["| network | ℓp | before (same run: plain selections only) | after | before/after | lower | "
             "s before | s after |", "|---|---|---|---|---|---|---|---|"]
    for name, model, x in networks():
        model.eval()
        for p in (2, math.inf):
            s_before = s_after = math.inf
            for repeat in range(REPEATS):  # alternated, each first once, the fastest kept: the machine is shared
                for baseline in (True, False) if repeat % 2 == 0 else (False, True):
                    if baseline:
                        with plain_selections_only():
                            before, seconds = analyze(model, x, p)
                        s_before = min(s_before, seconds)
                    else:
                        after, seconds = analyze(model, x, p)
                        s_after = min(s_after, seconds)
            found = lipgraph.analyze(model, x, norm=p, quiet=True, cache=False).lower  # the default search
            lower = f"{found.value:.4g}" if found else "—"
            lines.append(f"| {name} | {'∞' if math.isinf(p) else p} | {before.bound.value:.6g} | "
                         f"{after.bound.value:.6g} | {before.bound.value / after.bound.value:.3f} | {lower} | "
                         f"{s_before:.2f} | {s_after:.2f} |")
    publish("joint-branches", "Joint ops through branches (benchmarks/joint_branches.py)", lines, args.write)


if __name__ == "__main__":
    main()
