"""The HTML report (``--format html``): one self-contained page; checked by structure without a browser, and in
headless Chromium (when one is installed) that the collapsed tree expands."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph.cli import main


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Sequential(Residual(), nn.ReLU()), nn.Flatten(),
                         nn.Linear(2 * 16, 3))


@pytest.fixture(scope="module")
def report() -> lipgraph.Report:
    return lipgraph.analyze(_model(), torch.randn(1, 1, 4, 4), cache=False)


@pytest.fixture(scope="module")
def page(report) -> str:
    return lipgraph.default_formats().get("report", "html").render(report)


class Page(HTMLParser):
    """Collects the nesting of details/summary, the tree's node spans and anything that would load a resource."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.nodes: list[dict[str, str]] = []
        self.details: list[tuple[int, bool]] = []  # (depth, open)
        self.external: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "details":
            self.details.append((self.stack.count("details"), "open" in attrs))
        if tag == "span" and attrs.get("class") == "node":
            self.nodes.append(attrs)
        if tag in ("link", "img", "iframe") or (tag == "script" and "src" in attrs):
            self.external.append(tag)
        if tag not in ("meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def test_page_structure_without_a_browser(report, page) -> None:
    parsed = Page()
    parsed.feed(page)
    assert parsed.stack == [] and page.startswith("<!DOCTYPE html>")
    assert parsed.external == [] and "http" not in page  # self-contained: nothing to fetch
    assert {"upper", "lower", "ratio", "tree"} <= parsed.ids
    assert f"upper / lower <b>{report.ratio:.3g}</b>" in page
    paths = [node.path for node in report.tree.walk()]
    assert [n["data-path"] for n in parsed.nodes] == paths  # every node once, in tree order
    deep = [is_open for depth, is_open in parsed.details if depth > 1]
    assert deep and not any(deep)  # collapsed below OPEN_DEPTH


def test_nodes_are_coloured_by_elasticity_and_show_formulas_on_hover(report, page) -> None:
    parsed = Page()
    parsed.feed(page)
    by_path = {n["data-path"]: n for n in parsed.nodes}
    # a layer on the only path (the first conv) carries the whole bound; a layer inside the residual branch less
    assert float(by_path["0"]["data-elasticity"]) == pytest.approx(1.0)
    branch = float(by_path["1.0.conv1"]["data-elasticity"])
    assert 0 < branch < 1 and by_path["1.0.conv1"]["style"] != by_path["0"]["style"]
    attribution = {a.name: a.elasticity for a in report.attribution()}
    assert branch == pytest.approx(attribution["1.0.conv1"], rel=1e-5)
    merge = next(n for n in report.tree.walk() if n.formula)
    assert merge.formula in by_path[merge.path]["title"]  # "1 + L(conv2)·L(relu)·L(conv1) = 1 + …"
    assert "L = " in by_path[""]["title"] and "elasticity" in by_path[""]["title"]


def test_cli_format_html_and_unknown_formats(mlp_file: Path, capsys) -> None:
    assert main(["explain", str(mlp_file), "--format", "html", "--no-lower"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert main(["explain", str(mlp_file), "--format", "nope"]) == 2
    assert "unknown output format 'nope' for a report; available: tree, json, latex, html" in capsys.readouterr().err
    assert main(["explain", str(mlp_file), "--json", "--format", "html"]) == 2
    assert "choose one output format, not html and json" in capsys.readouterr().err


def _chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if (path := shutil.which(name))), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium installed")
def test_the_tree_expands_in_headless_chromium(page, tmp_path: Path) -> None:
    """The page's own script opens every <details> (what the "expand all" button does) when the address ends in
    #expand; Chromium's DOM after the script ran shows them open."""
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")

    def dom(url: str) -> str:
        done = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "</html>" in done.stdout, done.stderr[-2000:]
        return done.stdout

    closed, expanded = dom(path.as_uri()), dom(path.as_uri() + "#expand")
    total = page.count("<details")
    assert closed.count("<details open") < total
    assert expanded.count("<details open") == total == expanded.count("<details")
