"""Errors that reach the user. Each one carries a complete, human-readable message."""
from __future__ import annotations


class LipgraphError(Exception):
    """Base class: the CLI prints ``str(err)`` and exits 2, never a traceback."""


class InputError(LipgraphError):
    """The model, its example input, its weights or a checkpoint is not usable as given."""


class TraceError(LipgraphError):
    """The model could not be turned into a graph."""


class RuleError(LipgraphError):
    """A rule is missing, misregistered, failed to load, or returned something invalid."""


class NotLipschitzError(LipgraphError):
    """The network contains an operation that is not globally Lipschitz. ``product``: the op multiplies or divides
    input-dependent tensors (gating, attention, normalising by a branch), which decides the hint shown with it."""

    def __init__(self, message: str, *, product: bool = False) -> None:
        super().__init__(message)
        self.product = product


class UnsupportedOpsError(LipgraphError):
    """One or more ops have no rule. ``nodes`` lists them; the message has a rule stub."""

    def __init__(self, message: str, nodes: list) -> None:
        super().__init__(message)
        self.nodes = nodes


class NormNotSupported(RuleError):
    """A rule has no constant for the requested norm."""


class UnsoundBoundError(LipgraphError):
    """A proven lower bound exceeds a certified bound, so some certified number is wrong; the run fails.
    ``layers`` names the layers whose norms came from the disk cache (those entries are removed)."""

    def __init__(self, message: str, layers: list[str] | None = None) -> None:
        super().__init__(message)
        self.layers = layers or []


def listed(names: list[str], limit: int = 10) -> str:
    """The first ``limit`` names of a message's list, then how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
