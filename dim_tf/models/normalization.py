"""Batch and layer normalisation that train fast on CPU, as drop-in Keras layers.

Keras 3 composes both from generic ops, upcasting bfloat16 inputs to float32 and
back; on the paper's DIM(L) step the local head normalises [batch x 64, 2048]
activations twice, and those passes (forward and backward) cost a large share of
a bfloat16 step. These subclasses keep Keras' variables, configuration and
inference path, so checkpoints and saved models are unchanged; only training
passes change:

- `BatchNormalization` runs TensorFlow's fused kernel (FusedBatchNormV3, oneDNN
  on CPU), which reads bfloat16 directly and keeps its statistics in float32.
  It falls back to Keras' path where the fused kernel does not apply: statistics
  synchronised over several replicas, a mask, renormalisation, a non-last axis.
- `LayerNormalization` computes in float32 with a hand-written backward pass
  (two row reductions instead of the autodiff graph of `moments`).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="dim_tf")
class BatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training pass uses the fused kernel.

    Same statistics as Keras: normalised with the biased batch variance, moving
    averages `moving * momentum + batch * (1 - momentum)` of the batch mean and
    biased variance.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or not self._can_fuse(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        x = tf.reshape(inputs, [-1, 1, 1, channels]) if inputs.shape.rank != 4 else inputs
        if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        y, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=tf.zeros([0]), variance=tf.zeros([0]),
            epsilon=self.epsilon, data_format="NHWC", is_training=True,
        )
        count = tf.cast(tf.size(x) // channels, tf.float32)
        # The kernel returns the Bessel-corrected variance; Keras averages the biased one.
        variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(tf.reshape(y, tf.shape(inputs)), self.compute_dtype)

    def _can_fuse(self, inputs, mask) -> bool:
        rank = inputs.shape.rank
        if mask is not None or self.renorm or rank is None or rank < 2:
            return False
        if self.axis not in (-1, rank - 1):
            return False
        if self.synchronized:
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                return False
        return True


@keras.saving.register_keras_serializable(package="dim_tf")
class LayerNormalization(layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the last axis with a fused-style gradient.

    Statistics and the affine transform are computed in float32 whatever the
    input dtype; the output has the layer's compute dtype. Other axes and RMS
    scaling use Keras' implementation.
    """

    def call(self, inputs):
        rank = inputs.shape.rank
        if self.rms_scaling or rank is None or list(self.axis) != [rank - 1]:
            return super().call(inputs)
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        return tf.cast(_layer_norm_last_axis(inputs, gamma, beta, self.epsilon), self.compute_dtype)


def _layer_norm_last_axis(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor,
                          epsilon: float) -> tf.Tensor:
    @tf.custom_gradient
    def normalise(x, gamma, beta):
        xf = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(xf, axes=[-1], keepdims=True)
        inverse_std = tf.math.rsqrt(variance + epsilon)
        normalised = (xf - mean) * inverse_std

        def grad(upstream):
            upstream = tf.cast(upstream, tf.float32)
            outer_axes = list(range(upstream.shape.rank - 1))
            d_normalised = upstream * gamma
            d_x = inverse_std * (
                d_normalised
                - tf.reduce_mean(d_normalised, -1, keepdims=True)
                - normalised * tf.reduce_mean(d_normalised * normalised, -1, keepdims=True)
            )
            return (tf.cast(d_x, x.dtype), tf.reduce_sum(upstream * normalised, outer_axes),
                    tf.reduce_sum(upstream, outer_axes))

        return normalised * gamma + beta, grad

    return normalise(x, gamma, beta)
