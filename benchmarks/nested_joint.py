"""Nested joint ops on disjoint pieces (lipgraph/passes/autolip.py ``nested_joint``, docs/by-construction.md §1):
the certified bound with the nested bound against the baseline measured in the same run (``nested_joint`` off:
the generic combination inside the branch), and the proven lower bound (``lipgraph.lower_bound``). Prints a
markdown table; a few seconds.

    python benchmarks/nested_joint.py            # print the table
    python benchmarks/nested_joint.py --write    # also rewrite its section of benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import lipgraph
from lipgraph.passes import autolip
from results_file import publish


class Three(nn.Module):
    """A joint op of a joint op on the pieces a, b, c of x (1, 6), through linear maps of ℓ2 norms 2, 1.5, 0.5
    (``scaled``: 2·I each, the example of the issue)."""

    def __init__(self, kind: str, scaled: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.maps = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
        with torch.no_grad():
            for layer, scale in zip(self.maps, (2.0, 1.5, 0.5)):
                w = 2 * torch.eye(2) if scaled else torch.randn(2, 2)
                layer.weight.copy_(w if scaled else w * scale / torch.linalg.matrix_norm(w, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, g, h = (layer(x[:, 2 * i:2 * i + 2]) for i, layer in enumerate(self.maps))
        if self.kind == "max-of-max":
            return torch.maximum(torch.maximum(f, g), h)
        if self.kind == "cat-of-cat":
            return torch.cat([torch.cat([f, x[:, 2:4]], 1), h], 1)
        return torch.clamp(torch.clamp(f, min=g), max=h)


def bound(model: nn.Module, x: torch.Tensor, p: float, nested: bool) -> float:
    real = autolip.nested_joint
    if not nested:
        autolip.nested_joint = lambda *args, **kwargs: None
    try:
        return lipgraph.analyze(model, x, norm=p, lower=False, quiet=True, cache=False).bound.value
    finally:
        autolip.nested_joint = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite this section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = [("max(max(2a, 2b), 2c)", Three("max-of-max", scaled=True))]
    cases += [(kind, Three(kind)) for kind in ("max-of-max", "cat-of-cat", "clamp-chain")]
    lines = ["| model | norm | baseline (generic inside) | nested bound | lower bound |", "|---|---|---:|---:|---:|"]
    for name, model in cases:
        x = torch.randn(1, 6)
        for p in (1, 2, math.inf):
            lower = lipgraph.lower_bound(model, x, norm=p).value
            lines.append(f"| {name} | ℓ{'∞' if math.isinf(p) else p} | {bound(model, x, p, False):.4f} | "
                         f"{bound(model, x, p, True):.4f} | {lower:.4f} |")
    publish("nested_joint", "Nested joint ops on disjoint pieces", lines, args.write)


if __name__ == "__main__":
    main()
