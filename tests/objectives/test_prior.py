"""Prior matching: D's loss, gradient penalty, accuracy, encoder loss."""

import numpy as np
import tensorflow as tf

from dim_tf.models.heads import build_prior_discriminator
from dim_tf.objectives.prior import (
    discriminator_terms,
    encoder_adversarial_loss,
    sample_uniform_prior,
    squash_codes,
)


def _softplus(x):
    return np.logaddexp(0.0, x)


def test_discriminator_terms_match_per_example_computation():
    d = build_prior_discriminator(6)
    prior = sample_uniform_prior([5, 6], tf.constant([1, 2]))
    codes = squash_codes(tf.random.normal((5, 6)))
    terms = discriminator_terms(d, prior, codes)
    real, fake = d(prior).numpy()[:, 0], d(codes).numpy()[:, 0]
    np.testing.assert_allclose(terms.loss, _softplus(-real) + _softplus(fake), rtol=1e-5)
    np.testing.assert_allclose(terms.accuracy, 0.5 * ((real > 0) + (fake < 0)))
    for i in range(5):
        penalty = 0.0
        for batch in (prior, codes):
            x = tf.Variable(batch[i: i + 1])
            with tf.GradientTape() as tape:
                out = d(x)
            penalty += 0.5 * float(tf.reduce_sum(tape.gradient(out, x) ** 2))
        np.testing.assert_allclose(terms.gradient_penalty[i], penalty, rtol=1e-4)


def test_gradient_penalty_is_differentiable_in_d_weights():
    d = build_prior_discriminator(4)
    prior = sample_uniform_prior([3, 4], tf.constant([0, 0]))
    codes = squash_codes(tf.random.normal((3, 4)))
    with tf.GradientTape() as tape:
        penalty = tf.reduce_mean(discriminator_terms(d, prior, codes).gradient_penalty)
    grads = tape.gradient(penalty, d.trainable_variables)
    assert any(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads if g is not None)


def test_encoder_loss_is_non_saturating():
    d = build_prior_discriminator(4)
    codes = squash_codes(tf.random.normal((3, 4)))
    np.testing.assert_allclose(
        encoder_adversarial_loss(d, codes), _softplus(-d(codes).numpy()[:, 0]), rtol=1e-5
    )


def test_prior_samples_are_uniform_and_reproducible():
    a = sample_uniform_prior([1000, 8], tf.constant([3, 7]))
    b = sample_uniform_prior([1000, 8], tf.constant([3, 7]))
    np.testing.assert_array_equal(a, b)
    assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) < 1.0
    assert abs(float(tf.reduce_mean(a)) - 0.5) < 0.02
