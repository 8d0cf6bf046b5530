"""`python -m dim_tf.train`: flags, validation, folder data, resume, multi-worker, logs."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.ports import free_ports
from tests.training.synthetic import write_image_folder

# End to end: subprocesses of the command lines (pytest.ini).
pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--encoder=basic32x32", "--mi_units=16", "--batch_size=8", "--verbose=2",
        "--log_every=1", "--learning_rate=1e-3"]


def run_train(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "dim_tf.train", *args], cwd=REPO_ROOT,
        env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, {"train": 32, "test": 8})
    return root


@pytest.mark.parametrize(
    "args, message",
    [
        (["--estimator=mine"], "--estimator='mine' is not valid. Allowed: jsd, dv, nce"),
        (["--batch_size=-4"], "--batch_size must be an integer >= 2"),
        (["--dataset=folder:/no/such/dir"], "folder '/no/such/dir' does not exist"),
        (["--strategy=gpu_cluster"], "--strategy='gpu_cluster' is not valid"),
        (["--alpha=0", "--beta=0"], "--alpha and --beta are both 0"),
        (["--encoder=vgg"], "--encoder='vgg' is not valid"),
        (["--dataset=sample:imagenet"], "Allowed: sample:cifar10"),
    ],
)
def test_invalid_flags_fail_before_training_and_name_the_flag(tmp_path, args, message):
    result = run_train(f"--model_dir={tmp_path / 'run'}", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_model_dir_is_an_error():
    result = run_train("--dataset=sample:cifar10")
    assert result.returncode == 2 and "--model_dir is required" in result.stderr


def test_misspelled_flag_is_an_error_naming_it(tmp_path):
    result = run_train(f"--modle_dir={tmp_path / 'run'}", "--dataset=sample:cifar10")
    assert result.returncode == 2
    assert "dim_tf.train: error: Unknown command line flag 'modle_dir'" in result.stderr
    assert "Did you mean: model_dir" in result.stderr
    assert not (tmp_path / "run").exists()


def test_stray_argument_is_an_error(tmp_path):
    result = run_train(f"--model_dir={tmp_path / 'run'}", "sample:cifar10")
    assert result.returncode == 2
    assert "unexpected arguments ['sample:cifar10']; flags look like --name=value" in result.stderr
    assert not (tmp_path / "run").exists()


def test_images_smaller_than_the_encoder_are_resized_up_with_a_note(tmp_path, image_tree):
    # Once refused ("choose an encoder for that size"); tests/test_small_images.py
    # follows such data through evaluation and serving.
    result = run_train(f"--dataset=folder:{image_tree}", f"--model_dir={tmp_path / 'run'}",
                       "--encoder=basic64x64", "--mi_units=16", "--batch_size=8", "--epochs=1",
                       "--steps_per_epoch=1", "--random_crop", "--verbose=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "images are 32x32, smaller than the 64x64 input of --encoder=basic64x64" in result.stderr
    assert glob.glob(str(tmp_path / "run" / "checkpoints" / "*"))


def test_corrupt_file_is_named_or_skipped(tmp_path, image_tree):
    bad = image_tree / "train" / "class_1" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    gray = image_tree / "train" / "class_0" / "gray.png"
    gray.write_bytes(tf.io.encode_png(np.full((32, 32, 1), 90, np.uint8)).numpy())
    common = [f"--dataset=folder:{image_tree}", "--epochs=1", *TINY]
    result = run_train(*common, f"--model_dir={tmp_path / 'strict'}")
    assert result.returncode == 2
    assert str(bad) in result.stderr and "--skip_corrupt" in result.stderr
    result = run_train(*common, f"--model_dir={tmp_path / 'lenient'}", "--skip_corrupt")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "lenient" / "summary.json").read_text())
    assert summary["skipped_images"] == [str(bad)]
    assert summary["end_step"] == 33 // 8  # 32 good images + the gray one


def test_flagfile_with_override_and_end_to_end_run(tmp_path, image_tree):
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join([f"--dataset=folder:{image_tree}", "--epochs=5",
                                   "--estimator=nce", "--checkpoint_every=3", *TINY]) + "\n")
    model_dir = tmp_path / "run"
    result = run_train(f"--flagfile={flagfile}", f"--model_dir={model_dir}", "--epochs=2",
                       f"--export_dir={tmp_path / 'export'}")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["epochs"] == 2 and config["estimator"] == "nce"  # override wins
    assert "--epochs=2" in (model_dir / "flags.txt").read_text()
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["end_step"] == summary["total_steps"] == 8 and summary["stopped_by"] == "epochs"
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-8")
    assert "local_loss" in summary["metrics"]
    events = glob.glob(str(model_dir / "logs" / "train" / "events.out.tfevents*"))
    assert events
    tags = {v.tag for e in events for ev in tf.compat.v1.train.summary_iterator(e)
            for v in ev.summary.value}
    assert {"loss/local", "mi/local", "prior/disc_accuracy", "optimizer/learning_rate",
            "speed/images_per_second", "epoch_loss/local"} <= tags
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()
    assert result.stdout.rstrip().endswith(f", exported {tmp_path / 'export' / '1'}")
    assert "--export_dir=" in (model_dir / "flags.txt").read_text()  # every setting, reusable
    assert set(summary) == {"model_dir", "total_steps", "start_step", "end_step", "seconds",
                            "trained_seconds", "stopped_by_time_budget", "stopped_by",
                            "images_per_second", "metrics", "skipped_images"}
    # Resuming with other run-defining settings is refused, naming them.
    changed = run_train(f"--flagfile={flagfile}", f"--model_dir={model_dir}", "--mi_units=32")
    assert changed.returncode == 2
    assert "--mi_units: run has 16, now 32" in changed.stderr
    # Rerunning a finished run trains nothing.
    again = run_train(f"--flagfile={flagfile}", f"--model_dir={model_dir}", "--epochs=2")
    assert again.returncode == 0
    assert json.loads((model_dir / "summary.json").read_text())["start_step"] == 8
    assert "step 8/8" in again.stdout


@pytest.mark.slow  # the default run has the CLI's cluster in test_sigterm_to_one_worker_stops_...
def test_two_workers_on_localhost(tmp_path, image_tree):
    ports = free_ports(2)
    model_dir = tmp_path / "run"
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "dim_tf.train", f"--dataset=folder:{image_tree}",
             f"--model_dir={model_dir}", "--strategy=multi_worker", "--epochs=2", *TINY],
            cwd=REPO_ROOT, env=dict(os.environ, TF_CONFIG=json.dumps(tf_config)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    try:
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-3000:]
        assert "step 8/8" in out
    # Only the chief (worker 0) leaves files; the other worker's scratch copy is gone.
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-8")
    assert glob.glob(str(model_dir / "logs" / "train" / "events.out.tfevents*"))
    assert not glob.glob(str(model_dir / ".worker_*"))
