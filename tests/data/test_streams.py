"""The training stream (resumable at any step, split across input pipelines) and
the evaluation stream: the same pixels as serving for images smaller than the encoder's."""

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.config import Augmentation
from dim_tf.data import loaders, preprocessing, source as source_lib, streams
from tests.training.synthetic import write_image_folder

FLIPS = Augmentation(random_flip=True)
# Every augmentation, each view drawing its own.
FULL = Augmentation(random_crop=True, crop_min_area=0.5, random_flip=True, color_jitter=0.5,
                    grayscale_probability=0.3)
STREAMS = pytest.mark.parametrize("augmentation, views", [(FLIPS, 1), (FULL, 2)],
                                  ids=["flips", "all-2-views"])


@pytest.fixture
def folder(tmp_path):
    write_image_folder(tmp_path / "images", {"train": 20, "test": 6})
    return str(tmp_path / "images")


def _stream(source, start_step, steps=7, augmentation=FLIPS, **kwargs):
    dataset = streams.training_dataset(
        source, global_batch_size=4, steps_per_epoch=5, start_step=start_step, seed=3,
        image_size=32, channels=3, augmentation=augmentation, shuffle_buffer=8, **kwargs,
    )
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(steps)]


@STREAMS
def test_stream_resumed_at_any_step_matches_uninterrupted(folder, augmentation, views):
    source = loaders.load_source(f"folder:{folder}", "train")
    straight = _stream(source, 0, steps=14, augmentation=augmentation, views=views)
    assert straight[0][0].shape == ((4, 32, 32, 3) if views == 1 else (4, views, 32, 32, 3))
    for start in (3, 5, 9):
        resumed = _stream(source, start, augmentation=augmentation, views=views)
        for (a, la), (b, lb) in zip(straight[start:], resumed):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(la, lb)
    # Epochs differ in order; every epoch covers 20 distinct images (5 steps x 4).
    first_epoch = np.concatenate([b[0] for b in straight[:5]])
    second_epoch = np.concatenate([b[0] for b in straight[5:10]])
    assert not np.array_equal(first_epoch, second_epoch)
    assert len({x.tobytes() for x in first_epoch}) == 20
    if views > 1:  # each view of an image is augmented apart, and anew every epoch
        assert not any(np.array_equal(x[0], x[1]) for x in first_epoch)


@STREAMS
def test_stream_splits_global_batches_across_input_pipelines(folder, augmentation, views):
    source = loaders.load_source(f"folder:{folder}", "train")
    whole = _stream(source, 0, steps=4, augmentation=augmentation, views=views)
    halves = [
        _stream(source, 0, steps=4, augmentation=augmentation, views=views,
                input_context=tf.distribute.InputContext(2, i, 2))
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
    # random crop without padding (if any) then covers the whole image, so all three
    # paths must agree.
    pixels = np.random.default_rng(3).integers(0, 256, (28, 28, file_channels), dtype=np.uint8)
    (tmp_path / "train" / "digit").mkdir(parents=True)
    (tmp_path / "train" / "digit" / "0.png").write_bytes(tf.io.encode_png(pixels).numpy())
    source = loaders.load_source(f"folder:{tmp_path}", "train")
    train_images, _ = next(iter(streams.training_dataset(
        source, global_batch_size=1, steps_per_epoch=1, start_step=0, seed=5, image_size=32,
        channels=channels, augmentation=Augmentation(random_crop=random_crop, crop_padding=0))))
    eval_images, _ = next(iter(streams.evaluation_dataset(source, batch_size=1, image_size=32,
                                                          channels=channels)))
    served = preprocessing.prepare_batch(tf.constant(pixels[None]), 32, channels)  # serving's
    assert train_images.shape == eval_images.shape == served.shape == (1, 32, 32, channels)
    np.testing.assert_allclose(train_images, eval_images, atol=1e-6)
    np.testing.assert_allclose(served, eval_images, atol=1e-6)
    assert (source_lib.log_if_enlarged(source, channels, 32)
            and not source_lib.log_if_enlarged(source, channels, 28))


def test_mirrored_replicas_get_their_rows_of_the_global_batch_of_views(folder):
    # The colour kernel is XLA-compiled inside the input pipeline of each replica.
    source = loaders.load_source(f"folder:{folder}", "train")
    whole = _stream(source, 0, steps=2, augmentation=FULL, views=2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    distributed = strategy.distribute_datasets_from_function(
        lambda context: streams.training_dataset(
            source, global_batch_size=4, steps_per_epoch=5, start_step=0, seed=3, image_size=32,
            channels=3, augmentation=FULL, views=2, shuffle_buffer=8, input_context=context))
    for (images, labels), (want, want_labels) in zip(distributed, whole):
        got = np.concatenate([x.numpy() for x in strategy.experimental_local_results(images)])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(
            np.concatenate(strategy.experimental_local_results(labels)), want_labels)
