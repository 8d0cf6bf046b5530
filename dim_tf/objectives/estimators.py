"""Mutual-information estimators over a batch of critic scores.

Every DIM objective reduces to the same shape of problem: for each *row* (a
global code Y_i) there is a set of *candidates* (feature maps of images in the
batch, one of which, the positive, comes from the same image as Y_i) and a set
of *locations* (the M x M positions of a local map, or a single one for the
global objective). A critic has scored each (row, candidate, location) triple:

    scores: float tensor [rows, candidates, locations]
    positive_index: int tensor [rows], the candidate that pairs with the row.

Estimators return per-row losses so that a `tf.distribute` replica can reduce
them by the *global* batch size (see `tf.nn.compute_average_loss`); averaging
the rows gives exactly the batch-level estimator of the paper because every row
has the same number of positives and negatives.

The estimators (Hjelm et al. 2019, sec. 3.1 and appendix; Nowozin et al. 2016
for the f-divergences), with E+ the mean over positives and E- the mean over
negatives of a row:

- ``jsd``: Jensen-Shannon. E+ of (log 2 - softplus(-u)), E- of
  (softplus(u) - log 2). Loss is bounded below by -2 log 2.
- ``dv``: Donsker-Varadhan, log mean_neg exp(u) - mean_pos u, applied per row,
  i.e. the conditional DV bound E_y[E_{x|y} T - log E_x e^T], a valid lower
  bound on I(X; Y) that is at least as tight as pooling all rows (Jensen).
- ``nce``: infoNCE. For every (row, location) the positive score competes with
  the scores of every negative candidate at every location; same-image
  candidates at other locations are removed (the reference code leaves them in
  at the constant -10). MI estimate: log(K) - loss, K = negatives + 1.
- ``gan``, ``kl``, ``rkl``, ``h2`` (squared Hellinger), ``x2`` (Pearson
  chi-squared): the f-GAN variational bounds, loss = E-[f*(g(u))] - E+[g(u)].
  ``x2`` uses the f-GAN conjugate t^2/4 + t; the reference code's chi-squared
  pair is not a valid conjugate and diverges.

All computation is in float32, whatever the precision of the scores.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

from dim_tf.config import ESTIMATORS, F_DIVERGENCES, canonical_estimator

LOG_2 = math.log(2.0)

class MIEstimate(NamedTuple):
    """Per-row loss (to minimise) and mutual-information estimate (nats)."""

    loss: tf.Tensor
    mi: tf.Tensor


def positive_expectation(scores: tf.Tensor, measure: str) -> tf.Tensor:
    """Elementwise g(u): the term averaged over positive pairs (f-GAN)."""
    u = tf.cast(scores, tf.float32)
    if measure == "jsd":
        return LOG_2 - tf.nn.softplus(-u)
    if measure == "gan":
        return -tf.nn.softplus(-u)
    if measure == "kl":
        return u + 1.0
    if measure == "rkl":
        return -tf.exp(-u)
    if measure == "h2":
        return 1.0 - tf.exp(-u)
    if measure == "x2":
        return u
    raise ValueError(f"{measure!r} is not an f-divergence; choose from {F_DIVERGENCES}.")


def negative_expectation(scores: tf.Tensor, measure: str) -> tf.Tensor:
    """Elementwise f*(g(u)): the term averaged over negative pairs (f-GAN)."""
    u = tf.cast(scores, tf.float32)
    if measure == "jsd":
        return tf.nn.softplus(u) - LOG_2
    if measure == "gan":
        return tf.nn.softplus(u)
    if measure == "kl":
        return tf.exp(u)
    if measure == "rkl":
        return u - 1.0
    if measure == "h2":
        return tf.exp(u) - 1.0
    if measure == "x2":
        return 0.25 * tf.square(u) + u
    raise ValueError(f"{measure!r} is not an f-divergence; choose from {F_DIVERGENCES}.")


def _check_scores(scores: tf.Tensor) -> None:
    if scores.shape.rank != 3:
        raise ValueError(
            "MI scores must have shape [rows, candidates, locations]; got shape "
            f"{scores.shape}."
        )
    candidates = scores.shape[1]
    if candidates is not None and candidates < 2:
        raise ValueError(
            "MI estimation needs at least one negative candidate per row (a batch of "
            f"at least 2 images); got {candidates} candidate(s)."
        )


def per_example_mi(
    scores: tf.Tensor, positive_index: tf.Tensor, estimator: str
) -> MIEstimate:
    """Per-row loss and MI estimate of `estimator` on a block of critic scores.

    Args:
        scores: [rows, candidates, locations] critic scores u(i, j, l).
        positive_index: [rows] integer index of each row's positive candidate.
        estimator: one of `ESTIMATORS` (see the module docstring).

    Returns:
        `MIEstimate` of two float32 tensors of shape [rows].
    """
    estimator = canonical_estimator(estimator)
    scores = tf.convert_to_tensor(scores)
    _check_scores(scores)
    u = tf.cast(scores, tf.float32)
    positive_index = tf.cast(positive_index, tf.int32)
    shape = tf.shape(u)
    candidates, locations = shape[1], shape[2]

    positives = tf.gather(u, positive_index, axis=1, batch_dims=1)  # [rows, L]
    negative_mask = tf.logical_not(
        tf.cast(tf.one_hot(positive_index, candidates), tf.bool)
    )[:, :, tf.newaxis]  # [rows, C, 1]
    negative_mask = tf.broadcast_to(negative_mask, shape)
    num_negatives = tf.cast((candidates - 1) * locations, tf.float32)

    if estimator == "dv":
        masked = tf.where(negative_mask, u, -math.inf)
        log_mean_exp = tf.reduce_logsumexp(masked, axis=[1, 2]) - tf.math.log(num_negatives)
        loss = log_mean_exp - tf.reduce_mean(positives, axis=1)
        return MIEstimate(loss=loss, mi=-loss)

    if estimator == "nce":
        masked = tf.where(negative_mask, u, -math.inf)
        log_sum_exp_negatives = tf.reduce_logsumexp(masked, axis=[1, 2])  # [rows]
        # -log softmax of the positive = log(1 + sum_neg exp(u_neg - u_pos)).
        per_location = tf.nn.softplus(log_sum_exp_negatives[:, tf.newaxis] - positives)
        loss = tf.reduce_mean(per_location, axis=1)
        return MIEstimate(loss=loss, mi=tf.math.log(num_negatives + 1.0) - loss)

    # f-divergences. The positives are zeroed before f* so that exp() of a large
    # positive score cannot turn into inf * 0 = NaN in the masked sum.
    e_positive = tf.reduce_mean(positive_expectation(positives, estimator), axis=1)
    negatives_only = tf.where(negative_mask, u, 0.0)
    e_negative = tf.reduce_sum(
        tf.where(negative_mask, negative_expectation(negatives_only, estimator), 0.0),
        axis=[1, 2],
    ) / num_negatives
    loss = e_negative - e_positive
    return MIEstimate(loss=loss, mi=-loss)

