"""Decoder MS-SSIM: how well the image can be recovered from its code."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from dim_tf.errors import DataError
from dim_tf.evaluation.diagnostics.common import (
    DiagnosticData,
    DiagnosticSettings,
    chunked,
    dense,
    fit,
    initializer,
    prepare,
)

DEFAULTS = DiagnosticSettings(batch_size=64, learning_rate=1e-3)
# Standard MS-SSIM weights (Wang et al. 2003), finest scale first.
MS_SSIM_POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Three scales with a 3x3 window fit 32x32 images (coarsest scale 8x8); 64x64
# images use the same setting so that values are comparable across sizes.
SMALL_IMAGE_SCALES = 3
SMALL_IMAGE_FILTER_SIZE = 3
DECODER_IMAGE_SIZES = (32, 64)


def decoder_ms_ssim(train: DiagnosticData, test: DiagnosticData,
                    settings: DiagnosticSettings = DEFAULTS) -> float:
    """Mean multi-scale SSIM of held-out images decoded from their codes, in [0, 1].

    A decoder maps Y to the image: dense to a 4x4x256 map -> ReLU, then 4x4
    stride-2 transposed convolutions with ReLU (128, 64, 32 [, 32] channels)
    up to H x W, then a 3x3 convolution to C channels with tanh. It is
    trained on the mean squared error in [-1, 1]; the reported value is the
    mean over the test split of `small_image_ms_ssim`.

    Why: how well the image can be recovered from Y is the paper's third view
    of the information Y keeps (Table 3: 0.37 for DIM(L) on CIFAR-10). The
    reference code's "MS-SSIM" is a single-scale SSIM; this is the real
    multi-scale SSIM (Wang et al. 2003) at the scales a small image has (see
    `small_image_ms_ssim`), so values are comparable between runs of this
    function, not with 5-scale MS-SSIM on large images. SSIM's structure term
    is ~1 wherever both images are flat, so images with large plain areas set
    a high floor: a decoder fed noise scores ~0.55 on plain coloured discs.
    Standardising the codes (see `prepare`) is an affine change of the input
    the first dense layer can undo.

    Args:
        train: codes [N_train, D] and their images [N_train, H, W, C] in
            [-1, 1], H = W in {32, 64}, C in {1, 3}.
        test: held-out codes and images of the same shapes.
        settings: the training split needs at least `batch_size` rows.

    Returns:
        The mean held-out MS-SSIM (float in [0, 1], 1 = perfect reconstruction).

    Raises:
        ConfigError, DataError: see `prepare`; DataError also for images of another
            size or channel count.
    """
    train, test = prepare(train, test, settings, images=True, batched_test=False)
    height, width, channels = train.images.shape[1:]
    if height != width or height not in DECODER_IMAGE_SIZES or channels not in (1, 3):
        raise DataError(
            f"decoder_ms_ssim needs square {DECODER_IMAGE_SIZES[0]}x{DECODER_IMAGE_SIZES[0]} or "
            f"{DECODER_IMAGE_SIZES[1]}x{DECODER_IMAGE_SIZES[1]} images with 1 or 3 channels; "
            f"images_train has shape {train.images.shape}."
        )
    rng = np.random.default_rng(settings.seed)
    decoder = _decoder(train.codes.shape[1], height, channels, rng)

    fit(lambda codes, images: tf.reduce_mean(tf.square(decoder(codes, training=True) - images)),
        decoder.trainable_variables,
        lambda index: (train.codes[index], train.images[index]),
        len(train.codes), settings, rng)

    score = chunked(lambda codes, images: small_image_ms_ssim(decoder(codes, training=False),
                                                              images))
    return float(np.mean(score(test.codes, test.images)))


def small_image_ms_ssim(images: tf.Tensor, references: tf.Tensor) -> tf.Tensor:
    """Per-image 3-scale MS-SSIM of images in [-1, 1], the measure of `decoder_ms_ssim`.

    Why: the standard 5 scales with an 11x11 window need images of at least 161
    pixels (the coarsest scale, 1/16 of the image, must hold the window). For
    32x32 and 64x64 images this is `tf.image.ssim_multiscale` on the images
    mapped to [0, 1] (max_val=1) with only the 3 finest scales, their standard
    power factors (0.0448, 0.2856, 0.3001) renormalised to sum to 1, and a 3x3
    window (sigma 1.5), which fits the coarsest scale (8x8 for a 32x32 image).

    Args:
        images: [N, H, W, C] images in [-1, 1]; the coarsest scale (H/4 x
            W/4, rounded up) must hold the 3x3 window.
        references: [N, H, W, C] images in [-1, 1] to compare with.

    Returns:
        [N] float32 MS-SSIM values in [0, 1].
    """
    factors = MS_SSIM_POWER_FACTORS[:SMALL_IMAGE_SCALES]
    factors = tuple(f / sum(factors) for f in factors)
    to_unit = lambda x: (tf.cast(x, tf.float32) + 1.0) / 2.0  # noqa: E731
    return tf.image.ssim_multiscale(
        to_unit(images), to_unit(references), max_val=1.0, power_factors=factors,
        filter_size=SMALL_IMAGE_FILTER_SIZE,
    )


def _decoder(code_units: int, size: int, channels: int, rng: np.random.Generator) -> keras.Model:
    """Y -> dense 4x4x256 -> ReLU -> (4x4 stride-2 deconv -> ReLU) * k -> conv 3x3 -> tanh."""
    codes = keras.Input((code_units,), name="codes")
    h = dense(4 * 4 * 256, rng, "project", "relu")(codes)
    h = layers.Reshape((4, 4, 256), dtype="float32")(h)
    filters, resolution, block = 128, 4, 0
    while resolution < size:
        block += 1
        h = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", activation="relu",
                                   kernel_initializer=initializer(rng), dtype="float32",
                                   name=f"deconv{block}")(h)
        filters, resolution = max(filters // 2, 32), resolution * 2
    images = layers.Conv2D(channels, 3, padding="same", activation="tanh",
                           kernel_initializer=initializer(rng), dtype="float32", name="image")(h)
    return keras.Model(codes, images, name="decoder")
