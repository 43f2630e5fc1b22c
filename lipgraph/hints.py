"""One-line pointers to other analyses, kept in one place so that every message stays true as the CLI grows."""
from __future__ import annotations

#: The command that bounds a network on an input region (a local constant, finite for attention, gates and
#: products), once ``lipgraph explain`` has one (issue 15: ``--box LO,HI`` / ``--ball EPS``); ``None`` until then.
#: The message for ops that are not globally Lipschitz and the hint for loose bounds mention it only when set.
REGION_COMMAND: str | None = None

#: upper/lower above this: the report says what to try for a tighter bound
LOOSE_RATIO = 100.0


def region_remedy() -> str:
    """A sentence pointing to the region analysis, or '' while there is none."""
    return f" On an input region the network has a finite local constant: {REGION_COMMAND}." if REGION_COMMAND else ""


def loose_bound_hint(ratio: float | None, method: str) -> str | None:
    """What to try when the certified bound is more than ``LOOSE_RATIO`` times the attained lower bound."""
    if ratio is None or ratio <= LOOSE_RATIO:
        return None
    tries = [] if method.endswith("best") else ["--method seqlip|best (tighter chains)"]
    tries.append("--lower-seconds 30 (a higher lower bound)")
    if REGION_COMMAND:
        tries.append(f"{REGION_COMMAND} (a local bound)")
    return f"upper/lower {ratio:.3g}: try " + " or ".join(tries)
