"""Renderers of lipgraph's results, and the registration of the built-in output formats (:mod:`lipgraph.formats`).

An output format is one module here (or anywhere: a plugin) plus one entry of ``BUILTIN_FORMATS`` below.
"""
from .. import formats as catalogue
from ..formats import OutputFormat
from . import certificate, compare, html, json, plots, rich_tree

#: the built-in output formats
BUILTIN_FORMATS = (
    OutputFormat("tree", "report", rich_tree.write_tree, "the bound tree (rich; --ascii, --depth, …)"),
    OutputFormat("json", "report", json.write_json, "the report as JSON (a stable contract)"),
    OutputFormat("latex", "report", rich_tree.write_latex, "the formulas as a LaTeX align* block"),
    OutputFormat("html", "report", html.write_html, "one self-contained HTML page: collapsible tree "
                                                    "coloured by elasticity"),
    OutputFormat("table", "comparison", compare.write_comparison, "node by node, before and after"),
    OutputFormat("json", "comparison", json.write_json, "the comparison as JSON"),
    OutputFormat("table", "certificate", certificate.write_certificate, "certified accuracy per radius"),
    OutputFormat("json", "certificate", json.write_json, "per-input radii as JSON"),
    OutputFormat("png", "certificate", plots.write_png, "certified accuracy vs radius (matplotlib)",
                 binary=True),
)


def register_builtins() -> None:
    """Register the built-in formats the catalogue lacks (a user's format of the same name stays): on import, and
    from ``lipgraph.formats.default_formats`` through the hook ``lipgraph/__init__`` installs (``formats`` sits
    below this module and cannot import it)."""
    for fmt in BUILTIN_FORMATS:
        if fmt.name not in catalogue.FORMATS.names(fmt.subject):
            catalogue.FORMATS.register(fmt)


register_builtins()
