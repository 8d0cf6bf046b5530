"""Images smaller than the encoder's input: a folder of 28x28 grayscale images (the
MNIST family's size) trains a 32x32 encoder, is evaluated and is served, each
resizing the images up the same way."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.data import loaders, preprocessing, streams
from tests.training.synthetic import disc_images

# End to end: subprocesses of the command lines (pytest.ini).
pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE, ENCODER_SIZE = 28, 32
NOTE = f"images are {SIZE}x{SIZE}, smaller than the {ENCODER_SIZE}x{ENCODER_SIZE} input"


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


def _write_gray_folder(root: Path, counts: dict, classes: int = 3) -> None:
    """28x28 one-channel PNGs as root/<split>/digit_<k>/NNN.png."""
    for offset, (split, n) in enumerate(counts.items()):
        images = disc_images(n, size=SIZE, channels=1, seed=offset)
        for i, image in enumerate(images):
            label_dir = root / split / f"digit_{i % classes}"
            label_dir.mkdir(parents=True, exist_ok=True)
            pixels = ((image + 1.0) * 127.5).round().astype(np.uint8)
            (label_dir / f"{i:03d}.png").write_bytes(tf.io.encode_png(pixels).numpy())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_images")
    _write_gray_folder(root / "images", {"train": 24, "test": 12})
    result = _run("dim_tf.train", f"--dataset=folder:{root / 'images'}", f"--model_dir={root / 'run'}",
                  "--encoder=basic32x32", "--channels=1", "--mi_units=16", "--batch_size=8",
                  "--epochs=1", "--steps_per_epoch=3", "--verbose=0", f"--export_dir={root / 'export'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{NOTE} of --encoder=basic32x32: they are resized up to 32x32" in result.stderr
    return root


def test_small_grayscale_folder_trains_evaluates_and_serves(small_run, caplog):
    # Evaluation in this process: a second TensorFlow start would double the test's time.
    from dim_tf.config import EvalConfig
    from dim_tf.evaluation.run import evaluate

    run, images = small_run / "run", small_run / "images"
    config = json.loads((run / "config.json").read_text())
    assert config["channels"] == 1 and config["encoder"] == "basic32x32"

    with caplog.at_level(logging.INFO, logger="absl"):  # absl's level may be raised by earlier tests
        report = evaluate(EvalConfig(model_dir=str(run), probes=("linear", "knn"), probe_epochs=2,
                                     knn_k=3, batch_size=16, diagnostics=False), progress=False)
    assert NOTE in caplog.text
    assert report.settings["image_size"] == ENCODER_SIZE and report.settings["channels"] == 1
    assert report.settings["test_examples"] == 12
    assert 0.0 <= report.probes["knn"]["y"]["top1"] <= 100.0
    assert (run / "evaluation" / "report.json").exists()

    loaded = tf.saved_model.load(str(small_run / "export" / "1"))
    serve, normalized = loaded.signatures["serving_default"], loaded.signatures["encode_normalized"]

    # Served as the 28x28 uint8 files are; the encoder sees the evaluation
    # pipeline's (= training's `preprocess`) pixels of the same files.
    source = loaders.load_source(f"folder:{images}", "test")
    raw = np.stack([preprocessing.decode_image(r["image"], 1).numpy() for r in source.records])
    assert raw.shape == (12, SIZE, SIZE, 1) and raw.dtype == np.uint8
    prepared, _ = next(iter(streams.evaluation_dataset(source, batch_size=12,
                                                        image_size=ENCODER_SIZE, channels=1)))
    served = serve(images=tf.constant(raw))
    expected = normalized(images=prepared)
    assert served["y"].shape == (12, config["y_units"])
    assert served["local"].shape[0] == served["conv"].shape[0] == served["fc"].shape[0] == 12
    for name in ("y", "fc", "conv", "local"):
        np.testing.assert_allclose(served[name], expected[name], atol=1e-4, err_msg=name)
    assert serve(images=tf.constant(raw[:1]))["y"].shape == (1, config["y_units"])
