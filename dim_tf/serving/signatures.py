"""The functions an exported encoder serves, and the requests that warm them up.

The signatures are `dim_tf.config.SIGNATURES`; by input kind:

- pixels (`serving_default`, `embed`, `probe_features`): `images`, uint8
  [batch, height, width, 1 or 3], any batch and image size; inside the graph the
  training preprocessing runs (`dim_tf.data.preprocessing.prepare_batch`:
  channels converted, antialiased resize to the encoder's size, down or up,
  scaling to [-1, 1]) and the encoder runs in inference mode;
- encoded (`embed_encoded`, `probe_features_encoded`): `image_bytes`, string
  [batch] of JPEG, PNG, GIF, BMP or WebP files, each decoded (first frame), its
  channels converted and resized on its own, so one batch mixes sizes and
  formats; over REST each goes as {"b64": ...};
- normalized (`encode_normalized`): `images`, float32 [batch, size, size,
  channels] already scaled to [-1, 1].

Each returns its spec's outputs in float32: `serving_default` and
`encode_normalized` all four (`y`, `fc`, `conv`, `local`), the `embed*` ones
`y` alone, the `probe_features*` ones `conv`, `fc` and `y`.

A wrong dtype is refused by the signature's TensorSpec; a wrong rank, channel
count, image size, zero height/width or bytes that are no image fail inside
the graph with a message saying what was expected (neither TF Serving nor a
loaded signature checks shapes). An empty batch returns empty outputs, [0, ...]
of the feature sizes.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from dim_tf.config import ENCODED, FEATURE_NAMES, NORMALIZED, PIXELS, SIGNATURES
from dim_tf.data.preprocessing import decode_image, prepare_batch

# The first bytes of each accepted file format (WebP: "RIFF", a size, "WEBP").
_IMAGE_HEADERS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
ENCODED_FORMATS = "JPEG, PNG, GIF, BMP or WebP"
# The batch sizes TF Serving's batching pads to (configs/serving/batching_parameters.txt,
# allowed_batch_sizes): the warm-up runs each.
WARMUP_BATCH_SIZES = (1, 8, 16, 32, 64)


def _require(images: tf.Tensor, condition: tf.Tensor, expected: str) -> tf.Tensor:
    """`images`, once `condition` holds; otherwise the call fails with `expected` and
    the shape that came (TF Serving returns the message to the client)."""
    check = tf.debugging.Assert(condition, [f"{expected}; got shape", tf.shape(images)], summarize=16)
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _is_image_file(encoded: tf.Tensor) -> tf.Tensor:
    """Whether the bytes start like one of the accepted formats."""
    known = [tf.equal(tf.strings.substr(encoded, 0, len(header)), header)
             for header in _IMAGE_HEADERS]
    known.append(tf.logical_and(tf.equal(tf.strings.substr(encoded, 0, 4), b"RIFF"),
                                tf.equal(tf.strings.substr(encoded, 8, 4), b"WEBP")))
    return tf.reduce_any(tf.stack(known))


def serving_functions(encoder: keras.Model) -> dict[str, tuple[Callable, tf.TensorSpec]]:
    """{signature name: (function, its input spec)} for `encoder`, one per
    `dim_tf.config.SIGNATURES` (see the module docstring), `serving_default` first."""
    size, channels = int(encoder.input_shape[1]), int(encoder.input_shape[3])
    feature_shapes = {name: encoder.output[name].shape[1:] for name in FEATURE_NAMES}

    def features(images):
        def encode():
            outputs = encoder(images, training=False)
            return {name: tf.cast(outputs[name], tf.float32) for name in FEATURE_NAMES}

        def empty():  # the encoder's batch norm fails on a batch of zero images
            return {name: tf.zeros([0, *shape], tf.float32) for name, shape in feature_shapes.items()}

        return tf.cond(tf.shape(images)[0] > 0, encode, empty)

    def from_normalized(images):
        # Neither the loaded signature nor TF Serving enforces the TensorSpec's shape. The
        # shape is compared as text: from the TensorSpec, TF folds tf.rank() to 4 even
        # when another rank comes, and tensors of unequal length cannot be compared.
        shape = tf.strings.reduce_join(tf.strings.as_string(tf.shape(images)), separator=",")
        shape_ok = tf.strings.regex_full_match(shape, rf"\d+,{size},{size},{channels}")
        return features(_require(images, shape_ok, f"images must be float32 [batch, {size}, "
                                                   f"{size}, {channels}] scaled to [-1, 1]"))

    def from_pixels(images):
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

    def from_encoded(image_bytes):
        image_bytes = _require(image_bytes, tf.equal(tf.rank(image_bytes), 1),
                               f"image_bytes must be a string vector [batch] of {ENCODED_FORMATS} "
                               "files")
        image_bytes = tf.reshape(image_bytes, [-1])

        def prepare(encoded):
            check = tf.debugging.Assert(_is_image_file(encoded), [
                f"image_bytes must hold {ENCODED_FORMATS} files; a file of",
                tf.strings.length(encoded), "bytes starts with none of their headers"])
            with tf.control_dependencies([check]):
                image = decode_image(encoded, channels)
            return prepare_batch(image[tf.newaxis], size, channels)[0]

        images = tf.map_fn(prepare, image_bytes, fn_output_signature=tf.TensorSpec(
            [size, size, channels], tf.float32))
        return features(images)

    inputs = {
        PIXELS: (from_pixels, tf.TensorSpec(None, tf.uint8)),
        # Rank unknown, so the graph checks it (with [None] TF folds the check away).
        ENCODED: (from_encoded, tf.TensorSpec(None, tf.string)),
        NORMALIZED: (from_normalized, tf.TensorSpec([None, size, size, channels], tf.float32)),
    }

    def serving_function(spec):
        compute, input_spec = inputs[spec.input_kind]

        def serve(tensor):
            outputs = compute(tensor)
            return {name: outputs[name] for name in spec.outputs}

        return serve, tf.TensorSpec(input_spec.shape, input_spec.dtype, name=spec.input_name)

    return {name: serving_function(spec) for name, spec in SIGNATURES.items()}


def _random_pixels(rng: np.random.Generator, batch: int, height: int, width: int,
                   channels: int) -> np.ndarray:
    return rng.integers(0, 256, (batch, height, width, channels), dtype=np.uint8)


def warmup_requests(encoder: keras.Model) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Deterministic requests for every signature, as (signature name, inputs): at the
    encoder's size in each of WARMUP_BATCH_SIZES and, for the pixel and encoded
    inputs, one image of four times that size (each shape gets its kernels ready
    before real traffic does)."""
    size, channels = int(encoder.input_shape[1]), int(encoder.input_shape[3])
    rng = np.random.default_rng(0)
    sizes = [(n, size) for n in WARMUP_BATCH_SIZES] + [(1, 4 * size)]
    by_kind = {
        PIXELS: [_random_pixels(rng, n, side, side, channels) for n, side in sizes],
        ENCODED: [np.array([tf.io.encode_jpeg(image).numpy() if i % 2 == 0 else
                            tf.io.encode_png(image).numpy()
                            for i, image in enumerate(_random_pixels(rng, n, side, side, channels))],
                           dtype=object) for n, side in sizes],
        NORMALIZED: [_random_pixels(rng, n, size, size, channels).astype(np.float32) / 127.5 - 1
                     for n in WARMUP_BATCH_SIZES],
    }
    return [(name, {spec.input_name: value}) for name, spec in SIGNATURES.items()
            for value in by_kind[spec.input_kind]]
