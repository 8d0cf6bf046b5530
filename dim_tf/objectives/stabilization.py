"""Score stabilisation of Augmented Multiscale DIM (Bachman, Hjelm and Buchwalter 2019).

Unbounded critic scores let an estimator's loss be driven by a few very large
scores. AMDIM tames them two ways, both applied here to the scores of the
local and global objectives whatever the estimator (AMDIM itself used them
with infoNCE):

- `soft_clip`: the estimator sees c * tanh(s / c) instead of s: about s for
  |s| << c, never beyond +-c, with a gradient that fades smoothly;
- `score_penalty`: an L2 penalty on the *raw* scores, the mean of s^2 over a
  row's candidates and locations, added to the loss with a small weight, which
  keeps the scores near the range where the clip is linear.

Both take the [rows, candidates, locations] scores of `objectives.scores` and
compute in float32.

Scale: AMDIM applies both to dot products divided by sqrt(d), d its embedding
width (1024), with c = 20 and weight 0.05. DIM's encode-and-dot scores are
plain dot products of layer-normed mi_units-wide vectors (|s| up to about
mi_units), on which AMDIM's settings read c = 20 sqrt(mi_units) and weight
0.05 / mi_units (320 and 2e-4 at mi_units 256).
"""

from __future__ import annotations

import tensorflow as tf


def soft_clip(scores: tf.Tensor, clip: float) -> tf.Tensor:
    """c * tanh(scores / c) in float32; `clip` = c <= 0 returns the scores unchanged.

    Args:
        scores: critic scores of any shape.
        clip: the bound c, or 0 for no clip.
    """
    if clip <= 0:
        return scores
    scores = tf.cast(scores, tf.float32)
    return clip * tf.tanh(scores / clip)


def score_penalty(scores: tf.Tensor) -> tf.Tensor:
    """Per-row mean of the squared scores over candidates and locations.

    Args:
        scores: [rows, candidates, locations] raw (unclipped) critic scores.

    Returns:
        float32 [rows]: the penalty of each row, to be weighted and added to its loss.
    """
    return tf.reduce_mean(tf.square(tf.cast(scores, tf.float32)), axis=[1, 2])
