"""Encoded image -> the encoder's input: decoding, channels, resizing, scaling.

One implementation for training, evaluation and the exported serving signature,
so an image gets the same pixels on every path (up to training's augmentation,
`dim_tf.data.augment`).
"""

from __future__ import annotations

import tensorflow as tf


def convert_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [..., c] with c in 1..4 (gray, gray+alpha, RGB, RGBA) -> [..., channels].

    Alpha is dropped; colour is converted (ITU-R 601 luma for RGB -> gray).
    Shared by the training pipeline and the exported serving signature.
    """
    is_color = tf.shape(image)[-1] >= 3
    if channels == 3:
        image = tf.cond(is_color, lambda: image[..., :3],
                        lambda: tf.image.grayscale_to_rgb(image[..., :1]))
    else:
        image = tf.cond(is_color, lambda: tf.image.rgb_to_grayscale(image[..., :3]),
                        lambda: image[..., :1])
    return image


def resize_to(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [..., H, W, C] -> uint8 [..., size, size, C]: antialiased bilinear resize,
    down or up (a 28x28 image for a 32x32 encoder is enlarged), skipped when the
    image already has that size. Shared with serving."""
    height, width = tf.shape(image)[-3], tf.shape(image)[-2]
    return tf.cond(
        tf.logical_and(tf.equal(height, size), tf.equal(width, size)),
        lambda: image,
        lambda: resize_image(image, [size, size]),
    )


def resize_image(image: tf.Tensor, height_width) -> tf.Tensor:
    """uint8 [..., H, W, C] -> uint8 [..., height, width, C].

    The one resize kernel of training, evaluation and serving: antialiased bilinear
    (antialiasing only matters when shrinking; enlarging without it differs by up to
    one grey level after rounding, enough to make training and serving pixels differ).
    """
    return _to_uint8(tf.image.resize(image, height_width, antialias=True))


def _to_uint8(resized: tf.Tensor) -> tf.Tensor:
    """Resized float pixels back to uint8, rounded: truncating would turn a flat 128
    into 127 wherever interpolation gives 127.99998."""
    return tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8)


def decode_image(encoded: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [H, W, channels] from JPEG/PNG/BMP/GIF bytes, whatever the file's own
    channels (gray, gray+alpha, RGB, RGBA)."""
    image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(convert_channels(image, channels), [None, None, channels])


def scale_to_unit_range(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the encoders' input range."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def prepare_batch(images: tf.Tensor, size: int, channels: int) -> tf.Tensor:
    """uint8 [N, H, W, 1 or 3] -> float32 [N, size, size, channels] in [-1, 1]: the
    serving signature's preprocessing, the same pixels `preprocess` gives each image
    without augmentation (channels converted, `resize_to` down or up, scaled)."""
    prepared = resize_to(convert_channels(images, channels), size)
    return scale_to_unit_range(tf.ensure_shape(prepared, [None, size, size, channels]))


def preprocess(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 image -> float32 [size, size, C] in [-1, 1], resized to size x size
    whether smaller or larger (`resize_to`, as the serving signature does): the
    evaluation stream's pixels, and training's without augmentation."""
    resized = tf.ensure_shape(resize_to(image, size), [size, size, image.shape[-1]])
    return scale_to_unit_range(resized)
