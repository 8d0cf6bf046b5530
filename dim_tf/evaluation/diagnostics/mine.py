"""A MINE estimate (Belghazi et al. 2018) of I(X; Y) between images and their codes."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from dim_tf.evaluation.diagnostics.common import (
    DiagnosticData,
    DiagnosticSettings,
    dense,
    fit,
    initializer,
    prepare,
)
from dim_tf.objectives.estimators import per_example_mi

DEFAULTS = DiagnosticSettings(batch_size=64, learning_rate=1e-4)
# Critic temperature: scores = cos / t, so estimates are at most 2 / t = 20 nats.
MINE_TEMPERATURE = 0.1


def mine_estimate(train: DiagnosticData, test: DiagnosticData,
                  settings: DiagnosticSettings = DEFAULTS) -> float:
    """MINE-style Donsker-Varadhan lower bound on I(X; Y) in nats (Belghazi et al. 2018).

    The critic is separable and bounded, T(x, y) = cos(f(x), g(y)) / 0.1: f is a
    small conv net on the image (conv 3x3 stride 2 64 -> ReLU -> conv 3x3 stride 2
    128 -> ReLU -> flatten -> dense 256) and g an MLP on the code (dense 256 ->
    ReLU -> dense 256), so one batch of n pairs gives all n x n scores
    scores[i, j] = T(x_j, y_i) with the matching pairs on the diagonal. It is
    trained and evaluated with the per-row DV estimator of
    `dim_tf.objectives.estimators.per_example_mi(..., "dv")`
    (mean_pos T - log mean_neg exp T, the other images of the batch being the
    negatives of each code). The estimate is the mean over held-out batches of
    the shuffled test split.

    Why: MINE is the paper's direct measure of how much information about the
    image the code keeps (Table 3 reports 45.09 for DIM(L) on CIFAR-10, with
    its own critic and settings; this function returns nats). Held-out pairs
    keep the estimate from rewarding a critic that memorised the training set.

    When Y is a deterministic function of X the true I(X; Y) is infinite and an
    unbounded critic's estimate keeps growing with training; the bounded critic
    caps it at 2 / MINE_TEMPERATURE = 20 nats, so compare runs with the same
    settings and data. A critic that overfits the training pairs can make the
    held-out estimate slightly negative when X and Y are independent.
    Standardising the codes (see `prepare`) does not change MI.

    Args:
        train: images [N_train, H, W, C] in [-1, 1] and their codes [N_train, D].
        test: held-out images and codes of the same shapes.
        settings: `batch_size` pairs per step and per held-out batch; both
            splits need at least that many rows.

    Returns:
        The mean held-out DV estimate in nats (float).

    Raises:
        ConfigError, DataError: see `prepare`.
    """
    train, test = prepare(train, test, settings, images=True, batched_test=True)
    rng = np.random.default_rng(settings.seed)
    image_net, code_net = _mine_critic(train.images.shape[1:], train.codes.shape[1], rng)

    def dv(images, codes, training):
        # scores[i, j] = T(image_j, code_i): rows are codes, candidates images.
        # A bounded critic: cosine similarity / MINE_TEMPERATURE lies in [-1/t, 1/t],
        # so the estimate is at most 2/t nats. Unbounded dot products let the DV
        # estimate of a deterministic encoder (whose true I(X; Y) is infinite) grow
        # without limit with training (hundreds of thousands of nats), which
        # compares nothing.
        scores = tf.matmul(tf.math.l2_normalize(code_net(codes, training=training), -1),
                           tf.math.l2_normalize(image_net(images, training=training), -1),
                           transpose_b=True) / MINE_TEMPERATURE
        return per_example_mi(scores[:, :, tf.newaxis], tf.range(tf.shape(scores)[0]), "dv")

    fit(lambda images, codes: tf.reduce_mean(dv(images, codes, True).loss),
        image_net.trainable_variables + code_net.trainable_variables,
        lambda index: (train.images[index], train.codes[index]),
        len(train.codes), settings, rng)

    @tf.function(jit_compile=False)
    def test_step(images, codes):
        return dv(images, codes, False).mi

    # Shuffled so that each held-out batch mixes the test split (it may be
    # sorted by class); the last incomplete batch is dropped so every row has
    # the same number of negatives.
    batch_size = settings.batch_size
    order = rng.permutation(len(test.codes))
    estimates = []
    for start in range(0, len(test.codes) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        estimates.append(test_step(test.images[index], test.codes[index]).numpy())
    return float(np.mean(np.concatenate(estimates)))


def _mine_critic(image_shape, code_units: int, rng: np.random.Generator):
    """The two halves f (images -> [n, 256]) and g (codes -> [n, 256]) of T = f . g."""
    images = keras.Input(tuple(image_shape), name="images")
    h = images
    for filters, name in ((64, "conv1"), (128, "conv2")):
        h = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                          kernel_initializer=initializer(rng), dtype="float32", name=name)(h)
    h = layers.Flatten(dtype="float32")(h)
    image_net = keras.Model(images, dense(256, rng, "image_embedding")(h), name="mine_images")
    codes = keras.Input((code_units,), name="codes")
    h = dense(256, rng, "code_hidden", "relu")(codes)
    code_net = keras.Model(codes, dense(256, rng, "code_embedding")(h), name="mine_codes")
    return image_net, code_net
