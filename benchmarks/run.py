"""Benchmark: lipgraph's certified graph AutoLip against the AutoLip reference-implementation style.

    python benchmarks/run.py [--quick] [--threads N] [--repeats 3] [--models mlp,cnn,...] [--results FILE]

Methods
- ``lipgraph``:  ``lipgraph.analyze(model, x)`` (ℓ2): certified AutoLip over the traced graph.
- ``reference``: what the AutoLip reference code does: the product, over the model's modules in registration
  order, of per-layer norms from 500 iterations of the autograd power method on every Linear/Conv layer
  (v ← ∇_v ½‖A v‖², normalised); BatchNorm, pooling and activations count as 1. Power iteration converges from
  below, so each factor is an estimate, and a product in module order ignores the graph: on residual networks it
  is not an upper bound at all (algorithms.md §1, §3).

Ratios are to the ``reference`` row of the same model in the same run (bound / reference bound, seconds /
reference seconds). Timings are the median of ``--repeats`` runs (1 run for the ResNet-18, which is slow;
``--quick`` skips it), after one warm-up analysis (loading the rule registry is not timed). Timings are
machine-dependent: never assert on them in tests.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))  # the examples import their shared helpers (_common)

import lipgraph  # noqa: E402

POWER_ITERATIONS = 500
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NOTE = ("reference = product over modules (registration order) of 500-iteration power-method norms of each "
        "Linear/Conv layer, BN/pool/activations = 1: an estimate (power iteration converges from below), and "
        "unsound on residual graphs (it ignores the skip branches that add to the output). "
        "ratios: bound / reference bound and seconds / reference seconds, same model, same run.")


# -- models ---------------------------------------------------------------------------------------------------
@dataclass
class Model:
    name: str
    build: Callable[[], tuple[nn.Module, torch.Tensor]]
    repeats: int | None = None  # None: --repeats
    slow: bool = False


def _example(file: str, factory: str = "build_model", inputs: str = "example_input"):
    def build():
        spec = importlib.util.spec_from_file_location(f"_bench_{Path(file).stem}", ROOT / "examples" / file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, factory)().eval(), getattr(module, inputs)()
    return build


def models() -> list[Model]:
    from tests.fixtures.zoo import ZOO

    found = [
        Model("mlp (64-128-128-10)", _example("mlp.py")),
        Model("cnn (28x28)", _example("cnn.py")),
        Model("resnet18 (CIFAR 32x32)", _example("resnet.py"), repeats=1, slow=True),
    ]
    found += [Model(f"zoo/{name}", fixture) for name, fixture in ZOO.items()]
    return found


# -- the reference method -----------------------------------------------------------------------------------
def linear_part(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """v ↦ A v: the layer without its bias."""
    if isinstance(layer, nn.Linear):
        return lambda v: F.linear(v, layer.weight)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return lambda v: layer._conv_forward(v, layer.weight, None)
    zero_out: dict[tuple, torch.Tensor] = {}

    def fn(v: torch.Tensor) -> torch.Tensor:  # any affine layer: f(v) − f(0)
        key = tuple(v.shape)
        if key not in zero_out:
            with torch.no_grad():
                zero_out[key] = layer(torch.zeros_like(v))
        return layer(v) - zero_out[key]
    return fn


def power_norm(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], iterations: int,
               seed: int = 0) -> float:
    """The reference's autograd power method: v ← ∇_v ½‖A v‖² / ‖·‖; returns ‖A v‖ (≤ ‖A‖)."""
    v = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    v = v / v.norm()
    for _ in range(iterations):
        v.requires_grad_(True)
        loss = 0.5 * fn(v).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, v)
        v = (grad / grad.norm()).detach()
    with torch.no_grad():
        return float(fn(v).norm())


def reference(model: nn.Module, x: torch.Tensor, iterations: int = POWER_ITERATIONS) -> float:
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    def record(m: nn.Module, args: tuple) -> None:  # a pre-hook must return None (else it replaces the args)
        shapes.setdefault(m, tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, LAYERS)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    product = 1.0
    for m in model.modules():  # registration order; a layer never called contributes nothing
        if isinstance(m, LAYERS) and m in shapes:
            product *= power_norm(linear_part(m), shapes[m], iterations)
    return product


# -- running -------------------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    method: str
    bound: float
    kind: str
    seconds: float
    runs: int
    bound_ratio: float = math.nan
    time_ratio: float = math.nan


def timed(fn: Callable[[], tuple[float, str]], runs: int) -> tuple[float, str, float]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result[0], result[1], statistics.median(times)


def run_model(spec: Model, repeats: int, iterations: int) -> list[Row]:
    model, x = spec.build()
    runs = spec.repeats or repeats

    def graph():
        report = lipgraph.analyze(model, x)
        return report.bound.value, str(report.bound.kind)

    def ref():
        return reference(model, x, iterations), "estimate"

    rows = []
    for method, fn in (("reference", ref), ("lipgraph", graph)):
        bound, kind, seconds = timed(fn, runs)
        rows.append(Row(spec.name, method, bound, kind, seconds, runs))
    base = rows[0]
    for r in rows:
        r.bound_ratio = r.bound / base.bound if base.bound else math.nan
        r.time_ratio = r.seconds / base.seconds if base.seconds else math.nan
    return rows


# -- output ------------------------------------------------------------------------------------------------
HEADER = ("model", "method", "bound", "kind", "seconds", "runs", "bound ratio", "time ratio")


def cells(r: Row) -> tuple[str, ...]:
    return (r.model, r.method, f"{r.bound:.5g}", r.kind, f"{r.seconds:.3g}", str(r.runs), f"{r.bound_ratio:.3g}",
            f"{r.time_ratio:.3g}")


def print_table(rows: list[Row], plain: bool) -> None:
    try:
        if plain:
            raise ImportError
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(cells(r)[i]) for r in rows)) for i, h in enumerate(HEADER)]
        line = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths))  # noqa: E731
        print(line(HEADER))
        print(line(["-" * w for w in widths]))
        for r in rows:
            print(line(cells(r)))
        print(f"note: {NOTE}")
        return
    table = Table(title="Lipschitz upper bounds (ℓ2): lipgraph vs AutoLip reference style", caption=f"note: {NOTE}")
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="right" if i >= 2 and h != "kind" else "left", no_wrap=i < 2)
    for r in rows:
        table.add_row(*cells(r))
    Console(width=max(130, Console().width)).print(table)


def markdown(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(out)


def machine() -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [f"- CPU: {cpu}; `nproc` = {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})",
            f"- torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}",
            f"- Python {platform.python_version()}, {platform.platform()}",
            f"- lipgraph {getattr(lipgraph, '__version__', '?')}, {POWER_ITERATIONS} power iterations per layer"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the ResNet-18 (slow)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per small model (median reported)")
    parser.add_argument("--iterations", type=int, default=POWER_ITERATIONS, help="power iterations per layer")
    parser.add_argument("--models", default="", help="comma-separated substrings of model names to run")
    parser.add_argument("--plain", action="store_true", help="plain-text table even if rich is installed")
    parser.add_argument("--results", type=Path, default=None, help="also write the table as markdown to FILE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [m for m in models() if not (args.quick and m.slow)]
    if args.models:
        wanted = [w.strip() for w in args.models.split(",") if w.strip()]
        chosen = [m for m in chosen if any(w in m.name for w in wanted)]
    print(f"threads: {torch.get_num_threads()}  torch {torch.__version__}  models: {len(chosen)}", file=sys.stderr)
    lipgraph.analyze(nn.Sequential(nn.Linear(2, 2)), torch.zeros(1, 2))  # warm-up: registry, first-call imports
    rows: list[Row] = []
    for spec in chosen:
        print(f"  {spec.name} ...", file=sys.stderr, flush=True)
        rows += run_model(spec, args.repeats, args.iterations)
    print_table(rows, args.plain)
    if args.results:
        text = ["# Benchmark results", "", "`python benchmarks/run.py" + (" --quick" if args.quick else "")
                + (f" --threads {args.threads}" if args.threads else "") + "`", "", "## Machine", "", *machine(),
                "", "## Table", "", markdown(rows), "", f"Note: {NOTE}", ""]
        args.results.write_text("\n".join(text))
        print(f"wrote {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
