"""Sequential chains in real graphs (docs/mathematics.md §5): detection (golden) and the SeqLip/CP method end to end."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lipgraph
from lipgraph import ir
from lipgraph.bound import Kind
from lipgraph.passes.annotate import annotate
from lipgraph.passes.chains import sequential_chains
from lipgraph.passes.fuse import fuse
from lipgraph.registry import default_registry
from tests.fixtures.zoo import ZOO
from tests.test_zoo_examples import CASES, jacobian_lower_bound, load

GOLDEN = Path(__file__).resolve().parent / "golden" / "chains.txt"

pytestmark = pytest.mark.usefixtures("restore_default_registry")


def _chains_of(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    lg = ir.build(model.eval(), (x,), default_registry())
    annotate(lg, default_registry())
    fuse(lg, 2)
    return [f"{c.scope or '(top)'}: {' → '.join(c.members())}"
            for c in sequential_chains(lg)]


def _models():
    yield "tiny_resnet (fixture)", *ZOO["tiny_resnet"]()
    yield "tiny_mlp (fixture)", *ZOO["tiny_mlp"]()
    for name in ("densenet", "mobilenet", "vgg"):
        yield f"examples/{name}.py tiny()", *load(name, "tiny")


def test_chain_detection_golden(update_golden: bool) -> None:
    """The residual branch of each ResNet block, the body of each DenseNet layer, MobileNet's inverted
    residuals, VGG's conv stacks and the MLP classifier head are found as chains."""
    text = "".join(f"## {name}\n" + "".join(f"{c}\n" for c in _chains_of(model, x)) for name, model, x in _models())
    if update_golden:
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "chains differ from tests/golden/chains.txt (rerun with --update-golden)"


SEQLIP_CASES = [c for c in CASES if c[0] in ("alexnet", "vgg", "densenet", "mobilenet", "unet", "tcn")]


@pytest.mark.parametrize("name,factory", SEQLIP_CASES, ids=[f"{n}:{f}" for n, f in SEQLIP_CASES])
def test_seqlip_method_is_sound_and_never_looser_than_autolip(name: str, factory: str) -> None:
    model, x = load(name, factory)
    autolip = lipgraph.analyze(model, x, lower=False).bound
    seqlip = lipgraph.analyze(model, x, method="seqlip", lower=False).bound
    assert seqlip.kind is Kind.CERTIFIED
    assert seqlip.value <= autolip.value * (1 + 1e-9)
    assert jacobian_lower_bound(model, x, samples=3) <= seqlip.value * (1 + 1e-6)


def test_report_shows_each_chain_with_every_estimator_and_labels_greedy_an_estimate() -> None:
    model, x = ZOO["tiny_resnet"]()
    report = lipgraph.analyze(model, x, method="seqlip", lower=False)
    assert [c.members for c in report.chains] == [["conv1+bn1", "relu", "conv2+bn2"]] * 2
    for chain in report.chains:
        assert chain.bound.kind is Kind.CERTIFIED and chain.bound.value <= chain.product
        assert chain.results["seqlip-greedy"].kind is Kind.ESTIMATE
        assert {"cp", "seqlip"} <= {k for k, b in chain.results.items() if b.kind is Kind.CERTIFIED}
        assert chain.bound == min((b for b in chain.results.values() if b.kind is Kind.CERTIFIED),
                                  key=lambda b: b.value)
    assert report.estimate.kind is Kind.ESTIMATE and report.estimate.value <= report.bound.value
    assert report.bound.method == "autolip+seqlip"
    block = report.find("layer1")  # the residual block: min(1 + L(branch), joint bound), docs/residual.md
    assert block.bound.value < 1 + report.chains[0].bound.value
    assert report.find("layer1.add").formula.startswith("min(1 + L(chain(conv1+bn1)), L(add(joint)))")
    data = report.to_dict()
    assert data["estimate"] == report.estimate.value
    chain_json = next(c["chain"] for c in data["tree"]["children"][3]["children"] if c["chain"])
    assert chain_json["results"]["seqlip-greedy"]["kind"] == "estimate"


def test_cli_method_seqlip_and_unknown_method(capsys) -> None:
    from lipgraph.cli import main

    mlp = Path(__file__).resolve().parent.parent / "examples" / "mlp.py"
    assert main(["explain", str(mlp), "--method", "seqlip", "--ascii", "--no-lower"]) == 0
    out = capsys.readouterr().out
    assert "(chain)" in out and "seqlip-greedy ~" in out and "autolip+seqlip" in out
    assert main(["explain", str(mlp), "--method", "nope", "--no-lower"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_chain_product_is_autolip_along_the_chain() -> None:
    """On a pure chain network the chain's AutoLip product is the network's AutoLip bound."""
    model, x = ZOO["tiny_mlp"]()
    chain = lipgraph.analyze(model, x, method="seqlip", lower=False).chains[0]
    assert chain.product == pytest.approx(lipgraph.analyze(model, x, lower=False).bound.value, rel=1e-12)


def test_method_dcp_bounds_conv_chains_through_the_graph(monkeypatch) -> None:
    """conv+BN → ReLU → conv → ReLU → flatten → linear becomes a DCP conv chain (BN folded into the conv); its
    certified value is ≥ the chain's attained Jacobian norm and the network bound stays ≤ AutoLip."""
    from torch import nn

    from lipgraph.estimators import dcp as dcp_module

    monkeypatch.setattr(dcp_module, "PASS_SECONDS", 1.0)
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.running_var.uniform_(0.5, 1.5)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), bn, nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(2 * 25, 3)).eval()
    x = torch.randn(1, 1, 5, 5)
    report = lipgraph.analyze(model, x, method="dcp", lower=False)
    (chain,) = report.chains
    assert set(chain.results) == {"dcp", "cp"}
    dcp = chain.results["dcp"]
    assert dcp.kind is Kind.CERTIFIED and "dcp" in dcp.method.lower()
    assert report.bound.value <= lipgraph.analyze(model, x, lower=False).bound.value * (1 + 1e-9)
    assert jacobian_lower_bound(model, x, samples=5) <= dcp.value * (1 + 1e-6)  # (makes the model float64)


def test_identity_like_runs_do_not_make_chains() -> None:
    """linear → relu → identity has nothing to tighten (no chain); dropout joins the next linear's run."""
    from torch import nn

    x = torch.randn(1, 4)
    assert _chains_of(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Identity()), x) == []
    assert _chains_of(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Dropout(), nn.Linear(3, 2)), x) == [
        "(top): 0 → 1 → 2+3"]


def test_cli_lists_chain_estimators(capsys) -> None:
    from lipgraph.cli import main
    from lipgraph.estimators import CHAIN_ESTIMATORS

    assert main(["rules", "--estimators"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in [*CHAIN_ESTIMATORS, "dcp", "--method seqlip"])
    assert "estimate" in out.split("seqlip-greedy", 1)[1].splitlines()[0]


def test_a_failing_estimator_becomes_a_note_not_a_crash(monkeypatch) -> None:
    from lipgraph.estimators import CHAIN_ESTIMATORS, ChainEstimator

    def broken(chain):
        raise RuntimeError("solver exploded")

    monkeypatch.setitem(CHAIN_ESTIMATORS, "broken", ChainEstimator("broken", broken, certified=True))
    model, x = ZOO["tiny_mlp"]()
    report = lipgraph.analyze(model, x, method="broken", lower=False)
    assert report.bound.value == pytest.approx(lipgraph.analyze(model, x, lower=False).bound.value)
    assert any("broken failed: RuntimeError: solver exploded" in n for n in report.chains[0].notes)
