"""The soundness fuzzer, long profile: ``python -m tests.fuzz --minutes N``.

Draws random networks from the rule catalogue (``tests/property/netgen.py``, the generator of the CI profile in
``tests/property/test_fuzz_soundness.py``), and for each one checks that a proven lower bound (an attained ratio,
``lipgraph.lower_bound``) does not exceed any certified method's bound. Prints how many networks were tried and
how many violations were found; each violating network's spec (rebuild it with ``netgen.build(spec)``), a
one-line description and its state dict are saved under ``--out``. Exit status 1 when there was a violation.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock)")
    parser.add_argument("--norm", choices=["1", "2", "inf"], help="only this norm (default: mostly ℓ2, some ℓ1/ℓ∞)")
    parser.add_argument("--starts", type=int, default=4, help="lower-bound search: starts per round")
    parser.add_argument("--steps", type=int, default=20, help="lower-bound search: ascent steps")
    parser.add_argument("--out", default="fuzz-violations", help="folder for violating networks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)

    import torch

    from lipgraph.errors import LipgraphError
    from tests.property.netgen import RandomDraw, build, check, describe, draw_spec

    torch.set_num_threads(args.threads)
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    deadline = time.perf_counter() + 60 * args.minutes
    tried, skipped, violations = 0, collections.Counter(), []
    start = time.perf_counter()
    i = seed
    while time.perf_counter() < deadline:
        spec = draw_spec(RandomDraw(random.Random(i)), norm=args.norm)
        i += 1
        try:
            _, _, found = check(spec, starts=args.starts, steps=args.steps)
        except LipgraphError as exc:  # a refused network (e.g. a norm a rule does not support) is not a bug
            skipped[type(exc).__name__] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - a crash is reported, not fatal
            skipped[f"crash {type(exc).__name__}"] += 1
            print(f"crash on seed {i - 1}: {type(exc).__name__}: {exc}\n  {describe(spec)}", file=sys.stderr)
            traceback.print_exc(limit=2)
            continue
        tried += 1
        if found:
            violations.append(spec)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            stem = out / f"violation-{i - 1}"
            stem.with_suffix(".json").write_text(json.dumps({"spec": spec, "violations": found}, indent=1))
            model, _ = build(spec)
            torch.save(model.state_dict(), stem.with_suffix(".pt"))
            print("VIOLATION:", *found, f"saved {stem}.json", sep="\n  ", flush=True)
    minutes = (time.perf_counter() - start) / 60
    print(f"{tried} networks tried in {minutes:.2f} min ({tried / max(minutes, 1e-9):.0f}/min), "
          f"{len(violations)} violations, seeds {seed}..{i - 1}"
          + (f", skipped: {dict(skipped)}" if skipped else ""))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
