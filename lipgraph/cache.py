"""Norm results computed once: memoised within an analysis and kept on disk across runs.

Within an analysis (:func:`norm_cache`), identical computations — the same weight (by content digest), geometry,
norm and method, e.g. a module called twice or a fused chain whose folded weight another pass also needs — are
computed once, even when worker threads ask for them at the same time. With the disk cache on, results that
took at least ``MIN_SECONDS`` are also stored as small JSON files under :func:`cache_dir`, one per key:

- keys are SHA-256 digests of what was computed (function, weight digest, geometry, norm, strategy) *and* of the
  code that computes it (lipgraph's version, the source of ``lipgraph/linalg``, ``bound.py`` and this file, and
  ``DENSE_LIMIT``), so a changed weight, option or implementation never reads a stale entry; each file also holds
  its key, checked on reading, and an unreadable file is a miss (and is removed);
- files are written to a temporary name in the same folder and renamed (``os.replace`` is atomic), so concurrent
  writers and readers never see a partial entry;
- the folder is bounded: a run that wrote entries removes the least recently used ones (hits refresh the file's
  time) beyond ``max_entries``.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import tempfile
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterator

import torch

from .bound import Bound, Kind
from .version import __version__

#: Environment variable naming the cache folder (default: ``$XDG_CACHE_HOME/lipgraph`` or ``~/.cache/lipgraph``).
CACHE_DIR_ENV = "LIPGRAPH_CACHE_DIR"
#: Results that took less than this many seconds are not worth a file.
MIN_SECONDS = 0.02
#: Entries kept on disk (about 300 bytes each).
MAX_ENTRIES = 20_000
_LAYOUT = "norms-v1"

_CURRENT: ContextVar["NormCache | None"] = ContextVar("lipgraph_norm_cache", default=None)
_FINGERPRINT: list[str] = []
#: Settings of the modules above that cached results depend on, by name, read when the fingerprint is first taken
#: (``lipgraph.linalg.dense`` adds ``DENSE_LIMIT``): registered here so that this module imports none of them.
FINGERPRINT_SETTINGS: dict[str, Callable[[], object]] = {}


def cache_dir() -> Path:
    """``$LIPGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/lipgraph``, else ``~/.cache/lipgraph``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lipgraph"


def tensor_digest(t: torch.Tensor) -> str:
    """A content digest of a tensor: dtype, shape and the bytes of its values."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    # the raw bytes in place (numpy is not a dependency; ``flat`` stays alive while they are hashed)
    raw = (ctypes.c_char * (flat.numel() * flat.element_size())).from_address(flat.data_ptr()) if flat.numel() else b""
    h = hashlib.sha256(raw)
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}:{h.hexdigest()}"


def code_fingerprint() -> str:
    """A digest of the code that computes cached results (see the module docstring)."""
    if not _FINGERPRINT:
        root = Path(__file__).resolve().parent
        settings = " ".join(repr(get()) for get in FINGERPRINT_SETTINGS.values())
        h = hashlib.sha256(f"{__version__} {settings} torch {torch.__version__}".encode())
        for path in sorted([*(root / "linalg").glob("*.py"), root / "bound.py", root / "cache.py"]):
            h.update(path.name.encode() + path.read_bytes())
        _FINGERPRINT.append(h.hexdigest())
    return _FINGERPRINT[0]


class NormCache:
    """In-memory memo of one analysis, backed by a disk folder (``directory``) or not (``None``)."""

    def __init__(self, directory: str | os.PathLike | None = None, *, max_entries: int = MAX_ENTRIES) -> None:
        self.directory = Path(directory) / _LAYOUT if directory is not None else None
        self.max_entries = max_entries
        self.hits = self.misses = self.written = 0
        self._memo: dict[str, Future] = {}
        self._lock = threading.Lock()

    def get(self, parts: tuple, compute: Callable[[], Bound]) -> Bound:
        """The memoised result for ``parts`` (a tuple with a stable ``repr``), computed at most once."""
        key = hashlib.sha256(f"{code_fingerprint()} {parts!r}".encode()).hexdigest()
        with self._lock:
            future = self._memo.get(key)
            owner = future is None
            if owner:
                future = self._memo[key] = Future()
        if not owner:
            return future.result()
        try:
            bound = self._read(key)
            if bound is None:
                start = time.perf_counter()
                bound = compute()
                self.misses += 1
                if time.perf_counter() - start >= MIN_SECONDS:
                    self._write(key, bound)
            else:
                self.hits += 1
        except BaseException as exc:
            with self._lock:
                del self._memo[key]  # a failure is not remembered
            future.set_exception(exc)
            raise
        future.set_result(bound)
        return bound

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def _read(self, key: str) -> Bound | None:
        if self.directory is None:
            return None
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry["key"] != key:
                raise ValueError("key mismatch")
            bound = Bound(float(entry["value"]), Kind(entry["kind"]), str(entry["method"]), bool(entry["exact"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # corrupt or foreign: a miss, and remove it
            _remove(path)
            return None
        with suppress(OSError):
            os.utime(path)  # least recently used goes first when pruning
        return bound

    def _write(self, key: str, bound: Bound) -> None:
        if self.directory is None:
            return
        path = self._path(key)
        entry = {"key": key, "value": bound.value, "kind": bound.kind.value, "method": bound.method,
                 "exact": bound.exact}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f)
            os.replace(tmp, path)
            self.written += 1
        except OSError:  # a read-only or full disk costs speed, never a result
            return

    def prune(self) -> int:
        """Remove the least recently used entries beyond ``max_entries`` (and stale temporary files); returns the
        number of files removed."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        entries, removed, now = [], 0, time.time()
        for path in self.directory.glob("*/*.json"):
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            if path.name.startswith(".tmp-"):
                if now - mtime > 3600:  # left behind by a killed writer
                    removed += _remove(path)
                continue
            entries.append((mtime, path))
        if len(entries) > self.max_entries:
            entries.sort()
            for _, path in entries[:len(entries) - int(0.9 * self.max_entries)]:
                removed += _remove(path)
        return removed


def _remove(path: Path) -> int:
    """Delete a file if we can; 1 if it was deleted."""
    try:
        path.unlink()
    except OSError:
        return 0
    return 1


def memoised(parts: tuple, compute: Callable[[], Bound]) -> Bound:
    """``compute()`` through the current analysis' :class:`NormCache`, or directly outside one."""
    cache = _CURRENT.get()
    return compute() if cache is None else cache.get(parts, compute)


@contextmanager
def norm_cache(disk: bool | str | os.PathLike = True) -> Iterator[NormCache]:
    """A :class:`NormCache` for the block: always in memory; on disk in :func:`cache_dir` (``disk=True``), in the
    given folder, or not at all (``disk=False``). Prunes the folder afterwards if the block wrote to it."""
    directory = None if disk is False else cache_dir() if disk is True else Path(disk)
    cache = NormCache(directory)
    token = _CURRENT.set(cache)
    try:
        yield cache
    finally:
        _CURRENT.reset(token)
        if cache.written:
            cache.prune()
