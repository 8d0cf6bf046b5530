"""Image folders full of unusual and broken files (docs/reliability.md, "Data").

A generated corpus (tests/faults/image_corpus.py) holds every image mode and
format TensorFlow or Pillow reads, files whose content does not match their
extension, 1x1, flat and too-large images, truncated, empty, non-image and
unreadable files, dangling links and operating-system clutter. Each file must be
decoded to the right colours or reported with the right reason.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.config import Augmentation, EvalConfig, TrainConfig
from dim_tf.data import augment, image_files, labels, loaders, preprocessing
from dim_tf.data import source as source_lib
from dim_tf.errors import DataError
from tests.faults.image_corpus import (CLASSES, SYSTEM_FILES, TEST_ONLY_CLASS, Decodes, Reported,
                                       write_corpus)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--encoder=basic32x32", "--mi_units=16", "--batch_size=4", "--epochs=1",
        "--steps_per_epoch=2", "--verbose=0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "images"
    return str(root), write_corpus(str(root))


def _gray(rgb):
    return round(0.2989 * rgb[0] + 0.5870 * rgb[1] + 0.1140 * rgb[2])


def _tiny_config(tmp_path, dataset, **overrides):
    values = dict(model_dir=str(tmp_path / "run"), dataset=dataset, encoder="basic32x32", mi_units=16,
                  batch_size=4, epochs=1, steps_per_epoch=2, verbose=0)
    values.update(overrides)
    return TrainConfig(**values)


def test_every_file_is_decoded_to_its_colours_or_reported_with_its_reason(corpus):
    root, expected = corpus
    source = loaders.load_source(f"folder:{root}", "train")
    bad = {b.path: b.reason for b in source_lib.find_bad_images(source, 3)}
    reported = {path: e.reason for path, e in expected.items() if isinstance(e, Reported)}
    assert set(bad) == set(reported)
    for path, phrase in reported.items():
        assert phrase in bad[path], (path, bad[path])

    usable = source_lib.without_corrupt(source, tuple(bad))
    decoded = {}
    for record in usable.records.as_numpy_iterator():
        name = os.fsdecode(record["name"])
        decoded[name] = (preprocessing.decode_image(record["image"], 3).numpy(),
                         preprocessing.decode_image(record["image"], 1).numpy())
    assert set(decoded) == {p for p, e in expected.items() if isinstance(e, Decodes)}
    assert usable.num_examples == len(decoded)
    for path, (rgb, gray) in decoded.items():
        want = expected[path]
        assert rgb.shape[:2] == gray.shape[:2] == want.size, path
        column = rgb.shape[1] // 2
        for row, colour in ((2, want.top), (-3, want.bottom)):
            row = min(row, rgb.shape[0] - 1) if row >= 0 else max(row, -rgb.shape[0])
            np.testing.assert_allclose(rgb[row, column], colour, atol=want.tolerance, err_msg=path)
            np.testing.assert_allclose(gray[row, column, 0], _gray(colour), atol=want.tolerance + 2,
                                       err_msg=path)


def test_system_files_are_never_classes_nor_images(corpus):
    root, _ = corpus
    source = loaders.load_source(f"folder:{root}", "train")
    # The class list: label folders of both splits, sorted, hidden folders left out.
    assert source.label_names == tuple(sorted((*CLASSES, TEST_ONLY_CLASS)))
    names = {os.fsdecode(n) for n in source.records.map(lambda r: r["name"]).as_numpy_iterator()}
    seen = names | {b.path for b in source.rejected}
    for relative in SYSTEM_FILES:
        assert not any(p.startswith(os.path.join(root, relative)) for p in seen), relative
    assert loaders.load_source(f"folder:{root}", "test").num_examples == len(CLASSES) + 1
    assert image_files.split_names(root) == ["test", "train"]


def test_flat_and_one_pixel_images_scale_without_nan():
    for value in (0, 128, 255):
        for shape in ((1, 1, 3), (36, 40, 3)):
            image = tf.constant(np.full(shape, value, np.uint8))
            for crop in (False, True):
                augmentation = Augmentation(random_crop=crop, random_flip=crop)
                out = augment.augment(image, 32, augmentation, tf.constant([1, 2]))
                assert out.shape == (1, 32, 32, 3)
                np.testing.assert_allclose(out, value / 127.5 - 1.0, atol=1e-6)


@pytest.mark.e2e
def test_a_huge_image_is_refused_from_its_header_without_decoding(corpus):
    root, _ = corpus
    huge = os.path.join(root, "train", "cats", "huge.png")  # 8100 x 8000: 65 MB if decoded
    script = (
        "import resource, sys\n"
        "from dim_tf.data.image_files import probe\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "result = probe(sys.argv[1], 0)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(grown // 1024, result.reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, huge], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    grown_mb, reason = done.stdout.split(" ", 1)
    assert int(grown_mb) < 20, done.stdout
    assert reason.startswith("image too large: 8100 x 8000 = 64,800,000 pixels > the limit")


def test_first_bad_file_stops_training_before_it_starts(corpus, tmp_path):
    root, expected = corpus
    config = _tiny_config(tmp_path, f"folder:{root}")
    from dim_tf.training.run import train

    with pytest.raises(DataError) as error:
        train(config)
    message = str(error.value)
    first = min(p for p, e in expected.items() if isinstance(e, Reported))
    assert f"{first}: {expected[first].reason}" in message
    assert f"{sum(isinstance(e, Reported) for e in expected.values())} of " in message
    assert "--skip_corrupt" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.e2e
def test_skip_corrupt_logs_each_file_and_trains_on_the_rest(corpus, tmp_path):
    root, expected = corpus
    model_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "dim_tf.train", f"--dataset=folder:{root}", f"--model_dir={model_dir}",
         "--skip_corrupt", *TINY], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reported = sorted(p for p, e in expected.items() if isinstance(e, Reported))
    skipped = [line.split("Skipping ", 1)[1]
               for line in done.stderr.splitlines() if "Skipping " in line]
    assert len(skipped) == len(reported)
    for path, line in zip(reported, skipped):
        assert line.startswith(f"{path}: ") and expected[path].reason in line, line
    good = sum(isinstance(e, Decodes) for e in expected.values())
    assert f"Skipped {len(reported)} of {len(expected)} file(s)" in done.stderr
    assert f"{good} images left" in done.stderr
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["skipped_images"] == reported and summary["end_step"] == 2
    assert all(np.isfinite(v) for v in summary["metrics"].values())
    # The class list, with spaces and non-ASCII letters, is stored with the run...
    assert labels.read_labels(str(model_dir)) == tuple(sorted((*CLASSES, TEST_ONLY_CLASS)))
    # ...and a changed class list refuses to resume, naming the change.
    os.makedirs(os.path.join(root, "train", "zebras"))
    try:
        from dim_tf.training.run import train

        with pytest.raises(DataError, match=r"added \['zebras'\].*Label indices would change"):
            train(_tiny_config(tmp_path, f"folder:{root}", skip_corrupt=True))
    finally:
        os.rmdir(os.path.join(root, "train", "zebras"))


def test_single_class_of_flat_images_trains_and_probes_refuse_clearly(tmp_path):
    from PIL import Image

    from dim_tf.evaluation.run import evaluate
    from dim_tf.training.run import train

    colours = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (255, 0, 0), (0, 90, 200), (7, 7, 7)]
    for split, count in (("train", 8), ("test", 4)):
        os.makedirs(tmp_path / "flat" / split / "only")
        for i in range(count):
            Image.new("RGB", (32, 32), colours[i % len(colours)]).save(
                tmp_path / "flat" / split / "only" / f"{i}.png")
    result = train(_tiny_config(tmp_path, f"folder:{tmp_path / 'flat'}"))
    assert result.end_step == 2
    assert result.metrics and all(np.isfinite(v) for v in result.metrics.values())
    assert labels.read_labels(str(tmp_path / "run")) == ("only",)

    report = evaluate(EvalConfig(model_dir=str(tmp_path / "run"), layers=("y",), diagnostics=False,
                                 batch_size=4), progress=False)
    assert report.probes["skipped"].startswith("the data has a single class: classification "
                                                  "probes need labels of at least 2 classes")


def test_empty_missing_and_all_bad_datasets_say_what_is_wrong(tmp_path):
    os.makedirs(tmp_path / "empty" / "train" / "cats")
    source = loaders.load_source(f"folder:{tmp_path / 'empty'}", "train")
    with pytest.raises(DataError, match="split 'train' has no images: expected image files"):
        source_lib.usable_images(source, 3, skip_bad=False)
    with pytest.raises(DataError, match=r"has no split 'test'; it has: train\. Layout"):
        loaders.load_source(f"folder:{tmp_path / 'empty'}", "test")

    os.makedirs(tmp_path / "flat_layout" / "cats")  # label folders without a split folder
    (tmp_path / "flat_layout" / "cats" / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="look like label folders: put them in a split folder"):
        loaders.load_source(f"folder:{tmp_path / 'flat_layout'}", "train")

    bad_dir = tmp_path / "bad" / "train" / "cats"
    os.makedirs(bad_dir)
    (bad_dir / "a.jpg").write_bytes(b"")
    (bad_dir / "b.jpg").write_text("not a picture")
    source = loaders.load_source(f"folder:{tmp_path / 'bad'}", "train")
    with pytest.raises(DataError, match=r"(?s)2 of 2 file\(s\).*a.jpg: zero bytes"):
        source_lib.usable_images(source, 3, skip_bad=False)
    with pytest.raises(DataError, match=r"no usable images: all 2 file\(s\) were skipped"):
        source_lib.usable_images(source, 3, skip_bad=True)
