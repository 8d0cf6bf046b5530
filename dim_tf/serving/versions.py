"""Version directories under a TF Serving model base path, published atomically.

TF Serving polls the base path and loads the children whose names parse as
integers (the highest one, by default). A version must therefore appear all at
once and complete, and two exporters must never publish the same number:

- Every export holds an exclusive `fcntl.flock` on `BASE/.export.lock` from
  choosing its version to publishing it. Exporters into one base path take
  turns, so they get different versions; and a staging directory found while
  holding the lock was left by an exporter that died (the kernel releases a
  killed process's lock), never by a live one, so it is deleted.
- A version is built in a hidden staging directory `BASE/.export.tmp-*` (not a
  number: TF Serving ignores it), flushed to disk, then renamed to `BASE/<n>`
  with renameat2(RENAME_NOREPLACE), which fails instead of replacing even an
  empty directory (plain rename(2) silently replaces an empty one).
- Replacing a version (`overwrite`) swaps the two directories with
  renameat2(RENAME_EXCHANGE): `BASE/<n>` is at every moment the old or the
  new version, never missing. The old one, now at the staging path, is deleted.

Where renameat2 is unavailable (not Linux, or a file system without these
flags) the lock still serialises dim-tf exporters: a new version is renamed
after checking the name is free, and a replaced version is first moved aside
to `BASE/.export.old-<n>`; an exporter killed between those two renames leaves
`<n>` missing until the next export into the base path puts the old version
back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from typing import Iterator

from absl import logging

from dim_tf.errors import ConfigError, ExportBusyError, VersionExistsError
from dim_tf.faults import kill_point
from dim_tf.io import fsync_path

LOCK_FILE = ".export.lock"
STAGING_PREFIX = ".export.tmp-"
ASIDE_PREFIX = ".export.old-"
# Staging directories of this module, and of exports made before the lock existed (".<n>.tmp-*").
_STAGING_NAME = re.compile(r"^(\.export\.tmp-|\.\d+\.tmp-)")

_RENAMEAT2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
if _RENAMEAT2 is not None:
    _RENAMEAT2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
# renameat2 errors that mean "this kernel or file system cannot do it", not a real failure.
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def is_version(name: str) -> bool:
    """Whether TF Serving treats the child `name` of a base path as a version
    (it parses names with safe_strto64: optional sign, digits, surrounding spaces)."""
    body = name.strip()
    if body.startswith(("+", "-")):
        body = body[1:]
    return body.isascii() and body.isdigit()


def next_version(export_dir: str) -> int:
    """1 + the highest numeric version directory in `export_dir` (1 if none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(name) for name in os.listdir(export_dir) if is_version(name)]
    return max(versions, default=0) + 1


@dataclass
class VersionSlot:
    """A version being exported: write it into `staging`, then call `publish`."""

    export_dir: str
    version: int
    staging: str
    replace: bool

    @property
    def path(self) -> str:
        return os.path.join(self.export_dir, str(self.version))

    def publish(self) -> None:
        """Makes `staging` the version `path`, atomically (see the module docstring)."""
        _fsync_tree(self.staging)
        kill_point("export.before_publish")
        if self.replace:
            _exchange(self.staging, self.path, self.version)
        elif not _renameat2(self.staging, self.path, _RENAME_NOREPLACE):
            if os.path.exists(self.path):
                raise VersionExistsError(_appeared(self.path))
            os.rename(self.staging, self.path)
        fsync_path(self.export_dir)
        kill_point("export.published")


@contextlib.contextmanager
def reserve_version(
    export_dir: str, version: int | None = None, overwrite: bool = False,
    lock_timeout: float = 600.0,
) -> Iterator[VersionSlot]:
    """Holds the export lock of `export_dir` and yields a `VersionSlot`.

    Leftovers of killed exports are cleaned up first; whatever remains at the
    staging path on exit (an unpublished export, or the replaced old version)
    is deleted before the lock is released.

    Raises:
        ConfigError: `version` is not a positive integer.
        VersionExistsError: `version` exists and `overwrite` is False.
        ExportBusyError: another export held the lock for `lock_timeout` seconds.
    """
    if version is not None and int(version) < 1:
        raise ConfigError(f"--version must be a positive integer; got {version}.")
    os.makedirs(export_dir, exist_ok=True)
    with _exclusive_lock(os.path.join(export_dir, LOCK_FILE), lock_timeout):
        _remove_leftovers(export_dir)
        chosen = next_version(export_dir) if version is None else int(version)
        final = os.path.join(export_dir, str(chosen))
        exists = os.path.exists(final)
        if exists and not overwrite:
            raise VersionExistsError(f"Export version {final} exists; pass --overwrite to "
                                     "replace it or --version to choose another.")
        # os.mkdir, not tempfile.mkdtemp: a version must get the umask's permissions
        # (mkdtemp's 0700 would hide it from a server running as another user).
        staging = os.path.join(export_dir, STAGING_PREFIX + secrets.token_hex(8))
        os.mkdir(staging)
        try:
            yield VersionSlot(export_dir, chosen, staging, replace=exists)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(path: str, timeout: float) -> Iterator[None]:
    with open(path, "a+b") as lock:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ExportBusyError(
                        f"Another export into {os.path.dirname(path)} has held its lock "
                        f"{path} for more than {timeout:g} s (an exporter holds it until its "
                        "version is published). Wait for it to finish or stop it; a killed "
                        "exporter releases the lock at once.") from None
                if not waiting:
                    logging.info("Waiting for another export to release %s", path)
                    waiting = True
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(export_dir: str) -> None:
    """Deletes staging directories of dead exporters (only called under the lock) and
    puts back a version a killed non-atomic replacement had moved aside."""
    for name in os.listdir(export_dir):
        path = os.path.join(export_dir, name)
        if name.startswith(ASIDE_PREFIX):
            original = os.path.join(export_dir, name[len(ASIDE_PREFIX):])
            if not os.path.exists(original):
                logging.warning("Restoring %s, moved aside by an interrupted export", original)
                os.rename(path, original)
                continue
        if name.startswith(ASIDE_PREFIX) or _STAGING_NAME.match(name):
            logging.info("Removing %s, left by an interrupted export", path)
            shutil.rmtree(path, ignore_errors=True)


def _exchange(staging: str, target: str, version: int) -> None:
    if _renameat2(staging, target, _RENAME_EXCHANGE):
        return
    aside = os.path.join(os.path.dirname(target), f"{ASIDE_PREFIX}{version}")
    os.rename(target, aside)
    kill_point("export.moved_aside")
    os.rename(staging, target)
    shutil.rmtree(aside, ignore_errors=True)


def _renameat2(source: str, target: str, flags: int) -> bool:
    """renameat2(2) with `flags`; False when this system cannot do it (then the
    caller falls back); VersionExistsError if `target` exists, OSError for other failures."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    if code in (errno.EEXIST, errno.ENOTEMPTY):
        raise VersionExistsError(_appeared(target))
    raise OSError(code, os.strerror(code), target)


def _appeared(path: str) -> str:
    return (f"Export version {path} appeared while exporting; expected it to stay free (this "
            "export held the lock, so a program that ignores it created it). Remove it or "
            "pass --version.")


def _fsync_tree(root: str) -> None:
    """Flushes every file and directory under `root`, so a power loss after the
    rename cannot leave a published version with empty files."""
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(directory, name))
        fsync_path(directory)
