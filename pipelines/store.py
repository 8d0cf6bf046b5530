"""The pipeline's metadata store: executions, artifacts and their lineage, in SQLite.

The same model as ML Metadata (which TFX uses but which has no wheel for this
Python): an *execution* is one run of a stage with its parameters, inputs, code
version, times and status; an *artifact* is a file or directory an execution
produced; *events* link executions to the artifacts they read and wrote, which
is the lineage. A cached execution records the artifacts it reused as its
outputs instead of producing new ones.

Every change is one SQLite transaction, so a process killed mid-write leaves
the store as it was before the write: an execution is either marked complete
together with all of its output artifacts, or not at all. Several processes may
share one store (WAL journal, busy timeout).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import time
from typing import Iterator

from dim_tf import kill_point

METADATA_FILE = "metadata.sqlite"
RUNNING, COMPLETE, CACHED, FAILED = "running", "complete", "cached", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_runs (
    id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_run TEXT REFERENCES pipeline_runs(id),
    stage TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    run_id TEXT NOT NULL,
    parameters TEXT NOT NULL,
    code_version TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'cached', 'failed')),
    cached_from INTEGER REFERENCES executions(id),
    error TEXT,
    pid INTEGER,
    host TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_key ON executions(stage, fingerprint, status);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id INTEGER NOT NULL REFERENCES executions(id),
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    uri TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    properties TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    execution_id INTEGER NOT NULL REFERENCES executions(id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    kind TEXT NOT NULL CHECK (kind IN ('input', 'output')),
    name TEXT NOT NULL,
    PRIMARY KEY (execution_id, kind, name)
);
"""


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A recorded output of a stage.

    `fingerprint` identifies the content: it is derived from the producing
    execution's cache key, so a downstream cache key changes exactly when an
    upstream result does.
    """

    id: int
    execution_id: int
    name: str
    type: str
    uri: str
    fingerprint: str
    properties: dict

    def exists(self) -> bool:
        return os.path.exists(self.uri)


@dataclasses.dataclass(frozen=True)
class NewArtifact:
    """An output an execution is about to record."""

    name: str
    type: str
    uri: str
    properties: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Execution:
    id: int
    pipeline_run: str | None
    stage: str
    fingerprint: str
    run_id: str
    parameters: dict
    code_version: str
    started: float
    ended: float | None
    status: str
    cached_from: int | None
    error: str | None
    pid: int | None
    host: str | None


class MetadataStore:
    """Executions, artifacts and lineage of the pipelines run under one root."""

    def __init__(self, path: str):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=FULL")
        # executescript would commit on its own; the schema goes in one transaction.
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "MetadataStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _transaction(self):
        return _Transaction(self._db)

    # Pipeline runs.

    def begin_pipeline_run(self, run_id: str, command: str) -> None:
        with self._transaction():
            self._db.execute("INSERT INTO pipeline_runs VALUES (?, ?, ?, NULL, ?)",
                             (run_id, command, time.time(), RUNNING))

    def end_pipeline_run(self, run_id: str, status: str) -> None:
        with self._transaction():
            self._db.execute("UPDATE pipeline_runs SET ended = ?, status = ? WHERE id = ?",
                             (time.time(), status, run_id))

    def pipeline_runs(self) -> list[dict]:
        return [dict(row) for row in self._db.execute("SELECT * FROM pipeline_runs ORDER BY started")]

    # Executions.

    def start_execution(self, pipeline_run: str | None, stage: str, fingerprint: str, run_id: str,
                        parameters: dict, code_version: str, inputs: dict[str, Artifact]) -> int:
        """Records a running execution and the artifacts it reads; returns its id."""
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO executions (pipeline_run, stage, fingerprint, run_id, parameters, "
                "code_version, started, status, pid, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pipeline_run, stage, fingerprint, run_id, _dumps(parameters), code_version,
                 time.time(), RUNNING, os.getpid(), socket.gethostname()))
            execution_id = cursor.lastrowid
            self._link(execution_id, "input", {k: a.id for k, a in inputs.items()})
        return execution_id

    def complete_execution(self, execution_id: int, outputs: list[NewArtifact],
                           fingerprints: dict[str, str]) -> list[Artifact]:
        """Records the outputs and marks the execution complete, in one transaction."""
        with self._transaction():
            now = time.time()
            ids = {}
            for output in outputs:
                cursor = self._db.execute(
                    "INSERT INTO artifacts (execution_id, name, type, uri, fingerprint, properties, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (execution_id, output.name, output.type, os.path.abspath(output.uri),
                     fingerprints[output.name], _dumps(output.properties), now))
                ids[output.name] = cursor.lastrowid
            self._link(execution_id, "output", ids)
            kill_point("metadata.before_commit")
            self._set_status(execution_id, COMPLETE)
        return self.outputs(execution_id)

    def record_cached(self, pipeline_run: str | None, stage: str, source: Execution,
                      parameters: dict, code_version: str, inputs: dict[str, Artifact]) -> Execution:
        """Records that `stage` reused the outputs of the complete execution `source`."""
        with self._transaction():
            now = time.time()
            cursor = self._db.execute(
                "INSERT INTO executions (pipeline_run, stage, fingerprint, run_id, parameters, "
                "code_version, started, ended, status, cached_from, pid, host) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pipeline_run, stage, source.fingerprint, source.run_id, _dumps(parameters),
                 code_version, now, now, CACHED, source.id, os.getpid(), socket.gethostname()))
            execution_id = cursor.lastrowid
            self._link(execution_id, "input", {k: a.id for k, a in inputs.items()})
            self._link(execution_id, "output", {a.name: a.id for a in self.outputs(source.id)})
        return self.execution(execution_id)

    def fail_execution(self, execution_id: int, error: str) -> None:
        with self._transaction():
            self._set_status(execution_id, FAILED, error)

    def abandon_running(self, stage: str, fingerprint: str) -> list[int]:
        """Marks as failed the running executions of this key whose process died
        (the caller holds the key's lock, so no live process is running them)."""
        with self._transaction():
            rows = self._db.execute(
                "SELECT id, pid, host FROM executions WHERE stage = ? AND fingerprint = ? AND status = ?",
                (stage, fingerprint, RUNNING)).fetchall()
            for row in rows:
                self._set_status(row["id"], FAILED, f"interrupted: process {row['pid']} on "
                                 f"{row['host']} ended before the stage finished")
        return [row["id"] for row in rows]

    def _set_status(self, execution_id: int, status: str, error: str | None = None) -> None:
        self._db.execute("UPDATE executions SET status = ?, ended = ?, error = ? WHERE id = ?",
                         (status, time.time(), error, execution_id))

    def _link(self, execution_id: int, kind: str, artifact_ids: dict[str, int]) -> None:
        for name, artifact_id in artifact_ids.items():
            self._db.execute("INSERT INTO events VALUES (?, ?, ?, ?)",
                             (execution_id, artifact_id, kind, name))

    # Queries.

    def execution(self, execution_id: int) -> Execution:
        row = self._db.execute("SELECT * FROM executions WHERE id = ?", (execution_id,)).fetchone()
        if row is None:
            raise KeyError(f"No execution {execution_id} in {self.path}.")
        return _execution(row)

    def executions(self, stage: str | None = None, pipeline_run: str | None = None) -> list[Execution]:
        query, args = "SELECT * FROM executions WHERE 1", []
        if stage is not None:
            query, args = query + " AND stage = ?", args + [stage]
        if pipeline_run is not None:
            query, args = query + " AND pipeline_run = ?", args + [pipeline_run]
        return [_execution(row) for row in self._db.execute(query + " ORDER BY id", args)]

    def latest_complete(self, stage: str, fingerprint: str) -> Execution | None:
        row = self._db.execute(
            "SELECT * FROM executions WHERE stage = ? AND fingerprint = ? AND status = ? "
            "ORDER BY id DESC LIMIT 1", (stage, fingerprint, COMPLETE)).fetchone()
        return _execution(row) if row else None

    def outputs(self, execution_id: int) -> list[Artifact]:
        return self._artifacts(execution_id, "output")

    def inputs(self, execution_id: int) -> list[Artifact]:
        return self._artifacts(execution_id, "input")

    def _artifacts(self, execution_id: int, kind: str) -> list[Artifact]:
        rows = self._db.execute(
            "SELECT artifacts.*, events.name AS event_name FROM events JOIN artifacts "
            "ON artifacts.id = events.artifact_id WHERE events.execution_id = ? AND events.kind = ? "
            "ORDER BY events.name", (execution_id, kind))
        return [Artifact(id=row["id"], execution_id=row["execution_id"], name=row["event_name"],
                         type=row["type"], uri=row["uri"], fingerprint=row["fingerprint"],
                         properties=json.loads(row["properties"])) for row in rows]

    def artifact(self, artifact_id: int) -> Artifact:
        row = self._db.execute("SELECT * FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()
        if row is None:
            raise KeyError(f"No artifact {artifact_id} in {self.path}.")
        return Artifact(id=row["id"], execution_id=row["execution_id"], name=row["name"],
                        type=row["type"], uri=row["uri"], fingerprint=row["fingerprint"],
                        properties=json.loads(row["properties"]))

    def lineage(self, artifact_id: int) -> Iterator[tuple[int, Artifact, Execution]]:
        """(depth, artifact, producing execution) for `artifact_id` and, recursively,
        every artifact its producer read."""
        stack = [(0, artifact_id)]
        seen = set()
        while stack:
            depth, current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            artifact = self.artifact(current)
            producer = self.execution(artifact.execution_id)
            yield depth, artifact, producer
            for parent in reversed(self.inputs(producer.id)):
                stack.append((depth + 1, parent.id))

    def integrity_check(self) -> str:
        """SQLite's own check plus the store's invariants; "ok" when both hold."""
        problems = [row[0] for row in self._db.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            return "; ".join(problems)
        complete_without_outputs = self._db.execute(
            "SELECT id FROM executions WHERE status = 'complete' AND id NOT IN "
            "(SELECT execution_id FROM events WHERE kind = 'output')").fetchall()
        orphans = self._db.execute(
            "SELECT id FROM artifacts WHERE execution_id NOT IN "
            "(SELECT id FROM executions WHERE status = 'complete')").fetchall()
        found = []
        if complete_without_outputs:
            found.append(f"complete executions without outputs: {[r[0] for r in complete_without_outputs]}")
        if orphans:
            found.append(f"artifacts of unfinished executions: {[r[0] for r in orphans]}")
        return "; ".join(found) or "ok"


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _execution(row: sqlite3.Row) -> Execution:
    values = dict(row)
    values["parameters"] = json.loads(values["parameters"])
    return Execution(**values)


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
