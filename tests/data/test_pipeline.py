"""Data: sources, decoding of any channel layout, corrupt files, resumable stream."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.data import pipeline
from tests.training.synthetic import write_image_folder


@pytest.fixture
def folder(tmp_path):
    write_image_folder(tmp_path / "images", {"train": 20, "test": 6})
    return str(tmp_path / "images")


def test_folder_source_reads_splits_labels_and_names(folder):
    source = pipeline.load_source(f"folder:{folder}", "train")
    assert source.num_examples == 20
    assert source.label_names == ("class_0", "class_1")
    records = list(source.records.as_numpy_iterator())
    assert len(records) == 20
    assert all(os.path.exists(r["name"].decode()) for r in records)
    assert {int(r["label"]) for r in records} == {0, 1}


def test_missing_split_names_the_splits(folder):
    with pytest.raises(pipeline.DataError, match="has no split 'unlabelled'.*test, train"):
        pipeline.load_source(f"folder:{folder}", "unlabelled")


def test_sample_dataset_ships_with_the_package():
    source = pipeline.load_source("sample:cifar10", "train")
    assert source.num_examples == 1000 and len(source.label_names) == 10
    assert pipeline.peek_image_shape(source, 3) == (32, 32)


def test_catalogue_dataset_without_files_explains_offline_options(tmp_path):
    with pytest.raises(pipeline.DataError) as error:
        pipeline.load_source("cifar10", "train", data_dir=str(tmp_path / "tfds"))
    message = str(error.value)
    assert "--manual_dir" in message and "folder:" in message and "--download" in message


@pytest.mark.parametrize("file_channels", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_decode_converts_any_channel_layout(file_channels, channels):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, file_channels), dtype=np.uint8)
    image = pipeline.decode_image(tf.io.encode_png(pixels), channels)
    assert image.shape == (5, 7, channels) and image.dtype == tf.uint8
    if file_channels in (1, 2) and channels == 1:
        np.testing.assert_array_equal(image[..., 0], pixels[..., 0])
    if file_channels in (3, 4) and channels == 3:
        np.testing.assert_array_equal(image, pixels[..., :3])


def test_preprocess_scales_resizes_and_crops():
    image = tf.constant(np.full((40, 48, 3), 255, np.uint8))
    out = pipeline.preprocess(image, 32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out, 1.0)
    assert float(pipeline.scale_to_unit_range(tf.zeros([1], tf.uint8))[0]) == -1.0
    crop = pipeline.preprocess(image, 32, random_crop=True, random_flip=True, seed=tf.constant([1, 2]))
    assert crop.shape == (32, 32, 3)
    small = pipeline.preprocess(tf.zeros((20, 24, 3), tf.uint8), 32, random_crop=True, seed=tf.constant([1, 2]))
    assert small.shape == (32, 32, 3)


def test_corrupt_files_are_found_by_name(folder):
    bad = os.path.join(folder, "train", "class_0", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    source = pipeline.load_source(f"folder:{folder}", "train")
    corrupt = pipeline.find_corrupt_images(source, 3)
    assert corrupt == (bad,)
    cleaned = pipeline.without_corrupt(source, corrupt)
    assert cleaned.num_examples == 20
    assert len(list(cleaned.records.as_numpy_iterator())) == 20


def _stream(source, start_step, steps=7, **kwargs):
    dataset = pipeline.training_dataset(
        source, global_batch_size=4, steps_per_epoch=5, start_step=start_step, seed=3,
        image_size=32, channels=3, random_flip=True, shuffle_buffer=8, **kwargs,
    )
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(steps)]


def test_stream_resumed_at_any_step_matches_uninterrupted(folder):
    source = pipeline.load_source(f"folder:{folder}", "train")
    straight = _stream(source, 0, steps=14)
    for start in (3, 5, 9):
        resumed = _stream(source, start)
        for (a, la), (b, lb) in zip(straight[start:], resumed):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(la, lb)
    # Epochs differ in order; every epoch covers 20 distinct images (5 steps x 4).
    first_epoch = np.concatenate([b[0] for b in straight[:5]])
    second_epoch = np.concatenate([b[0] for b in straight[5:10]])
    assert not np.array_equal(first_epoch, second_epoch)
    assert len({x.tobytes() for x in first_epoch}) == 20


def test_stream_splits_global_batches_across_input_pipelines(folder):
    source = pipeline.load_source(f"folder:{folder}", "train")
    whole = _stream(source, 0, steps=4)
    halves = [
        _stream(source, 0, steps=4, input_context=tf.distribute.InputContext(2, i, 2))
        for i in range(2)
    ]
    for step, (images, _) in enumerate(whole):
        np.testing.assert_array_equal(images[:2], halves[0][step][0])
        np.testing.assert_array_equal(images[2:], halves[1][step][0])


@pytest.mark.parametrize("random_crop", [False, True])
@pytest.mark.parametrize("file_channels, channels", [(1, 1), (1, 3), (3, 1)])
def test_smaller_image_gets_the_same_pixels_in_training_evaluation_and_serving(
        tmp_path, random_crop, file_channels, channels):
    # A 28x28 image (the MNIST family's size) for a 32x32 encoder: resized up, the
    # random crop (if any) then covers the whole image, so all three paths must agree.
    pixels = np.random.default_rng(3).integers(0, 256, (28, 28, file_channels), dtype=np.uint8)
    (tmp_path / "train" / "digit").mkdir(parents=True)
    (tmp_path / "train" / "digit" / "0.png").write_bytes(tf.io.encode_png(pixels).numpy())
    source = pipeline.load_source(f"folder:{tmp_path}", "train")
    train_images, _ = next(iter(pipeline.training_dataset(
        source, global_batch_size=1, steps_per_epoch=1, start_step=0, seed=5, image_size=32,
        channels=channels, random_crop=random_crop)))
    eval_images, _ = next(iter(pipeline.evaluation_dataset(source, batch_size=1, image_size=32,
                                                           channels=channels)))
    served = pipeline.prepare_batch(tf.constant(pixels[None]), 32, channels)  # serving's function
    assert train_images.shape == eval_images.shape == served.shape == (1, 32, 32, channels)
    np.testing.assert_allclose(train_images, eval_images, atol=1e-6)
    np.testing.assert_allclose(served, eval_images, atol=1e-6)
    assert pipeline.log_if_enlarged(source, channels, 32) and not pipeline.log_if_enlarged(source, channels, 28)


def test_random_crop_enlarges_a_small_image_to_a_short_side_of_exactly_size():
    # 20x28 -> 32x45 (short side exactly 32, long side rounded up), then cropped
    # along the long side only: a crop never falls outside the image.
    image = tf.constant(np.tile(np.arange(28, dtype=np.uint8) * 9, (20, 1))[..., None])
    crops = [pipeline.preprocess(image, 32, random_crop=True, seed=tf.constant([s, 0])) for s in range(8)]
    assert all(c.shape == (32, 32, 1) for c in crops)
    # Every row of a crop is the same (the image varies along its width only).
    assert all(np.ptp(c.numpy(), axis=0).max() < 1e-6 for c in crops)
    assert len({float(c[0, 0, 0]) for c in crops}) > 1  # offsets along the width differ
