"""The private Keras hooks dim-tf overrides still exist and are still called.

If Keras renames or stops calling one of them, the override silently does
nothing: multi-worker fit fails again, or a skipped float16 step stops being
counted and resuming draws the wrong batches. These tests fail first.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf import DeepInfoMax, build_encoder
from dim_tf.training import keras_hooks
from tests.training.synthetic import disc_images


@pytest.mark.parametrize("cls, name", keras_hooks.OVERRIDDEN_PRIVATE_HOOKS)
def test_overridden_private_hook_still_exists_upstream(cls, name):
    assert callable(getattr(cls, name, None)), (
        f"Keras {keras.__version__} has no {cls.__name__}.{name}: dim_tf/training/keras_hooks.py "
        "overrides it; find its replacement before upgrading Keras.")


def test_fit_still_calls_maybe_symbolic_build(monkeypatch):
    calls = []
    monkeypatch.setattr(keras_hooks.PrebuiltModel, "_maybe_symbolic_build",
                        lambda self, iterator=None, data_batch=None: calls.append(1))
    model = DeepInfoMax(build_encoder("basic32x32"), mi_units=8, gamma=0.0)
    model.compile()
    model.fit(disc_images(4), batch_size=4, epochs=1, verbose=0)
    assert calls, "keras.Model.fit no longer calls _maybe_symbolic_build: see keras_hooks.py"


def test_overflowing_step_still_calls_the_non_finite_hook(monkeypatch):
    calls = []
    original = keras_hooks.StepCountingLossScaleOptimizer._stateful_handle_non_finite_grads

    def spy(self):
        calls.append(1)
        original(self)

    monkeypatch.setattr(keras_hooks.StepCountingLossScaleOptimizer,
                        "_stateful_handle_non_finite_grads", spy)
    variable = tf.Variable([1.0, 2.0])
    optimizer = keras_hooks.StepCountingLossScaleOptimizer(keras.optimizers.SGD(0.1))
    optimizer.build([variable])
    scale = float(optimizer.dynamic_scale.numpy())
    optimizer.apply_gradients([(tf.constant([np.inf, 1.0]), variable)])
    assert calls, "LossScaleOptimizer no longer calls _stateful_handle_non_finite_grads"
    np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])   # skipped ...
    assert int(optimizer.iterations.numpy()) == 1                  # ... and counted
    assert float(optimizer.dynamic_scale.numpy()) == scale / 2
