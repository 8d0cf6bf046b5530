"""Mixed precision: which policy `--mixed_precision` means on this machine, and
dynamic loss scaling for float16.

bfloat16 has float32's exponent range, so CPUs (with AVX512_BF16 or AMX) and TPUs
train in `mixed_bfloat16` without loss scaling. GPUs run `mixed_float16`, whose
small range makes small gradients underflow: each optimiser of a float16 player
is wrapped in a dynamic loss-scale optimiser, which skips a step whose scaled
gradients overflow and halves the scale. Scores, estimators, losses and the prior
discriminator (with its gradient penalty) stay in float32 either way.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def mixed_precision_policy() -> str:
    """`mixed_float16` where a GPU is visible, else `mixed_bfloat16` (CPU, TPU)."""
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def use_mixed_precision() -> str:
    """Sets this machine's mixed policy as Keras' global policy and returns its name."""
    policy = mixed_precision_policy()
    keras.config.set_dtype_policy(policy)
    return policy


def needs_loss_scaling() -> bool:
    """Whether models built now compute in float16 (the global policy's compute dtype)."""
    return keras.config.dtype_policy().compute_dtype == "float16"


@keras.saving.register_keras_serializable(package="dim_tf")
class StepCountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """A dynamic loss-scale optimiser whose step count also advances on a skipped step.

    Training resumes at `iterations` and draws batch `iterations` next, so the
    count must equal the batches consumed even when overflowing gradients made a
    step skip its update.
    """

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        self.inner_optimizer.iterations.assign_add(1)


def with_loss_scaling(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """`optimizer` wrapped for dynamic loss scaling (unless it already is)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return StepCountingLossScaleOptimizer(optimizer)


def unscaled(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimiser doing the updates: the inner one of a loss-scale optimiser."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer
