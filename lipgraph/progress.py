"""Progress of long analyses: the callback protocol passes report to, and a terminal bar over layers.

The bar (rich, on stderr, only when stderr is a terminal) appears after ``DELAY`` seconds (short runs never show
it), disappears when done (transient), and is off with ``analyze(quiet=True)``, ``--quiet`` and ``--json``.
``explain --timings`` lists the slowest layers afterwards (:func:`lipgraph.render.timings.print_timings`).
"""
from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Callable, ContextManager, Protocol

#: Seconds before the bar appears: a run shorter than this never shows one.
DELAY = 2.0

_ACTIVE: set["LayerProgress"] = set()  # bars on screen, for stop_all_bars
_ACTIVE_LOCK = threading.Lock()


def stop_all_bars() -> None:
    """Take every bar off the terminal (and show the cursor again): for an interrupt that exits at once."""
    with _ACTIVE_LOCK:
        bars = list(_ACTIVE)
    for bar in bars:
        bar.stop()


class Ticker(Protocol):
    """What a pass reports progress to: one more item done, or more items to go than announced."""

    def advance(self, label: str = "") -> None: ...

    def extend(self, more: int) -> None: ...


#: The progress callback a caller hands to a pass: ``progress(total, description)`` opens a :class:`Ticker`
#: (:class:`LayerProgress` is one: a terminal bar). Passes import nothing that draws.
ProgressFactory = Callable[[int, str], ContextManager[Ticker]]


class LayerProgress:
    """``with LayerProgress(total, "bounding layers", enabled) as bar: ... bar.advance("layer1.0.conv1")``."""

    def __init__(self, total: int, description: str, enabled: bool = True, *, delay: float = DELAY) -> None:
        self.total, self.description, self.done, self.label = total, description, 0, ""
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._lock = threading.Lock()
        self._stopped = False
        self._timer = threading.Timer(delay, self._start) if self.enabled else None

    def __enter__(self) -> "LayerProgress":
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with self._lock:
            if self._bar is not None or self._stopped or self.done >= self.total:
                return
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("[dim]{task.fields[label]}"),
                                 console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done,
                                            label=self.label)
            self._bar.start()
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)

    def extend(self, more: int) -> None:
        """``more`` layers to go than announced."""
        with self._lock:
            self.total += more
            if self._bar is not None:
                self._bar.update(self._task, total=self.total)

    def advance(self, label: str = "") -> None:
        """One more layer done; ``label`` names the next or the last one."""
        with self._lock:
            self.done += 1
            self.label = label
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, label=label)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Take the bar off the terminal now; later calls and ``advance`` do nothing on screen."""
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            self._stopped = True  # a pending timer never starts it
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)

