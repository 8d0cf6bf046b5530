"""Pipeline faults: kill -9 in a stage or in a metadata write, deleted artifacts, racing runs.

Each promise is in docs/reliability.md ("Pipeline"). Kills are injected with
DIM_TF_KILL_AT (dim_tf/faults.py) at named points of the stage runner and the
metadata store.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.pipelines.conftest import (  # noqa: F401 (image_tree is a fixture)
    REPO_ROOT, image_tree, pipeline_flags, run_cli, versions)

# End to end: subprocesses of the command lines (pytest.ini).
pytestmark = pytest.mark.e2e

STAGES = ("ingest", "train", "evaluate", "push", "embed")


def _store_state(root):
    from pipelines.pipeline import open_store

    with open_store(str(root)) as store:
        return store.integrity_check(), [(e.stage, e.status) for e in store.executions()]


# A kill between a stage's work and its record in the store: in the stage runner, or inside
# the metadata write itself (both leave the same state; the first runs with -m slow).
@pytest.mark.parametrize("point", [pytest.param("pipeline.train.executed", marks=pytest.mark.slow),
                                   "metadata.before_commit@2"])
def test_kill_during_a_stage_or_a_metadata_write_then_the_next_run_resumes(image_tree, tmp_path, point):
    root = tmp_path / "root"
    flags = pipeline_flags(image_tree, root)
    killed = run_cli("pipelines.run", *flags, env={"DIM_TF_KILL_AT": point}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    integrity, executions = _store_state(root)
    assert integrity == "ok"
    # The kill came after training finished but before the store recorded it.
    assert executions == [("ingest", "complete"), ("train", "running")]
    checkpoints = os.listdir(root / "train")
    assert len(checkpoints) == 1

    resumed = run_cli("pipelines.run", *flags).stdout
    assert "blessed: yes" in resumed
    integrity, executions = _store_state(root)
    assert integrity == "ok"
    assert executions == [("ingest", "complete"), ("train", "failed"), ("ingest", "cached"),
                          ("train", "complete"), ("evaluate", "complete"), ("push", "complete"),
                          ("embed", "complete")]
    # Same run directory, and training resumed at its last step instead of starting over.
    assert os.listdir(root / "train") == checkpoints
    summary = json.load(open(root / "train" / checkpoints[0] / "model" / "summary.json"))
    assert summary["start_step"] == summary["end_step"] == 3


def test_a_push_killed_after_its_export_does_not_push_twice(image_tree, tmp_path):
    root = tmp_path / "root"
    flags = pipeline_flags(image_tree, root)
    killed = run_cli("pipelines.run", *flags, env={"DIM_TF_KILL_AT": "pipeline.push.executed"},
                     check=False)
    assert killed.returncode == -signal.SIGKILL
    assert versions(root / "saved_models" / "tiny") == ["1"]
    assert _store_state(root)[1][-1] == ("push", "running")

    resumed = run_cli("pipelines.run", *flags).stdout
    assert "pushed to " + str(root / "saved_models" / "tiny" / "1") in resumed
    assert versions(root / "saved_models" / "tiny") == ["1"]
    integrity, executions = _store_state(root)
    assert integrity == "ok" and executions[-2:] == [("push", "complete"), ("embed", "complete")]


def test_a_deleted_artifact_is_a_cache_miss(image_tree, tmp_path):
    import shutil

    root = tmp_path / "root"
    flags = pipeline_flags(image_tree, root)
    run_cli("pipelines.run", *flags)
    [run_id] = os.listdir(root / "evaluate")
    shutil.rmtree(root / "evaluate" / run_id / "evaluation")

    rerun = run_cli("pipelines.run", *flags).stdout
    assert rerun.count("cached (execution") == 4  # ingest, train, push and embed
    assert "evaluate: execution 8, run" in rerun and f"run {run_id}, ran in" in rerun
    assert os.path.exists(root / "evaluate" / run_id / "evaluation" / "report.json")
    listing = run_cli("pipelines.lineage", f"--pipeline_root={root}").stdout
    assert "(deleted)" not in listing


def test_two_pipeline_runs_on_one_root_do_not_corrupt_each_other(image_tree, tmp_path):
    root = tmp_path / "root"
    command = [sys.executable, "-m", "pipelines.run", *pipeline_flags(image_tree, root)]
    runs = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    integrity, executions = _store_state(root)
    assert integrity == "ok"
    for stage in STAGES:
        assert sorted(s for n, s in executions if n == stage) == ["cached", "complete"]
    assert versions(root / "saved_models" / "tiny") == ["1"]


@pytest.mark.slow
def test_random_kills_never_corrupt_the_store_and_the_pipeline_always_finishes(image_tree, tmp_path):
    root = tmp_path / "root"
    command = [sys.executable, "-m", "pipelines.run", *pipeline_flags(image_tree, root)]
    rng = random.Random(0)
    for _ in range(8):
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3, 30))
        process.kill()
        process.wait()
        assert _store_state(root)[0] == "ok"
    assert "blessed: yes" in run_cli("pipelines.run", *pipeline_flags(image_tree, root)).stdout
    integrity, executions = _store_state(root)
    assert integrity == "ok"
    assert [s for s, status in executions if status == "complete"].count("push") == 1
