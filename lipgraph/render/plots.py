"""Plots of results, as PNG (matplotlib, an optional dependency)."""
from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

import torch

from ..errors import LipgraphError
from ..report import norm_name

if TYPE_CHECKING:
    from ..certify import Certificate  # rendered, never imported: recipes sit above renderers


def write_png(cert: Certificate, file: IO[bytes], **_ignored: Any) -> None:
    """The ``png`` format of a certificate: the step curve of certified accuracy vs radius (every radius where it
    drops) with the grid's points marked (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LipgraphError("plotting needs matplotlib: pip install matplotlib (or lipgraph[examples])") from None
    radii = torch.sort(cert.radii[cert.correct]).values
    n = len(cert.radii)
    xs = [0.0] + radii.tolist()
    ys = [len(radii) / n] + [(len(radii) - k - 1) / n for k in range(len(radii))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(xs, ys, where="post", label=cert.model)
    summary = cert.summary()
    ax.plot([r for r, _, _ in summary], [a for _, a, _ in summary], "o")
    ax.set_xlabel(f"ℓ{norm_name(cert.norm)} radius")
    ax.set_ylabel("certified accuracy")
    kind = "" if cert.certified else " (NOT certified)"
    ax.set_title(f"{cert.model}: L {'≤' if cert.certified else '≈'} {cert.bound.value:.4g}{kind}")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(file, format="png", dpi=120)
    plt.close(fig)
