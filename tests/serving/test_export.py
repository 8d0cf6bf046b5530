"""SavedModel export: outputs in a fresh process, signatures, warm-up, atomicity, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.data.pipeline import resize_to, scale_to_unit_range
from dim_tf.models.encoders import build_encoder
from dim_tf.serving.export import export_encoder, next_version

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


def test_fresh_process_outputs_match_in_memory_encoder(tmp_path, trained_like_encoder):
    path = export_encoder(trained_like_encoder, str(tmp_path / "model"),
                          extra_assets={"flags.txt": "--estimator=jsd\n"})
    assert path == str(tmp_path / "model" / "1")
    rng = np.random.default_rng(1)
    inputs = {
        "u8_batch1": rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8),
        "u8_batch7": rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8),
        "u8_size50": rng.integers(0, 256, (3, 50, 41, 3), dtype=np.uint8),
        "u8_gray": rng.integers(0, 256, (2, 32, 32, 1), dtype=np.uint8),
        "f32_batch7": rng.uniform(-1, 1, (7, 32, 32, 3)).astype(np.float32),
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "serving" / "run_saved_model.py"), path,
         str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    for name, images in inputs.items():
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


def test_wrong_inputs_fail_with_a_clear_message(tmp_path, trained_like_encoder):
    path = export_encoder(trained_like_encoder, str(tmp_path / "model"))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="1 \\(gray\\) or 3 \\(RGB\\) channels"):
        serve(images=tf.zeros((2, 32, 32, 4), tf.uint8))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError),
                       match="uint8 \\[batch, height, width, channels\\]"):
        serve(images=tf.zeros((32, 32, 3), tf.uint8))


def test_versions_are_numbered_and_never_silently_overwritten(tmp_path, trained_like_encoder):
    base = str(tmp_path / "model")
    assert next_version(base) == 1
    first = export_encoder(trained_like_encoder, base)
    second = export_encoder(trained_like_encoder, base)
    assert (Path(first).name, Path(second).name) == ("1", "2")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_encoder(trained_like_encoder, base, version=2)
    stamp = Path(second, "saved_model.pb").stat().st_mtime_ns
    export_encoder(trained_like_encoder, base, version=2, overwrite=True)
    assert Path(second, "saved_model.pb").stat().st_mtime_ns != stamp
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary directories left


def test_failed_export_leaves_no_partial_version(tmp_path, trained_like_encoder, monkeypatch):
    from dim_tf.serving import export as export_module

    def crash(*args, **kwargs):  # fails after the SavedModel itself was written
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "write_warmup_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export_encoder(trained_like_encoder, str(tmp_path / "model"))
    assert os.listdir(tmp_path / "model") == []


def test_killed_export_leaves_no_numeric_version_without_saved_model(tmp_path):
    script = (
        "import sys\n"
        "from dim_tf.models.encoders import build_encoder\n"
        "from dim_tf.serving.export import export_encoder\n"
        "export_encoder(build_encoder('alex64x64'), sys.argv[1])\n"
    )
    base = tmp_path / "model"
    process = subprocess.Popen([sys.executable, "-c", script, str(base)], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time

    deadline = time.time() + 120
    while time.time() < deadline and not (base.exists() and any(base.iterdir())):
        time.sleep(0.01)
    time.sleep(0.5)  # let it write part of the version
    process.kill()
    process.wait()
    for entry in base.iterdir():
        if entry.name.isdigit():
            assert (entry / "saved_model.pb").exists()
    assert next_version(str(base)) in (1, 2)


def test_export_command_from_a_training_run(tmp_path):
    from tests.training.synthetic import write_image_folder

    write_image_folder(tmp_path / "images", {"train": 16})
    run = subprocess.run(
        [sys.executable, "-m", "dim_tf.train", f"--dataset=folder:{tmp_path / 'images'}",
         f"--model_dir={tmp_path / 'run'}", "--epochs=1", "--mi_units=16", "--batch_size=8",
         "--verbose=0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    exported = subprocess.run(
        [sys.executable, "-m", "dim_tf.export", f"--model_dir={tmp_path / 'run'}",
         f"--export_dir={tmp_path / 'saved'}"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    info = json.loads((tmp_path / "saved" / "1" / "assets.extra" / "export_info.json").read_text())
    assert info["step"] == 2 and info["dataset"].startswith("folder:")
    assert (tmp_path / "saved" / "1" / "assets.extra" / "config.json").exists()
    again = subprocess.run(
        [sys.executable, "-m", "dim_tf.export", f"--model_dir={tmp_path / 'run'}",
         f"--export_dir={tmp_path / 'saved'}", "--version=1"], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "dim_tf.export", f"--model_dir={tmp_path / 'nothing'}",
         f"--export_dir={tmp_path / 'saved'}"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300)
    assert missing.returncode != 0 and "config.json not found" in missing.stderr
