"""Passes over the IR. Each reads and writes documented ``node.meta["lip.*"]`` keys."""
