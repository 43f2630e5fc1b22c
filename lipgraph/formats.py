"""Output formats: one catalogue of the renderers of lipgraph's results (``lipgraph explain --format NAME``).

A result is a plain dataclass (a :class:`~lipgraph.report.Report`, a :class:`~lipgraph.comparison.Comparison`, a
:class:`~lipgraph.certify.Certificate`); every picture of it is an :class:`OutputFormat`: a name, the kind of
result it renders (``subject``) and ``write(result, file, **options)``, which writes it onto ``file`` (a text
stream, or a binary one when ``binary``; ``None`` for standard output). The built-in formats live in
``lipgraph/render/`` and are registered in ``lipgraph/render/__init__.py``, one line each; third-party ones
register with :func:`register_format` or through the entry-point group ``lipgraph.formats`` (each entry point is
an :class:`OutputFormat` or a callable ``register(formats)``), the same way rule packs do. A :class:`Formats` is an
instance: ``default_formats().copy()`` scopes an extra format to one caller.

This module sits below the results it renders, so ``Report.print`` finds the tree renderer here without
importing ``lipgraph.render``.
"""
from __future__ import annotations

import importlib.metadata
import io
import sys
from dataclasses import dataclass
from typing import IO, Any, Callable

from .errors import InputError, LipgraphError

#: Entry-point group of third-party output formats.
ENTRY_POINT_GROUP = "lipgraph.formats"
#: What formats render: ``lipgraph explain`` (a report), ``Report.compare`` (a comparison), ``lipgraph certify``.
SUBJECTS = ("report", "comparison", "certificate")


@dataclass(frozen=True)
class OutputFormat:
    """``write(result, file, **options)`` renders a ``subject`` result onto ``file`` (None: standard output)."""

    name: str
    subject: str
    write: Callable[..., None]
    description: str = ""
    binary: bool = False
    source: str = "lipgraph"

    def __post_init__(self) -> None:
        if self.subject not in SUBJECTS:
            raise ValueError(f"output format {self.name!r}: subject must be one of {SUBJECTS}, got {self.subject!r}")

    def render(self, result: Any, **options: Any) -> str | bytes:
        """The rendering as a string (bytes for a binary format)."""
        out = io.BytesIO() if self.binary else io.StringIO()
        self.write(result, out, **options)
        return out.getvalue()


class Formats:
    """Output formats by (subject, name)."""

    def __init__(self) -> None:
        self._formats: dict[tuple[str, str], OutputFormat] = {}
        self.packs: list[str] = []  # entry points loaded, for `lipgraph doctor`

    def register(self, fmt: OutputFormat, *, override: bool = False) -> OutputFormat:
        key = (fmt.subject, fmt.name)
        if key in self._formats and not override:
            raise ValueError(f"output format {fmt.name!r} for a {fmt.subject} is already registered "
                             f"(from {self._formats[key].source}); pass override=True to replace it")
        self._formats[key] = fmt
        return fmt

    def get(self, subject: str, name: str) -> OutputFormat:
        try:
            return self._formats[subject, name]
        except KeyError:
            raise InputError(f"unknown output format {name!r} for a {subject}; available: "
                             f"{', '.join(self.names(subject))}") from None

    def names(self, subject: str) -> list[str]:
        return [name for s, name in self._formats if s == subject]

    def items(self) -> list[OutputFormat]:
        return list(self._formats.values())

    def write(self, result: Any, subject: str, name: str, file: IO | None = None, **options: Any) -> None:
        """Render ``result`` (a ``subject``) in format ``name`` onto ``file`` (None: standard output)."""
        fmt = self.get(subject, name)
        if file is None:
            file = sys.stdout.buffer if fmt.binary else sys.stdout
        fmt.write(result, file, **options)

    def copy(self) -> "Formats":
        new = Formats()
        new._formats = dict(self._formats)
        new.packs = list(self.packs)
        return new

    def load_entry_points(self) -> None:
        """Third-party formats: each entry point of ``lipgraph.formats`` is an :class:`OutputFormat` or a callable
        ``register(formats)``; one that fails to load is an error naming it (never silently missing)."""
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            label = f"entry point {ep.name} ({ep.value})"
            try:
                loaded = ep.load()
                if isinstance(loaded, OutputFormat):
                    self.register(loaded)
                elif callable(loaded):
                    loaded(self)
                else:
                    raise TypeError(f"expected an OutputFormat or a callable register(formats), got {loaded!r}")
            except Exception as exc:  # noqa: BLE001 - a broken plugin must say which one
                raise LipgraphError(f"output format {label} failed to load: {type(exc).__name__}: {exc}") from exc
            self.packs.append(label)


#: The catalogue (built-in formats are registered by ``lipgraph.render``; entry points on first use).
FORMATS = Formats()
_ENTRY_POINTS_LOADED: list[bool] = []


def register_format(fmt: OutputFormat, *, override: bool = False) -> OutputFormat:
    """Add an output format to :data:`FORMATS` (``lipgraph explain --format NAME`` for a report)."""
    return FORMATS.register(fmt, override=override)


#: what registers the built-in formats (``lipgraph.render.register_builtins``, installed by ``lipgraph/__init__``:
#: this module sits below ``lipgraph.render`` and cannot import it), run before every lookup
BUILTINS: list[Callable[[], None]] = []


def default_formats() -> Formats:
    """:data:`FORMATS`, with the built-in formats and those of installed packages (entry points) loaded on first
    use."""
    for register_builtins in BUILTINS:
        register_builtins()
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED.append(True)
        FORMATS.load_entry_points()
    return FORMATS
