"""Checkpoints restore the model and both optimisers exactly."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf import DeepInfoMax, build_encoder, restore_latest, training_checkpoint
from tests.training.synthetic import disc_images


def _compiled_model():
    model = DeepInfoMax(build_encoder("basic32x32"), mi_units=32, alpha=0.5, gamma=0.1)
    model.compile()
    return model


def _batches(start, stop):
    images = disc_images(8 * 6, seed=3).reshape(6, 8, 32, 32, 3)
    return tf.data.Dataset.from_tensor_slices(images[start:stop])


def test_k_steps_checkpoint_restore_k_steps_equals_2k_straight(tmp_path):
    keras.utils.set_random_seed(0)
    straight = _compiled_model()
    straight.fit(_batches(0, 6), epochs=1, verbose=0)

    keras.utils.set_random_seed(0)
    first_half = _compiled_model()
    first_half.fit(_batches(0, 3), epochs=1, verbose=0)
    manager, restored_from = restore_latest(training_checkpoint(first_half), str(tmp_path))
    assert restored_from is None
    manager.save()

    keras.utils.set_random_seed(99)  # a fresh model with different initial weights
    resumed = _compiled_model()
    _, restored_from = restore_latest(training_checkpoint(resumed), str(tmp_path))
    assert restored_from is not None
    assert int(resumed.optimizer.iterations) == 3
    assert int(resumed.prior_optimizer.iterations) == 3
    resumed.fit(_batches(3, 6), epochs=1, verbose=0)

    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, err_msg=a.path)
    for optimizer in ("optimizer", "prior_optimizer"):
        for a, b in zip(getattr(straight, optimizer).variables, getattr(resumed, optimizer).variables):
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, err_msg=a.path)


def test_checkpoint_needs_compiled_model():
    model = DeepInfoMax(build_encoder("basic32x32"), mi_units=8)
    with pytest.raises(ValueError, match="Compile"):
        training_checkpoint(model)
