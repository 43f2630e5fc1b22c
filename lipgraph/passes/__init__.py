"""Passes over the IR. Each reads and writes documented fields of the nodes' records (:mod:`lipgraph.record`); the
pipeline (:mod:`lipgraph.pipeline`) wraps each in a pass that declares them."""
