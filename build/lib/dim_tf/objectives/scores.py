"""Critic scores of every (global code, candidate feature map) pair in a batch.

DIM takes its negatives from the batch. Which images count as candidates for a
row is a deliberate choice, made here in one place:

- the *pool* of candidates is the replica's own batch, or, with
  ``across_replicas=True`` under a `tf.distribute` strategy, the batch of every
  replica (all-gathered, with gradients flowing back to the replica that
  computed each feature);
- with a ``group_size`` g, the pool is cut into consecutive groups of g images
  and a row competes only with its own group. This keeps the number of
  negatives fixed when the batch grows, and reproduces on one device a
  multi-device run with replica-local negatives.

Every function returns ``(scores [rows, candidates, locations],
positive_index [rows])``, the input of `estimators.per_example_mi`.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class Candidates(NamedTuple):
    """Which pool entries each row of this replica is scored against.

    row_index: [n] index into the pool of each row's own image.
    candidate_index: [n, K] pool indices of each row's candidates.
    positive_index: [n] position of the row's own image among its candidates.
    """

    row_index: tf.Tensor
    candidate_index: tf.Tensor
    positive_index: tf.Tensor


def replica_layout(local_batch_size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(offset of this replica's rows in the global batch, global batch size).

    Exact for uneven splits: replicas exchange their batch sizes.
    """
    local_batch_size = tf.cast(local_batch_size, tf.int32)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.constant(0, tf.int32), local_batch_size
    sizes = context.all_gather(tf.reshape(local_batch_size, [1]), axis=0)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    return tf.reduce_sum(sizes[:replica_id]), tf.reduce_sum(sizes)


@tf.custom_gradient
def _with_dense_gradient(x):
    """Identity whose gradient is dense: all_gather's gradient cannot take the
    IndexedSlices that a later tf.gather produces."""
    return tf.identity(x), lambda dy: tf.convert_to_tensor(dy)


def pool_candidates(
    features: tf.Tensor, across_replicas: bool, group_size: int | None
) -> tuple[tf.Tensor, Candidates]:
    """The candidate pool (this replica's features, or every replica's) and, for
    each of this replica's rows, which pool entries it is scored against."""
    num_rows = tf.shape(features)[0]
    context = tf.distribute.get_replica_context()
    if not across_replicas or context is None or context.num_replicas_in_sync == 1:
        pool, offset = features, tf.constant(0, tf.int32)
    else:
        pool = _with_dense_gradient(context.all_gather(features, axis=0))
        offset, _ = replica_layout(num_rows)
    return pool, select_candidates(offset, num_rows, tf.shape(pool)[0], group_size)


def select_candidates(
    offset: tf.Tensor, num_rows: tf.Tensor, pool_size: tf.Tensor, group_size: int | None
) -> Candidates:
    """Candidate indices of rows offset..offset+num_rows-1 of a pool."""
    rows = offset + tf.range(num_rows)
    if group_size is None:
        candidate_index = tf.tile(tf.range(pool_size)[tf.newaxis], [num_rows, 1])
        return Candidates(rows, candidate_index, rows)
    tf.debugging.assert_equal(
        pool_size % group_size, 0,
        message=f"the candidate pool (batch) must be a multiple of negative_group_size={group_size}",
    )
    group_start = (rows // group_size) * group_size
    candidate_index = group_start[:, tf.newaxis] + tf.range(group_size)[tf.newaxis]
    return Candidates(rows, candidate_index, rows - group_start)


def _restrict_to_candidates(all_scores: tf.Tensor, candidates: Candidates, group_size):
    """[n, pool, L] scores -> [n, K, L] scores of each row's candidates."""
    if group_size is None:
        return all_scores
    return tf.gather(all_scores, candidates.candidate_index, axis=1, batch_dims=1)


def dot_product_scores(
    code_features: tf.Tensor,
    map_features: tf.Tensor,
    across_replicas: bool = False,
    group_size: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Encode-and-dot scores u(i, j, l) = <g(Y_i), c_l(C_j)> in float32.

    Args:
        code_features: [n, U] projected global codes of this replica.
        map_features: [n, M, M, U] (or [n, L, U]) projected local maps.
        across_replicas: draw candidates from every replica's batch.
        group_size: restrict candidates to groups of this many images.
    """
    codes = tf.cast(code_features, tf.float32)
    maps = tf.cast(map_features, tf.float32)
    units = tf.shape(maps)[-1]
    maps = tf.reshape(maps, [tf.shape(maps)[0], -1, units])  # [n, L, U]
    pool, candidates = pool_candidates(maps, across_replicas, group_size)
    all_scores = tf.einsum("iu,jlu->ijl", codes, pool)
    return _restrict_to_candidates(all_scores, candidates, group_size), candidates.positive_index


def concat_critic_scores(
    critic,
    codes: tf.Tensor,
    local_maps: tf.Tensor,
    across_replicas: bool = False,
    group_size: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Concat-and-convolve scores: each code against its own map and one negative.

    The negative of row r is the next image of its group (or pool), r+1
    cyclically: a derangement that needs no randomness, so runs are exactly
    reproducible. Returns scores [n, 2, L] with the positive at index 0.
    """
    n = tf.shape(codes)[0]
    pool, candidates = pool_candidates(local_maps, across_replicas, group_size)
    k = tf.shape(candidates.candidate_index)[1]
    next_in_group = tf.gather(
        candidates.candidate_index, (candidates.positive_index + 1) % k, batch_dims=1
    )
    pair_index = tf.stack([candidates.row_index, next_in_group], axis=1)  # [n, 2]
    scores = critic(codes, tf.gather(pool, pair_index))
    return tf.cast(scores, tf.float32), tf.zeros([n], tf.int32)


def global_critic_scores(
    critic,
    codes: tf.Tensor,
    local_maps: tf.Tensor,
    across_replicas: bool = False,
    group_size: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Global-discriminator scores of every (Y_i, C_j) pair: [n, K, 1]."""
    pool, candidates = pool_candidates(critic.encode_maps(local_maps), across_replicas, group_size)
    scores = critic.pair_scores(
        critic.encode_codes(codes), tf.gather(pool, candidates.candidate_index)
    )
    return tf.cast(scores, tf.float32)[:, :, tf.newaxis], candidates.positive_index
