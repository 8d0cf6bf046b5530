"""Prior matching (Hjelm et al. 2019, sec. 3.3): an adversarial game on sigmoid(Y).

A discriminator D tells samples of the prior (uniform on [0, 1]^d) from the
encoder's squashed codes; the encoder is trained to fool it. All functions
return per-example values so replicas can reduce them by the global batch.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class DiscriminatorTerms(NamedTuple):
    """Per-example terms of D's objective; D minimises loss + weight * penalty."""

    loss: tf.Tensor  # softplus(-D(prior)) + softplus(D(code))
    gradient_penalty: tf.Tensor  # 0.5 (|dD/dz (prior)|^2 + |dD/dz (code)|^2)
    accuracy: tf.Tensor  # fraction of the pair (prior, code) D classifies right


def squash_codes(y: tf.Tensor) -> tf.Tensor:
    """What D sees of the global code: sigmoid(Y), in float32 (raw Y feeds MI and probes)."""
    return tf.sigmoid(tf.cast(y, tf.float32))


def sample_uniform_prior(
    shape: tf.Tensor, seed: tf.Tensor
) -> tf.Tensor:
    """Stateless uniform [0, 1) samples: reproducible from (seed pair), resumable."""
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)


def discriminator_terms(
    discriminator, prior_samples: tf.Tensor, codes: tf.Tensor
) -> DiscriminatorTerms:
    """D's per-example loss, zero-centred gradient penalty on both sides, accuracy.

    `codes` must already be cut from the encoder's graph (`tf.stop_gradient`):
    D's update must not move the encoder.
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([prior_samples, codes])
        real_logits = tf.squeeze(discriminator(prior_samples, training=True), -1)
        fake_logits = tf.squeeze(discriminator(codes, training=True), -1)
        # D has no batch statistics, so d(sum of logits)/d(row) is that row's gradient.
        total = tf.reduce_sum(real_logits) + tf.reduce_sum(fake_logits)
    real_grad, fake_grad = tape.gradient(total, [prior_samples, codes])
    penalty = 0.5 * (
        tf.reduce_sum(tf.square(real_grad), axis=-1) + tf.reduce_sum(tf.square(fake_grad), axis=-1)
    )
    loss = tf.nn.softplus(-real_logits) + tf.nn.softplus(fake_logits)
    accuracy = 0.5 * (
        tf.cast(real_logits > 0, tf.float32) + tf.cast(fake_logits < 0, tf.float32)
    )
    return DiscriminatorTerms(loss, penalty, accuracy)


def encoder_adversarial_loss(discriminator, codes: tf.Tensor) -> tf.Tensor:
    """Non-saturating generator loss softplus(-D(code)) per example."""
    logits = tf.squeeze(discriminator(codes, training=False), -1)
    return tf.nn.softplus(-logits)
