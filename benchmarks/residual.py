"""Benchmark: whole residual blocks (docs/residual.md) against the separate bound ‖P‖ + L(branch), same run.

    python benchmarks/residual.py [--threads 1] [--methods cp,best] [--resnet18] [--write]
    python benchmarks/residual.py --budget [--unlimited-cap 1200] [--write]

For each model and method, the certified bound with the residual pass switched off (``before``: what lipgraph
gave before whole blocks existed) and on (``after``), their ratio and seconds; AutoLip and a proven lower bound
(``lipgraph.lower_bound``) for scale. Then, per residual block of each model: the separate bound, the joint bound
and the attained Jacobian norm of the block alone (``lipgraph.lower_bound`` on the block module, started at the
block's actual input for the example): where the remaining gap between upper and lower bounds sits.
``--budget``: ``--method best`` without a time budget (as before budgets existed; stopped after
``--unlimited-cap`` seconds) and with its default budget (lipgraph/estimators/budget.py), beside AutoLip and
``cp`` (with the whole-block and block-pair bounds), on the tiny ResNet and the 4-block ResNet; the ratio to the
issue's baseline (``--method best`` = 1164 on the 4-block ResNet when blocks were bounded as 1 + L(branch)).
``--write`` replaces this script's section of ``benchmarks/RESULTS.md``. Timings are machine-dependent.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import lipgraph  # noqa: E402
import lipgraph.api  # noqa: E402
from tests.fixtures.zoo import ZOO  # noqa: E402

SECTION = "residual"
#: issue #14's measured ``--method best`` on the 4-block ResNet before whole residual blocks existed
ISSUE_BASELINE = 1164.0


def four_block_resnet() -> tuple[nn.Module, torch.Tensor]:
    """CIFAR-style ResNet with one BasicBlock per stage (4 blocks, BatchNorm randomised), 16×16 input."""
    import resnet

    model = resnet._resnet(resnet.BasicBlock, [1, 1, 1, 1], 10, True)
    return model, torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def resnet18() -> tuple[nn.Module, torch.Tensor]:
    import resnet

    return resnet.build_model(), resnet.example_input()


def _analyze(model, x, method: str, residual: bool, **options):
    original = lipgraph.api.tighten_residuals
    if not residual:
        lipgraph.api.tighten_residuals = lambda *args, **kwargs: []
    try:
        start = time.perf_counter()
        report = lipgraph.analyze(model, x, method=method, lower=False, quiet=True, **options)
        return report, time.perf_counter() - start
    finally:
        lipgraph.api.tighten_residuals = original


def _blocks(model: nn.Module, x: torch.Tensor, report) -> list[str]:
    """Per residual block: separate, joint, attained (block alone, from its actual input)."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, args[0].detach()))
             for name, m in model.named_modules() if type(m).__name__ in ("BasicBlock", "_InvertedResidual")]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    rows = []
    for node in report.tree.walk():
        if node.formula and node.formula.startswith("min("):
            block = node.path.rsplit(".", 1)[0]
            values = node.formula.rsplit("= min(", 1)[1].rstrip(")").split(", ")
            module = model.get_submodule(block)
            attained = _attained(_without_post_add(module), inputs[block])
            rows.append(f"| {block} | {values[0]} | {values[1]} | {attained:.4g} |")
    return rows


def _attained(f: nn.Module, x: torch.Tensor, points: int = 8, steps: int = 40) -> float:
    """max over x and random perturbations of it of ‖J_f‖₂ (power iteration on JᵀJ): a lower bound of L(f)."""
    g = torch.Generator().manual_seed(0)
    best = 0.0
    for k in range(points):
        z = x if k == 0 else x + 0.5 * x.std() * torch.randn(x.shape, generator=g)
        v = torch.randn(x.shape, generator=g)
        _, pullback = torch.func.vjp(f, z)
        for _ in range(steps):
            v = v / v.norm()
            _, jv = torch.func.jvp(f, (z,), (v,))
            (v,) = pullback(jv)
            best = max(best, float(jv.detach().norm()))
    return best


class _PreActivation(nn.Module):
    """A BasicBlock without its post-add ReLU (the joint bound is of x + branch(x) alone); no in-place ops."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        out = b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(x)))))
        return out + (x if b.downsample is None else b.downsample(x))


def _without_post_add(module: nn.Module) -> nn.Module:
    return _PreActivation(module) if type(module).__name__ == "BasicBlock" else module


def _unlimited_best(name: str, cap: float) -> str:
    """``--method best`` without a budget in a child process stopped after ``cap`` seconds: (bound, seconds) or
    the cap."""
    import subprocess

    code = (f"import sys, time, math; sys.path[:0] = {[str(ROOT), str(ROOT / 'benchmarks'), str(ROOT / 'examples')]}; "
            f"import torch; torch.set_num_threads(torch.get_num_threads()); import residual as r; "
            f"m, x = r.BUILDERS[{name!r}](); t = time.perf_counter(); "
            f"rep = r.lipgraph.analyze(m, x, method='best', lower=False, quiet=True, budget=math.inf); "
            f"print(rep.bound.value, time.perf_counter() - t)")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=cap, check=True)
    except subprocess.TimeoutExpired:
        return f"> {cap:.0f} s (stopped)"
    value, seconds = out.stdout.split()[-2:]
    return f"{float(value):.5g} in {float(seconds):.3g} s"


def budget_table(cap: float) -> str:
    """AutoLip, cp, best without a budget (before) and with the default budget (after), same run."""
    from lipgraph.estimators.budget import BEST_SECONDS

    lines = [f"| model | AutoLip | cp (s) | best, no budget (before) | best, default budget {BEST_SECONDS:g} s "
             f"(after) | s after | after × tighter than the issue's 1164 |", "|---|---|---|---|---|---|---|"]
    for name in ("zoo/tiny_resnet", "4-block ResNet 16x16"):
        model, x = BUILDERS[name]()
        auto, _ = _analyze(model, x, "autolip", residual=False)
        cp, s_cp = _analyze(model, x, "cp", residual=True)
        after, s_after = _analyze(model, x, "best", residual=True)
        before = _unlimited_best(name, cap)
        versus = f"{ISSUE_BASELINE / after.bound.value:.3g}×" if name.startswith("4-block") else "—"
        lines.append(f"| {name} | {auto.bound.value:.5g} | {cp.bound.value:.5g} ({s_cp:.3g}) | {before} | "
                     f"{after.bound.value:.5g} | {s_after:.3g} | {versus} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


BUILDERS = {"zoo/tiny_resnet": ZOO["tiny_resnet"], "4-block ResNet 16x16": four_block_resnet}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="cp,best")
    parser.add_argument("--resnet18", action="store_true", help="also CIFAR ResNet-18 (method cp only)")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--budget", action="store_true", help="only the time-budget table of --method best")
    parser.add_argument("--unlimited-cap", type=float, default=1200.0, help="seconds before best without a budget "
                        "is stopped")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.budget:
        text = budget_table(args.unlimited_cap)
        if args.write:
            from results_file import write_section

            from results_file import machine

            write_section(SECTION + "-budget", "## `--method best` under a time budget (`python benchmarks/residual.py "
                          f"--budget`)\n{machine()}; torch threads {args.threads}\n\n" + text)
        return
    models = [("zoo/tiny_resnet", ZOO["tiny_resnet"], args.methods.split(",")),
              ("zoo/tiny_mobilenet", ZOO["tiny_mobilenet"], args.methods.split(",")),
              ("4-block ResNet 16x16", four_block_resnet, args.methods.split(","))]
    if args.resnet18:
        models.append(("resnet18 (CIFAR 32x32)", resnet18, ["cp"]))
    lines = ["| model | method | AutoLip | before | after | before/after | s before | s after | lower |",
             "|---|---|---|---|---|---|---|---|---|"]
    per_block = ["| block | separate ‖P‖ + L(branch) | joint | attained (block alone) |", "|---|---|---|---|"]
    for name, build, methods in models:
        model, x = build()
        auto, _ = _analyze(model, x, "autolip", residual=False)
        low = lipgraph.lower_bound(model, x, starts=4, steps=30).value
        for method in methods:
            before, s_before = _analyze(model, x, method, residual=False)
            after, s_after = _analyze(model, x, method, residual=True)
            lines.append(f"| {name} | {method} | {auto.bound.value:.5g} | {before.bound.value:.5g} | "
                         f"{after.bound.value:.5g} | {before.bound.value / after.bound.value:.3g}× | "
                         f"{s_before:.3g} | {s_after:.3g} | {low:.4g} |")
            print(lines[-1], flush=True)
        per_block += [row.replace("| ", f"| {name}: ", 1) for row in _blocks(model, x, after)]
        print("\n".join(per_block[-4:]), flush=True)
    text = "\n".join(lines + [""] + per_block) + "\n"
    print(text)
    if args.write:
        from results_file import write_section

        write_section(SECTION, f"torch threads {args.threads}\n\n" + text)


if __name__ == "__main__":
    main()
