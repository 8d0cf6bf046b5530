"""Critic scores and the choice of candidates."""

import numpy as np
import tensorflow as tf

from dim_tf.models.heads import ConcatAndConvolveCritic
from dim_tf.objectives.scores import (
    concat_critic_scores,
    dot_product_scores,
    select_candidates,
)


def test_dot_product_scores_are_every_code_map_location_pair():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(4, 6)).astype(np.float32)
    maps = rng.normal(size=(4, 3, 3, 6)).astype(np.float32)
    scores, positive = dot_product_scores(codes, maps)
    expected = np.einsum("iu,jabu->ijab", codes, maps).reshape(4, 4, 9)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(positive.numpy(), np.arange(4))


def test_groups_restrict_candidates_to_their_group():
    rng = np.random.default_rng(1)
    codes = rng.normal(size=(6, 5)).astype(np.float32)
    maps = rng.normal(size=(6, 2, 2, 5)).astype(np.float32)
    scores, positive = dot_product_scores(codes, maps, group_size=3)
    assert scores.shape == (6, 3, 4)
    np.testing.assert_array_equal(positive.numpy(), [0, 1, 2, 0, 1, 2])
    full = np.einsum("iu,jabu->ijab", codes, maps).reshape(6, 6, 4)
    np.testing.assert_allclose(scores.numpy()[4], full[4, 3:6], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.numpy()[1], full[1, 0:3], rtol=1e-5, atol=1e-5)


def test_select_candidates_with_offset():
    c = select_candidates(tf.constant(4), tf.constant(4), tf.constant(8), 4)
    np.testing.assert_array_equal(c.row_index.numpy(), [4, 5, 6, 7])
    np.testing.assert_array_equal(c.candidate_index.numpy()[0], [4, 5, 6, 7])
    np.testing.assert_array_equal(c.positive_index.numpy(), [0, 1, 2, 3])


def test_concat_critic_pairs_each_code_with_own_map_and_next_image():
    critic = ConcatAndConvolveCritic(hidden_units=8)
    codes = tf.random.normal((3, 4))
    maps = tf.random.normal((3, 2, 2, 5))
    scores, positive = concat_critic_scores(critic, codes, maps)
    assert scores.shape == (3, 2, 4)
    np.testing.assert_array_equal(positive.numpy(), [0, 0, 0])
    direct = critic(codes, tf.stack([maps, tf.roll(maps, -1, axis=0)], axis=1)).numpy()
    np.testing.assert_allclose(scores.numpy(), direct, rtol=1e-5, atol=1e-5)
    # The critic sees the concatenation [tile(y); c] at every location.
    w_map, w_code = critic.map_in.kernel.numpy(), critic.code_in.kernel.numpy()
    h = np.maximum(maps[1, 0, 1].numpy() @ w_map + codes[0].numpy() @ w_code + critic.map_in.bias.numpy(), 0)
    h = np.maximum(h @ critic.hidden.kernel.numpy() + critic.hidden.bias.numpy(), 0)
    expected = h @ critic.score.kernel.numpy()[:, 0] + critic.score.bias.numpy()[0]
    np.testing.assert_allclose(scores.numpy()[0, 1, 1], expected, rtol=1e-4, atol=1e-5)
