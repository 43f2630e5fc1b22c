"""A certificate (``lipgraph certify``) as a table: the bound used, clean accuracy, certified accuracy per radius."""
from __future__ import annotations

import math
from typing import IO, TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..report import norm_name
from .rich_tree import KIND_STYLE, format_bound, make_console, print_ascii

if TYPE_CHECKING:
    from ..certify import Certificate  # rendered, never imported: recipes sit above renderers


def certificate_table(cert: Certificate) -> Any:
    """A rich renderable: the bound used, clean accuracy, and certified accuracy at each radius of the grid."""
    n, ell = len(cert.radii), f"ℓ{norm_name(cert.norm)}"
    head = Text()
    head.append(cert.model, style="bold")
    head.append(f"  L {format_bound(cert.bound)}", style="bold " + KIND_STYLE[cert.bound.kind])
    head.append(f"  {cert.bound.kind.value} · {cert.bound.method} · {ell} · {n} inputs · clean accuracy "
                f"{cert.accuracy:.1%} ({int(cert.correct.sum())}/{n})", style="dim")
    lines = [head]
    c = {1.0: "L", 2.0: "√2·L", math.inf: "2·L"}[cert.norm]
    if cert.tail is not None:
        lines.append(Text(f"radius = min_j margin_yj / L_yj, per-class-pair bounds L_yj ≤ ‖a_y − a_j‖_* · L(h) "
                          f"(capped by {c}) over the final affine ops f = A h + b; h = output of {cert.tail[0]}, "
                          f"L(h) {format_bound(cert.tail[1])}"))
    else:
        lines.append(Text(f"radius = margin / ({c})"))
    correct = cert.radii[cert.correct]
    if len(correct):
        lines.append(Text(f"certified radius of correct inputs: median {correct.median().item():.4g}, "
                          f"max {correct.max().item():.4g}", style="dim"))
        if cert.local_radii is not None:
            local = cert.local_radii[cert.correct]
            lines.append(Text("local radius (f_y − f_j > L_j(B(x, r))·r for the limiting pairs, docs/local.md): "
                              f"median {local.median().item():.4g}, max {local.max().item():.4g}", style="dim"))
    table = Table(title=f"certified accuracy ({ell} radius)")
    local_columns = ("local accuracy", "local") if cert.local_radii is not None else ()
    for column in ("radius", "certified accuracy", "certified", *local_columns):
        table.add_column(column, justify="right")
    for r, acc, count in cert.summary():
        local = [] if cert.local_radii is None else \
            [f"{(cert.correct & (cert.local_radii >= r)).double().mean().item():.1%}",
             f"{int((cert.correct & (cert.local_radii >= r)).sum())}/{n}"]
        table.add_row(f"{r:.4g}", f"{acc:.1%}", f"{count}/{n}", *local)
    lines.append(table)
    for note in cert.notes:
        lines.append(Text(f"note: {note}", style="bold red" if "NOT" in note else "italic"))
    return Group(*lines)


def write_certificate(cert: Certificate, file: IO[str] | None = None, *, ascii_only: bool = False,
                      width: int | None = None) -> None:
    """The ``table`` format of a certificate: :func:`certificate_table` onto ``file`` (None: standard output;
    ``ascii_only``: ASCII characters only, as ``explain --ascii``)."""
    console = make_console(file, ascii_only=ascii_only, width=width)
    print_ascii(console, ascii_only, lambda c: c.print(certificate_table(cert)))
