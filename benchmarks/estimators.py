"""Chain-estimator benchmark: every registered chain estimator (LipSDP-Neuron/-Layer, ECLipsE, ECLipsE-Fast,
SeqLip, CP/LipLT, …), AutoLip and DCP, side by side: bound, ratio to the exact constant or the best lower bound,
seconds (issue #7, item 5).

    python benchmarks/estimators.py [--only digits] [--lower 5] [--no-write]

Cases: random nonnegative-weight MLPs (exact L = ‖ΠW‖, docs/mathematics.md §10); digits MLPs 64-n-n-10 trained with
``examples/digits.py`` (reference: the best lower bound ``lipgraph.lower_bound`` finds in ``--lower`` seconds,
data rows as starts); a small digits CNN (conv chain) for DCP. The table is written into
``benchmarks/RESULTS.md`` between the markers of its own section.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import lipgraph  # noqa: E402
from benchmarks.results_file import machine, write_section  # noqa: E402
from lipgraph.estimators import CHAIN_ESTIMATORS, DenseChain  # noqa: E402
from lipgraph.estimators.dcp import ConvChain, dcp  # noqa: E402
from lipgraph.linalg import matrix_norm  # noqa: E402

ESTIMATOR_MODULES = ("seqlip", "cp", "sdp", "eclipse")


@dataclass
class Case:
    name: str
    model: nn.Sequential
    chain: ConvChain
    example: torch.Tensor  # one input, batch 1
    data: torch.Tensor | None  # rows used as lower-bound starts
    exact: float | None  # the true L when known


def load_estimators() -> list[str]:
    for name in ESTIMATOR_MODULES:
        try:
            importlib.import_module(f"lipgraph.estimators.{name}")
        except ImportError as err:
            print(f"(estimator module {name} not available: {err})")
    return sorted(CHAIN_ESTIMATORS.of_input("dense"))  # DCP (conv chains) runs below on its own


def nonnegative_mlp(widths: tuple[int, ...], seed: int) -> Case:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(widths, widths[1:])):
        lin = nn.Linear(a, b, bias=False).double()
        with torch.no_grad():
            mask = torch.rand(b, a, generator=gen, dtype=torch.float64) < 0.25  # sparse: not nearly rank one
            lin.weight.copy_(torch.rand(b, a, generator=gen, dtype=torch.float64) * mask / (0.25 * a) ** 0.5)
        layers += [lin, nn.ReLU()] if k < len(widths) - 2 else [lin]
    model = nn.Sequential(*layers).eval()
    chain = ConvChain.from_sequential(model, (widths[0],))
    dense = chain.to_dense()
    product = dense.weights[0]
    for W in dense.weights[1:]:
        product = W @ product
    name = "random nonneg " + "-".join(map(str, widths))
    return Case(name, model, chain, torch.rand(1, widths[0], dtype=torch.float64), None,
                matrix_norm(product, 2).value)


def digits_cases(widths: list[int], epochs: int) -> list[Case]:
    import digits

    x_train, y_train, x_test, y_test = digits.load_digits_tensors()
    cases = []
    for n in widths:
        model = digits.train(digits.mlp(hidden=n), x_train, y_train, epochs=epochs, lr=3e-3).double()
        acc = digits.accuracy(model, x_test.double(), y_test)
        cases.append(Case(f"digits MLP 64-{n}-{n}-10 (acc {acc:.3f})", model,
                          ConvChain.from_sequential(model, (64,)), x_test[:1].double(), x_test[:64].double(), None))
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 10))
    cnn = digits.train(cnn, x_train, y_train, epochs=epochs, lr=3e-3).double()
    acc = digits.accuracy(cnn, x_test.double(), y_test)
    cases.append(Case(f"digits CNN 1x8x8 c4-c8s2-c8s2-fc10 (acc {acc:.3f})", cnn,
                      ConvChain.from_sequential(cnn, (1, 8, 8)), x_test[:1].double(), x_test[:64].double(), None))
    return cases


def timed(fn: Callable[[], lipgraph.Bound]) -> tuple[lipgraph.Bound | None, float, str]:
    start = time.perf_counter()
    try:
        bound, note = fn(), ""
    except lipgraph.LipgraphError as err:
        bound, note = None, str(err)
    return bound, time.perf_counter() - start, note


def autolip(chain: DenseChain) -> lipgraph.Bound:
    """Product of the layer norms and the activations' max |slope| (AutoLip on a chain)."""
    value = math.prod(matrix_norm(W, 2).value for W in chain.weights)
    value *= math.prod(max(abs(lo), abs(hi)) for lo, hi in chain.slopes)
    return lipgraph.certified(value, "autolip")


def run_case(case: Case, names: list[str], lower_seconds: float) -> list[dict]:
    dense = case.chain.to_dense()
    reference = case.exact
    if reference is None:
        low = lipgraph.lower_bound(case.model, case.example, data=case.data, seconds=lower_seconds)
        reference = low.value
    ref_label = "exact" if case.exact is not None else "lower"
    runs: list[tuple[str, Callable[[], lipgraph.Bound] | str]] = [("autolip", lambda: autolip(dense))]
    for name in names:
        est = CHAIN_ESTIMATORS[name]
        runs.append((name, est.applies(dense) or (lambda est=est: est.fn(dense))))
    if any(layer.__class__.__name__ == "Conv2dSpec" for layer in case.chain.layers):
        runs.append(("dcp (lipsdp-neuron pieces)", lambda: dcp(case.chain, estimator="lipsdp-neuron", seconds=120)))
        runs.append(("dcp (eclipse-fast pieces)", lambda: dcp(case.chain, estimator="eclipse-fast", seconds=120)))
    rows = []
    for name, fn in runs:
        bound, seconds, note = (None, 0.0, fn) if isinstance(fn, str) else timed(fn)
        rows.append(dict(case=case.name, widths=dense.widths, reference=reference, ref_label=ref_label, name=name,
                         bound=bound, seconds=seconds, note=note))
        shown = f"{bound.value:.6g} ({bound.method})" if bound else f"— {note[:100]}"
        print(f"{case.name:44s} {name:28s} {shown}  {seconds:.2f}s", flush=True)
    return rows


def table(rows: list[dict], lower_seconds: float) -> str:
    lines = ["| case | widths | estimator | bound | kind | ratio | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["bound"]
        if b is None:
            lines.append(f"| {r['case']} | {'-'.join(map(str, r['widths']))} | {r['name']} | — | refused: "
                         f"{r['note'][:90]} | — | {r['seconds']:.3g} |")
            continue
        kind = b.kind.value + ("" if b.method in (r["name"], "cp-liplt") else f" · {b.method}")
        lines.append(f"| {r['case']} | {'-'.join(map(str, r['widths']))} | {r['name']} | {b.value:.6g} | {kind} | "
                     f"{b.value / r['reference']:.4f} ({r['ref_label']}) | {r['seconds']:.3g} |")
    refs = sorted({(r["case"], r["reference"], r["ref_label"]) for r in rows})
    ref_lines = [f"- {case}: {label} {value:.6g}" for case, value, label in refs]
    return "\n".join([
        "## Chain estimators (`python benchmarks/estimators.py`)",
        "",
        "*ratio*: bound / the exact L (random nonnegative MLPs, ‖ΠW‖) or / the best lower bound found by "
        f"`lipgraph.lower_bound` in {lower_seconds:g} s (trained nets); ≥ 1 for every certified method. "
        "LipSDP / ECLipsE values are re-certified (fixed-multiplier Schur complement, verified in float64). "
        "Single-threaded torch; CVXOPT for LMIs up to 300, SCS above. "
        f"Machine: {machine()}.",
        "",
        *lines,
        "",
        "References:",
        *ref_lines,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated substrings of case names")
    parser.add_argument("--lower", type=float, default=5.0, help="seconds of lower-bound search per trained net")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = load_estimators()
    cases = [nonnegative_mlp((64, 32, 32, 10), 0), nonnegative_mlp((32, 24, 24, 24, 24, 10), 1)]
    cases += digits_cases([16, 32, 64, 128], args.epochs)
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only.split(","))]
    rows = [row for case in cases for row in run_case(case, names, args.lower)]
    section = table(rows, args.lower)
    print(section)
    if not args.no_write:
        write_section("estimators", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
