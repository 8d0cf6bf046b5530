"""Decoding of any channel layout, resizing, scaling and random crops."""

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.config import Augmentation
from dim_tf.data import augment, preprocessing

CROP_FLIP = Augmentation(random_crop=True, random_flip=True)


@pytest.mark.parametrize("file_channels", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_decode_converts_any_channel_layout(file_channels, channels):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, file_channels), dtype=np.uint8)
    image = preprocessing.decode_image(tf.io.encode_png(pixels), channels)
    assert image.shape == (5, 7, channels) and image.dtype == tf.uint8
    if file_channels in (1, 2) and channels == 1:
        np.testing.assert_array_equal(image[..., 0], pixels[..., 0])
    if file_channels in (3, 4) and channels == 3:
        np.testing.assert_array_equal(image, pixels[..., :3])


def test_preprocess_scales_resizes_and_crops():
    image = tf.constant(np.full((40, 48, 3), 255, np.uint8))
    out = preprocessing.preprocess(image, 32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out, 1.0)
    assert float(preprocessing.scale_to_unit_range(tf.zeros([1], tf.uint8))[0]) == -1.0
    crop = augment.augment(image, 32, CROP_FLIP, tf.constant([1, 2]))
    assert crop.shape == (1, 32, 32, 3)
    small = augment.augment(tf.zeros((20, 24, 3), tf.uint8), 32, CROP_FLIP, tf.constant([1, 2]))
    assert small.shape == (1, 32, 32, 3)


def test_random_crop_enlarges_a_small_image_to_a_short_side_of_exactly_size():
    # 20x28 -> 32x45 (short side exactly 32, long side rounded up), then cropped
    # along the long side only (without padding): a crop never falls outside the image.
    image = tf.constant(np.tile(np.arange(28, dtype=np.uint8) * 9, (20, 1))[..., None])
    crops = [augment.augment(image, 32, Augmentation(random_crop=True, crop_padding=0),
                             tf.constant([s, 0]))[0] for s in range(8)]
    assert all(c.shape == (32, 32, 1) for c in crops)
    # Every row of a crop is the same (the image varies along its width only).
    assert all(np.ptp(c.numpy(), axis=0).max() < 1e-6 for c in crops)
    assert len({float(c[0, 0, 0]) for c in crops}) > 1  # offsets along the width differ
