"""AMDIM's score stabilisation against its formulas: values and gradients, and off = identity."""

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.objectives.stabilization import score_penalty, soft_clip


def _scores(shape=(3, 4, 5), scale=20.0, seed=0):
    return np.random.default_rng(seed).normal(0.0, scale, shape).astype(np.float32)


@pytest.mark.parametrize("clip", [0.5, 10.0])
def test_soft_clip_is_c_tanh_s_over_c_with_its_derivative(clip):
    scores = _scores()
    s = tf.constant(scores)
    with tf.GradientTape() as tape:
        tape.watch(s)
        clipped = soft_clip(s, clip)
    gradient = tape.gradient(clipped, s).numpy()
    s64 = scores.astype(np.float64)
    np.testing.assert_allclose(clipped.numpy(), clip * np.tanh(s64 / clip), rtol=1e-6, atol=1e-6)
    # d/ds c tanh(s / c) = 1 - tanh(s / c)^2 (float32: within a few eps of 1 absolute)
    np.testing.assert_allclose(gradient, 1.0 - np.tanh(s64 / clip) ** 2, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(clipped.numpy()) <= clip)
    # Linear near 0, saturated far out: scores of 20 sd are clipped, small ones are not.
    small = soft_clip(tf.constant([1e-3 * clip]), clip).numpy()
    np.testing.assert_allclose(small, [1e-3 * clip], rtol=1e-6)


def test_soft_clip_keeps_scores_in_float32_under_bfloat16():
    clipped = soft_clip(tf.constant(_scores(), tf.bfloat16), 10.0)
    assert clipped.dtype == tf.float32


def test_soft_clip_off_is_the_identity():
    s = tf.constant(_scores())
    assert soft_clip(s, 0.0) is s
    with tf.GradientTape() as tape:
        tape.watch(s)
        out = soft_clip(s, 0)
    np.testing.assert_array_equal(tape.gradient(out, s).numpy(), np.ones(s.shape, np.float32))


def test_score_penalty_is_the_mean_square_over_candidates_and_locations_per_row():
    scores = _scores(scale=3.0)
    s = tf.constant(scores)
    with tf.GradientTape() as tape:
        tape.watch(s)
        penalty = score_penalty(s)
        total = tf.reduce_sum(penalty)
    rows, candidates, locations = scores.shape
    s64 = scores.astype(np.float64)
    want = [np.sum(s64[i] ** 2) / (candidates * locations) for i in range(rows)]
    assert penalty.shape == (rows,) and penalty.dtype == tf.float32
    np.testing.assert_allclose(penalty.numpy(), want, rtol=1e-6)
    # d/ds_ijl of sum_i mean_jl s^2 = 2 s_ijl / (candidates * locations)
    np.testing.assert_allclose(tape.gradient(total, s).numpy(), 2 * s64 / (candidates * locations),
                               rtol=1e-6, atol=1e-7)
