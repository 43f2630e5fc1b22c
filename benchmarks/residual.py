"""Benchmark: whole residual blocks (docs/residual.md) against the separate bound ‖P‖ + L(branch), same run.

    python benchmarks/residual.py [--threads 1] [--methods cp,best] [--resnet18] [--write]
    python benchmarks/residual.py --budget [--before-commit 31f374a] [--before-cap 1200] [--write]

For each model and method, the certified bound with the residual pass switched off (``before``: what lipgraph
gave before whole blocks existed) and on (``after``), their ratio and seconds; AutoLip and a proven lower bound
(``lipgraph.lower_bound``) for scale. Then, per residual block of each model: the separate bound, the joint bound
and the attained Jacobian norm of the block alone (``lipgraph.lower_bound`` on the block module, started at the
block's actual input for the example): where the remaining gap between upper and lower bounds sits.
``--budget``: on one 4-block ResNet (fixed weights), ``--method best`` of the commit issue #14 was filed at
(``--before-commit``, run from a temporary git worktree in a child process, stopped after ``--before-cap``
seconds) and of this checkout with its default budget (lipgraph/estimators/budget.py), beside AutoLip, the lower
bound and ``cp``; seconds, the load average, the budget's notes and each estimator's seconds.
``--write`` replaces this script's section of ``benchmarks/RESULTS.md``. Timings are machine-dependent.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import lipgraph  # noqa: E402
import lipgraph.pipeline  # noqa: E402
from tests.fixtures.zoo import ZOO  # noqa: E402

SECTION = "residual"


def four_block_resnet() -> tuple[nn.Module, torch.Tensor]:
    """CIFAR-style ResNet with one BasicBlock per stage (4 blocks, BatchNorm randomised), 16×16 input."""
    import resnet

    model = resnet._resnet(resnet.BasicBlock, [1, 1, 1, 1], 10, True)
    return model, torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def resnet18() -> tuple[nn.Module, torch.Tensor]:
    import resnet

    return resnet.build_model(), resnet.example_input()


def _analyze(model, x, method: str, residual: bool, **options):
    original = lipgraph.pipeline.tighten_residuals
    if not residual:
        lipgraph.pipeline.tighten_residuals = lambda *args, **kwargs: []
    try:
        start = time.perf_counter()
        report = lipgraph.analyze(model, x, method=method, lower=False, quiet=True, **options)
        return report, time.perf_counter() - start
    finally:
        lipgraph.pipeline.tighten_residuals = original


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


#: the main commit on which issue #14 was filed (its numbers: AutoLip 3416, best 1164 on a 4-block ResNet that the
#: repository never built; the builder here gives AutoLip 2271.3 at that commit): "today's best" of the issue
FILING_COMMIT = "31f374a"
#: the child that runs ``best`` of another commit on the 4-block ResNet (state dict ``argv[2]``): that checkout's
#: lipgraph first on the path, its rules package (``lipgraph.rules`` is mapped from ``rules/``) found before any
#: installed one; the model class from this checkout's examples (unchanged since)
_CHILD = """
import importlib.util, os, sys, time
src, state, examples = sys.argv[1:4]
class Rules:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "lipgraph.rules":
            return importlib.util.spec_from_file_location(name, os.path.join(src, "rules", "__init__.py"),
                                                          submodule_search_locations=[os.path.join(src, "rules")])
sys.meta_path.insert(0, Rules)
sys.path[:0] = [src, examples]
import torch
torch.set_num_threads(int(sys.argv[4]))
import lipgraph, resnet
model = resnet._resnet(resnet.BasicBlock, [1, 1, 1, 1], 10, True)
model.load_state_dict(torch.load(state))
x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
t = time.perf_counter()
report = lipgraph.analyze(model, x, method="best", lower=False, quiet=True, cache=False)
print(lipgraph.__file__, report.bound.value, time.perf_counter() - t)
"""


def best_at_commit(commit: str, model: nn.Module, cap: float) -> tuple[float | None, str]:
    """``--method best`` of ``commit`` (a temporary git worktree, removed after) on the 4-block ResNet with
    ``model``'s weights, in a child process stopped after ``cap`` seconds: (bound, "value in s") or (None, why)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, state = Path(tmp) / "src", Path(tmp) / "model.pt"
        torch.save(model.state_dict(), state)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(src), commit], check=True,
                       capture_output=True)
        try:
            out = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(state), str(ROOT / "examples"),
                                  str(torch.get_num_threads())], capture_output=True, text=True, timeout=cap,
                                 check=True)
        except subprocess.TimeoutExpired:
            return None, f"> {cap:.0f} s (stopped)"
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(src)], capture_output=True)
    path, value, seconds = out.stdout.split()[-3:]
    if not path.startswith(str(src)):
        raise RuntimeError(f"the child imported lipgraph from {path}, not from commit {commit}")
    return float(value), f"{float(value):.5g} in {float(seconds):.3g} s"


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def budget_table(commit: str, cap: float) -> str:
    """One fixed 4-block ResNet: AutoLip, lower bound, cp, ``best`` at ``commit`` (before) and now with the default
    budget (after), with seconds and the load average (1/5/15 min) after each; the notes of the budget."""
    from lipgraph.estimators.budget import BEST_SECONDS

    model, x = four_block_resnet()
    auto, s_auto = _analyze(model, x, "autolip", residual=False)
    print(f"AutoLip {auto.bound.value:.5g} in {s_auto:.3g} s", flush=True)
    start = time.perf_counter()
    low = lipgraph.lower_bound(model, x, starts=4, steps=30).value
    s_low = time.perf_counter() - start
    cp, s_cp = _analyze(model, x, "cp", residual=True)
    load_cp = _load()
    print(f"lower {low:.4g} in {s_low:.3g} s; cp {cp.bound.value:.5g} in {s_cp:.3g} s", flush=True)
    before, before_text = best_at_commit(commit, model, cap)
    load_before = _load()
    print(f"best at {commit}: {before_text}", flush=True)
    after, s_after = _analyze(model, x, "best", residual=True)
    ratio = f"{before / after.bound.value:.3g}×" if before is not None else "—"
    lines = ["| 4-block ResNet 16x16 | value | seconds (load after) |", "|---|---|---|",
             f"| AutoLip | {auto.bound.value:.5g} | {s_auto:.3g} |",
             f"| lower bound (attained) | {low:.4g} | {s_low:.3g} |",
             f"| `cp` (whole blocks, pairs) | {cp.bound.value:.5g} | {s_cp:.3g} ({load_cp}) |",
             f"| `best` at {commit} (before: the issue's main) | {before_text} | ({load_before}) |",
             f"| `best` now, default budget {BEST_SECONDS:g} s (after) | {after.bound.value:.5g} | {s_after:.3g} "
             f"({_load()}) |",
             f"| before / after | {ratio} | |",
             f"| cp / after | {cp.bound.value / after.bound.value:.4g} | |"]
    said = [n for chain in after.chains for n in chain.notes] + [n for node in after.tree.walk() for n in node.notes]
    notes = [f"- {n}" for n in dict.fromkeys(said) if "budget" in n or "stopped" in n]
    seconds = [f"{name} {s:.3g}" for chain in after.chains for name, s in chain.seconds.items() if s > 1]
    text = "\n".join(lines) + "\n\nPer-estimator seconds > 1 s (chains, in order): " + ", ".join(seconds)
    text += "\n\nThe budget's notes:\n" + "\n".join(notes) + "\n"
    print(text, flush=True)
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="cp,best")
    parser.add_argument("--resnet18", action="store_true", help="also CIFAR ResNet-18 (method cp only)")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--budget", action="store_true", help="only the time-budget table of --method best")
    parser.add_argument("--before-commit", default=FILING_COMMIT, help="the commit whose best is 'before' "
                        "(--budget)")
    parser.add_argument("--before-cap", type=float, default=1200.0, help="seconds before the 'before' best is "
                        "stopped")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.budget:
        text = budget_table(args.before_commit, args.before_cap)
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
