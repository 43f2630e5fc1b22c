"""Benchmark: how tight the certified recurrent rules (rules/recurrent.py) are on tiny layers.

    python benchmarks/recurrent.py [--seconds 2] [--write]

For each configuration (input 3, hidden 4, batch 1): the rule's certified ℓ2 gain for x ↦ everything the module
returns, and the best proven lower bound ``lipgraph.lower_bound`` finds for the same map in ``--seconds``
(gradient ascent on the Jacobian norm); their ratio is how loose the bound is at most. Machine-independent
numbers (no timings). ``--write`` replaces this script's section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

import lipgraph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

CONFIGS = [(cls, layers, bi, length) for cls in (nn.RNN, nn.GRU, nn.LSTM) for layers, bi in ((1, False), (2, True))
           for length in (1, 2, 4)]


class Whole(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    args = parser.parse_args()
    lines = ["| layer | layers | bidirectional | T | certified | lower (attained) | ratio |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    for cls, layers, bi, length in CONFIGS:
        torch.manual_seed(0)
        model = Whole(cls(3, 4, num_layers=layers, bidirectional=bi)).double().eval()
        x = torch.randn(1, length, 3, dtype=torch.float64).transpose(0, 1).contiguous()
        bound = lipgraph.analyze(model, x, lower=False, cache=False).find("rnn").bound.value
        found = lipgraph.lower_bound(model, x, seconds=args.seconds).value
        lines.append(f"| {cls.__name__} | {layers} | {bi} | {length} | {bound:.4g} | {found:.4g} "
                     f"| {bound / found:.1f} |")
        print(lines[-1], flush=True)
    if args.write:
        write_section("recurrent", "## Recurrent layers: certified vs attained (`python benchmarks/recurrent.py`)\n\n"
                                   "Input 3, hidden 4, batch 1, PyTorch's initialisation (seed 0); lower bound: "
                                   f"`lipgraph.lower_bound` in {args.seconds:g} s on the same map.\n\n"
                                   + "\n".join(lines))


if __name__ == "__main__":
    main()
