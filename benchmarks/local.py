"""Local vs global Lipschitz bounds on the digits MLP (64-64-64-10) and CNN (issue #15, docs/local.md).

    python benchmarks/local.py [--points 10] [--epochs 30] [--no-write]

Per model, at ``--points`` test images x: the global bound (AutoLip, and ``--method best`` for the MLP, the
baseline measured in the same run) against the local bound on B₂(x, r) for several r (median over the points,
with the in-region lower bound beside it); then certified ℓ2 radii with the global constant vs ``local=True``
(median over correctly classified points), and a PGD attack (40 steps) inside each local radius: label flips
found. ECLipsE-Gen-Local (pip ``eclipse-nn``) is run beside when installed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import lipgraph  # noqa: E402
from examples.digits import accuracy, cnn, load_digits_tensors, mlp, train  # noqa: E402
from results_file import machine, write_section  # noqa: E402

RADII = (0.01, 0.05, 0.1, 0.3)


def pgd_flips(model, x: torch.Tensor, y: int, radius: float, steps: int = 40) -> int:
    """1 if an ℓ2 PGD attack inside B(x, radius) changes the label, else 0."""
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x + delta), torch.tensor([y]))
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += 2.5 * radius / steps * g / g.norm().clamp_min(1e-12)
            delta *= min(1.0, radius * 0.999 / float(delta.norm().clamp_min(1e-12)))
    with torch.no_grad():
        return int(model(x + delta).argmax(1).item() != y)


def eclipse_local(model, x: torch.Tensor, radius: float) -> float | None:
    """ECLipsE-Gen-Local (Fast) from the ``eclipse-nn`` package, when installed."""
    try:
        from eclipse_nn import LipConstEstimator  # type: ignore
    except ImportError:
        return None
    weights = [m.weight.detach().double() for m in model if isinstance(m, torch.nn.Linear)]
    est = LipConstEstimator(weights=weights)
    return float(est.estimate_gen_local(center=x.flatten().double(), epsilon=radius, method="fast"))


def run(points: int, epochs: int) -> str:
    x_train, y_train, x_test, y_test = load_digits_tensors()
    lines = [f"Measured on {machine()}; {points} test images, ℓ2; local = `analyze(region=Ball(x, r))` "
             "(default method: per-neuron chain bounds `cp-local`/`vertices-local`).", ""]
    for name, factory in (("digits MLP 64-64-64-10", mlp), ("digits CNN", cnn)):
        start = time.perf_counter()
        model = train(factory(), x_train, y_train, epochs=epochs, lr=3e-3)
        acc = accuracy(model, x_test, y_test)
        xs, ys = x_test[:points], y_test[:points]
        g = lipgraph.analyze(model, xs[:1], lower=False, quiet=True).bound.value
        best = lipgraph.analyze(model, xs[:1], method="best", lower=False, quiet=True).bound.value \
            if "MLP" in name else float("nan")
        lines += [f"**{name}** (test accuracy {acc:.1%}): global AutoLip {g:.4g}, global best {best:.4g}", "",
                  "| radius r | local median | local / global AutoLip | local / global best | in-region lower "
                  "(median) | ECLipsE-Gen-Local | seconds / analysis |", "|---|---|---|---|---|---|---|"]
        for r in RADII:
            vals, lows, ecl, t0 = [], [], [], time.perf_counter()
            for k in range(points):
                rep = lipgraph.analyze(model, xs[k:k + 1], region=lipgraph.Ball(None, r), quiet=True)
                vals.append(rep.bound.value)
                lows.append(rep.lower.value if rep.lower else float("nan"))
                e = eclipse_local(model, xs[k:k + 1], r) if "MLP" in name else None
                if e is not None:
                    ecl.append(e)
            med = statistics.median(vals)
            lines.append(f"| {r:g} | {med:.4g} | {med / g:.3f} | {med / best:.3f} | {statistics.median(lows):.4g} | "
                         f"{statistics.median(ecl):.4g} |" if ecl else
                         f"| {r:g} | {med:.4g} | {med / g:.3f} | {med / best:.3f} | {statistics.median(lows):.4g} | "
                         f"not installed | {(time.perf_counter() - t0) / points:.2f} |")
        t0 = time.perf_counter()
        cert = lipgraph.certify(model, xs, ys, local=True)
        ok = cert.correct
        glob, loc = cert.radii[ok], cert.local_radii[ok]
        flips = sum(pgd_flips(model, xs[k:k + 1], int(ys[k]), float(cert.local_radii[k]))
                    for k in range(points) if bool(ok[k]) and cert.local_radii[k] > 0)
        lines += ["", f"certified ℓ2 radius (correct points): global median {glob.median().item():.4g}, local median "
                      f"{loc.median().item():.4g} (×{(loc / glob.clamp_min(1e-300)).median().item():.2f} per point, "
                      f"median); PGD inside the local radii: {flips} label flips; certify --local "
                      f"{time.perf_counter() - t0:.1f} s; model total {time.perf_counter() - start:.1f} s", ""]
    return "\n".join(lines)


def blocks_table(samples: int = 20) -> str:
    """Blocks that are not globally Lipschitz (tests/fixtures/local_blocks.py) on the box [0, 1]^d."""
    import copy

    from tests.fixtures.local_blocks import blocks

    lines = ["", "**Blocks on the image box [0, 1]^d** (tiny sizes; sampled: max Jacobian norm at "
             f"{samples} uniform points of the box)", "",
             "| block | global | local certified | in-region lower | sampled max | seconds |", "|---|---|---|---|---|---|"]
    for name, (model, shape) in blocks().items():
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
        try:
            g = f"{lipgraph.analyze(model, x, lower=False, quiet=True).bound.value:.4g}"
        except lipgraph.NotLipschitzError:
            g = "not Lipschitz"
        t0 = time.perf_counter()
        rep = lipgraph.analyze(model, x, region=lipgraph.Box(0.0, 1.0), quiet=True)
        seconds = time.perf_counter() - t0
        net, gen, top = copy.deepcopy(model).double(), torch.Generator().manual_seed(1), 0.0
        for _ in range(samples):
            z = torch.rand(*shape, dtype=torch.float64, generator=gen)
            J = torch.autograd.functional.jacobian(lambda t: net(t).reshape(-1), z).reshape(-1, z.numel())
            top = max(top, torch.linalg.matrix_norm(J, 2).item())
        lines.append(f"| {name} | {g} | {rep.bound.value:.4g} | {rep.lower.value:.4g} | {top:.4g} | {seconds:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    body = "## Local bounds on a region (benchmarks/local.py)\n\n" + run(args.points, args.epochs) + blocks_table()
    print(body)
    if not args.no_write:
        write_section("local", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
