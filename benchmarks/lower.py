"""Lower-bound benchmark: how fast ``lipgraph.lower_bound`` gets close to the best lower bound it can find, and how
tight each certified method is against it (issue #5, item 5).

    python benchmarks/lower.py [--long 30] [--only tiny_mlp,cnn] [--no-write]

Models: every fixture of ``tests/fixtures/zoo.py``, and every ``examples/`` model — its ``tiny()`` variant where
it has one (the full-size zoo models take minutes per certified method), the MLP, CNN and custom-rule examples at
full size. The ResNet example has no tiny variant: ``zoo/tiny_resnet`` stands for it. Per model:

- a long run (``seconds=--long``) gives the best lower bound found, ``best``;
- time to 5 %: the first time the long run's best-so-far reached 0.95·best (its search history; the clock starts
  after a warm-up call, so torch.func's one-time start-up is not counted);
- the report's search (``REPORT_BUDGET``, what every ``analyze``/``lipgraph explain`` report shows) and the
  default ``lower_bound(model, x)`` call (8 starts × 50 steps plus one sampling round): value / best and seconds;
- upper/lower: each certified method's bound divided by best (≥ 1; the gap is what neither side knows).

The table replaces this script's section of ``benchmarks/RESULTS.md`` (the rest of the file is left alone).

    python benchmarks/lower.py --report [--only tiny_mlp,resnet] [--no-write]

compares the report's search (``REPORT_BUDGET``, what ``analyze`` runs by default) with the schedule it replaced
(``FORMER_BUDGET``: 16 candidates × 2 power steps, 5 ascent steps at the best 4, a 64-point sampling round, for
every network), in the same process, on the certifiable zoo fixtures, ``examples/resnet.py`` (CIFAR ResNet-18) and
a torchvision ResNet-18 at 112×112: each one's lower bound and seconds, and their seconds over the certified upper
bound's (``analyze(lower=False)``, no disk cache).
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from results_file import machine, write_section  # noqa: E402

FULL_SIZE = ("mlp.py", "cnn.py", "custom_rule.py")


def _example(path: Path) -> Callable | None:
    """The example's tiny variant (or the full model for ``FULL_SIZE``), as a ``() -> (model, x)`` builder."""
    spec = importlib.util.spec_from_file_location(f"_lower_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = ("build_model", "example_input") if path.name in FULL_SIZE else ("tiny", "tiny_input")
    if not all(hasattr(module, n) for n in names):
        return None
    build, inputs = (getattr(module, n) for n in names)
    return lambda: (build().eval(), inputs())


def models() -> dict[str, Callable]:
    from tests.fixtures.zoo import ZOO

    out = {f"zoo/{name}": fn for name, fn in ZOO.items()}
    for path in sorted((ROOT / "examples").glob("[!_]*.py")):
        build = _example(path)
        if build is not None:
            out[f"examples/{path.stem}" + ("" if path.name in FULL_SIZE else ":tiny")] = build
    return out


#: the report's search before issue #19 (the same schedule for every network)
FORMER_BUDGET = {"starts": 4, "steps": 5, "power_steps": 2, "screen": 4, "verify": 1}
REPORT_ZOO = ("tiny_mlp", "tiny_cnn", "tiny_resnet", "tiny_densenet", "tiny_mobilenet", "tiny_vgg",
              "tiny_alexnet_like", "shared_weights", "multi_output")


def report_models() -> dict[str, Callable]:
    from tests.fixtures.zoo import ZOO

    resnet = importlib.util.spec_from_file_location("_lower_bench_resnet", ROOT / "examples" / "resnet.py")
    module = importlib.util.module_from_spec(resnet)
    resnet.loader.exec_module(module)
    def imagenet_112():
        import torch

        return module.imagenet_resnet18(), torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))

    out = {f"zoo/{name}": ZOO[name] for name in REPORT_ZOO}
    out["examples/resnet (CIFAR ResNet-18)"] = lambda: (module.build_model().eval(), module.example_input())
    out["ResNet-18 112x112, BN"] = imagenet_112
    return out


def run_report(only: list[str] | None) -> list[dict]:
    import torch

    import lipgraph
    from lipgraph.lower import REPORT_BUDGET

    torch.set_num_threads(1)
    warm = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
    lipgraph.lower_search(warm, torch.randn(1, 3), **FORMER_BUDGET)
    lipgraph.lower_search(warm, torch.randn(1, 3), **REPORT_BUDGET)
    rows = []
    for name, build in report_models().items():
        if only and not any(o in name for o in only):
            continue
        model, x = build()
        _, t_upper = timed(lambda: lipgraph.analyze(model, x, lower=False, cache=False, quiet=True).bound.value)
        former, t_former = timed(lambda: lipgraph.lower_search(model, x, **FORMER_BUDGET).value)
        new, t_new = timed(lambda: lipgraph.lower_search(model, x, **REPORT_BUDGET).value)
        row = dict(model=name, upper_s=t_upper, former=former, former_s=t_former, new=new, new_s=t_new)
        rows.append(row)
        print(f"{name:36s} upper {t_upper:.2f}s  former {former:.5g} in {t_former:.2f}s  new {new:.5g} in "
              f"{t_new:.2f}s  new/former {new / former:.3f}  new s / upper s {t_new / t_upper:.2f}", flush=True)
    return rows


def report_table(rows: list[dict]) -> str:
    from lipgraph.lower import REPORT_BUDGET

    head = ["model", "upper bound s", "former search: lower", "s", "s / upper s", "report search: lower", "s",
            "s / upper s", "lower: report / former"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['upper_s']:.2f}", f"{r['former']:.5g}", f"{r['former_s']:.2f}",
                 f"{r['former_s'] / r['upper_s']:.2f}", f"{r['new']:.5g}", f"{r['new_s']:.2f}",
                 f"{r['new_s'] / r['upper_s']:.2f}", f"{r['new'] / r['former']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    former = ", ".join(f"{k}={v}" for k, v in FORMER_BUDGET.items())
    return "\n".join([
        "## The report's lower-bound search against the upper bound (`python benchmarks/lower.py --report`)",
        "",
        f"*upper bound s*: `analyze(model, x, lower=False, cache=False)`; *former search*: the report's search "
        f"before issue #19 ({former}, for every network); *report search*: `REPORT_BUDGET` ({REPORT_BUDGET}), a "
        "fixed amount of work in multiply-adds (small networks keep the former schedule, large ones run the ascent "
        "from 1–4 starts). Same process, one run each, 1 thread, after a warm-up. "
        f"Machine: {machine()}.",
        "",
        *lines,
    ])


def time_to(history: list[tuple[float, float]], target: float) -> float:
    return next((t for t, best in history if best >= target), math.inf)


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def run(long: float, only: list[str] | None) -> list[dict]:
    import torch

    import lipgraph
    from lipgraph.api import METHODS
    from lipgraph.lower import REPORT_BUDGET

    torch.set_num_threads(1)
    warm = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
    lipgraph.lower_bound(warm, torch.randn(1, 3), starts=2, steps=2)  # torch.func's one-time start-up
    rows = []
    for name, build in models().items():
        if only and not any(o in name for o in only):
            continue
        model, x = build()
        uppers = {}
        for method in METHODS:
            report = lipgraph.analyze(model, x, method=method, lower=False)
            if report.kind is lipgraph.Kind.CERTIFIED:
                uppers[method] = report.bound.value
        report_value, t_report = timed(lambda: lipgraph.lower_search(model, x, **REPORT_BUDGET).value)
        default, t_default = timed(lambda: lipgraph.lower_bound(model, x).value)
        res = lipgraph.lower_search(model, x, seconds=long, seed=1)
        best = max(res.value, default, report_value)
        row = dict(model=name, best=best, t5=time_to(res.history, 0.95 * best), report=report_value,
                   t_report=t_report, default=default, t_default=t_default, uppers=uppers)
        rows.append(row)
        print(f"{name:28s} best {best:.5g}  5% in {row['t5']:.2f}s  report {report_value / best:.3f} in "
              f"{t_report:.2f}s  default {default / best:.3f} in {t_default:.2f}s  "
              + "  ".join(f"{m} {u / best:.3g}" for m, u in uppers.items()), flush=True)
    return rows


def table(rows: list[dict], long: float) -> str:
    from lipgraph.api import METHODS
    from lipgraph.lower import REPORT_BUDGET

    methods = [m for m in METHODS if any(m in r["uppers"] for r in rows)]
    head = ["model", "best lower (long run)", "time to 5 %", "report search: value / best", "report search: s",
            "lower_bound(): value / best", "lower_bound(): s"]
    head += [f"upper/lower {m}" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['best']:.5g}", f"{r['t5']:.2f} s", f"{r['report'] / r['best']:.3f}",
                 f"{r['t_report']:.2f}", f"{r['default'] / r['best']:.3f}", f"{r['t_default']:.2f}"]
        cells += [f"{r['uppers'][m] / r['best']:.3g}" if m in r["uppers"] else "—" for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    budget = ", ".join(f"{k}={v}" for k, v in REPORT_BUDGET.items())
    return "\n".join([
        "## Lower bounds: time to 5 % and tightness (`python benchmarks/lower.py`)",
        "",
        f"Long run: `lipgraph.lower_search(model, x, seconds={long:g})`; *time to 5 %*: first time its best-so-far "
        "reached 0.95 × the best lower bound found (search history, after a warm-up call); *report search*: the "
        f"fixed budget every report runs (`REPORT_BUDGET`: {budget}); *lower_bound()*: the default call "
        "(8 starts × 50 ascent steps + one sampling round). *upper/lower*: each certified method's bound over the "
        "best lower bound, an upper bound on how loose the certified number can be; `—`: the method did not "
        f"certify the model. Machine: {machine()}.",
        "",
        *lines,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", type=float, default=30.0, help="seconds of the long run per model (default 30)")
    parser.add_argument("--only", help="comma-separated substrings of model names")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    parser.add_argument("--report", action="store_true",
                        help="the report's search against the former one and the upper bound's time")
    args = parser.parse_args()
    if args.report:
        section = report_table(run_report(args.only.split(",") if args.only else None))
        print(section)
        if not args.no_write:
            write_section("lower-report", section)
        return 0
    rows = run(args.long, args.only.split(",") if args.only else None)
    section = table(rows, args.long)
    print(section)
    if not args.no_write:
        write_section("lower-bounds", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
