"""Renderers of a :class:`lipgraph.report.Report`: a rich tree and JSON."""
