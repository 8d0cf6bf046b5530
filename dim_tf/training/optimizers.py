"""The players' optimiser: the paper's Adam, updated by TensorFlow's fused kernel."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="dim_tf")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam`, each variable updated by TensorFlow's fused
    `ResourceApplyAdam` kernel.

    Keras' Adam updates a variable with a dozen element-wise ops, each a pass over
    the variable or its slots; on a CPU that memory traffic is a sizeable part of a
    DIM step (docs/performance.md). The fused kernel makes one pass, with Keras'
    formula in Keras' order: m += (g - m)(1 - beta_1), v += (g^2 - v)(1 - beta_2),
    w -= m * alpha / (sqrt(v) + epsilon), alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)
    (tested equal to `keras.optimizers.Adam`, under distribution too). The slots and
    the step count are Keras' own, so checkpoints are those of Keras' Adam.

    AMSGrad, sparse gradients and variables that are not float32 take Keras' update.
    """

    def update_step(self, gradient, variable, learning_rate):
        if (self.amsgrad or isinstance(gradient, tf.IndexedSlices)
                or variable.dtype != tf.float32):
            return super().update_step(gradient, variable, learning_rate)
        gradient = tf.cast(gradient, tf.float32)
        step = tf.cast(self.iterations + 1, tf.float32)
        beta_1, beta_2 = tf.cast(self.beta_1, tf.float32), tf.cast(self.beta_2, tf.float32)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle,
            v=self._velocities[index].handle, beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, tf.float32),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, tf.float32),
            grad=gradient)


def default_optimizer(learning_rate: float = 1e-4) -> keras.optimizers.Optimizer:
    """The paper's Adam: lr 1e-4, betas (0.5, 0.999), eps 1e-8, no weight decay."""
    return FusedAdam(learning_rate, beta_1=0.5, beta_2=0.999, epsilon=1e-8)
