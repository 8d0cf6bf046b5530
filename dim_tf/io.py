"""Atomic, durable file writes: the one way dim_tf replaces a file.

A reader sees the old content or the new, never a part, and after the call
returns the new content survives a power loss: the data is written to a
temporary name beside the target (same directory, so the rename is atomic),
flushed to disk, renamed over the target, and the directory entry flushed too.
Temporary names are unique per call (process id and a random part), so
concurrent writers never share one; each contains `TEMP_MARK`, by which the
leftovers of a killed writer are found (`is_temporary`).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any, Iterator

TEMP_MARK = ".tmp-"


def temporary_path(path: str, suffix: str = "") -> str:
    """A fresh hidden-to-readers name beside `path`: PATH.tmp-PID-RANDOM[suffix]."""
    return f"{path}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def is_temporary(name: str) -> bool:
    """Whether `name` is a temporary file of `atomic_path` (a killed writer's leftover)."""
    return TEMP_MARK in name


def fsync_path(path: str) -> None:
    """Flushes a file or a directory (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path to write `path`'s new content to (by any writer: a
    figure, np.savez, a TFRecordWriter); on success it is flushed and renamed
    over `path`, on an exception it is removed and `path` is untouched.

    `suffix` ends the temporary name, for writers that insist on an extension
    (np.savez appends ".npz" to any other name).
    """
    temporary = temporary_path(path, suffix)
    try:
        yield temporary
        fsync_path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    fsync_path(os.path.dirname(os.path.abspath(path)))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Replaces `path` with `data`, atomically and durably."""
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """Replaces `path` with `text` (UTF-8), atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, value: Any, default=None) -> None:
    """Replaces `path` with `value` as indented, key-sorted JSON (and a final newline)."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=default) + "\n")
