"""SavedModel export: outputs in a fresh process, signatures, warm-up, input checks,
versions, assets. Kills and races: tests/faults/test_export_faults.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.data.preprocessing import resize_to, scale_to_unit_range
from dim_tf.errors import DamagedRunFileError, VersionExistsError
from dim_tf.models.encoders import build_encoder
from dim_tf.serving.export import export_encoder, run_assets
from dim_tf.serving.versions import LOCK_FILE, next_version

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained_like_encoder():
    """An encoder with non-trivial batch-norm statistics (inference mode matters)."""
    encoder = build_encoder("basic32x32", sync_batch_norm=False)
    rng = np.random.default_rng(0)
    for _ in range(3):
        encoder(rng.uniform(-1, 0.5, (16, 32, 32, 3)).astype(np.float32), training=True)
    return encoder


def _reference(encoder, images_uint8):
    prepared = scale_to_unit_range(resize_to(tf.constant(images_uint8), 32))
    return {k: v.numpy() for k, v in encoder(prepared, training=False).items()}


# Inputs that must fail, by signature ("serve": serving_default, "normalized":
# encode_normalized), with the text the caller must get back.
BAD_INPUTS = {
    "err_serve_float32": (np.zeros((2, 32, 32, 3), np.float32),
                          "expected to be a uint8 tensor but is a float tensor"),
    "err_serve_rank3": (np.zeros((32, 32, 3), np.uint8),
                        "images must be uint8 [batch, height, width, channels]; got shape] [32 32 3]"),
    "err_serve_rank5": (np.zeros((1, 2, 32, 32, 3), np.uint8),
                        "images must be uint8 [batch, height, width, channels]; got shape] [1 2 32 32 3]"),
    "err_serve_2_channels": (np.zeros((2, 32, 32, 2), np.uint8),
                             "images must have 1 (gray) or 3 (RGB) channels; got shape] [2 32 32 2]"),
    "err_serve_4_channels": (np.zeros((2, 32, 32, 4), np.uint8),
                             "images must have 1 (gray) or 3 (RGB) channels; got shape] [2 32 32 4]"),
    "err_serve_zero_height": (np.zeros((2, 0, 32, 3), np.uint8),
                              "at least 1x1 pixels (height and width >= 1); got shape] [2 0 32 3]"),
    "err_serve_zero_width": (np.zeros((2, 32, 0, 3), np.uint8),
                             "at least 1x1 pixels (height and width >= 1); got shape] [2 32 0 3]"),
    "err_normalized_size": (np.zeros((2, 64, 64, 3), np.float32),
                            "images must be float32 [batch, 32, 32, 3] scaled to [-1, 1]; got shape] "
                            "[2 64 64 3]"),
    "err_normalized_rank3": (np.zeros((32, 32, 3), np.float32),
                             "images must be float32 [batch, 32, 32, 3] scaled to [-1, 1]; got shape] "
                             "[32 32 3]"),
    "err_normalized_uint8": (np.zeros((2, 32, 32, 3), np.uint8),
                             "expected to be a float tensor but is a uint8 tensor"),
}


@pytest.fixture(scope="module")
def fresh_process(trained_like_encoder, tmp_path_factory):
    """Exports, then runs every input through the signatures in a process that never
    imports dim_tf (as TF Serving would). Returns (export path, inputs, outputs)."""
    root = tmp_path_factory.mktemp("fresh")
    path = export_encoder(trained_like_encoder, str(root / "model"),
                          extra_assets={"flags.txt": "--estimator=jsd\n"})
    rng = np.random.default_rng(1)
    inputs = {
        "u8_batch1": rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8),
        "u8_batch7": rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8),
        "u8_size50": rng.integers(0, 256, (3, 50, 41, 3), dtype=np.uint8),
        "u8_gray": rng.integers(0, 256, (2, 32, 32, 1), dtype=np.uint8),
        "u8_empty": np.zeros((0, 32, 32, 3), np.uint8),
        "u8_empty_size50_gray": np.zeros((0, 50, 41, 1), np.uint8),
        "f32_batch7": rng.uniform(-1, 1, (7, 32, 32, 3)).astype(np.float32),
        "f32_empty": np.zeros((0, 32, 32, 3), np.float32),
        **{name: array for name, (array, _) in BAD_INPUTS.items()},
    }
    np.savez(root / "inputs.npz", **inputs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "serving" / "run_saved_model.py"), path,
         str(root / "inputs.npz"), str(root / "outputs.npz")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return path, inputs, dict(np.load(root / "outputs.npz"))


def test_fresh_process_outputs_match_in_memory_encoder(fresh_process, trained_like_encoder):
    path, inputs, outputs = fresh_process
    assert path.endswith(os.path.join("model", "1"))
    for name, images in inputs.items():
        if name.startswith("err_") or len(images) == 0:
            continue
        if name == "u8_gray":
            expected = _reference(trained_like_encoder, np.repeat(images, 3, axis=-1))
        elif name.startswith("u8_"):
            expected = _reference(trained_like_encoder, images)
        else:
            expected = {k: v.numpy() for k, v in trained_like_encoder(images, training=False).items()}
        for key in ("y", "fc", "conv", "local"):
            actual = outputs[f"{name}/{key}"]
            assert actual.shape == expected[key].shape
            assert np.max(np.abs(actual - expected[key])) < 1e-5, (name, key)
    assert int(outputs["warmup_replayed"]) >= 2
    assert (Path(path) / "assets.extra" / "flags.txt").read_text() == "--estimator=jsd\n"


def test_empty_batch_returns_empty_outputs_of_the_feature_sizes(fresh_process):
    _, _, outputs = fresh_process
    sizes = {"y": (64,), "fc": (1024,), "conv": (4, 4, 256), "local": (8, 8, 128)}
    for name in ("u8_empty", "u8_empty_size50_gray", "f32_empty"):
        for key, size in sizes.items():
            assert outputs[f"{name}/{key}"].shape == (0, *size), (name, key)
            assert outputs[f"{name}/{key}"].dtype == np.float32


def test_wrong_inputs_fail_with_what_was_expected(fresh_process):
    _, _, outputs = fresh_process
    for name, (_, message) in BAD_INPUTS.items():
        error = str(outputs[f"{name}/error"])
        assert message in error, (name, error)


@pytest.mark.e2e
def test_saved_model_cli_lists_named_signature(tmp_path, trained_like_encoder):
    path = export_encoder(trained_like_encoder, str(tmp_path / "model"))
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--all", "--dir", path],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    text = shown.stdout
    serving = text[text.index("signature_def['serving_default']"):]
    serving = serving[: serving.index("Method name is")]
    assert "inputs['images']" in serving and "dtype: DT_UINT8" in serving
    for output in ("y", "fc", "conv", "local"):
        assert f"outputs['{output}']" in serving
    assert "signature_def['encode_normalized']" in text


def test_versions_are_numbered_and_never_silently_overwritten(tmp_path, trained_like_encoder):
    base = str(tmp_path / "model")
    assert next_version(base) == 1
    first = export_encoder(trained_like_encoder, base)
    second = export_encoder(trained_like_encoder, base)
    assert (Path(first).name, Path(second).name) == ("1", "2")
    with pytest.raises(VersionExistsError, match="--overwrite"):
        export_encoder(trained_like_encoder, base, version=2)
    stamp = Path(second, "saved_model.pb").stat().st_mtime_ns
    export_encoder(trained_like_encoder, base, version=2, overwrite=True)
    assert Path(second, "saved_model.pb").stat().st_mtime_ns != stamp
    assert sorted(os.listdir(base)) == [LOCK_FILE, "1", "2"]  # no temporary directories left


def test_failed_export_leaves_no_partial_version(tmp_path, trained_like_encoder, monkeypatch):
    from dim_tf.serving import export as export_module

    def crash(*args, **kwargs):  # fails after the SavedModel itself was written
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "write_warmup_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export_encoder(trained_like_encoder, str(tmp_path / "model"))
    assert os.listdir(tmp_path / "model") == [LOCK_FILE]


@pytest.mark.e2e
def test_export_command_from_a_training_run(tmp_path):
    from tests.training.synthetic import write_image_folder

    write_image_folder(tmp_path / "images", {"train": 16})
    run = subprocess.run(
        [sys.executable, "-m", "dim_tf.train", f"--dataset=folder:{tmp_path / 'images'}",
         f"--model_dir={tmp_path / 'run'}", "--epochs=1", "--mi_units=16", "--batch_size=8",
         "--verbose=0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    labels_path = tmp_path / "run" / "labels.json"  # written by training; else stand in for it
    if not labels_path.exists():
        labels_path.write_text('["only"]\n')
    labels = labels_path.read_text()
    exported = subprocess.run(
        [sys.executable, "-m", "dim_tf.export", f"--model_dir={tmp_path / 'run'}",
         f"--export_dir={tmp_path / 'saved'}"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    info = json.loads((tmp_path / "saved" / "1" / "assets.extra" / "export_info.json").read_text())
    assert (tmp_path / "saved" / "1" / "assets.extra" / "labels.json").read_text() == labels
    assert info["step"] == 2 and info["dataset"].startswith("folder:")
    assert (tmp_path / "saved" / "1" / "assets.extra" / "config.json").exists()
    again = subprocess.run(
        [sys.executable, "-m", "dim_tf.export", f"--model_dir={tmp_path / 'run'}",
         f"--export_dir={tmp_path / 'saved'}", "--version=1"], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "dim_tf.export", f"--model_dir={tmp_path / 'nothing'}",
         f"--export_dir={tmp_path / 'saved'}"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300)
    assert missing.returncode == 2 and "config.json not found" in missing.stderr


@pytest.mark.e2e
def test_export_command_refuses_bad_flags_with_status_2(tmp_path):
    for flags, message in (([f"--export_dir={tmp_path}"], "--model_dir is required"),
                           ([f"--model_dir={tmp_path}", f"--export_dir={tmp_path}", "--version=0"],
                            "--version must be an integer >= 1"),
                           ([f"--model_dir={tmp_path}", "--export_dir"], "--export_dir")):
        result = subprocess.run([sys.executable, "-m", "dim_tf.export", *flags], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


def test_run_assets_carry_the_class_list_unchanged(tmp_path):
    labels = '["airplane", "automobile", "bird"]\n'
    (tmp_path / "labels.json").write_text(labels)
    assert run_assets(str(tmp_path), step=5)["labels.json"] == labels
    (tmp_path / "labels.json").write_text('["airplane", "autom')  # damaged
    with pytest.raises(DamagedRunFileError, match="labels.json is not valid JSON"):
        run_assets(str(tmp_path), step=5)
    (tmp_path / "labels.json").unlink()
    assert "labels.json" not in run_assets(str(tmp_path), step=5)


def test_version_directories_are_readable_like_a_plain_mkdir(tmp_path, trained_like_encoder):
    """A server running as another user must be able to read a version."""
    path = export_encoder(trained_like_encoder, str(tmp_path / "model"))
    umask = os.umask(0)
    os.umask(umask)
    assert Path(path).stat().st_mode & 0o777 == 0o777 & ~umask
