"""Neural dependency measure (NDM): how far the dimensions of the code are from independent."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dim_tf.errors import DataError
from dim_tf.evaluation.diagnostics.common import (
    DiagnosticData,
    DiagnosticSettings,
    chunked,
    dense,
    fit,
    prepare,
)
from dim_tf.objectives.estimators import negative_expectation, positive_expectation

DEFAULTS = DiagnosticSettings(batch_size=128, learning_rate=1e-4)
# The held-out product of marginals is sampled by this many independent
# per-dimension shuffles of the whole test split.
TEST_SHUFFLES = 10


def neural_dependency_measure(train: DiagnosticData, test: DiagnosticData,
                              settings: DiagnosticSettings = DEFAULTS) -> float:
    """Neural dependency measure (NDM) of codes: KL(P(Y) || prod_d P(Y_d)), in nats.

    A discriminator (fc 1000 -> ReLU -> fc 200 -> ReLU -> fc 1, the
    architecture of `build_prior_discriminator`) scores real codes (positives)
    against codes whose every dimension was shuffled independently across the
    batch (negatives, samples of the product of marginals). It is trained with
    the KL f-divergence objective E-[exp(u)] - E+[u + 1], whose optimum is
    u = log p(y) / prod_d p(y_d), and the Donsker-Varadhan estimate
    mean_pos(u) - log mean_neg(exp(u)) is reported on the held-out codes, with
    negatives pooled over several shuffles of the whole test split
    (Hjelm et al. 2019, sec. 4 and Table 3; the paper reports 0.18 on CIFAR-10).

    Why: a low NDM means the code's factors are close to independent, which
    is what prior matching aims at. A held-out DV estimate is a lower bound up to
    sampling noise, so it may be slightly negative when the dimensions are
    independent. Standardising the codes (see `prepare`) does not change NDM.

    Args:
        train: the codes [N_train, D], D >= 2, that train the discriminator
            (images are not used).
        test: the held-out codes [N_test, D] the estimate is measured on.
        settings: both splits need at least `batch_size` rows.

    Returns:
        The held-out Donsker-Varadhan estimate in nats (float).

    Raises:
        ConfigError, DataError: see `prepare`; DataError also for D < 2.
    """
    train, test = prepare(train, test, settings, images=False, batched_test=True)
    if train.codes.shape[1] < 2:
        raise DataError(
            "NDM measures dependence between code dimensions and needs at least 2; "
            f"codes_train has shape {train.codes.shape}."
        )
    rng = np.random.default_rng(settings.seed)
    discriminator = _dependency_discriminator(train.codes.shape[1], rng)

    def loss(real, shuffled):
        u_pos = discriminator(real, training=True)
        u_neg = discriminator(shuffled, training=True)
        return tf.reduce_mean(negative_expectation(u_neg, "kl")) - tf.reduce_mean(
            positive_expectation(u_pos, "kl"))

    def batch(index):
        real = train.codes[index]
        # Generator.permuted shuffles every column independently along axis 0.
        return real, rng.permuted(real, axis=0)

    fit(loss, discriminator.trainable_variables, batch, len(train.codes), settings, rng)

    score = chunked(lambda x: tf.squeeze(discriminator(x, training=False), -1))
    u_pos = score(test.codes)
    u_neg = np.concatenate([score(rng.permuted(test.codes, axis=0))
                            for _ in range(TEST_SHUFFLES)])
    return float(np.mean(u_pos) - _log_mean_exp(u_neg))


def _dependency_discriminator(code_units: int, rng: np.random.Generator) -> keras.Model:
    """fc 1000 -> ReLU -> fc 200 -> ReLU -> fc 1, as `build_prior_discriminator`.

    Built here rather than reused so that its weights come from seeded
    initialisers instead of the global random state.
    """
    codes = keras.Input((code_units,), name="codes")
    h = dense(1000, rng, "fc1", "relu")(codes)
    h = dense(200, rng, "fc2", "relu")(h)
    return keras.Model(codes, dense(1, rng, "logit")(h), name="ndm_discriminator")


def _log_mean_exp(values: np.ndarray) -> float:
    values = values.astype(np.float64)
    peak = np.max(values)
    return float(peak + np.log(np.mean(np.exp(values - peak))))
