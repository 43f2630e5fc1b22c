"""One-line pointers to other analyses, kept in one place so that every message stays true as the CLI grows."""
from __future__ import annotations

#: The command that bounds a network on an input region (a local constant, finite for attention, gates and
#: products; docs/local.md). The error for ops that are not globally Lipschitz and the hint for loose bounds name it.
REGION_COMMAND = "lipgraph explain MODEL --box 0,1 (or --ball EPS around the example input)"
#: the last line of the error for a network that is not globally Lipschitz
REGION_HINT = (f"To bound it on the inputs that matter: {REGION_COMMAND}, or "
               "lipgraph.analyze(model, x, region=lipgraph.Box(0, 1)).")
#: the hint under an error that names an op multiplying or dividing input-dependent tensors
PRODUCT_HINT = ("A product or quotient of two input-dependent tensors (gating, dot-product attention, normalising by "
                "a branch) can grow without limit; bound the input domain or replace the op by a Lipschitz variant "
                "(e.g. L2 attention, Kim et al. 2021).")

#: upper/lower above this: the report says what to try for a tighter bound
LOOSE_RATIO = 100.0


def loose_bound_hint(ratio: float | None, method: str) -> str | None:
    """What to try when the certified bound is more than ``LOOSE_RATIO`` times the attained lower bound."""
    if ratio is None or ratio <= LOOSE_RATIO:
        return None
    tries = [] if method.endswith("best") else ["--method seqlip|best (tighter chains)"]
    tries.append("--lower-seconds 30 (a higher lower bound)")
    tries.append("--box/--ball (a local bound on your inputs' region)")
    return f"upper/lower {ratio:.3g}: try " + " or ".join(tries)
