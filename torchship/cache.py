"""The export cache: exported ONNX graphs and compiled AOTInductor packages, reused by exports of the same key
(``ExportJob.reuse``), in ``$TORCHSHIP_CACHE`` (default ``~/.cache/torchship``), one file per format and key:
``<root>/<format>/<key>.<suffix>``, beside a ``<key>.lock`` that exports of that key take turns on.

The cache is bounded: after an export writes an entry, the least recently used entries (a reuse counts as a
use) are removed until the cache holds at most ``$TORCHSHIP_CACHE_MAX_GB`` (default ``DEFAULT_MAX_GB``); the
entry just written stays whatever its size, and an entry another export holds (its lock taken) is skipped.
``torchship cache`` shows it and clears it. Lock files stay: they are empty, and removing one that another
process is about to take would let two exports of one key run at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import OptionsError

DEFAULT_MAX_GB = 10.0  # about 50 MiniLM-sized entries, or 10 models of BERT-base size with both formats
ENV_MAX = "TORCHSHIP_CACHE_MAX_GB"


def default_dir() -> Path:
    """Where exports reuse graphs and packages from: $TORCHSHIP_CACHE, else ~/.cache/torchship."""
    env = os.environ.get("TORCHSHIP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "torchship"


def max_bytes() -> int:
    """The cache's bound, from ``$TORCHSHIP_CACHE_MAX_GB`` (GiB; default ``DEFAULT_MAX_GB``)."""
    raw = os.environ.get(ENV_MAX, "").strip()
    if not raw:
        return int(DEFAULT_MAX_GB * 2**30)
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also NaN
        raise OptionsError(f"{ENV_MAX}={raw!r} is not a size in GiB; set a number such as 10 (0: keep no entries)")
    return int(gb * 2**30)


@dataclass(frozen=True)
class Entry:
    path: Path
    format: str
    size: int
    used: float  # when it was last written or reused (its mtime), seconds since the epoch


def entries(root: Path) -> list[Entry]:
    """The cached files under ``root``, least recently used first (lock files and partial writes left out)."""
    found = []
    for fmt in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for path in fmt.iterdir():
            if path.suffix in (".lock", ".tmp") or not path.is_file():
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed meanwhile by another process
                continue
            found.append(Entry(path, fmt.name, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda e: e.used)


def touch(path: Path) -> None:
    """Mark ``path`` used now (a reuse), so that eviction takes it last."""
    with contextlib.suppress(OSError):  # a read-only cache still serves
        os.utime(path)


def remove(entry: Entry) -> bool:
    """Remove ``entry`` unless an export holds its key's lock; whether it was removed."""
    with open(entry.path.with_suffix(".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return False
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return True


def evict(root: Path, limit: int, *, keep: Path | None = None) -> list[Entry]:
    """Remove the least recently used entries of ``root`` until it holds at most ``limit`` bytes, never ``keep``
    (the entry just written) nor one another export holds; returns those removed."""
    found = entries(root)
    total = sum(e.size for e in found)
    removed = []
    for entry in found:
        if total <= limit:
            break
        if entry.path == keep:
            continue
        if remove(entry):
            removed.append(entry)
            total -= entry.size
    return removed


def clear(root: Path, *, older_than_days: float | None = None) -> list[Entry]:
    """Remove every entry of ``root`` (or those unused for more than ``older_than_days``) that no export holds."""
    if older_than_days is not None and not older_than_days >= 0:
        raise OptionsError(f"--older-than must be a number of days >= 0, got {older_than_days}")
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    return [e for e in entries(root) if (cutoff is None or e.used < cutoff) and remove(e)]
