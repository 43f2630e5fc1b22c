"""Local vs global Lipschitz bounds on the digits MLP (64-64-64-10) and CNN (issue #15, docs/local.md).

    python benchmarks/local.py [--points 10] [--epochs 30] [--no-write]

Per model, at ``--points`` test images x: the global bound (AutoLip, and ``--method best`` for the MLP, the
baseline measured in the same run) against the local bound on B₂(x, r) for several r (median over the points,
with the in-region lower bound beside it); then certified ℓ2 radii with the global constant vs ``local=True``
(median over correctly classified points), and a PGD attack (40 steps) inside each local radius: label flips
found. ECLipsE-Gen-Local Fast (pip ``eclipse-nn``, MLPs only) is run beside at the same points and radii when
installed: a published estimator whose output lipgraph does not certify (its column is the package's claim).
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


def eclipse_local(model, x: torch.Tensor, radius: float) -> tuple[float, float] | None:
    """ECLipsE-Gen-Local (Fast) from the ``eclipse-nn`` package (Xu & Sivaranjani; ``LipConstEstimator(weights=,
    biases=).estimate_gen_local(center, epsilon, actv="relu", algo="Fast")``), when installed: the package's own
    estimate on the ℓ2 ball B₂(x, radius) (its pre-activation ranges are centre ± ε·ℓ_i with ℓ_i the row norms
    in its ellipsoid metric), with its solve time in seconds. lipgraph does not re-certify this number: its kind
    is the package's claim. ``None`` when not installed or when the package reports a failure (exit code ≠ 0)."""
    try:
        from eclipse_nn import LipConstEstimator  # type: ignore
    except ImportError:
        return None
    import contextlib
    import io

    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    est = LipConstEstimator(weights=[m.weight.detach().double() for m in layers],
                            biases=[m.bias.detach().double() for m in layers])
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints every layer's progress
        value, seconds, status = est.estimate_gen_local(center=x.flatten().double(), epsilon=radius, actv="relu",
                                                        algo="Fast")
    return (float(value), float(seconds)) if status == 0 else None


def previous_search_seconds(model, xs: torch.Tensor, ys: torch.Tensor) -> tuple[float, list[float]]:
    """The baseline of ``certify --local``'s timing: the search before the speed-up, one full
    ``analyze(region=Ball(x, r))`` per step (every step enumerating its slope vertices: the vertex memo is
    cleared), plain bisection of ``BISECTION_STEPS`` steps over the same pairs. Seconds per point, radii."""
    from lipgraph.certify import BISECTION_STEPS, LOCAL_PAIRS, _Margin
    from lipgraph.passes import localchains

    cert = lipgraph.certify(model, xs, ys)
    logits = model(xs).detach().double()
    start, radii = time.perf_counter(), []
    for k in range(len(xs)):
        y = int(cert.predictions[k])
        gaps = logits[k, y] - logits[k]
        starts = {j: float(gaps[j] / cert.pair_bounds[y, j]) if cert.pair_bounds is not None else 0.0
                  for j in range(len(gaps)) if j != y}
        for j in sorted(starts, key=starts.get)[:LOCAL_PAIRS]:
            net = _Margin(model, y, j, len(gaps))

            def bound(r: float) -> float:
                localchains._VERTEX_MEMO.clear()
                return lipgraph.analyze(net, xs[k:k + 1], region=lipgraph.Ball(None, r), lower=False,
                                        quiet=True).bound.value

            margin, lo = float(gaps[j]), starts[j]
            hi = margin / bound(lo)
            if hi > lo and margin > bound(hi * (1 - 1e-9)) * hi * (1 - 1e-9):
                lo = hi * (1 - 1e-9)
            for _ in range(BISECTION_STEPS if hi > lo else 0):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if margin > bound(mid) * mid else (lo, mid)
            starts[j] = lo
        radii.append(min(starts.values()))
    return (time.perf_counter() - start) / len(xs), radii


def run(points: int, epochs: int, timing: int) -> str:
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
                  "(median) | ECLipsE-Gen-Local Fast (package's claim, median; points below lipgraph's lower) | "
                  "local / ECLipsE (median per point) | seconds / analysis: lipgraph, ECLipsE |", "|---|---|---|---|---|---|---|---|"]
        for r in RADII:
            vals, lows, ecl, ratios, seconds, ecl_seconds = [], [], [], [], 0.0, 0.0
            for k in range(points):
                t0 = time.perf_counter()
                rep = lipgraph.analyze(model, xs[k:k + 1], region=lipgraph.Ball(None, r), quiet=True)
                seconds += time.perf_counter() - t0
                vals.append(rep.bound.value)
                lows.append(rep.lower.value if rep.lower else float("nan"))
                e = eclipse_local(model, xs[k:k + 1], r) if "MLP" in name else None
                if e is not None:
                    ecl.append(e[0])
                    ratios.append(rep.bound.value / e[0])
                    ecl_seconds += e[1]
            med = statistics.median(vals)
            below = sum(e < low for e, low in zip(ecl, lows))  # under a value attained in the ball: not a bound
            other = (f"{statistics.median(ecl):.4g} ({below}/{len(ecl)} below the lower) | "
                     f"{statistics.median(ratios):.3f}" if ecl else
                     "not installed | —" if "MLP" in name else "MLPs only | —")
            lines.append(f"| {r:g} | {med:.4g} | {med / g:.3f} | {med / best:.3f} | {statistics.median(lows):.4g} | "
                         f"{other} | {seconds / points:.2f}, {f'{ecl_seconds / points:.3f}' if ecl else '—'} |")
        t0 = time.perf_counter()
        cert = lipgraph.certify(model, xs, ys, local=True)
        per_point = (time.perf_counter() - t0) / points
        ok = cert.correct
        glob, loc = cert.radii[ok], cert.local_radii[ok]
        flips = sum(pgd_flips(model, xs[k:k + 1], int(ys[k]), float(cert.local_radii[k]))
                    for k in range(points) if bool(ok[k]) and cert.local_radii[k] > 0)
        lines += ["", f"certified ℓ2 radius (correct points): global median {glob.median().item():.4g}, local median "
                      f"{loc.median().item():.4g} (×{(loc / glob.clamp_min(1e-300)).median().item():.2f} per point, "
                      f"median); PGD inside the local radii: {flips} label flips; certify --local "
                      f"{per_point:.2f} s per point; model total {time.perf_counter() - start:.1f} s", ""]
        if timing:
            from lipgraph.passes import localchains

            pick = torch.nonzero(ok).flatten()[:timing]
            localchains._VERTEX_MEMO.clear()
            t0 = time.perf_counter()
            now = lipgraph.certify(model, xs[pick], ys[pick], local=True).local_radii.tolist()
            after = (time.perf_counter() - t0) / len(pick)
            before, radii = previous_search_seconds(model, xs[pick], ys[pick])
            lines += [f"certify --local speed, {len(pick)} correct points (same run): {after:.2f} s per point vs "
                      f"{before:.2f} s for the previous search (full analysis per bisection step, every step "
                      f"enumerating its slope vertices): ×{before / after:.1f}; local radii now / then "
                      f"{', '.join(f'{a / b:.4f}' for a, b in zip(now, radii) if b > 0)}", ""]
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
    parser.add_argument("--timing", type=int, default=3, help="points timed against the previous certify search")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    body = "## Local bounds on a region (benchmarks/local.py)\n\n" + run(args.points, args.epochs, args.timing) + blocks_table()
    print(body)
    if not args.no_write:
        write_section("local", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
