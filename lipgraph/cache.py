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

The folder is not trusted (a shared ``LIPGRAPH_CACHE_DIR``, a restored CI cache, a container volume):

- every entry carries an HMAC-SHA256 tag over (key, value, kind, method, exact, layout) with a per-user secret kept
  *outside* the cache folder (:func:`key_file`: ``$LIPGRAPH_KEY_FILE``, else ``$XDG_CONFIG_HOME/lipgraph/cache.key``
  or ``~/.config/lipgraph/cache.key``), created with mode 0600 on first use. A key file that others may read or
  write (or that is not the user's own regular file) switches the disk cache off, with a note; an entry whose tag
  does not verify is removed and recomputed, with a note;
- a certified entry read from disk is re-checked by the caller's ``check`` (a few power-method steps on the
  operator, :func:`lipgraph.linalg.attained.attained_norm`): a norm the operator attains above the cached value
  (beyond ``RECHECK_TOLERANCE``) proves the entry wrong; it is removed and recomputed, with a note;
- :meth:`NormCache.drop_disk_hits` removes every entry an analysis read, e.g. when its lower bound exceeds its
  certified bound, and names the layers that used them (:func:`layer_label`).
"""
from __future__ import annotations

import ctypes
import hashlib
import hmac
import json
import os
import secrets
import stat
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
#: Entries kept on disk (about 400 bytes each).
MAX_ENTRIES = 20_000
#: Environment variable naming the secret key file that authenticates entries (see :func:`key_file`).
KEY_FILE_ENV = "LIPGRAPH_KEY_FILE"
#: A re-check attaining more than (1 + this) × a cached certified value rejects it (covers float32 rounding of
#: the few power steps; the certified value itself is ≥ the exact norm).
RECHECK_TOLERANCE = 1e-3
#: Power-method steps of a re-check (each: one product with the operator and one with its adjoint).
RECHECK_STEPS = 2
_LAYOUT = "norms-v2"

_CURRENT: ContextVar["NormCache | None"] = ContextVar("lipgraph_norm_cache", default=None)
_LABEL: ContextVar[str] = ContextVar("lipgraph_cache_label", default="")
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


def key_file() -> Path:
    """``$LIPGRAPH_KEY_FILE``, else ``$XDG_CONFIG_HOME/lipgraph/cache.key``, else ``~/.config/lipgraph/cache.key``."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "lipgraph" / "cache.key"


class CacheKeyError(Exception):
    """The key file cannot be trusted or used; the message says why (the disk cache is then off)."""


def cache_secret(path: Path | None = None) -> bytes:
    """The secret that authenticates cache entries, from ``path`` (default :func:`key_file`); created (32 random
    bytes, hex, mode 0600, atomically: written aside and hard-linked into place) when missing."""
    path = key_file() if path is None else path
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-key-")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:  # another process made one first: use theirs
                pass
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise CacheKeyError(f"cannot create the cache key file {path}: {exc.strerror or exc}") from None
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    """The key in ``path``, refused unless it is the user's own regular file that nobody else may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CacheKeyError(f"cannot read the cache key file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CacheKeyError(f"the cache key file {path} is not a regular file")
        if os.name == "posix" and info.st_uid != os.getuid():
            raise CacheKeyError(f"the cache key file {path} belongs to another user")
        if os.name == "posix" and info.st_mode & 0o077:
            raise CacheKeyError(f"the cache key file {path} is readable or writable by others (mode "
                                f"{stat.S_IMODE(info.st_mode):o}; chmod 600 it)")
        text = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise CacheKeyError(f"the cache key file {path} holds no key (64 hex digits); delete it to make a new one")
    return secret


@contextmanager
def layer_label(label: str) -> Iterator[None]:
    """Name the layer whose norms the block computes (reported if an entry it read turns out wrong)."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


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
    """In-memory memo of one analysis, backed by a disk folder (``directory``) or not (``None``).

    The disk is used only with a usable secret (:func:`cache_secret`); otherwise ``notes`` says why it is off."""

    def __init__(self, directory: str | os.PathLike | None = None, *, max_entries: int = MAX_ENTRIES) -> None:
        self.directory = Path(directory) / _LAYOUT if directory is not None else None
        self.max_entries = max_entries
        self.hits = self.misses = self.written = self.forged = self.inconsistent = 0
        self._key_problem = ""
        self._secret = b""
        if self.directory is not None:
            try:
                self._secret = cache_secret()
            except CacheKeyError as exc:
                self._key_problem, self.directory = str(exc), None
        self._memo: dict[str, Future] = {}
        self._disk_hits: dict[str, set[str]] = {}  # key -> labels of the layers that used it
        self._lock = threading.Lock()

    @property
    def notes(self) -> list[str]:
        """What the report should say about the cache: why it is off, entries rejected."""
        notes = [f"disk cache off: {self._key_problem}"] if self._key_problem else []
        if self.forged:
            notes.append(f"{_entries(self.forged)} of the disk cache failed authentication (edited, or written with "
                         "another key): removed and recomputed")
        if self.inconsistent:
            notes.append(f"{_entries(self.inconsistent)} of the disk cache claimed a certified norm below one the "
                         "operator attains (a few power-method steps): removed and recomputed")
        return notes

    def get(self, parts: tuple, compute: Callable[[], Bound], check: Callable[[], float] | None = None) -> Bound:
        """The memoised result for ``parts`` (a tuple with a stable ``repr``), computed at most once. ``check``
        returns a norm the operator attains; a certified disk entry below it is rejected (see the module doc)."""
        key = hashlib.sha256(f"{code_fingerprint()} {parts!r}".encode()).hexdigest()
        with self._lock:
            future = self._memo.get(key)
            owner = future is None
            if owner:
                future = self._memo[key] = Future()
            elif key in self._disk_hits:
                self._disk_hits[key].add(_LABEL.get())
        if not owner:
            return future.result()
        try:
            bound = self._read(key)
            if bound is not None and check is not None and bound.kind is Kind.CERTIFIED \
                    and check() > bound.value * (1 + RECHECK_TOLERANCE):
                _remove(self._path(key))
                with self._lock:
                    self.inconsistent += 1
                bound = None
            if bound is None:
                start = time.perf_counter()
                bound = compute()
                self.misses += 1
                if time.perf_counter() - start >= MIN_SECONDS:
                    self._write(key, bound)
            else:
                with self._lock:
                    self.hits += 1
                    self._disk_hits[key] = {_LABEL.get()}
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
            tag = str(entry["tag"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # corrupt or foreign: a miss, and remove it
            _remove(path)
            return None
        if not hmac.compare_digest(tag, self._tag(key, bound)):
            _remove(path)
            with self._lock:
                self.forged += 1
            return None
        with suppress(OSError):
            os.utime(path)  # least recently used goes first when pruning
        return bound

    def _write(self, key: str, bound: Bound) -> None:
        if self.directory is None:
            return
        path = self._path(key)
        entry = {"key": key, "value": bound.value, "kind": bound.kind.value, "method": bound.method,
                 "exact": bound.exact, "tag": self._tag(key, bound)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f)
            os.replace(tmp, path)
            self.written += 1
        except OSError:  # a read-only or full disk costs speed, never a result
            return

    def _tag(self, key: str, bound: Bound) -> str:
        """HMAC-SHA256 of an entry's contents under the user's secret."""
        message = f"{_LAYOUT}\n{key}\n{bound.value!r}\n{bound.kind.value}\n{bound.method}\n{bound.exact}"
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def drop_disk_hits(self) -> list[str]:
        """Remove every entry this analysis read from disk; returns the labels of the layers that used them."""
        with self._lock:
            hits, self._disk_hits = self._disk_hits, {}
        for key in hits:
            _remove(self._path(key))
        return sorted({label or "(unnamed)" for labels in hits.values() for label in labels})

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


def _entries(n: int) -> str:
    return "1 entry" if n == 1 else f"{n} entries"


def memoised(parts: tuple, compute: Callable[[], Bound], check: Callable[[], float] | None = None) -> Bound:
    """``compute()`` through the current analysis' :class:`NormCache`, or directly outside one; ``check`` re-checks
    a disk entry (:meth:`NormCache.get`)."""
    cache = _CURRENT.get()
    return compute() if cache is None else cache.get(parts, compute, check)


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
