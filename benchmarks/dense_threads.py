"""Dense certified norms on one torch thread or on torch's threads (issue #19): the same analyses, same process.

    python benchmarks/dense_threads.py [--rounds 2]

`lipgraph.linalg.dense` runs its eigensolver and materialisation under
:func:`lipgraph.linalg.parallel.one_thread` (as the norm pool does); *all threads* replaces that helper by a no-op
in that module, so the dense norms computed outside the pool (the pool+linear chain of a ResNet) run on torch's
threads. Rounds alternate the two; torch keeps its default thread count. Prints medians, their ratio and the load.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"_dense_threads_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases() -> dict:
    import torch

    resnet, mlp = _example("resnet"), _example("mlp")
    x112 = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    return {
        "ResNet-18 112x112, BN, lower=False": (resnet.imagenet_resnet18(), x112, dict(lower=False), 1),
        "examples/mlp.py (default analyze)": (mlp.build_model().eval(), mlp.example_input(), {}, 20),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", help="a substring of the case names")
    args = parser.parse_args()
    import torch

    import lipgraph
    import lipgraph.linalg.dense as dense

    one = dense.one_thread
    variants = {"one thread": one, "all threads": contextlib.nullcontext}
    print(f"torch threads {torch.get_num_threads()}; load {os.getloadavg()}", flush=True)
    for name, (model, x, options, repeat) in cases().items():
        if args.only and args.only not in name:
            continue
        lipgraph.analyze(model, x, cache=False, quiet=True, **options)  # warm-up
        times: dict[str, list[float]] = {v: [] for v in variants}
        values: dict[str, float] = {}
        for _ in range(args.rounds):
            for variant, helper in variants.items():
                dense.one_thread = helper
                start = time.perf_counter()
                for _ in range(repeat):
                    values[variant] = lipgraph.analyze(model, x, cache=False, quiet=True, **options).bound.value
                times[variant].append((time.perf_counter() - start) / repeat)
                dense.one_thread = one
                print(f"  {name}: {variant} {times[variant][-1]:.3f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        med = {v: statistics.median(t) for v, t in times.items()}
        print(f"{name}: one thread {med['one thread']:.3f} s, all threads {med['all threads']:.3f} s, "
              f"all / one = {med['all threads'] / med['one thread']:.2f}; bounds {values['one thread']!r} / "
              f"{values['all threads']!r}; "
              f"load {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
