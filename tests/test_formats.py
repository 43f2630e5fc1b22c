"""The output formats catalogue (lipgraph.formats): the CLI's --format and its older switches agree, entry-point
plugins load (or fail naming themselves), and misuse gets a clear message."""
from __future__ import annotations

import importlib.metadata
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph import formats as formats_module
from lipgraph.cli import main
from lipgraph.errors import LipgraphError
from lipgraph.formats import Formats, OutputFormat


def _plain(report, file, **_options) -> None:
    file.write(f"{report.model} {report.bound:.6g}\n")


PLAIN = OutputFormat("plain", "report", _plain, "one line", source="a test package")


def _timeless(obj):
    """A JSON report without its wall times."""
    if isinstance(obj, dict):
        return {k: _timeless(v) for k, v in obj.items() if k != "seconds"}
    return [_timeless(v) for v in obj] if isinstance(obj, list) else obj


def test_format_names_and_their_older_switches_agree(mlp_file: Path, capsys) -> None:
    outputs = {}
    for argv in (["--latex"], ["--format", "latex"], ["--json"], ["--format", "json"], [], ["--format", "tree"]):
        assert main(["explain", str(mlp_file), "--no-lower", "--width", "100", *argv]) == 0
        outputs[" ".join(argv)] = capsys.readouterr().out
    assert outputs["--latex"] == outputs["--format latex"] and outputs["--latex"].startswith("\\begin{align*}")
    assert _timeless(json.loads(outputs["--json"])) == _timeless(json.loads(outputs["--format json"]))
    without_time = lambda text: text.rsplit("\n", 2)[0]  # noqa: E731 - the last line has the wall time
    assert without_time(outputs[""]) == without_time(outputs["--format tree"])


def test_comparison_prints_through_its_formats() -> None:
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Linear(3, 3)), nn.Sequential(nn.Linear(3, 3))
    x = torch.zeros(1, 3)
    comparison = lipgraph.analyze(a, x, lower=False).compare(lipgraph.analyze(b, x, lower=False))
    table = io.StringIO()
    comparison.print(file=table, width=100)
    assert "after/before" in table.getvalue()
    as_json = io.StringIO()
    comparison.print(format="json", file=as_json)
    assert json.loads(as_json.getvalue()) == json.loads(json.dumps(comparison.to_dict()))


def _entry_points(*points: importlib.metadata.EntryPoint):
    return lambda group=None: [p for p in points if p.group == group]


def test_formats_from_entry_points(monkeypatch) -> None:
    good = importlib.metadata.EntryPoint("plain", "tests.test_formats:PLAIN", "lipgraph.formats")
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points(good))
    formats = Formats()
    formats.load_entry_points()
    assert formats.get("report", "plain").source == "a test package"
    assert formats.packs == ["entry point plain (tests.test_formats:PLAIN)"]
    report = lipgraph.analyze(nn.Sequential(nn.Linear(2, 2)), torch.zeros(1, 2), lower=False)
    assert formats.get("report", "plain").render(report) == f"Sequential {report.bound.value:.6g}\n"


def test_a_broken_format_plugin_is_an_error_naming_it(monkeypatch, mlp_file: Path, capsys) -> None:
    bad = importlib.metadata.EntryPoint("broken", "tests.test_formats:NOT_THERE", "lipgraph.formats")
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points(bad))
    with pytest.raises(LipgraphError, match=r"output format entry point broken \(tests.test_formats:NOT_THERE\) "
                                            "failed to load: AttributeError"):
        Formats().load_entry_points()
    monkeypatch.setattr(formats_module, "FORMATS", formats_module.FORMATS.copy())
    monkeypatch.setattr(formats_module, "_ENTRY_POINTS_LOADED", [])
    assert main(["explain", str(mlp_file)]) == 2
    assert "output format entry point broken" in capsys.readouterr().err


def test_misuse_messages() -> None:
    with pytest.raises(ValueError, match="subject must be one of"):
        OutputFormat("x", "graph", _plain)
    with pytest.raises(LipgraphError,
                       match="unknown output format 'svg' for a certificate; available: table, json, png"):
        lipgraph.default_formats().get("certificate", "svg")
