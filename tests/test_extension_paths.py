"""The extension paths of docs/architecture.md, each one definition plus one registration line, used end to end
from this file: an op rule, a pattern (a rule for a block), a chain estimator and an output format."""
from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph import formats as formats_module
from lipgraph.bound import FLOAT_MARGIN, certified
from lipgraph.cli import main
from lipgraph.estimators import ESTIMATORS, ChainEstimator, DenseChain, register_estimator

pytestmark = pytest.mark.usefixtures("restore_default_registry")


class HalfTanh(nn.Module):
    """0.5·tanh: derivative in [0, 0.5]."""

    def forward(self, x):
        return 0.5 * torch.tanh(x)


def _mlp(act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 3))


def test_a_new_op_rule() -> None:
    """One line registers the rule; the bound uses its slope (AutoLip: ‖W2‖ · 0.5 · ‖W1‖) and the dense Jacobian
    norm at any point stays below it."""
    lipgraph.register(HalfTanh, lipgraph.elementwise(slope=(0, 0.5)))
    x = torch.randn(1, 4)
    report = lipgraph.analyze(_mlp(HalfTanh()), x, lower=False, cache=False)
    relu = lipgraph.analyze(_mlp(nn.ReLU()), x, lower=False, cache=False)
    assert report.bound.value == pytest.approx(0.5 * relu.bound.value, rel=1e-12)
    assert report.find("1").bound.exact and report.find("1").bound.value == 0.5
    jac = torch.autograd.functional.jacobian(_mlp(HalfTanh()), x).reshape(3, 4)
    assert torch.linalg.matrix_norm(jac, 2).item() <= report.bound.value


class GroupSort(nn.Module):
    """Sorts each group of 2 coordinates: a permutation on each linear piece."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1, 2).sort(dim=-1).values.reshape(x.shape)


def test_a_new_pattern() -> None:
    """A block bounded as a whole: a rule for its module class keeps it one leaf (AutoLip over its traced parts
    would give the loose √2 of max/min combined); the dense Jacobian stays below the bound."""

    @lipgraph.rule(GroupSort)
    def group_sort(ctx):  # a permutation on each linear piece: 1 in every ℓp
        return lipgraph.exact(1.0, "permutation")

    model, x = _mlp(GroupSort()), torch.randn(1, 4)
    report = lipgraph.analyze(model, x, lower=False, cache=False)
    node = report.find("1")
    assert node.type == "GroupSort" and node.bound.value == 1.0 and node.bound.method == "permutation"
    relu = lipgraph.analyze(_mlp(nn.ReLU()), x, lower=False, cache=False)
    assert report.bound.value == pytest.approx(relu.bound.value, rel=1e-12)
    for point in torch.randn(5, 1, 4):
        jac = torch.autograd.functional.jacobian(model, point).reshape(3, 4)
        assert torch.linalg.matrix_norm(jac, 2).item() <= report.bound.value


def spectral_product(chain: DenseChain):
    """‖W_K‖·…·‖W_1‖ times the activations' largest slopes: AutoLip on one chain (certified: float64 SVDs, their
    rounding covered by the project's relative margin)."""
    value = math.prod(torch.linalg.matrix_norm(w, 2).item() for w in chain.weights)
    value *= math.prod(max(abs(lo), abs(hi)) for lo, hi in chain.slopes)
    return certified(value, "spectral-product", margin=FLOAT_MARGIN)


def test_a_new_chain_estimator(capsys, monkeypatch) -> None:
    """One line registers the estimator; ``--method`` runs it on the model's chain, the report lists its value, and
    ``lipgraph rules --estimators`` shows it with what it applies to."""
    register_estimator(ChainEstimator("spectral-product", spectral_product, certified=True,
                                      description="product of spectral norms (a worked example)"))
    try:
        model, x = _mlp(nn.ReLU()), torch.randn(1, 4)
        report = lipgraph.analyze(model, x, method="spectral-product", lower=False, cache=False)
        (chain,) = report.chains
        assert chain.results["spectral-product"].value == pytest.approx(chain.product, rel=1e-5)  # margins differ
        assert report.bound.value <= chain.product * (1 + 1e-9)
        monkeypatch.setenv("COLUMNS", "250")  # one table row per line
        assert main(["rules", "--estimators"]) == 0
        listing = capsys.readouterr().out
        assert "spectral-product" in listing and "test_extension_paths" in listing  # where it came from
    finally:
        del ESTIMATORS["spectral-product"]


def write_markdown(report: lipgraph.Report, file, **_options) -> None:
    """A markdown table of the model's children: path, type, bound."""
    file.write("| node | type | L |\n|---|---|---|\n")
    for node in report.tree.children:
        file.write(f"| {node.path} | {node.type} | {node.bound:.4g} |\n")


def test_a_new_output_format(mlp_file: Path, capsys, monkeypatch) -> None:
    """One line registers the format; ``Report.print(format=...)`` and ``lipgraph explain --format`` use it."""
    monkeypatch.setattr(formats_module, "FORMATS", formats_module.FORMATS.copy())  # scoped to this test
    lipgraph.register_format(lipgraph.OutputFormat("markdown", "report", write_markdown, "a markdown table"))
    report = lipgraph.analyze(_mlp(nn.ReLU()), torch.randn(1, 4), lower=False, cache=False)
    out = io.StringIO()
    report.print(format="markdown", file=out)
    assert out.getvalue().splitlines()[2] == f"| 0 | Linear | {report.find('0').bound.value:.4g} |"
    assert main(["explain", str(mlp_file), "--format", "markdown", "--no-lower"]) == 0
    assert capsys.readouterr().out.startswith("| node | type | L |\n|---|---|---|\n| 0 | Linear | ")
    assert main(["rules", "--formats"]) == 0
    assert "markdown" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'markdown' for a report is already registered"):
        lipgraph.register_format(lipgraph.OutputFormat("markdown", "report", write_markdown))
