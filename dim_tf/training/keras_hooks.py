"""The two private Keras methods dim-tf overrides, in one place.

Keras offers no public hook for either behaviour. Each override names the
upstream issue it works around; `tests/training/test_keras_hooks.py` fails
loudly if Keras renames a hook or stops calling it, and setup.py pins the Keras
minor version these were checked against.
"""

from __future__ import annotations

import keras

# (class, method name) of every private Keras hook overridden below.
OVERRIDDEN_PRIVATE_HOOKS = (
    (keras.Model, "_maybe_symbolic_build"),
    (keras.optimizers.LossScaleOptimizer, "_stateful_handle_non_finite_grads"),
)


class PrebuiltModel(keras.Model):
    """A model that creates all its variables in `__init__`, eagerly.

    Keras' `fit` builds a model symbolically from a first batch that it reduces
    across replicas; under MultiWorkerMirroredStrategy that reduction fails for
    (images, labels) batches with "Invalid reduction dimension 0 for input with
    0 dimensions" (keras-team/keras#20585, tensorflow/tensorflow#72388). A model
    whose variables already exist needs no such build.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """No-op: every variable already exists (see the class docstring)."""


@keras.saving.register_keras_serializable(package="dim_tf")
class StepCountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """A dynamic loss-scale optimiser whose step count also advances on a skipped step.

    Keras' LossScaleOptimizer leaves `iterations` unchanged when overflowing
    gradients make it skip an update (keras-team/keras#20878). Training resumes
    at `iterations` and draws batch `iterations` next, so the count must equal
    the batches consumed.
    """

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        self.inner_optimizer.iterations.assign_add(1)
