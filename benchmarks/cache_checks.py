"""Benchmark: what authenticating and re-checking the disk cache (``lipgraph.cache``) costs on a second run.

    python benchmarks/cache_checks.py [--model resnet] [--repeats 3] [--threads N] [--write]

One process: a first analysis fills a fresh disk cache (timed: the no-cache baseline), then second runs alternate
(in alternating order) between the cache as shipped (HMAC tags verified, every certified norm read from disk re-checked by a few power
steps, ``lipgraph.linalg.attained``) and the same cache with the power-step re-check switched off (the HMAC costs
microseconds per entry and stays on). Reported: the median wall time of each, their ratio, and the time spent in
the re-checks (summed over threads). ``--write`` replaces this script's section of ``benchmarks/RESULTS.md``.
Timings are machine-dependent: never assert on them in tests.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import lipgraph  # noqa: E402
from results_file import machine, write_section  # noqa: E402
from lipgraph import cache as cache_module  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet", help="an examples/ module with build_model/example_input")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = importlib.import_module(args.model)
    model, x = module.build_model().eval(), module.example_input()
    spent: list[float] = []
    real_get = cache_module.NormCache.get

    def timed_check(check):
        def run() -> float:
            start = time.perf_counter()
            try:
                return check()
            finally:
                spent.append(time.perf_counter() - start)
        return run

    def get(self, parts, compute, check=None, *, recheck=True):
        return real_get(self, parts, compute, timed_check(check) if check and recheck else None)

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        lipgraph.analyze(model, x, lower=False, cache=folder, quiet=True)
        first = time.perf_counter() - start
        times: dict[bool, list[float]] = {True: [], False: []}
        checks: list[float] = []
        for repeat in range(args.repeats):
            for recheck in (True, False) if repeat % 2 == 0 else (False, True):  # neither always goes first
                cache_module.NormCache.get = lambda self, parts, compute, check=None, r=recheck: get(
                    self, parts, compute, check, recheck=r)
                spent.clear()
                start = time.perf_counter()
                report = lipgraph.analyze(model, x, lower=False, cache=folder, quiet=True)
                times[recheck].append(time.perf_counter() - start)
                if recheck:
                    checks.append(sum(spent))
                    count = len(spent)
                assert not report.notes, report.notes
        cache_module.NormCache.get = real_get
    on, off = statistics.median(times[True]), statistics.median(times[False])
    line = (f"{args.model} ({args.threads} threads, median of {args.repeats}): first run (fills the cache) "
            f"{first:.2f} s; second run with re-checks {on:.2f} s, without {off:.2f} s (ratio {on / off:.2f}); "
            f"{count} re-checks took {statistics.median(checks):.2f} s in all")
    print(line)
    if args.write:
        write_section("cache-checks", "## Disk cache: cost of the authenticated, re-checked entries "
                                      f"(`python benchmarks/cache_checks.py`)\n\n{line}.\n\nMachine: {machine()}.")


if __name__ == "__main__":
    main()
