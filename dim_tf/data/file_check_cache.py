"""The file check of an image folder, remembered per file, so that a folder checked
once is not decoded again at every start of training or evaluation.

Checking the files (each header, `image_files`, then a full decode,
`source.find_bad_images`) was the slowest part of starting: about 14 s for
CIFAR-10's 50,000 JPEGs on a 2-core CPU (docs/performance.md, "Start-up"), at
every start. What the check finds depends only on the file's bytes
(decoding keeps the file's own channels, so an encoder's channels change
nothing), so it is stored with the file's stamp: size, mtime and ctime in ns,
and inode. A new file, or one whose stamp changed (rewritten, touched, replaced
by another, chmod-ed), is checked again; the others are not, and files no longer
listed are forgotten. The stamp is taken before the file is read, and a file
whose ctime is within `SETTLE_SECONDS` of the check is not remembered:
timestamps are coarser than the writes they stamp (git's "racy clean" files), so
a change during or just before the check is never mistaken for the checked bytes.

One JSON file per split folder in `cache_dir()`, not in the image folder, which
may be read-only or shared. The cache only saves time: a cache file that cannot
be read or parsed is logged and ignored (and rewritten), one that cannot be
written is logged and the run goes on. Writes are atomic (`dim_tf.io`), so runs
checking one folder at once each leave a whole file. No TensorFlow in this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from typing import Callable

from absl import logging

from dim_tf import io

# dim_tf's cache folder (this cache uses its FILE_CHECKS_DIR); by default
# $XDG_CACHE_HOME/dim_tf, else ~/.cache/dim_tf.
CACHE_DIR_VARIABLE = "DIM_TF_CACHE_DIR"
FILE_CHECKS_DIR = "file_checks"
# Bump whenever the check decides differently about some file (a new reason, a
# format newly accepted or refused): results of an older check are then not reused.
CHECK_VERSION = 1
SETTLE_SECONDS = 2.0

# A file's header result (`image_files`): whether Pillow must decode it, or the
# reason the listing rejects it.
Header = bool | str
_PENDING = object()  # a header-ok file not decoded yet


def _stamp(status: os.stat_result) -> list[int] | None:
    """[size, mtime_ns, ctime_ns, inode] of a regular file (None for anything else):
    any write sets mtime and ctime, setting mtime back sets ctime, and replacing
    the file changes the inode."""
    if not stat.S_ISREG(status.st_mode):
        return None
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]


def cache_dir() -> str:
    """Where file checks are stored: $DIM_TF_CACHE_DIR/file_checks, else
    $XDG_CACHE_HOME/dim_tf/file_checks, else ~/.cache/dim_tf/file_checks."""
    root = os.environ.get(CACHE_DIR_VARIABLE)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        # The XDG spec: a relative value is invalid and ignored.
        base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "dim_tf")
    return os.path.join(os.path.expanduser(root), FILE_CHECKS_DIR)


class FolderCheck:
    """The check of one split folder in progress: the results remembered from an
    earlier check, those found now, and `save` to remember them.

    `header` is asked for every listed file, `pending` names the usable ones whose
    image data is still to be decoded, `decoded` records each decode, and
    `decode_failures` gives the reasons of all that do not decode.
    """

    def __init__(self, split_dir: str, max_pixels: int):
        self.split_dir = split_dir
        self._prefix = len(os.path.join(split_dir, ""))
        self._folder = os.path.realpath(split_dir)
        self._max_pixels = max_pixels
        # Named for people (DATASET-SPLIT) and unique to the folder and the check.
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(self._folder.split(os.sep)[-2:]))
        key = hashlib.sha256(json.dumps([self._folder, max_pixels, CHECK_VERSION]).encode())
        self.path = os.path.join(cache_dir(), f"{name}-{key.hexdigest()[:16]}.json")
        self._started_ns = time.time_ns()
        # relative path -> [*stamp, header, decode], as stored (checked when used)
        self._stored = self._load()
        # path -> [stamp (None: not a regular file, never remembered), header, decode
        # (_PENDING, None: decodes, or the reason it does not)]
        self._results: dict[str, list] = {}
        self._transient: set[str] = set()
        self.remembered = 0  # files whose result came from the cache

    def header(self, path: str, status: os.stat_result | None,
               check: Callable[[], Header]) -> Header:
        """The header result of `path` (listed now, with `status` from stat, None if
        stat failed): remembered for this stamp, else `check()`."""
        now = _stamp(status) if status is not None else None
        stored = self._stored.get(path[self._prefix:]) if now is not None else None
        if type(stored) is list and len(stored) == 6 and stored[:4] == now and _valid(*stored[4:]):
            self.remembered += 1
            self._results[path] = [now, stored[4], stored[5]]
            return stored[4]
        header = check()
        self._results[path] = [now, header, _PENDING if isinstance(header, bool) else None]
        return header

    def pending(self) -> list[tuple[str, bool]]:
        """(path, via_pillow) of the usable files whose image data is not decoded yet."""
        return [(path, header) for path, (_, header, decode) in self._results.items()
                if decode is _PENDING]

    def decoded(self, path: str, failure: str | None, remember: bool = True) -> None:
        """Records the decode of `path`: None, or why it failed (not remembered if
        not `remember`: a failure that may not happen again)."""
        self._results[path][2] = failure
        if not remember:
            self._transient.add(path)

    def decode_failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every listed file whose header is fine but whose image
        data does not decode."""
        return [(path, decode) for path, (_, header, decode) in self._results.items()
                if isinstance(header, bool) and isinstance(decode, str)]

    def save(self) -> None:
        """Remembers the results of the settled, fully checked regular files (and
        forgets files no longer listed); nothing is written if nothing changed."""
        settled = self._started_ns - int(SETTLE_SECONDS * 1e9)
        entries = {
            path[self._prefix:]: [*now, header, decode]
            for path, (now, header, decode) in self._results.items()
            if now is not None and decode is not _PENDING and now[2] < settled
            and path not in self._transient
        }
        if entries == self._stored:
            return
        document = {"version": CHECK_VERSION, "folder": self._folder, "max_pixels": self._max_pixels,
                    "files": entries}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            io.atomic_write_text(self.path, json.dumps(document, separators=(",", ":")))
        except OSError as error:
            logging.warning("Could not save the file check of %s to %s (%s): the next run checks "
                            "its files again. Set $%s to a writable folder to keep it.",
                            self.split_dir, self.path, error, CACHE_DIR_VARIABLE)
            return
        self._stored = entries

    def _load(self) -> dict[str, list]:
        """The stored entries; none if the cache file is missing, unreadable or not a
        check of this folder. Each entry is checked when used (`header`): a damaged
        one is a file to check again."""
        try:
            with open(self.path, encoding="utf-8") as f:
                document = json.load(f)
            if (document["version"], document["folder"], document["max_pixels"]) != (
                    CHECK_VERSION, self._folder, self._max_pixels):
                raise ValueError("it is a check of another folder or dim_tf version")
            if not isinstance(document["files"], dict):
                raise TypeError("its 'files' is not a mapping")
            return document["files"]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as error:  # JSONDecodeError, UnicodeDecodeError
            logging.warning("Ignoring the file-check cache %s (%s: %s): checking the files of %s "
                            "again.", self.path, type(error).__name__, error, self.split_dir)
            return {}


def _valid(header, decode) -> bool:
    """Whether a stored result is one `FolderCheck` writes: a header result, and a
    decode result only for a file its header did not reject."""
    if isinstance(header, bool):
        return decode is None or isinstance(decode, str)
    return isinstance(header, str) and decode is None
