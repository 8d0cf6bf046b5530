"""Exports under faults: kill -9 at every stage, racing exporters, a live exporter's lock.

Each killed export runs in a subprocess that SIGKILLs itself at a `kill_point`
(DIM_TF_KILL_AT). Afterwards the export directory is read the way TF Serving
reads it: every child whose name parses as an integer is a version it would
load, and each must be complete. Then the next export must clean up and work.
"""

import os
import shutil
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from dim_tf.config import NORMALIZED, SIGNATURES
from dim_tf.errors import ExportBusyError, VersionExistsError
from dim_tf.faults import KILL_AT_VARIABLE
from dim_tf.models.encoders import build_encoder
from dim_tf.serving import versions
from dim_tf.serving.export import WARMUP_FILE, export_encoder
from dim_tf.serving.signatures import WARMUP_BATCH_SIZES

# End to end: subprocesses of the command lines (pytest.ini).
pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "marker.txt"  # which export a version came from ("old", "new", "next", "ours")

# argv: export_dir, "new" | "overwrite", [barrier directory]
CHILD = """
import os, sys, time
from dim_tf.models.encoders import build_encoder
from dim_tf.serving import export

export_dir, mode, barrier = (sys.argv[1:] + [None])[:3]
encoder = build_encoder("basic32x32", sync_batch_norm=False)
if barrier:  # start exporting together with the other racer
    open(os.path.join(barrier, str(os.getpid())), "w").close()
    while len(os.listdir(barrier)) < 2:
        time.sleep(0.01)
overwrite = mode == "overwrite"
print(export.export_encoder(encoder, export_dir, version=1 if overwrite else None,
                            overwrite=overwrite, extra_assets={"marker.txt": "new"}))
"""

# (kill point, mode): where the child dies, and what it was doing.
SCENARIOS = {
    "saved_model_written": ("export.saved_model_written", "new"),
    "warmup_half_written": ("export.warmup_record", "new"),
    "before_rename": ("export.before_publish", "new"),
    "after_rename": ("export.published", "new"),
    "overwrite_after_exchange": ("export.published", "overwrite"),
}
# What TF Serving may load right after the kill ({version: marker}), and what the
# next export leaves.
EXPECTED_AFTER_KILL = {
    "saved_model_written": {},
    "warmup_half_written": {},
    "before_rename": {},
    "after_rename": {1: "new"},
    "overwrite_after_exchange": {1: "new"},
}
EXPECTED_AFTER_NEXT_EXPORT = {
    "saved_model_written": {1: "next"},
    "warmup_half_written": {1: "next"},
    "before_rename": {1: "next"},
    "after_rename": {1: "new", 2: "next"},
    "overwrite_after_exchange": {1: "new", 2: "next"},
}


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("basic32x32", sync_batch_norm=False)


@pytest.fixture(scope="module")
def old_version(encoder, tmp_path_factory):
    """A complete version marked "old", to copy in as version 1."""
    return export_encoder(encoder, str(tmp_path_factory.mktemp("reference")),
                          extra_assets={MARKER: "old"})


@pytest.fixture(scope="module")
def complete_files(old_version):
    """The files of a complete version (relative paths)."""
    return _files(old_version)


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file()}


def _child(args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", KILL_AT_VARIABLE)}
    # One thread each: two children share two cores.
    env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def servable_versions(export_dir, complete_files) -> dict[int, str]:
    """{version: marker} of what TF Serving would load from `export_dir`, failing if
    any of those versions is incomplete: missing files, a saved_model.pb that does
    not parse, or a warm-up file that is not whole PredictionLog records."""
    found = {}
    for name in os.listdir(export_dir):
        try:
            version = int(name)  # TF Serving: safe_strto64 (sign and spaces allowed, like int)
        except ValueError:
            continue
        path = Path(export_dir, name)
        assert _files(path) == complete_files, f"version {path} is incomplete"
        saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        warmup = str(path / "assets.extra" / WARMUP_FILE)
        records = [prediction_log_pb2.PredictionLog.FromString(r)
                   for r in tf.data.TFRecordDataset(warmup).as_numpy_iterator()]
        names = [r.predict_log.request.model_spec.signature_name for r in records]
        assert set(names) == set(SIGNATURES) and len(names) == sum(
            len(WARMUP_BATCH_SIZES) + (spec.input_kind != NORMALIZED) for spec in SIGNATURES.values())
        found[version] = (path / "assets.extra" / MARKER).read_text()
    return found


# Files the hidden staging directory holds when the child dies (a check that each kill
# point sits where its name says): (must have, must lack), or None for no staging left.
WARMUP, SAVED_MODEL, ASSET = f"assets.extra/{WARMUP_FILE}", "saved_model.pb", f"assets.extra/{MARKER}"
STAGED_AT_KILL = {
    "saved_model_written": ({SAVED_MODEL}, {WARMUP}),
    "warmup_half_written": ({SAVED_MODEL, WARMUP}, {ASSET}),
    "before_rename": ({SAVED_MODEL, WARMUP, ASSET}, set()),
    "after_rename": None,
    "overwrite_after_exchange": ({SAVED_MODEL, WARMUP, ASSET}, set()),  # the old version
}


@pytest.fixture(scope="module")
def killed_exports(old_version, tmp_path_factory):
    """Runs every scenario's child, two at a time (two cores).

    Returns {scenario: (export_dir, child result, files of its staging directory or None)}.
    """
    root = tmp_path_factory.mktemp("killed")

    def run(scenario):
        point, mode = SCENARIOS[scenario]
        export_dir = root / scenario
        result = _child([export_dir, mode], {KILL_AT_VARIABLE: point})
        staging = [p for p in export_dir.iterdir() if p.name.startswith(versions.STAGING_PREFIX)]
        assert len(staging) <= 1, staging
        return export_dir, result, (_files(staging[0]) if staging else None)

    for scenario, (_, mode) in SCENARIOS.items():
        if mode == "overwrite":
            shutil.copytree(old_version, root / scenario / "1")
    with futures.ThreadPoolExecutor(2) as pool:
        return dict(zip(SCENARIOS, pool.map(run, SCENARIOS)))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kill_at_each_stage_leaves_only_complete_versions(scenario, killed_exports, encoder,
                                                          complete_files):
    export_dir, result, staged = killed_exports[scenario]
    assert result.returncode == -9, (f"the child was not killed at {SCENARIOS[scenario][0]}: "
                                     f"{result.stderr[-2000:]}")
    if STAGED_AT_KILL[scenario] is None:
        assert staged is None
    else:
        must_have, must_lack = STAGED_AT_KILL[scenario]
        assert must_have <= staged and not must_lack & staged, sorted(staged)
    assert servable_versions(export_dir, complete_files) == EXPECTED_AFTER_KILL[scenario]

    export_encoder(encoder, str(export_dir), extra_assets={MARKER: "next"})
    assert servable_versions(export_dir, complete_files) == EXPECTED_AFTER_NEXT_EXPORT[scenario]
    leftovers = [n for n in os.listdir(export_dir) if not n.isdigit()]
    assert leftovers == [versions.LOCK_FILE], "staging left by the killed export was not removed"


def test_racing_exports_get_different_complete_versions(tmp_path, encoder, complete_files):
    """A child process and this one export into one directory at the same moment."""
    export_dir, barrier = tmp_path / "model", tmp_path / "barrier"
    barrier.mkdir()
    with futures.ThreadPoolExecutor(1) as pool:
        child = pool.submit(_child, [export_dir, "new", barrier])
        Path(barrier, "test").touch()
        while len(os.listdir(barrier)) < 2 and not child.done():
            time.sleep(0.01)
        ours = export_encoder(encoder, str(export_dir), extra_assets={MARKER: "ours"})
        result = child.result()
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = result.stdout.strip().splitlines()[-1]
    assert sorted([Path(ours).name, Path(theirs).name]) == ["1", "2"]
    assert servable_versions(export_dir, complete_files) == {
        int(Path(ours).name): "ours", int(Path(theirs).name): "new"}


def test_live_exporter_keeps_its_staging_and_makes_others_wait(tmp_path, encoder):
    export_dir = str(tmp_path / "model")
    with versions.reserve_version(export_dir) as live:
        with pytest.raises(ExportBusyError, match="Another export into .* has held its lock"):
            export_encoder(encoder, export_dir, lock_timeout=0.2)
        assert os.path.isdir(live.staging)  # a live exporter's staging is never removed
    assert not os.path.exists(live.staging)  # it removes its own when done
    Path(export_dir, ".3.tmp-abc").mkdir()  # staging of an export made before the lock existed
    assert export_encoder(encoder, export_dir) == os.path.join(export_dir, "1")
    assert sorted(os.listdir(export_dir)) == [versions.LOCK_FILE, "1"]


def test_publishing_never_replaces_a_directory_that_appeared(tmp_path):
    """rename(2) would silently replace an empty directory; publish must refuse."""
    export_dir = str(tmp_path / "model")
    with versions.reserve_version(export_dir) as slot:
        Path(slot.staging, "saved_model.pb").write_bytes(b"x")
        os.mkdir(slot.path)  # e.g. made by hand, or by a tool that ignores the lock
        with pytest.raises(VersionExistsError, match="appeared while exporting"):
            slot.publish()
    assert os.listdir(os.path.join(export_dir, "1")) == []


def test_replacement_without_renameat2_puts_back_a_version_moved_aside(
        tmp_path, encoder, old_version, complete_files, monkeypatch):
    """Without renameat2, replacing a version takes two renames; an export that dies
    between them (here: fails there, which leaves the same state) leaves the version
    missing, and the next export puts it back before doing anything else."""
    export_dir = str(tmp_path / "model")
    shutil.copytree(old_version, os.path.join(export_dir, "1"))

    class Died(BaseException):  # not an Exception: no handler in the export catches it
        pass

    def die_between_renames(name):
        if name == "export.moved_aside":
            raise Died(name)

    monkeypatch.setattr(versions, "_RENAMEAT2", None)
    monkeypatch.setattr(versions, "kill_point", die_between_renames)
    with pytest.raises(Died):
        export_encoder(encoder, export_dir, version=1, overwrite=True, extra_assets={MARKER: "new"})
    monkeypatch.setattr(versions, "kill_point", lambda name: None)
    assert servable_versions(export_dir, complete_files) == {}
    assert os.path.isdir(os.path.join(export_dir, versions.ASIDE_PREFIX + "1"))

    export_encoder(encoder, export_dir, extra_assets={MARKER: "next"})
    assert servable_versions(export_dir, complete_files) == {1: "old", 2: "next"}
    export_encoder(encoder, export_dir, version=2, overwrite=True, extra_assets={MARKER: "new"})
    assert servable_versions(export_dir, complete_files) == {1: "old", 2: "new"}
    assert sorted(os.listdir(export_dir)) == [versions.LOCK_FILE, "1", "2"]
