"""Lipschitz-by-construction networks (docs/by-construction.md): the certified bound with lipgraph's patterns and
library rules against the baseline measured in the same run (the same registry without them: ops bounded one by
one), the construction's constant, the lower bound, and the time of one analysis. Prints a markdown table.

    python benchmarks/by_construction.py            # about a minute on 2 shared cores
    python benchmarks/by_construction.py --write    # also rewrite its section of benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

import lipgraph
from lipgraph import ir
from lipgraph.errors import LipgraphError
from lipgraph.passes.annotate import annotate
from lipgraph.passes.autolip import autolip
from results_file import publish

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fixtures.by_construction import FAMILIES  # noqa: E402 - the literature's families, tiny

NEW_RULES = ("lipgraph.rules.deel", "lipgraph.rules.orthogonium", "lipgraph.rules.pattern_")


def library_networks() -> list[tuple[str, nn.Module, torch.Tensor, float]]:
    """The three networks of issue #16 (deel-torchlip, orthogonium), and their other layers and residual wrappers,
    seeded (new rows go last, so that earlier rows keep their weights)."""
    from deel import torchlip
    import orthogonium.layers as ol
    from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d
    from orthogonium.layers.conv.SLL.sll_layer import AOCLipschitzResBlock, SLLxAOCLipschitzResBlock
    from orthogonium.layers.residual import ConcatResidual, L2NormResidual, PrescaledAdditiveResidual

    torch.manual_seed(0)
    mlp = nn.Sequential(torchlip.SpectralLinear(16, 32), torchlip.GroupSort2(), torchlip.SpectralLinear(32, 32),
                        torchlip.GroupSort2(), torchlip.SpectralLinear(32, 4))
    cnn = nn.Sequential(torchlip.SpectralConv2d(3, 8, 3, padding=1), torchlip.GroupSort2(),
                        torchlip.ScaledL2NormPool2d(2), nn.Flatten(), torchlip.SpectralLinear(8 * 4 * 4, 4))
    ortho = nn.Sequential(AdaptiveOrthoConv2d(3, 8, 3, padding=1), ol.MaxMin(), AdaptiveOrthoConv2d(8, 8, 3, padding=1),
                          ol.MaxMin(), nn.Flatten(), ol.OrthoLinear(8 * 8 * 8, 4))
    mixed = nn.Sequential(ol.LayerCentering2D(4), ol.HouseHolder_Order_2(4), AOCLipschitzResBlock(4, 2, 3),
                          torchlip.LPReLU(4, init=0.3), torchlip.BatchCentering(4), torchlip.LayerCentering(4),
                          torchlip.HouseHolder(4), ol.MaxMin())
    sll_aoc = nn.Sequential(SLLxAOCLipschitzResBlock(4, 8, 2, kernel_size=3, stride=2), ol.MaxMin())
    residuals = [(f"orthogonium {wrap.__name__}(AdaptiveOrthoConv2d)", wrap(AdaptiveOrthoConv2d(c, c, 3, padding=1)),
                  torch.randn(1, 4, 8, 8), 1.0)
                 for wrap, c in ((L2NormResidual, 4), (ConcatResidual, 2), (PrescaledAdditiveResidual, 4))]
    return [("deel-torchlip MLP (SpectralLinear + GroupSort2)", mlp, torch.randn(1, 16), 1.0),
            ("deel-torchlip CNN (ScaledL2NormPool2d)", cnn, torch.randn(1, 3, 8, 8), 1.0),
            ("orthogonium CNN (AdaptiveOrthoConv2d + MaxMin + OrthoLinear)", ortho, torch.randn(1, 3, 8, 8), 1.0),
            ("centering + HouseHolder(_Order_2) + AOCLipschitzResBlock + LPReLU", mixed, torch.randn(1, 4, 6, 6),
             2 ** -0.5),
            ("orthogonium SLLxAOCLipschitzResBlock (stride 2) + MaxMin", sll_aoc, torch.randn(1, 4, 8, 8), 1.0),
            *residuals]


def baseline_registry() -> lipgraph.Registry:
    """The default registry without this work's library rules and patterns (joint transfers stay: they are part
    of the cat/max rules)."""
    registry = lipgraph.Registry()
    full = lipgraph.default_registry()
    for key, rule in full.items():
        if not any(rule.source.startswith(f"builtin ({prefix}") for prefix in NEW_RULES):
            registry.register(key, rule, override=True)
    for target, key in full._aliases.items():
        registry._aliases[target] = key
    return registry


def baseline(model: nn.Module, x: torch.Tensor) -> str:
    registry = baseline_registry()
    try:
        lg = ir.build(lipgraph.api.traceable_root(model, registry), (x,), registry)
        annotate(lg, registry, 2)
        return f"{autolip(lg, 2).value:.6g}"
    except LipgraphError as exc:
        return f"refused ({type(exc).__name__})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = [(name, *FAMILIES[name]()) for name in sorted(FAMILIES)] + library_networks()
    lines = ["| network | baseline (same run: no patterns, no library rules) | certified | construction | lower | seconds |",
             "|---|---|---|---|---|---|"]
    for name, model, x, construction in rows:
        model.eval()
        start = time.perf_counter()
        report = lipgraph.analyze(model, x, quiet=True, cache=False)
        seconds = time.perf_counter() - start
        lower = f"{report.lower.value:.4g}" if report.lower else "—"
        lines.append(f"| {name} | {baseline(model, x)} | {report.bound.value:.7g} | {construction:g} | {lower} | "
                     f"{seconds:.2f} |")
    publish("by-construction", "Lipschitz by construction (benchmarks/by_construction.py)", lines, args.write)


if __name__ == "__main__":
    main()
