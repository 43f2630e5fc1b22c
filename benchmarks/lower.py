"""Lower-bound benchmark: how fast ``lipgraph.lower_bound`` gets close to the best lower bound it can find, and how
tight the certified bounds are against it.

    python benchmarks/lower.py [--long 30] [--only tiny_mlp,cnn] [--no-write]

For each model of ``tests/fixtures/zoo.py`` and the ``examples/`` MLP and CNN:

- a long run (``seconds=--long``) gives the best lower bound found, ``best``;
- time to 5 %: the first time the long run's best-so-far reached 0.95·best (its search history; the clock starts
  after a warm-up call, so torch.func's one-time start-up is not counted);
- the default call (``lower_bound(model, x)``: 8 starts × 50 steps plus one sampling round): its time and its value
  as a fraction of best;
- upper/lower: each certified method's bound divided by best (≥ 1; the gap is what neither side knows).

The table is written into ``benchmarks/RESULTS.md`` between the markers of its own section (the rest of the file is
left alone; the section is appended if absent).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

START, END = "<!-- lower-bounds:start -->", "<!-- lower-bounds:end -->"


def models() -> dict:
    from tests.fixtures.zoo import ZOO

    import cnn
    import mlp

    out = {f"zoo/{name}": fn for name, fn in ZOO.items()}
    out["examples/mlp"] = lambda: (mlp.build_model(), mlp.example_input())
    out["examples/cnn (28x28)"] = lambda: (cnn.build_model(), cnn.example_input())
    return out


def time_to(history: list[tuple[float, float]], target: float) -> float:
    return next((t for t, best in history if best >= target), math.inf)


def run(long: float, only: list[str] | None) -> list[dict]:
    import torch

    import lipgraph
    from lipgraph.api import METHODS

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
            report = lipgraph.analyze(model, x, method=method)
            if report.kind is lipgraph.Kind.CERTIFIED:
                uppers[method] = report.bound.value
        t = time.perf_counter()
        default = lipgraph.lower_bound(model, x).value
        t_default = time.perf_counter() - t
        res = lipgraph.lower_search(model, x, seconds=long, seed=1)
        best = max(res.value, default)
        row = dict(model=name, best=best, t5=time_to(res.history, 0.95 * best), default=default,
                   t_default=t_default, rounds=res.rounds, evaluations=res.evaluations,
                   uppers=uppers)
        rows.append(row)
        print(f"{name:24s} best {best:.5g}  5% in {row['t5']:.2f}s  default {default / best:.3f} in "
              f"{t_default:.2f}s  " + "  ".join(f"{m} {u / best:.3g}" for m, u in uppers.items()), flush=True)
    return rows


def table(rows: list[dict], long: float) -> str:
    from lipgraph.api import METHODS

    import torch

    methods = [m for m in METHODS if any(m in r["uppers"] for r in rows)]
    head = ["model", "best lower (long run)", "time to 5 %", "default call: value / best", "default call: s"]
    head += [f"upper/lower {m}" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['best']:.5g}", f"{r['t5']:.2f} s", f"{r['default'] / r['best']:.3f}",
                 f"{r['t_default']:.2f}"]
        cells += [f"{r['uppers'][m] / r['best']:.3g}" if m in r["uppers"] else "—" for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    machine = (f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
               f"1 thread, load average {os.getloadavg()[0]:.1f} at the end")
    return "\n".join([
        START,
        "## Lower bounds: time to 5 % and tightness (`python benchmarks/lower.py`)",
        "",
        f"Long run: `lipgraph.lower_search(model, x, seconds={long:g})`; *time to 5 %*: first time its best-so-far "
        "reached 0.95 × the best lower bound found (search history, after a warm-up call); *default call*: "
        "`lipgraph.lower_bound(model, x)` (8 starts × 50 ascent steps + one sampling round). *upper/lower*: the "
        "certified bound over the best lower bound, an upper bound on how loose the certified number can be. "
        f"Machine: {machine}; a shared VM, so the times are indicative.",
        "",
        *lines,
        "",
        END,
    ])


def write(section: str, path: Path) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", type=float, default=30.0, help="seconds of the long run per model (default 30)")
    parser.add_argument("--only", help="comma-separated substrings of model names")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()
    rows = run(args.long, args.only.split(",") if args.only else None)
    section = table(rows, args.long)
    print(section)
    if not args.no_write:
        write(section, ROOT / "benchmarks" / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
