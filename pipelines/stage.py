"""A pipeline stage and how one is run: cache key, working directory, lock, record.

A stage's cache key (its *fingerprint*) hashes its name, its parameters (minus
the purely operational ones), the fingerprints of the artifacts it reads and
the dim_tf version. `run_stage`:

1. takes an exclusive kernel lock on the key (`fcntl.flock`: released by the
   kernel if the process dies, so a kill -9 never leaves a stale lock), so two
   pipeline runs on one root never run the same execution twice at once;
2. reuses the outputs of the newest complete execution with that key if they
   all still exist (a cache hit, recorded as a `cached` execution);
3. otherwise runs the stage in `pipeline_root/<stage>/<run id>/`, the run id
   being the head of the fingerprint: a stage that failed or was killed is
   rerun in the same directory, where training finds its checkpoints and
   resumes. The execution is marked complete, together with its outputs, in
   one transaction once the stage has returned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from typing import Callable

from absl import logging

from dim_tf import ConfigError, DimError, __version__, kill_point
from pipelines.store import Artifact, Execution, MetadataStore, NewArtifact

RUN_ID_LENGTH = 12


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage's `execute` gets: its parameters, inputs and directory."""

    parameters: dict
    inputs: dict[str, Artifact]
    output_dir: str
    pipeline_root: str


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes:
        name: the stage's name (and its directory under the pipeline root).
        inputs: {input name: (upstream stage, its output name)}. An input
            whose upstream output may be absent (e.g. no baseline evaluation)
            is listed in `optional_inputs`.
        execute: runs the stage; returns the artifacts it produced.
        resumable: keep the directory of an interrupted execution (training
            resumes from its checkpoints); otherwise it is emptied first.
        operational_parameters: recorded, but not part of the cache key
            (logging cadence, distribution strategy, ...).
    """

    name: str
    inputs: dict[str, tuple[str, str]]
    execute: Callable[[StageContext], list[NewArtifact]]
    resumable: bool = False
    optional_inputs: tuple[str, ...] = ()
    operational_parameters: tuple[str, ...] = ()


class StageNotRun(DimError):
    """An upstream stage has no usable result for these parameters: a stage was run
    alone too early, which is bad input like a wrong flag."""

    exit_status = ConfigError.exit_status


@dataclasses.dataclass(frozen=True)
class StageResult:
    execution: Execution
    outputs: dict[str, Artifact]
    cached: bool


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """dim_tf's version and the commit of the checkout the pipelines run from (with
    `.dirty` for local edits); the version alone outside a git checkout."""
    # The pipelines always run from a checkout (they are not installed), while
    # dim_tf may be an installed wheel: the checkout is the one holding this file.
    source = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", source, "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", source, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def fingerprint(stage: Stage, parameters: dict, inputs: dict[str, Artifact]) -> str:
    """The cache key of running `stage` with `parameters` on `inputs`."""
    keyed = {k: v for k, v in parameters.items() if k not in stage.operational_parameters}
    payload = json.dumps({
        "stage": stage.name, "parameters": keyed, "dim_tf": __version__,
        "inputs": {name: artifact.fingerprint for name, artifact in sorted(inputs.items())},
    }, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def artifact_fingerprint(execution_fingerprint: str, name: str) -> str:
    return hashlib.sha256(f"{execution_fingerprint}/{name}".encode()).hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: str, what: str):
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            logging.info("Waiting for %s, held by another pipeline run (%s).", what,
                         lock.read().strip() or "unknown")
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        lock.flush()
        yield


def find_cached(store: MetadataStore, stage: Stage, key: str) -> StageResult | None:
    """The newest complete execution of `key` whose outputs all still exist."""
    execution = store.latest_complete(stage.name, key)
    if execution is None:
        return None
    outputs = store.outputs(execution.id)
    missing = [a.uri for a in outputs if not a.exists()]
    if missing:
        logging.info("[%s] cached result of execution %d is gone (%s): running again.",
                     stage.name, execution.id, ", ".join(missing))
        return None
    return StageResult(execution, {a.name: a for a in outputs}, cached=True)


def run_stage(
    store: MetadataStore,
    pipeline_root: str,
    stage: Stage,
    parameters: dict,
    inputs: dict[str, Artifact],
    pipeline_run: str | None = None,
    force: bool = False,
) -> StageResult:
    """Runs `stage` (or reuses its cached result); see the module docstring.

    Raises:
        Whatever the stage raised, after recording the execution as failed.
    """
    key = fingerprint(stage, parameters, inputs)
    run_id = key[:RUN_ID_LENGTH]
    with _exclusive(os.path.join(pipeline_root, ".locks", f"{stage.name}-{run_id}.lock"),
                    f"{stage.name} run {run_id}"):
        store.abandon_running(stage.name, key)
        cached = None if force else find_cached(store, stage, key)
        if cached is not None:
            execution = store.record_cached(pipeline_run, stage.name, cached.execution, parameters,
                                            code_version(), inputs)
            logging.info("[%s] cache hit: outputs of execution %d (run %s) reused.", stage.name,
                         cached.execution.id, run_id)
            return StageResult(execution, cached.outputs, cached=True)

        output_dir = os.path.join(os.path.abspath(pipeline_root), stage.name, run_id)
        if os.path.isdir(output_dir) and (force or not stage.resumable):
            shutil.rmtree(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        execution_id = store.start_execution(pipeline_run, stage.name, key, run_id, parameters,
                                             code_version(), inputs)
        logging.info("[%s] running execution %d in %s", stage.name, execution_id, output_dir)
        try:
            kill_point(f"pipeline.{stage.name}.started")
            produced = stage.execute(StageContext(parameters, inputs, output_dir, pipeline_root))
            kill_point(f"pipeline.{stage.name}.executed")
        except BaseException as error:
            store.fail_execution(execution_id, "".join(
                traceback.format_exception_only(type(error), error)).strip())
            raise
        outputs = store.complete_execution(
            execution_id, produced, {a.name: artifact_fingerprint(key, a.name) for a in produced})
        logging.info("[%s] execution %d complete.", stage.name, execution_id)
        return StageResult(store.execution(execution_id), {a.name: a for a in outputs}, cached=False)


def print_stage_result(result: StageResult, out=sys.stdout) -> None:
    """One line per stage for the console: what ran, where its outputs are."""
    execution = result.execution
    how = (f"cached (execution {execution.cached_from})" if result.cached
           else f"ran in {execution.ended - execution.started:.1f} s")
    print(f"{execution.stage:>9}: execution {execution.id}, run {execution.run_id}, {how}", file=out)
    for name, artifact in sorted(result.outputs.items()):
        print(f"{'':>11}{name}: {artifact.uri}", file=out)
