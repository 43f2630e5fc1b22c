"""Renderers of lipgraph's results, and the registration of the built-in output formats (:mod:`lipgraph.formats`).

An output format is one module here (or anywhere: a plugin) plus one registration line below.
"""
from ..formats import OutputFormat, register_format
from . import certificate, compare, html, json, plots, rich_tree

register_format(OutputFormat("tree", "report", rich_tree.write_tree, "the bound tree (rich; --ascii, --depth, …)"))
register_format(OutputFormat("json", "report", json.write_json, "the report as JSON (a stable contract)"))
register_format(OutputFormat("latex", "report", rich_tree.write_latex, "the formulas as a LaTeX align* block"))
register_format(OutputFormat("html", "report", html.write_html, "one self-contained HTML page: collapsible tree "
                                                                "coloured by elasticity"))
register_format(OutputFormat("table", "comparison", compare.write_comparison, "node by node, before and after"))
register_format(OutputFormat("json", "comparison", json.write_json, "the comparison as JSON"))
register_format(OutputFormat("table", "certificate", certificate.write_certificate, "certified accuracy per radius"))
register_format(OutputFormat("json", "certificate", json.write_json, "per-input radii as JSON"))
register_format(OutputFormat("png", "certificate", plots.write_png, "certified accuracy vs radius (matplotlib)",
                             binary=True))
