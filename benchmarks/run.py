"""Benchmark: lipgraph's certified graph AutoLip against per-layer products and power-iteration estimates, with the
time, memory and cache behaviour of the certified analysis.

    python benchmarks/run.py [--quick] [--threads N] [--repeats 3] [--models mlp,cnn,...] [--write]
    python benchmarks/run.py --imagenet [--threads N] [--device cuda] [--models resnet50] [--write]

Each model runs in a subprocess of its own (``--worker``), so that its peak memory is its own: the process's peak
resident set (``ru_maxrss``) right after the certified analyses, which includes torch itself and the model.

Columns (ℓ2):
- ``certified``: ``lipgraph.analyze(model, x, lower=False)``: certified AutoLip over the traced graph, with
  linear-chain fusion; ``s`` the median of ``--repeats`` runs (the first with an empty disk cache, the others
  without one), after one warm-up analysis (with its lower bound) of a small conv+BN+pool+linear model in the same
  worker: imports, first-use start-up (torch.func, the FFT certificate's code) and the rule registry are not timed.
- ``cache 2nd run``: the same analysis again with the disk cache the first run filled (``lipgraph.cache``); its
  ratio to the first run.
- ``naive product``: the product of every op's certified gain (each call counted), read off that report: what
  AutoLip gives on a pure chain without fusion. On a branched graph (residual adds, concatenations, several
  outputs; marked †) it multiplies parallel branches together, as the reference code did, and is **not** a bound.
- ``power-iteration AutoLip``: AutoLip over the same graph with each linear layer's certified norm replaced by
  500 steps of power iteration (``lipgraph.linalg.power_iteration``; no fusion): the paper's method done on the
  real graph. Power iteration converges from below, so this is an estimate; certified / it shows what the
  certificates (and the fusion, which can make it smaller) change.
- ``reference``: what the AutoLip reference code does: the product, over the model's modules in registration
  order, of per-layer norms from 500 iterations of the autograd power method on every Linear/Conv layer
  (v ← ∇_v ½‖A v‖², normalised); BatchNorm, pooling and activations count as 1. An estimate, and on residual
  networks not an upper bound at all (docs/mathematics.md §1, §3). ``speed-up``: reference seconds / certified seconds.

- ``default``: ``lipgraph.analyze(model, x)`` as a user runs it: the certified bound *and* its proven lower bound
  (``lipgraph.lower.REPORT_BUDGET``), without the disk cache; the lower bound found, the median seconds and the
  speed-up against the same reference run (``lower=False`` is the ``certified`` column).

``--device cuda`` runs the certified analysis's norms and the reference's power iterations on the GPU (the
section name gets the suffix ``-cuda``). ``--imagenet`` runs the 224×224 set instead (ResNet-50, ResNet-152, VGG-19, DenseNet-121; one run each, no
power-iteration AutoLip): there the reference runs ``--imagenet-iterations`` power steps per layer and its time is
extrapolated linearly to 500 (its bound is not shown). ``--write`` replaces this script's section of
``benchmarks/RESULTS.md``. Timings are machine-dependent: never assert on them in tests.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
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
from lipgraph.linalg import power_iteration  # noqa: E402
from results_file import machine, write_section  # noqa: E402

POWER_ITERATIONS = 500
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NOTE = ("certified: lipgraph.analyze (graph AutoLip + fusion); s: median wall seconds; peak MB: the worker "
        "process's peak RSS after the certified runs (torch and the model included); cache 2nd run: the same "
        "analysis with the disk cache the first run filled. naive product: Π of every op's certified gain; "
        "† = branched graph (residual/concat/several outputs), where this product is NOT a bound. power-iteration "
        "AutoLip: the same graph with 500-step power-iteration layer norms, no fusion (an estimate). reference: "
        "product over modules (registration order) of 500-step power-method norms of each Linear/Conv layer, "
        "BN/pool/activations = 1 (an estimate, unsound on residual graphs). certified / reference: the bounds' "
        "ratio; speed-up: reference seconds / certified seconds, same model, same worker. default: "
        "lipgraph.analyze(model, x) as a user runs it (certified bound and its proven lower bound, no disk "
        "cache): the lower bound found and the wall seconds; its speed-up against the same reference run.")


# -- models ---------------------------------------------------------------------------------------------------
@dataclass
class Model:
    name: str
    build: Callable[[], tuple[nn.Module, torch.Tensor]]
    repeats: int | None = None  # None: --repeats
    slow: bool = False


def _load(file: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{Path(file).stem}", ROOT / "examples" / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _example(file: str, factory: str = "build_model", inputs: str = "example_input"):
    def build():
        module = _load(file)
        return getattr(module, factory)().eval(), getattr(module, inputs)()
    return build


def _imagenet_image() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _resnet18_112() -> tuple[nn.Module, torch.Tensor]:
    """torchvision's ResNet-18 (stride-2 stem and max-pool, randomised BatchNorm) on a 112×112 image."""
    resnet = _load("resnet.py")
    return (resnet.imagenet_resnet18(),
            torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0)))


def _resnet(blocks: list[int]):
    def build():
        resnet = _load("resnet.py")
        return resnet._resnet(resnet.Bottleneck, blocks, 1000, cifar=False), _imagenet_image()
    return build


def _vgg19():
    vgg = _load("vgg.py")
    torch.manual_seed(0)
    config = [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4, "M"]  # configuration E
    return vgg.VGG(vgg.make_layers(config), num_classes=1000, pool=7, hidden=4096).eval(), _imagenet_image()


def models() -> list[Model]:
    from tests.fixtures.zoo import ZOO

    found = [
        Model("mlp (64-128-128-10)", _example("mlp.py")),
        Model("cnn (28x28)", _example("cnn.py")),
        Model("resnet18 (CIFAR 32x32)", _example("resnet.py"), repeats=1, slow=True),
        Model("resnet18 (ImageNet-style, 112x112, BN)", _resnet18_112, repeats=1, slow=True),
    ]
    found += [Model(f"zoo/{name}", fixture) for name, fixture in ZOO.items()]
    return found


def imagenet_models() -> list[Model]:
    return [
        Model("resnet50 (224x224)", _resnet([3, 4, 6, 3]), repeats=1),
        Model("resnet152 (224x224)", _resnet([3, 8, 36, 3]), repeats=1),
        Model("vgg19 (224x224)", _vgg19, repeats=1),
        Model("densenet121 (224x224)", _example("densenet.py", "imagenet_densenet121", "imagenet_densenet121_input"),
              repeats=1),
    ]


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
               seed: int = 0, device: str = "cpu") -> float:
    """The reference's autograd power method: v ← ∇_v ½‖A v‖² / ‖·‖; returns ‖A v‖ (≤ ‖A‖)."""
    v = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    v = v / v.norm()
    for _ in range(iterations):
        v.requires_grad_(True)
        loss = 0.5 * fn(v).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, v)
        v = (grad / grad.norm()).detach()
    with torch.no_grad():
        return float(fn(v).norm())


def reference(model: nn.Module, x: torch.Tensor, iterations: int = POWER_ITERATIONS, device: str = "cpu") -> float:
    """The reference's product, with ``model`` and ``x`` on ``device`` (moved back to the CPU afterwards)."""
    model, x = model.to(device), x.to(device)
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    def record(m: nn.Module, args: tuple) -> None:  # a pre-hook must return None (else it replaces the args)
        shapes.setdefault(m, tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, LAYERS)]
    try:
        with torch.no_grad():
            model(x)
        product = 1.0
        for m in model.modules():  # registration order; a layer never called contributes nothing
            if isinstance(m, LAYERS) and m in shapes:
                product *= power_norm(linear_part(m), shapes[m], iterations, device=device)
    finally:
        for h in hooks:
            h.remove()
        model.to("cpu")
    return product


# -- lipgraph's columns -----------------------------------------------------------------------------------------
def naive_product(report: lipgraph.Report) -> tuple[float, bool]:
    """Π of every op's certified gain (a module called k times counts k times), and whether the graph branches."""
    product, branched = 1.0, len(report.outputs) > 1
    for node in report.tree.walk():
        if node.formula is not None:  # a merge (add, cat): its inputs' branches are multiplied in regardless
            branched = True
        elif node.op is not None and not node.children:
            product *= node.bound.value ** node.calls
    return product, branched


def power_rules(iterations: int) -> dict[str, Callable[[lipgraph.OpContext], lipgraph.Transfer]]:
    """Every registered rule, with the gain of each single-input affine op (not an isometry) replaced by
    ``iterations`` steps of power iteration on its linear part f(x) − f(0), in float64: an estimate."""
    def wrap(rule: lipgraph.Rule) -> Callable[[lipgraph.OpContext], lipgraph.Transfer]:
        def estimated(ctx: lipgraph.OpContext) -> lipgraph.Transfer:
            transfer = rule.apply(ctx)
            gain = transfer.gains[0] if len(transfer.gains) == 1 else None
            if not transfer.affine or gain is None or gain.exact and gain.value == 1 or ctx.input.parts:
                return transfer
            shape = ctx.input.shape
            zero = ctx.apply(torch.zeros(shape, dtype=torch.float64), dtype=torch.float64)
            value, _ = power_iteration(lambda v: (ctx.apply(v[0], dtype=torch.float64) - zero)[None], shape,
                                       iters=iterations)
            return dataclasses.replace(transfer, gains=(value,), structure=None)
        return estimated
    return {key: wrap(rule) for key, rule in lipgraph.default_registry().items()}


# -- running -------------------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    runs: int
    certified: float
    certified_s: float
    peak_mb: float
    warm_s: float
    naive: float
    branched: bool
    power: float | None
    power_s: float | None
    reference: float | None  # None when the reference ran fewer iterations (its time extrapolated)
    reference_s: float
    default_s: float | None  # the default analysis: certified bound and its lower-bound search, no disk cache
    lower: float | None


def timed(fn: Callable[[], float], runs: int) -> tuple[float, float]:
    """(the result, the median of ``runs`` wall-clock times; GPU work is waited for)."""
    times, result = [], math.nan
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def run_model(spec: Model, repeats: int, iterations: int, reference_iterations: int, power: bool,
              device: str = "cpu") -> Row:
    """One model's row; run in a worker process of its own (see :func:`measure`)."""
    model, x = spec.build()
    runs = spec.repeats or repeats
    with tempfile.TemporaryDirectory(prefix="lipgraph-bench-cache-") as folder:
        caches = iter([folder])  # the first run fills an empty disk cache, the others use none

        def certify() -> lipgraph.Report:
            return lipgraph.analyze(model, x, lower=False, quiet=True, cache=next(caches, False), device=device)

        report, certified_s = timed(certify, runs)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        _, warm_s = timed(lambda: lipgraph.analyze(model, x, lower=False, quiet=True, cache=folder, device=device), 1)
    assert report.kind is lipgraph.Kind.CERTIFIED, report.kind
    power_value = power_s = None
    if power:
        rules = power_rules(iterations)
        power_value, power_s = timed(
            lambda: lipgraph.analyze(model, x, lower=False, rules=rules, cache=False, quiet=True, device=device)
            .bound.value, runs)
    default_s = lower_value = None
    if power:  # not on the 224×224 set: its lower-bound search runs where the model is, on the CPU
        default, default_s = timed(lambda: lipgraph.analyze(model, x, quiet=True, cache=False, device=device), runs)
        lower_value = default.lower.value if default.lower is not None else None
    reference_value, reference_s = timed(lambda: reference(model, x, reference_iterations, device), runs)
    if reference_iterations != iterations:
        reference_value, reference_s = None, reference_s * iterations / reference_iterations
    return Row(spec.name, runs, report.bound.value, certified_s, peak_mb, warm_s, *naive_product(report),
               power_value, power_s, reference_value, reference_s, default_s, lower_value)


def measure(spec: Model, args: argparse.Namespace) -> Row:
    """:func:`run_model` in a fresh Python process (its own peak memory), via ``--worker``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", spec.name,
               "--repeats", str(args.repeats), "--iterations", str(args.iterations),
               "--imagenet-iterations", str(args.imagenet_iterations)]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--imagenet"] if args.imagenet else []
    command += ["--device", args.device]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return Row(**json.loads(done.stdout.strip().splitlines()[-1]))


def worker(name: str, args: argparse.Namespace) -> int:
    spec = next(m for m in (imagenet_models() if args.imagenet else models()) if m.name == name)
    warm = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(24, 4)).eval()  # the code paths of the models: conv (fft) and dense
    lipgraph.analyze(warm, torch.zeros(1, 24, 24, 24), cache=False, quiet=True,
                     device=args.device)  # warm-up: first-use imports and the GPU context are not timed
    row = run_model(spec, args.repeats, args.iterations,
                    args.imagenet_iterations if args.imagenet else args.iterations, power=not args.imagenet,
                    device=args.device)
    print(json.dumps(dataclasses.asdict(row)))
    return 0


# -- output ------------------------------------------------------------------------------------------------
HEADER = ("model", "runs", "certified", "s", "peak MB", "cache 2nd run s", "2nd / 1st", "naive product",
          "power-iteration AutoLip", "s", "reference", "s", "certified / reference", "speed-up",
          "default: lower", "default: s", "default: speed-up")


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def cells(r: Row) -> tuple[str, ...]:
    return (r.model, str(r.runs), f"{r.certified:.5g}", f"{r.certified_s:.3g}", f"{r.peak_mb:.0f}",
            f"{r.warm_s:.3g}", f"{r.warm_s / r.certified_s:.2f}",
            f"{r.naive:.5g}" + (" †" if r.branched else ""), _num(r.power, ".5g"), _num(r.power_s, ".3g"),
            _num(r.reference, ".5g"), f"{r.reference_s:.3g}" + ("*" if r.reference is None else ""),
            _num(None if r.reference is None else r.certified / r.reference, ".3g"),
            f"{r.reference_s / r.certified_s:.3g}×", _num(r.lower, ".5g"), _num(r.default_s, ".3g"),
            "—" if r.default_s is None else f"{r.reference_s / r.default_s:.3g}×")


def print_table(rows: list[Row], plain: bool, note: str) -> None:
    if plain:
        widths = [max(len(h), *(len(cells(r)[i]) for r in rows)) for i, h in enumerate(HEADER)]
        line = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths))  # noqa: E731
        print(line(HEADER))
        print(line(["-" * w for w in widths]))
        for r in rows:
            print(line(cells(r)))
        print(f"note: {note}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Lipschitz bounds (ℓ2): certified vs per-layer products and power-iteration estimates",
                  caption=f"note: {note}")
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        table.add_row(*cells(r))
    Console(width=max(170, Console().width)).print(table)


def markdown(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the ResNet-18 (slow)")
    parser.add_argument("--imagenet", action="store_true", help="the 224x224 set (ResNet-50/152, VGG-19, DenseNet-121)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per small model (median reported)")
    parser.add_argument("--iterations", type=int, default=POWER_ITERATIONS, help="power iterations per layer")
    parser.add_argument("--imagenet-iterations", type=int, default=10,
                        help="reference power iterations per layer on the 224x224 set (time extrapolated)")
    parser.add_argument("--device", default="cpu",
                        help="where the norms and the reference's power iterations run (cpu, cuda)")
    parser.add_argument("--models", default="", help="comma-separated substrings of model names to run")
    parser.add_argument("--plain", action="store_true", help="plain-text table instead of rich")
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args.worker, args)
    chosen = imagenet_models() if args.imagenet else [m for m in models() if not (args.quick and m.slow)]
    if args.models:
        wanted = [w.strip() for w in args.models.split(",") if w.strip()]
        chosen = [m for m in chosen if any(w in m.name for w in wanted)]
    print(f"threads: {torch.get_num_threads()}  torch {torch.__version__}  models: {len(chosen)}", file=sys.stderr)
    rows: list[Row] = []
    for spec in chosen:
        print(f"  {spec.name} ...", file=sys.stderr, flush=True)
        rows.append(measure(spec, args))
    note = NOTE + (f" *: {args.imagenet_iterations} power iterations per layer, time × {args.iterations}/"
                   f"{args.imagenet_iterations}." if args.imagenet else "")
    print_table(rows, args.plain, note)
    if args.write:
        command = " ".join(["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
        title = "ImageNet-size models (224×224)" if args.imagenet else "Upper bounds: certified vs per-layer products"
        threads = torch.get_num_threads()
        section = ("imagenet" if threads == 1 else f"imagenet-{threads}-threads") if args.imagenet else "upper-bounds"
        if args.device != "cpu":
            section += f"-{args.device.split(':')[0]}"
        write_section(section, "\n".join([
            f"## {title} (`{command}`)", "",
            f"Machine: {machine()}; device {args.device}"
            f"{f' ({torch.cuda.get_device_name(args.device)})' if args.device != 'cpu' else ''}; "
            f"{args.iterations} power iterations per layer.", "",
            markdown(rows), "", f"Note: {note}"]))
        print("wrote its section of benchmarks/RESULTS.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
