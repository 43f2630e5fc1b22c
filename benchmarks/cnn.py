"""CNN / ResNet benchmark of the SDP family on convolutions (issue #14, item 6): every certified chain method side
by side, with the best attained lower bound and seconds of each.

    python benchmarks/cnn.py [--only digits] [--skip eclipse] [--lower 10] [--no-write]

Cases: the digits CNN of the issue (Conv2d(1,8,3,p=1)→ReLU→Conv2d(8,16,3,s=2,p=1)→ReLU→Conv2d(16,10,4)→Flatten,
300 full-batch Adam steps at lr 1e-2 on scikit-learn's 8×8 digits); a 4-conv CNN with 16 channels at 16×16 (three
hidden layers of 4,096 neurons; 30 Adam steps on digits upsampled to 16×16); the tiny ResNet fixture (whole
network through ``lipgraph.analyze``). Columns: AutoLip, CP, ECLipsE-Fast, ECLipsE, LipSDP-Neuron by the
first-order solver, DCP, best (smallest certified), the attained lower bound (``lipgraph.lower_bound`` with the
data as starts) and the ratio best / lower. Written into ``benchmarks/RESULTS.md`` (section "cnn").
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lipgraph  # noqa: E402
from benchmarks.results_file import machine, write_section  # noqa: E402
from lipgraph.estimators import CHAIN_ESTIMATORS  # noqa: E402
from lipgraph.estimators.dcp import ConvChain, dcp  # noqa: E402
from lipgraph.estimators.eclipse import eclipse, fast_multipliers  # noqa: E402
from lipgraph.estimators.lipsdp_fo import certify_multipliers, lipsdp_conv  # noqa: E402
from lipgraph.linalg import matrix_norm  # noqa: E402

#: DCP's partition-search budget (seconds)
DCP_SECONDS = 60.0
COLUMNS = ("autolip", "cp", "eclipse-fast", "eclipse", "lipsdp-fo", "dcp")


def digits(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x, torch.tensor(data.target)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.double().eval()


def digits_cnn() -> tuple[str, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x, y = digits()
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 10, 4), nn.Flatten())
    model = train(model, x, y, 300, 1e-2)
    acc = float((model(x.double()).argmax(1) == y).double().mean())
    return f"digits CNN c8-c16s2-c10 (train acc {acc:.3f})", model, x.double()


def four_conv() -> tuple[str, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x, y = digits(16)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 10, 16), nn.Flatten())
    model = train(model, x, y, 30, 1e-2)
    acc = float((model(x.double()).argmax(1) == y).double().mean())
    return f"4-conv 16ch 16x16 (train acc {acc:.3f})", model, x.double()


def timed(fn):
    """(value, wall seconds, note); the note gives the process CPU seconds (the machine is shared)."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        value, note = fn().value, ""
    except Exception as err:  # noqa: BLE001 - a failing method is a table entry, not a crash
        value, note = None, f"{type(err).__name__}: {err}"
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return value, wall, note or (f"cpu {cpu:.0f} s" if wall > 30 else "")


def chain_row(name: str, model: nn.Module, x: torch.Tensor, skip: set[str], lower_seconds: float,
              solver_seconds: float) -> dict:
    conv = ConvChain.from_sequential(model, tuple(x.shape[1:]))
    start = time.perf_counter()
    chain = conv.to_dense()
    materialise = time.perf_counter() - start
    def fast_bound():
        return certify_multipliers(chain, [fast_multipliers(chain)], "eclipse-fast")

    def autolip():
        value = math.prod(matrix_norm(W, 2).value for W in chain.weights)
        return lipgraph.certified(value * math.prod(max(abs(a), abs(b)) for a, b in chain.slopes), "autolip")

    runs = {"autolip": autolip, "cp": lambda: CHAIN_ESTIMATORS["cp"].fn(chain), "eclipse-fast": fast_bound,
            "eclipse": lambda: eclipse(chain), "lipsdp-fo": lambda: lipsdp_conv(conv, seconds=solver_seconds),
            "dcp": lambda: dcp(conv, seconds=DCP_SECONDS)}
    row = {"case": name, "widths": chain.widths, "values": {}, "seconds": {}, "notes": {},
           "materialise": materialise}
    for column in COLUMNS:
        if column in skip:
            row["notes"][column] = "skipped"
            continue
        value, seconds, note = timed(runs[column])
        row["values"][column], row["seconds"][column], row["notes"][column] = value, seconds, note
        print(f"{name:40s} {column:14s} {value} {seconds:.1f}s {note[:120]}", flush=True)
    low, seconds, _ = timed(lambda: lipgraph.lower_bound(model, x[:1], data=x, seconds=lower_seconds))
    row["lower"], row["seconds"]["lower"] = low, seconds
    return row


def resnet_row(lower_seconds: float) -> dict:
    from tests.fixtures.zoo import tiny_resnet

    model, x = tiny_resnet()
    model = model.double()
    x = x.double()
    row = {"case": "tiny ResNet fixture (whole network)", "widths": list(x.shape[1:]), "values": {}, "seconds": {},
           "notes": {}, "materialise": 0.0}
    for column, method in (("autolip", "autolip"), ("cp", "cp"), ("lipsdp-fo", "lipsdp"), ("best", "best")):
        value, seconds, note = timed(lambda: lipgraph.analyze(model, x, method=method, lower=False).bound)
        row["values"][column], row["seconds"][column], row["notes"][column] = value, seconds, note
        print(f"{row['case']:40s} {column:14s} {value} {seconds:.1f}s {note[:120]}", flush=True)
    low, seconds, _ = timed(lambda: lipgraph.lower_bound(model, x, seconds=lower_seconds))
    row["lower"], row["seconds"]["lower"] = low, seconds
    return row


def table(rows: list[dict], args: argparse.Namespace) -> str:
    head = "| case | widths | " + " | ".join(COLUMNS) + " | best | lower | best/lower |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 5)]
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r["values"].get(c)
            cells.append("—" if v is None else f"{v:.5g} ({r['seconds'][c]:.0f} s)")
        certified = [v for c, v in r["values"].items() if v is not None]
        best = min(certified) if certified else None
        low = r["lower"]
        ratio = f"{best / low:.3f}" if best and low else "—"
        tail = f" | {best:.5g} | {low:.5g} | {ratio} |" if best and low else " | — | — | — |"
        lines.append(f"| {r['case']} | {'-'.join(map(str, r['widths']))} | " + " | ".join(cells) + tail)
    notes = [f"- {r['case']}, {c}: {n[:160]}" for r in rows for c, n in r["notes"].items() if n and n != "skipped"]
    notes += [f"- {r['case']}: layers materialised in {r['materialise']:.0f} s" for r in rows if r["materialise"] > 1]
    return "\n".join([
        "## CNNs: the SDP family on convolutions (`python benchmarks/cnn.py`, issue #14)",
        "",
        "Certified bounds (seconds in brackets) of each chain method on the whole chain (layers materialised "
        "once, float64); *lipsdp-fo*: `lipsdp_conv`, LipSDP-Neuron by the first-order solver (operator-Schur "
        f"mode, warm-started from ECLipsE-Fast, optimiser budget {args.seconds:g} s; its seconds include "
        "ECLipsE-Fast, the optimiser and the certificate), every multiplier set re-certified (dense shifted "
        "Cholesky up to LMI side 2500, block-tridiagonal certificate above); *dcp*: min over its partitions and, "
        "for maps ≤ 4,096 neurons, the untiled whole chain (ECLipsE-Fast, CP); *lower*: the best attained Jacobian norm found by "
        f"`lipgraph.lower_bound` in {args.lower:g} s (training data as starts); *best/lower*: the tightness. "
        f"Machine: {machine()}.",
        "",
        *lines,
        "",
        *(["Notes:", *notes] if notes else []),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated substrings of case names (digits, 4-conv, resnet)")
    parser.add_argument("--skip", default="", help="comma-separated columns to skip")
    parser.add_argument("--lower", type=float, default=10.0, help="seconds of lower-bound search per case")
    parser.add_argument("--seconds", type=float, default=90.0, help="first-order / DCP budget per chain")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    wanted = lambda name: not args.only or any(s in name for s in args.only.split(","))  # noqa: E731
    rows = []
    for build in (digits_cnn, four_conv):
        name = build.__name__.replace("_", "-")
        if wanted(name):
            large = {"eclipse"} if build is four_conv else set()  # 4,096-neuron ECLipsE stages: minutes each
            rows.append(chain_row(*build(), skip | large, args.lower, args.seconds))
    if wanted("resnet"):
        rows.append(resnet_row(args.lower))
    section = table(rows, args)
    print(section)
    if not args.no_write:
        write_section("cnn", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
