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


def _relu_masks(weights, z):
    w1, b1, w2, b2, _, _ = weights
    m1 = (z @ w1 + b1) > 0
    return m1, (np.maximum(z @ w1 + b1, 0) @ w2 + b2) > 0


def _numpy_penalty(weights, prior, codes, masks_of=None):
    """Mean over rows of 0.5 (|dD/dz (prior)|^2 + |dD/dz (code)|^2), float64.

    D = fc1 -> ReLU -> fc2 -> ReLU -> logit is piecewise linear:
    dD/dz = W1 diag(m1) W2 diag(m2) w3, with m the ReLUs' on-masks at z, taken
    at `masks_of` (weights) if given: the polynomial piece that contains them."""
    w1, _, w2, _, w3, _ = weights
    total = 0.0
    for z in (prior, codes):
        m1, m2 = _relu_masks(masks_of or weights, z)
        grad_z = ((m2 * w3[:, 0]) @ w2.T * m1) @ w1.T  # [rows, d]
        total = total + 0.5 * np.sum(grad_z**2, axis=1)
    return float(np.mean(total))


def test_gradient_penalty_gradient_in_d_weights_matches_numpy():
    """d(mean penalty)/d(D's weights) is what D's update adds per unit of penalty
    weight: it must equal the derivative of the penalty written out in NumPy
    (directional derivatives by central differences; for a piecewise-linear D the
    penalty is a polynomial in the weights between ReLU switches, so central
    differences are exact up to float64 round-off). A penalty whose input gradients
    are cut (stop-gradient, or taken on an unwatched copy) gives zero instead."""
    d = build_prior_discriminator(4)
    rng = np.random.default_rng(7)
    # Non-trivial biases, so the ReLU masks differ between rows.
    for layer in d.layers[1:]:
        layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape).astype(np.float32))
    prior = sample_uniform_prior([3, 4], tf.constant([0, 0]))
    codes = squash_codes(tf.constant(rng.normal(size=(3, 4)), tf.float32))
    with tf.GradientTape() as tape:
        penalty = tf.reduce_mean(discriminator_terms(d, prior, codes).gradient_penalty)
    grads = [np.zeros(v.shape) if g is None else g.numpy().astype(np.float64)
             for g, v in zip(tape.gradient(penalty, d.trainable_variables), d.trainable_variables)]
    weights = [v.numpy().astype(np.float64) for v in d.trainable_variables]
    prior64, codes64 = prior.numpy().astype(np.float64), codes.numpy().astype(np.float64)
    # float32 sums over 1000 + 200 units: 1e-5 relative for the value, 1e-4 for
    # gradients (a double backward pass: twice the round-off, and cancellations).
    np.testing.assert_allclose(float(penalty), _numpy_penalty(weights, prior64, codes64), rtol=1e-5)
    # Closed form for the logit kernel: with g = A w3 (A = W1 diag(m1) W2 diag(m2)),
    # d(0.5 |g|^2)/d w3 = A^T g.
    w1, _, w2, _, w3, _ = weights
    want_w3 = np.zeros_like(w3)
    for z in (prior64, codes64):
        m1, m2 = _relu_masks(weights, z)
        grad_z = ((m2 * w3[:, 0]) @ w2.T * m1) @ w1.T
        want_w3[:, 0] += np.mean(((grad_z @ w1) * m1) @ w2 * m2, axis=0)
    np.testing.assert_allclose(grads[4], want_w3, rtol=1e-4, atol=1e-7)
    assert np.abs(want_w3).max() > 1e-3  # a zero gradient would not pass the line above
    # Every weight: directional derivatives along random directions, with the ReLU
    # masks held at the unperturbed weights (a unit switching inside [-eps, eps]
    # would make the difference quotient jump; the gradient is that of the piece).
    eps = 1e-4
    for _ in range(3):
        direction = [rng.normal(size=w.shape) * (np.abs(w).mean() + 1e-3) for w in weights]
        plus = _numpy_penalty([w + eps * v for w, v in zip(weights, direction)],
                              prior64, codes64, masks_of=weights)
        minus = _numpy_penalty([w - eps * v for w, v in zip(weights, direction)],
                               prior64, codes64, masks_of=weights)
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(float(np.sum(g * v)) for g, v in zip(grads, direction))
        assert abs(analytic - numeric) <= 1e-4 * abs(numeric) + 1e-9, (analytic, numeric)
        assert abs(numeric) > 1e-4


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
