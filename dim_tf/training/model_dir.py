"""The run directory (`--model_dir`): who owns it, whether it can be written, starting over.

- One training process owns a model_dir at a time: `ModelDirLock` holds an
  `fcntl.flock` on `model_dir/.lock`, which the kernel releases when the
  process ends however it ends (kill -9 included), so no stale lock survives.
  The file records the holder (pid, host, start time, command) for the message
  a second run gets.
- `check_writable` probes the directory with a real write before any training,
  so a read-only mount, a missing permission or a full disk is reported up
  front; `check_free_space` compares the free space with one checkpoint.
- `start_over` moves an old run aside (`MODEL_DIR.old-TIMESTAMP`) instead of
  deleting it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from dim_tf import io
from dim_tf.config import RUN_CONFIG_FILE
from dim_tf.errors import ConfigError, ModelDirBusy

LOCK_FILE = ".lock"


class ModelDirLock:
    """An exclusive, kernel-released lock on `model_dir` (see the module docstring)."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock and records this process as its holder.

        Raises:
            ModelDirBusy: another live process holds it; the message names it.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise ModelDirBusy(
                f"--model_dir={self.model_dir} is in use by another training run: "
                f"{_describe_holder(holder)}. Wait for it to finish or stop it, or train "
                "into another --model_dir."
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "ModelDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return (f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}, "
                f"command: {holder['command']}")
    except (ValueError, KeyError, TypeError):
        return "holder not recorded yet (it is starting)"


def check_writable(model_dir: str) -> None:
    """Creates `model_dir` if needed and writes, flushes and deletes a probe file in it.

    Raises:
        ConfigError: naming the path and the cause (read-only, permission, disk full).
    """
    probe = io.temporary_path(os.path.join(model_dir, ".write_probe"))
    try:
        os.makedirs(model_dir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as error:
        raise ConfigError(
            f"--model_dir={model_dir} cannot be written: {error.strerror or error} "
            f"({error.filename or model_dir}). Use a writable directory with free space "
            "(checkpoints and logs go there)."
        ) from error


def check_free_space(model_dir: str, needed_bytes: int) -> None:
    """Raises ConfigError if the disk of `model_dir` cannot hold one more checkpoint
    of `needed_bytes` (a checkpoint is written before the oldest one is deleted)."""
    stat = os.statvfs(model_dir)
    free = stat.f_bavail * stat.f_frsize
    if free < needed_bytes:
        raise ConfigError(
            f"--model_dir={model_dir}: its disk has {free / 2**20:.1f} MiB free, but one "
            f"checkpoint of this model needs {needed_bytes / 2**20:.1f} MiB. Free space or "
            "use another --model_dir."
        )


TRAINING_TIME_FILE = "training_time.json"
_TRAINING_TIME_KEPT = 64  # entries; older checkpoints are deleted long before


def trained_seconds_at(model_dir: str, step: int) -> float | None:
    """Wall time the run had trained when it saved the checkpoint of `step`, if recorded."""
    try:
        with open(os.path.join(model_dir, TRAINING_TIME_FILE), encoding="utf-8") as f:
            return json.load(f).get(str(step))
    except (OSError, ValueError):
        return None


def record_trained_seconds(model_dir: str, step: int, seconds: float) -> None:
    """Records the wall time trained up to the checkpoint of `step` (written after the
    checkpoint, so a run rolled back to an older checkpoint finds that one's time)."""
    path = os.path.join(model_dir, TRAINING_TIME_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            ledger = json.load(f)
    except (OSError, ValueError):
        ledger = {}
    ledger[str(step)] = round(seconds, 3)
    kept = sorted(ledger, key=int)[-_TRAINING_TIME_KEPT:]
    io.atomic_write_text(path, json.dumps({k: ledger[k] for k in kept}, indent=1))


def remove_leftovers(model_dir: str) -> list[str]:
    """Deletes the temporary files (`dim_tf.io`) killed writes left directly in
    `model_dir` (call with the lock held). Returns their paths."""
    removed = []
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if io.is_temporary(name) and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def start_over(model_dir: str) -> str | None:
    """Moves everything in `model_dir` but the lock into a new sibling directory
    `MODEL_DIR.old-YYYYmmdd-HHMMSS` and returns it (None if there was nothing).

    config.json moves last: if this is interrupted, what is left is either still
    checked against the next run's settings or holds no checkpoint.

    Raises:
        ConfigError: the sibling directory cannot be created (e.g. the parent is
            not writable); nothing was moved.
    """
    entries = [e for e in sorted(os.listdir(model_dir)) if e != LOCK_FILE]
    if not entries:
        return None
    base = os.path.abspath(model_dir).rstrip(os.sep)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target, suffix = f"{base}.old-{stamp}", 1
    while os.path.exists(target):
        suffix += 1
        target = f"{base}.old-{stamp}-{suffix}"
    try:
        os.mkdir(target)
    except OSError as error:
        raise ConfigError(
            f"--start_over: cannot create {target} to move the old run of {model_dir} into: "
            f"{error.strerror or error}. Move or delete the old run yourself."
        ) from error
    for entry in sorted(entries, key=lambda e: e == RUN_CONFIG_FILE):
        os.replace(os.path.join(model_dir, entry), os.path.join(target, entry))
    return target
