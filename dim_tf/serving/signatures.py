"""The functions an exported encoder serves, and the requests that warm them up.

- `serving_default` (`dim_tf.config.SERVING_SIGNATURE`): `images`, uint8
  [batch, height, width, 1 or 3], any batch and image size; inside the graph the
  training preprocessing runs (`dim_tf.data.preprocessing.prepare_batch`:
  channels converted, antialiased resize to the encoder's size, down or up,
  scaling to [-1, 1]) and the encoder runs in inference mode. Outputs `y` (the
  global code), `fc`, `conv` and `local`, in float32.
- `encode_normalized` (`dim_tf.config.NORMALIZED_SIGNATURE`): `images`, float32
  [batch, size, size, channels] already scaled to [-1, 1]; the same outputs.

A wrong dtype is refused by the signature's TensorSpec; a wrong rank, channel
count, image size or zero height/width fails inside the graph with a message
saying what was expected (neither TF Serving nor a loaded signature checks
shapes). An empty batch returns empty outputs, [0, ...] of the feature sizes.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from dim_tf.config import NORMALIZED_SIGNATURE, SERVING_SIGNATURE
from dim_tf.data.preprocessing import prepare_batch
from dim_tf.config import FEATURE_NAMES


def _require(images: tf.Tensor, condition: tf.Tensor, expected: str) -> tf.Tensor:
    """`images`, once `condition` holds; otherwise the call fails with `expected` and
    the shape that came (TF Serving returns the message to the client)."""
    check = tf.debugging.Assert(condition, [f"{expected}; got shape", tf.shape(images)], summarize=16)
    with tf.control_dependencies([check]):
        return tf.identity(images)


def serving_functions(encoder: keras.Model) -> dict[str, tuple[Callable, tf.TensorSpec]]:
    """{signature name: (function, its input spec)} for `encoder` (see the module
    docstring), `serving_default` first."""
    size, channels = int(encoder.input_shape[1]), int(encoder.input_shape[3])
    feature_shapes = {name: encoder.output[name].shape[1:] for name in FEATURE_NAMES}

    def features(images):
        def encode():
            outputs = encoder(images, training=False)
            return {name: tf.cast(outputs[name], tf.float32) for name in FEATURE_NAMES}

        def empty():  # the encoder's batch norm fails on a batch of zero images
            return {name: tf.zeros([0, *shape], tf.float32) for name, shape in feature_shapes.items()}

        return tf.cond(tf.shape(images)[0] > 0, encode, empty)

    def serve_normalized(images):
        # Neither the loaded signature nor TF Serving enforces the TensorSpec's shape. The
        # shape is compared as text: from the TensorSpec, TF folds tf.rank() to 4 even
        # when another rank comes, and tensors of unequal length cannot be compared.
        shape = tf.strings.reduce_join(tf.strings.as_string(tf.shape(images)), separator=",")
        shape_ok = tf.strings.regex_full_match(shape, rf"\d+,{size},{size},{channels}")
        return features(_require(images, shape_ok, f"images must be float32 [batch, {size}, "
                                                   f"{size}, {channels}] scaled to [-1, 1]"))

    def serve_uint8(images):
        images = _require(images, tf.equal(tf.rank(images), 4),
                          "images must be uint8 [batch, height, width, channels]")
        # Static rank 4 from here on (the reshape only runs after the check).
        images = tf.reshape(images, tf.shape(images)[:4] + tf.zeros([4], tf.int32))
        shape = tf.shape(images)
        images = _require(images, tf.logical_or(tf.equal(shape[3], 1), tf.equal(shape[3], 3)),
                          "images must have 1 (gray) or 3 (RGB) channels")
        images = _require(images, tf.reduce_all(shape[1:3] > 0),
                          "images must be at least 1x1 pixels (height and width >= 1)")
        return features(prepare_batch(images, size, channels))  # training's pixels, see its docstring

    return {
        SERVING_SIGNATURE: (serve_uint8, tf.TensorSpec(None, tf.uint8, name="images")),
        NORMALIZED_SIGNATURE: (serve_normalized, tf.TensorSpec([None, size, size, channels],
                                                               tf.float32, name="images")),
    }


def warmup_requests(encoder: keras.Model,
                    batch_sizes: tuple[int, ...] = (1, 4)) -> list[dict[str, np.ndarray]]:
    """A few deterministic `serving_default` requests: uint8 images at the training size."""
    size, channels = int(encoder.input_shape[1]), int(encoder.input_shape[3])
    rng = np.random.default_rng(0)
    return [{"images": rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)}
            for n in batch_sizes]
