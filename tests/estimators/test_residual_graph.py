"""The residual pass in the graph (docs/residual.md): identity and projection blocks found, the joint constant
used where tighter, the tree showing both values, soundness against the attained lower bound."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lipgraph
import lipgraph.passes.residual as residual_pass
from tests.fixtures.zoo import BasicBlock, _randomise_bn


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.layer1 = BasicBlock(2, 2)  # identity shortcut
        self.layer2 = BasicBlock(2, 3, stride=2)  # 1×1 conv + BN projection
        self.fc = nn.Linear(3 * 2 * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.layer2(self.layer1(torch.relu(self.stem(x)))), 1))


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _randomise_bn(_Net()).eval(), torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def _adds(report) -> dict[str, str]:
    return {n.path: n.formula for n in report.tree.walk() if n.op == "add"}


@pytest.mark.parametrize("dense", [True, False])
def test_joint_blocks_tighten_the_network_bound(monkeypatch, dense: bool) -> None:
    """Dense matrices, or (limit forced to 0) the frequency-domain bound: both blocks are bounded jointly, the
    network bound drops below the separate one, and stays above the attained lower bound."""
    calls = []
    if not dense:
        monkeypatch.setattr(residual_pass, "MAX_DENSE_LMI", 0)
        fft = residual_pass.residual_fft
        monkeypatch.setattr(residual_pass, "residual_fft", lambda block: calls.append(block) or fft(block))
    model, x = _model()
    report = lipgraph.analyze(model, x, method="cp", quiet=True)
    monkeypatch.setattr(lipgraph.pipeline, "tighten_residuals", lambda *args, **kwargs: [])
    separate = lipgraph.analyze(model, x, method="cp", lower=False, quiet=True)
    assert report.lower.value <= report.bound.value < separate.bound.value
    adds = _adds(report)
    assert set(adds) == {"layer1.add", "layer2.add_1"}
    for formula in adds.values():  # "min(1 + L(...), L(add(joint))) = min(2.9, 2.1)": both values shown
        assert formula.startswith("min(") and "(joint)" in formula
    assert "L(downsample) + " in adds["layer2.add_1"]
    assert len(calls) == (0 if dense else 2)
    assert all(n.bound.method == "autolip+residual" for n in report.tree.walk() if n.op == "add")


def test_autolip_method_is_unchanged() -> None:
    """Plain AutoLip runs no chain or block estimator: the add keeps 1 + L(branch)."""
    model, x = _model()
    report = lipgraph.analyze(model, x, lower=False, quiet=True)
    assert all(not f.startswith("min(") for f in _adds(report).values())
