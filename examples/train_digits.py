"""Train an MLP and a small CNN on scikit-learn's digits with and without lipgraph's Lipschitz penalty, then
certify them: test accuracy, the certified bound (``analyze``; SeqLip too where lipgraph has it), the penalty's
own value (an estimate from below), and certified accuracy at several ℓ2 radii. Prints a markdown table.

    python examples/train_digits.py                 # about a minute on 2 CPU cores
    python examples/train_digits.py --write         # also rewrite its section of benchmarks/RESULTS.md
    python examples/train_digits.py --save out/     # also save weights and the test set, then:
    lipgraph certify examples/digits.py:cnn --weights out/cnn_penalty.pt --data out/digits_test.pt --plot cnn.png
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lipgraph
from lipgraph.api import METHODS
from digits import accuracy, cnn, load_digits_tensors, mlp, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from results_file import machine, write_section  # noqa: E402 - benchmarks/ is not a package

RADII = (0.1, 0.25, 0.5)


def step_costs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, example: torch.Tensor,
               repeats: int = 50) -> tuple[float, float]:
    """Milliseconds of one cross-entropy forward+backward on a batch of 64, and of one penalty call+backward."""
    model.train()
    costs = []
    for loss in (lambda: F.cross_entropy(model(x[:64]), y[:64]), lambda: lipgraph.lipschitz_penalty(model, example)):
        start = time.perf_counter()
        for _ in range(repeats):
            loss().backward()
        costs.append(1000 * (time.perf_counter() - start) / repeats)
    model.eval()
    return costs[0], costs[1]


def run(epochs: int, weight: float, save: Path | None) -> list[dict]:
    x_train, y_train, x_test, y_test = load_digits_tensors()
    example = x_train[:1]
    train(mlp(), x_train, y_train, epochs=1, lr=3e-3)  # warm-up: the first run is not slower for being first
    rows = []
    for name, factory in (("mlp", mlp), ("cnn", cnn)):
        for w in (0.0, weight):
            start = time.perf_counter()
            model = train(factory(), x_train, y_train, epochs=epochs, lr=3e-3, weight=w,
                          penalty=lambda m: lipgraph.lipschitz_penalty(m, example))
            seconds = time.perf_counter() - start
            cert = lipgraph.certify(model, x_test, y_test, radii=RADII)
            plain = lipgraph.certify(model, x_test, y_test, radii=RADII, pairwise=False)
            seqlip = (lipgraph.analyze(model, example, method="seqlip", lower=False).bound
                      if "seqlip" in METHODS else None)
            rows.append({
                "model": name, "weight": w, "accuracy": accuracy(model, x_test, y_test), "bound": cert.bound,
                "seqlip": seqlip, "penalty": lipgraph.lipschitz_penalty(model, example).item(),
                "converged": lipgraph.lipschitz_penalty(model, example, iters=2000, tol=1e-6).item(),
                "costs": step_costs(model, x_train, y_train, example),
                "certified": [a for _, a, _ in cert.summary()], "median": cert.radii[cert.correct].median().item(),
                "median_global": plain.radii[plain.correct].median().item(), "seconds": seconds,
            })
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), save / f"{name}{'_penalty' if w else ''}.pt")
    if save is not None:
        torch.save({"x": x_test, "y": y_test}, save / "digits_test.pt")
    return rows


def table(rows: list[dict], epochs: int) -> str:
    head = ["model", "penalty weight", "test accuracy", "L autolip (certified)"]
    head += ["L seqlip"] if any(r["seqlip"] for r in rows) else []
    head += ["penalty: 1 step / converged"] + [f"certified acc. @ {r:g}" for r in RADII]
    head += ["median radius: pairs / global", "train s", "ms per step: loss / penalty"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['weight']:g}", f"{r['accuracy']:.1%}", f"{r['bound'].value:.4g}"]
        if "L seqlip" in head:
            cells.append(f"{r['seqlip'].value:.4g} ({r['seqlip'].kind.value})" if r["seqlip"] else "—")
        cells += [f"{r['penalty']:.4g} / {r['converged']:.4g}"] + [f"{a:.1%}" for a in r["certified"]]
        cells += [f"{r['median']:.3g} / {r['median_global']:.3g}", f"{r['seconds']:.1f}",
                  f"{r['costs'][0]:.2f} / {r['costs'][1]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        "## Training with a Lipschitz penalty and certifying (`python examples/train_digits.py`)",
        "",
        f"scikit-learn digits (1348 train / 449 test images, 8×8 in [0, 1]); Adam, lr 3e-3, {epochs} epochs, batch 64, "
        "loss = cross-entropy + weight · `lipgraph.lipschitz_penalty(model, x[:1])` (1 warm-started power step per "
        "layer and step). *L autolip*: `lipgraph.analyze` on the trained model; *penalty*: its value at the end "
        "with one more warm step, and with the power iteration run to convergence (AutoLip with exact layer norms); "
        "both are ≤ L by construction. Certified accuracy: `lipgraph.certify` (ℓ2, per-class-pair bounds of the "
        "final linear layer): correct and certified radius ≥ r; median radius over correctly classified test "
        "images with the per-class-pair bounds / with the global bound margin/(√2·L). *ms per step*: one "
        "cross-entropy forward+backward on a batch of 64 / one penalty call+backward (the baseline and the "
        f"overhead, measured in the same run). Machine: {machine()}.",
        "",
        *lines,
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--weight", type=float, default=0.03, help="penalty weight of the regularised runs")
    parser.add_argument("--save", type=Path, help="folder for the trained weights and the test set")
    parser.add_argument("--write", action="store_true", help="rewrite the training section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # timings on a shared 2-core machine: one thread is the fastest and the steadiest
    section = table(run(args.epochs, args.weight, args.save), args.epochs)
    print(section)
    if args.write:
        write_section("training", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
