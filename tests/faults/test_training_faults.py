"""Training and checkpoints under faults (docs/reliability.md, "Training and checkpoints").

Each test injects the fault into a real `python -m dim_tf.train` process and checks
the promise: kill -9 at a chosen point (dim_tf/faults.py), SIGTERM, damaged
checkpoints, conflicting flags, a second run, NaN, an unwritable or full disk.
Resumed runs are compared tensor by tensor (weights, both optimisers' slots and
step counters) with one uninterrupted run of the same command.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.faults import KILL_AT_VARIABLE, KILL_SIGNAL_VARIABLE
from tests.ports import free_ports
from tests.training.synthetic import write_image_folder

# End to end: subprocesses of the command lines (pytest.ini).
pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = 12  # 32 images / batch 8 = 4 steps per epoch, 3 epochs
# Labelled (two classes): the online monitor and its dropout train too; random
# flips exercise the input pipeline's random stream.
COMMON = ["--encoder=basic32x32", "--mi_units=16", "--batch_size=8", "--verbose=0",
          "--learning_rate=1e-3", "--seed=5", "--epochs=3", "--checkpoint_every=2",
          "--random_flip", "--log_every=1"]


def train_command(*args):
    return [sys.executable, "-m", "dim_tf.train", *COMMON, *args]


def run_train(*args, kill_at=None, timeout=240):
    env = dict(os.environ)
    env.pop(KILL_AT_VARIABLE, None)
    if kill_at:
        env[KILL_AT_VARIABLE] = kill_at
    return subprocess.run(train_command(*args), cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def checkpoint_tensors(path):
    """Every tensor of a checkpoint (model, optimisers, step counters), by name."""
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def latest_step(model_dir):
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return None if latest is None else int(latest.rsplit("-", 1)[1])


def assert_same_tensors(actual, expected):
    assert actual.keys() == expected.keys()
    assert any(name.startswith("encoder_optimizer/") for name in expected)
    assert any(name.startswith("prior_optimizer/") for name in expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-5, rtol=1e-4, err_msg=name)


def summary(model_dir):
    return json.loads((Path(model_dir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "images"
    write_image_folder(root, {"train": 32, "test": 8})
    return root


@pytest.fixture(scope="module")
def reference(image_tree, tmp_path_factory):
    """(model_dir, final tensors) of the uninterrupted run every fault is compared with."""
    model_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_train(f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert latest_step(model_dir) == STEPS
    return model_dir, checkpoint_tensors(os.path.join(model_dir, "checkpoints", f"ckpt-{STEPS}"))


def copy_of_reference(reference, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(reference[0], model_dir)
    return model_dir


# ------------------------------------------------------------------ kill -9


@pytest.mark.parametrize(
    "kill_at, resumes_at, left_behind",
    [
        # After step 3's update, before anything saved it: mid-epoch, between checkpoints.
        ("train.step_end@3", 2, []),
        # Saving ckpt-4: its data files in place, its index still in the staging directory.
        ("checkpoint.data_moved@2", 2, ["ckpt-4.data-*", ".saving-ckpt-4-*/ckpt-4.index"]),
        # Saving ckpt-4: complete, but TensorFlow's `checkpoint` file still names ckpt-2.
        ("checkpoint.index_moved@2", 4, []),
    ],
    ids=["mid_epoch", "mid_save_data_moved", "mid_save_index_moved"],
)
def test_kill_9_resumes_at_the_exact_step_and_matches_an_uninterrupted_run(
        tmp_path, image_tree, reference, kill_at, resumes_at, left_behind):
    args = [f"--dataset=folder:{image_tree}", f"--model_dir={tmp_path / 'run'}"]
    killed = run_train(*args, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    for pattern in left_behind:
        assert glob.glob(str(checkpoints / pattern)), f"the kill left no {pattern}"

    resumed = run_train(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary(tmp_path / "run")["start_step"] == resumes_at
    assert summary(tmp_path / "run")["end_step"] == STEPS
    if left_behind:
        assert f"Removed {len(left_behind)} temporary file(s) left by an interrupted run" in resumed.stderr
    assert not glob.glob(str(checkpoints / ".saving-*"))
    assert sorted(os.listdir(checkpoints)) == sorted(os.listdir(reference[0] / "checkpoints"))
    assert_same_tensors(checkpoint_tensors(str(checkpoints / f"ckpt-{STEPS}")), reference[1])


@pytest.mark.slow
def test_many_random_kills_still_end_equal_to_an_uninterrupted_run(tmp_path, image_tree, reference):
    """Kill points chosen at random, and plain SIGKILLs at random times, until the run
    finishes; it must end where the uninterrupted run did."""
    rng = np.random.default_rng(0)
    points = ["train.step_end", "checkpoint.written", "checkpoint.data_moved",
              "checkpoint.index_moved", "checkpoint.state_written"]
    args = [f"--dataset=folder:{image_tree}", f"--model_dir={tmp_path / 'run'}"]
    kills = 0
    for _ in range(12):
        if rng.random() < 0.3:
            env = {k: v for k, v in os.environ.items() if k != KILL_AT_VARIABLE}
            process = subprocess.Popen(train_command(*args), cwd=REPO_ROOT, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(4.0, 20.0))
            process.send_signal(signal.SIGKILL)
            _, stderr = process.communicate(timeout=120)
            returncode = process.returncode
        else:
            result = run_train(*args, kill_at=f"{rng.choice(points)}@{rng.integers(1, 4)}")
            returncode, stderr = result.returncode, result.stderr
        if returncode == 0:
            break
        assert returncode == -signal.SIGKILL, stderr[-3000:]
        kills += 1
    else:
        result = run_train(*args)
        assert result.returncode == 0, result.stderr[-3000:]
    assert kills >= 3
    assert summary(tmp_path / "run")["end_step"] == STEPS
    checkpoints = tmp_path / "run" / "checkpoints"
    assert_same_tensors(checkpoint_tensors(str(checkpoints / f"ckpt-{STEPS}")), reference[1])


@pytest.mark.slow
def test_kill_9_with_a_cosine_schedule_resumes_on_the_same_learning_rates(tmp_path, image_tree):
    """The schedule is a function of the restored step count, and its length (here
    --epochs') is kept in schedule.json: the resumed run ends on the same tensors.
    Slow: tests/training/test_schedule.py resumes the same schedule in-process in the
    default run; this adds a real kill -9 between its steps."""
    schedule = ["--lr_schedule=cosine", "--warmup_steps=3", "--final_lr_fraction=0.1"]
    straight = run_train(f"--dataset=folder:{image_tree}", f"--model_dir={tmp_path / 'straight'}",
                         *schedule)
    assert straight.returncode == 0, straight.stderr[-3000:]
    args = [f"--dataset=folder:{image_tree}", f"--model_dir={tmp_path / 'run'}", *schedule]
    killed = run_train(*args, kill_at="train.step_end@7")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    recorded = json.loads((tmp_path / "run" / "schedule.json").read_text())
    assert recorded["total_steps"] == STEPS and recorded["length_from"] == "epochs"
    resumed = run_train(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary(tmp_path / "run")["start_step"] == 6
    assert summary(tmp_path / "run")["end_step"] == STEPS
    final = os.path.join("checkpoints", f"ckpt-{STEPS}")
    assert_same_tensors(checkpoint_tensors(str(tmp_path / "run" / final)),
                        checkpoint_tensors(str(tmp_path / "straight" / final)))


# ------------------------------------------------------------------ SIGTERM


def test_sigterm_saves_the_step_exits_143_and_the_rerun_matches(tmp_path, image_tree, reference):
    args = [f"--dataset=folder:{image_tree}", f"--model_dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_VARIABLE}
    process = subprocess.Popen(train_command(*args), cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "run" / "checkpoints" / "ckpt-2.index"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None and not first.exists():
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before the signal"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert "Stopped by SIGTERM at step" in stderr and "Rerun the same command to resume" in stderr
    stopped_at = int(stderr.split("Stopped by SIGTERM at step ")[1].split()[0])
    assert 2 <= stopped_at < STEPS and latest_step(tmp_path / "run") == stopped_at

    resumed = run_train(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary(tmp_path / "run")["start_step"] == stopped_at
    checkpoints = tmp_path / "run" / "checkpoints"
    assert_same_tensors(checkpoint_tensors(str(checkpoints / f"ckpt-{STEPS}")), reference[1])


# ------------------------------------------------------------ time budget


def test_time_budget_stops_saving_the_step_and_a_larger_budget_continues_identically(
        tmp_path, image_tree, reference):
    args = [f"--dataset=folder:{image_tree}", f"--model_dir={tmp_path / 'run'}"]
    # A budget shorter than one step: the run stops after its first step.
    stopped = run_train(*args, "--time_budget_minutes=1e-6")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "time budget of 1e-06 min reached" in stopped.stdout
    assert latest_step(tmp_path / "run") == 1
    first = summary(tmp_path / "run")
    assert first["stopped_by_time_budget"] and first["end_step"] == 1
    assert first["stopped_by"] == "time_budget"
    ledger = json.loads((tmp_path / "run" / "training_time.json").read_text())
    assert list(ledger) == ["1"] and 0 < ledger["1"] <= first["trained_seconds"]

    spent = run_train(*args, "--time_budget_minutes=1e-6")
    assert spent.returncode == 0, spent.stderr[-3000:]
    assert "nothing to train" in spent.stderr
    assert summary(tmp_path / "run")["end_step"] == 1

    resumed = run_train(*args)  # no budget: trains to the end of its epochs
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = summary(tmp_path / "run")
    assert final["start_step"] == 1 and final["end_step"] == STEPS
    assert not final["stopped_by_time_budget"] and final["stopped_by"] == "epochs"
    assert final["trained_seconds"] > ledger["1"]  # counted on from the first run's time
    checkpoints = tmp_path / "run" / "checkpoints"
    assert_same_tensors(checkpoint_tensors(str(checkpoints / f"ckpt-{STEPS}")), reference[1])


# ------------------------------------------------------ damaged checkpoints


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(64)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


@pytest.mark.parametrize("damage, suffix", [(_truncate, ".data-00000-of-00001"),
                                            (_flip_bytes, ".data-00000-of-00001"),
                                            (_truncate, ".index")])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
        tmp_path, image_tree, reference, damage, suffix):
    model_dir = copy_of_reference(reference, tmp_path)
    bad = model_dir / "checkpoints" / f"ckpt-{STEPS}{suffix}"
    damage(bad)
    result = run_train(f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" in result.stderr and f"ckpt-{STEPS}{suffix}" in result.stderr
    assert f"Resuming from the previous checkpoint {model_dir}/checkpoints/ckpt-10" in result.stderr
    assert (model_dir / "checkpoints" / "unreadable" / bad.name).exists()
    assert summary(model_dir)["start_step"] == STEPS - 2
    assert_same_tensors(checkpoint_tensors(str(model_dir / "checkpoints" / f"ckpt-{STEPS}")),
                        reference[1])


def test_no_readable_checkpoint_is_an_error_naming_each(tmp_path, image_tree, reference):
    model_dir = copy_of_reference(reference, tmp_path)
    for index in glob.glob(str(model_dir / "checkpoints" / "ckpt-*.index")):
        _truncate(index)
    before = sorted(os.listdir(model_dir / "checkpoints"))
    result = run_train(f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}")
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"No checkpoint in {model_dir}/checkpoints can be read" in result.stderr
    for step in (8, 10, 12):
        assert f"{model_dir}/checkpoints/ckpt-{step}: " in result.stderr
    assert "--start_over" in result.stderr
    assert sorted(os.listdir(model_dir / "checkpoints")) == before  # nothing moved or deleted


# ------------------------------------------- conflicting flags, start over


def test_conflicting_flags_are_refused_by_name_unless_start_over(tmp_path, image_tree, reference):
    model_dir = copy_of_reference(reference, tmp_path)
    before = sorted(os.listdir(model_dir / "checkpoints"))
    changed = run_train("--dataset=sample:cifar10", f"--model_dir={model_dir}",
                        "--mi_units=32", "--batch_size=16", "--encoder=resnet19_32x32")
    assert changed.returncode == 2, changed.stderr[-3000:]
    for line in (f"--dataset: run has 'folder:{image_tree}', now 'sample:cifar10'",
                 "--mi_units: run has 16, now 32", "--batch_size: run has 8, now 16",
                 "--encoder: run has 'basic32x32', now 'resnet19_32x32'"):
        assert line in changed.stderr
    assert "--start_over" in changed.stderr
    assert sorted(os.listdir(model_dir / "checkpoints")) == before

    fresh = run_train("--dataset=sample:cifar10", f"--model_dir={model_dir}", "--mi_units=32",
                      "--epochs=1", "--steps_per_epoch=1", "--start_over")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    moved = glob.glob(f"{model_dir}.old-*")
    assert len(moved) == 1 and f"moved the previous run in {model_dir} to {moved[0]}" in fresh.stderr
    assert sorted(os.listdir(Path(moved[0]) / "checkpoints")) == before
    assert json.loads((Path(moved[0]) / "config.json").read_text())["mi_units"] == 16
    assert summary(model_dir)["start_step"] == 0 and summary(model_dir)["end_step"] == 1
    assert json.loads((model_dir / "config.json").read_text())["dataset"] == "sample:cifar10"
    assert "start_over" not in (model_dir / "flags.txt").read_text()


# ------------------------------------------------------------- the lock


HOLDER = """
import sys, time
from dim_tf.training.model_dir import ModelDirLock
ModelDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_second_run_refuses_naming_the_holder_and_kill_9_releases_the_lock(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(model_dir)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = run_train("--dataset=sample:cifar10", f"--model_dir={model_dir}",
                           "--epochs=1", "--steps_per_epoch=1")
        assert second.returncode == 1, second.stderr[-3000:]
        assert f"--model_dir={model_dir} is in use by another training run: pid {holder.pid} on " \
               f"host {os.uname().nodename}, started 20" in second.stderr
        assert f"command: {os.path.basename(sys.executable)} -c" in second.stderr
        assert not (model_dir / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock: no stale lock to clean up by hand.
    third = run_train("--dataset=sample:cifar10", f"--model_dir={model_dir}",
                      "--epochs=1", "--steps_per_epoch=1")
    assert third.returncode == 0, third.stderr[-3000:]
    assert summary(model_dir)["end_step"] == 1


# ------------------------------------------------------------------- NaN


def test_non_finite_step_stops_naming_step_and_term_keeping_the_last_good_checkpoint(
        tmp_path, image_tree):
    model_dir = tmp_path / "run"
    # An absurd learning rate: step 1 is finite, the weights it produces overflow.
    result = run_train(f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}",
                       "--learning_rate=1e30", "--checkpoint_every=1",
                       f"--export_dir={tmp_path / 'export'}")
    assert result.returncode == 1, result.stderr[-3000:]
    message = result.stderr.split("dim_tf.train: error: ")[1]
    assert message.startswith("Training stopped at step ")
    step = int(message.split()[4])
    assert step >= 2 and "NaN or Inf in " in message
    named = message.split("NaN or Inf in ")[1].split(". No weight")[0]
    assert named and all(part.strip() for part in named.split(","))
    assert f"the last checkpoint ({model_dir}/checkpoints/ckpt-{step - 1}) is intact" in message
    assert latest_step(model_dir) == step - 1
    assert not glob.glob(str(model_dir / "checkpoints" / f"ckpt-{step}.*"))
    for name, value in checkpoint_tensors(str(model_dir / "checkpoints" / f"ckpt-{step - 1}")).items():
        assert np.all(np.isfinite(value)), name
    assert not (tmp_path / "export").exists()


# ------------------------------------------------- unwritable or full disk


def _in_mount_namespace(script, tmp_path):
    """Runs `script` (sh) in a private mount namespace, or skips if that is not permitted."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a private mount namespace here: {probe.stderr.strip()}")
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_VARIABLE}
    return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def _train_shell(*args):
    return " ".join(f"'{a}'" for a in train_command(*args))


def test_read_only_model_dir_fails_before_training(tmp_path, image_tree, reference):
    model_dir = copy_of_reference(reference, tmp_path)
    result = _in_mount_namespace(
        f"mount --bind {model_dir} {model_dir} && mount -o remount,ro,bind {model_dir} && "
        + _train_shell(f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}", "--epochs=4"),
        tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"--model_dir={model_dir} cannot be written: Read-only file system" in result.stderr
    assert latest_step(model_dir) == STEPS


def test_full_disk_fails_before_training_when_a_checkpoint_cannot_fit(tmp_path, image_tree):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    result = _in_mount_namespace(
        f"mount -t tmpfs -o size=8m tmpfs {model_dir} && "
        + _train_shell(f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}"),
        tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"--model_dir={model_dir}: its disk has" in result.stderr
    assert "MiB free, but one checkpoint of this model needs" in result.stderr


def test_disk_filling_up_mid_training_names_the_checkpoint_and_keeps_the_earlier_one(
        tmp_path, image_tree, reference):
    model_dir, kept = tmp_path / "run", tmp_path / "kept"
    model_dir.mkdir()
    size = os.path.getsize(reference[0] / "checkpoints" / f"ckpt-{STEPS}.data-00000-of-00001")
    result = _in_mount_namespace(
        f"mount -t tmpfs -o size={int(size * 1.5)} tmpfs {model_dir} && "
        + _train_shell(f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}")
        + f"; status=$?; cp -a {model_dir} {kept}; exit $status",
        tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert (f"Could not write checkpoint {model_dir}/checkpoints/ckpt-4: " in result.stderr
            and "No space left on device" in result.stderr)
    assert f"The earlier checkpoints are intact (newest: {model_dir}/checkpoints/ckpt-2)" in result.stderr
    assert sorted(os.listdir(kept / "checkpoints")) == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    for name, value in checkpoint_tensors(str(kept / "checkpoints" / "ckpt-2")).items():
        assert np.all(np.isfinite(value)), name


# ------------------------------------------------------------ multi-worker


def _run_cluster(args, kill_at=None, worker_env=None):
    """Runs two localhost workers (worker 0 is the chief); returns [(status, output)].
    `kill_at` applies to both, `worker_env` ({index: variables}) to one."""
    ports = free_ports(2)
    workers = []
    for index in range(2):
        env = {k: v for k, v in os.environ.items() if k not in (KILL_AT_VARIABLE, KILL_SIGNAL_VARIABLE)}
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": index}})
        if kill_at:
            env[KILL_AT_VARIABLE] = kill_at
        env.update((worker_env or {}).get(index, {}))
        workers.append(subprocess.Popen(train_command("--strategy=multi_worker", *args),
                                        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [w.communicate(timeout=240)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    return [(w.returncode, out) for w, out in zip(workers, outputs)]


# What a cluster leaves in model_dir: the chief's files only.
CHIEF_RUN_FILES = [".lock", "checkpoints", "config.json", "flags.txt", "labels.json", "logs",
                   "summary.json", "training_time.json"]


# The SIGTERM test above resumes a cluster too (and removes a stale scratch copy).
@pytest.mark.slow
def test_restarted_cluster_resumes_from_the_chiefs_last_checkpoint(tmp_path, image_tree, reference):
    model_dir = copy_of_reference(reference, tmp_path)  # the chief's run, 12 of 16 steps done
    (model_dir / ".worker_worker_1" / "stale").mkdir(parents=True)  # as a killed worker leaves it
    restarted = _run_cluster([f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}",
                              "--epochs=4"])
    for status, output in restarted:
        assert status == 0, output[-3000:]
        assert f"Resuming from {model_dir}/checkpoints/ckpt-12 at step 12 of 16" in output
        assert "step 16/16" in output
    assert summary(model_dir)["start_step"] == 12 and latest_step(model_dir) == 16
    # Only the chief writes in model_dir; the other worker's scratch copy is gone.
    assert sorted(os.listdir(model_dir)) == CHIEF_RUN_FILES


def test_sigterm_to_one_worker_stops_the_cluster_after_one_step_and_the_rerun_matches(
        tmp_path, image_tree):
    model_dir = tmp_path / "run"
    args = [f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}"]
    # The preemption notice reaches the non-chief alone, at the end of its step 4.
    # Both workers train one more step and stop there: step 5, mid-epoch, which no
    # --checkpoint_every=2 save would have written.
    notice = {KILL_AT_VARIABLE: "train.step_end@4", KILL_SIGNAL_VARIABLE: "SIGTERM"}
    for status, output in _run_cluster(args, worker_env={1: notice}):
        assert status == 143, output[-3000:]
        assert f"Stopped by SIGTERM at step 5 of {STEPS}" in output
    assert latest_step(model_dir) == 5

    (model_dir / ".worker_worker_1" / "stale").mkdir(parents=True)  # as a killed worker leaves it
    for status, output in _run_cluster(args):
        assert status == 0, output[-3000:]
        assert f"Resuming from {model_dir}/checkpoints/ckpt-5 at step 5 of {STEPS}" in output
    assert summary(model_dir)["start_step"] == 5 and latest_step(model_dir) == STEPS
    # Only the chief writes in model_dir; the other worker's scratch copies are gone.
    assert sorted(os.listdir(model_dir)) == CHIEF_RUN_FILES

    # The resumed cluster ends on an uninterrupted cluster's tensors. (Not on the
    # one-process run's: the cluster's cross-worker sums round differently, and
    # Adam's slots of the prior player drift apart by up to 2 % in 12 steps.)
    uninterrupted = tmp_path / "uninterrupted"
    for status, output in _run_cluster([f"--dataset=folder:{image_tree}",
                                        f"--model_dir={uninterrupted}"]):
        assert status == 0, output[-3000:]
    assert_same_tensors(checkpoint_tensors(str(model_dir / "checkpoints" / f"ckpt-{STEPS}")),
                        checkpoint_tensors(str(uninterrupted / "checkpoints" / f"ckpt-{STEPS}")))


@pytest.mark.slow
def test_killed_cluster_resumes_from_the_chiefs_last_checkpoint(tmp_path, image_tree):
    model_dir = tmp_path / "run"
    args = [f"--dataset=folder:{image_tree}", f"--model_dir={model_dir}", "--epochs=2"]
    # Both workers die after step 3 (ckpt-2 is the chief's last checkpoint).
    for status, output in _run_cluster(args, kill_at="train.step_end@3"):
        assert status == -signal.SIGKILL, output[-3000:]
    assert latest_step(model_dir) == 2

    restarted = _run_cluster(args)
    for status, output in restarted:
        assert status == 0, output[-3000:]
        assert f"Resuming from {model_dir}/checkpoints/ckpt-2 at step 2 of 8" in output
        assert "step 8/8" in output
    # Only the chief wrote: its checkpoints, logs and run files; the other worker's
    # scratch checkpoints (left by the kill too) are gone.
    assert summary(model_dir)["start_step"] == 2 and latest_step(model_dir) == 8
    assert sorted(os.listdir(model_dir)) == CHIEF_RUN_FILES
