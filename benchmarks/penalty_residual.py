"""Benchmark: ``lipschitz_penalty(method="cp")`` on residual networks, with and without its residual blocks
(CP/LipLT with the shortcut folded into the linear term, docs/residual.md), alternated in one process.

    python benchmarks/penalty_residual.py [--resnet18] [--steps 300] [--write]

For each model: the cp penalty with the blocks switched off (``separate``: 1 + L(branch) at every residual add, as
before) and on (``joint``), each after ``--steps`` power steps per operator from the same seed (an estimate from
below until converged: 300 steps nearly converge the tiny fixture), their ratio, the number of power-iteration
operators, the seconds of one training call (1 warm power step, the default) with its backward pass (median of 3
warm calls); beside them ``analyze``'s certified bounds with the default method (AutoLip, what the autolip penalty
converges to) and, on the tiny fixture, ``method="cp"`` (which adds the LMI block estimators). ``--write``
replaces this script's section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import lipgraph  # noqa: E402
from lipgraph import penalty as penalty_module  # noqa: E402
from benchmarks.results_file import publish  # noqa: E402
from benchmarks.residual import four_block_resnet, resnet18  # noqa: E402
from tests.fixtures.zoo import tiny_resnet  # noqa: E402

SECTION = "penalty_residual"


def _penalty(model, x, joint: bool, steps: int) -> tuple[float, float, int]:
    """(value after ``steps`` power steps, seconds of one warm training call with its backward pass, number of
    power-iteration operators)."""
    original = penalty_module.residual_adds
    if not joint:
        penalty_module.residual_adds = lambda *args: []
    try:
        value = lipgraph.lipschitz_penalty(model, x, "cp", iters=steps, retrace=True).item()
        seconds = []
        for _ in range(4):  # the first call warms autograd up: not counted
            start = time.perf_counter()
            lipgraph.lipschitz_penalty(model, x, "cp").backward()
            seconds.append(time.perf_counter() - start)
        (plan,) = [p for key, p in model.__dict__[penalty_module._PLANS].items() if key[0] == "cp"]
        return value, sorted(seconds[1:])[1], len(plan.store)
    finally:
        penalty_module.residual_adds = original


def _analyze(model, x, method: str) -> tuple[float, float]:
    start = time.perf_counter()
    bound = lipgraph.analyze(model, x, method=method, lower=False, quiet=True).bound.value
    return bound, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet18", action="store_true", help="also CIFAR ResNet-18 (examples/resnet.py)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    models = {"tiny ResNet (zoo, float64)": lambda: tuple(t.double() for t in tiny_resnet()),
              "4-block ResNet 16²": four_block_resnet}
    if args.resnet18:
        models["CIFAR ResNet-18 32²"] = resnet18
    lines = [f"cp penalty after {args.steps} power steps per operator; call: one training step (1 power step, "
             "backward)", "",
             "| model | separate | joint | joint/separate | operators (sep / joint) | call s (sep / joint) | "
             "analyze autolip (s) | analyze cp (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, build in models.items():
        model, x = build()
        (sep, sep_s, sep_n), (joint, joint_s, joint_n) = (_penalty(model, x, flag, args.steps)
                                                          for flag in (False, True))
        autolip, autolip_s = _analyze(model, x, "autolip")
        cp = _analyze(model, x, "cp") if "tiny" in name else None  # minutes on the others
        cp_cell = f"{cp[0]:.4g} ({cp[1]:.1f})" if cp else "not run"
        lines.append(f"| {name} | {sep:.4g} | {joint:.4g} | {joint / sep:.3f} | {sep_n} / {joint_n} | "
                     f"{sep_s:.2f} / {joint_s:.2f} | "
                     f"{autolip:.4g} ({autolip_s:.1f}) | {cp_cell} |")
    publish(SECTION, "The cp penalty on residual networks", lines, args.write)


if __name__ == "__main__":
    main()
