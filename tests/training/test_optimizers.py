"""FusedAdam: Keras' Adam, computed by TensorFlow's fused kernel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf.training.optimizers import FusedAdam, default_optimizer


def _variables_and_gradients(seed):
    rng = np.random.default_rng(seed)
    shapes = [(4, 4, 3, 8), (37,), (16, 5)]
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
    # Per step, gradients of every sign and scale, so the slots move in both directions.
    gradients = [[tf.constant(rng.normal(scale=10.0 ** rng.integers(-3, 2), size=s)
                              .astype("float32")) for s in shapes] for _ in range(6)]
    return variables, gradients


def _train(optimizer_class, learning_rate, beta_2=0.999, **kwargs):
    variables, gradients = _variables_and_gradients(seed=0)
    optimizer = optimizer_class(learning_rate, beta_1=0.5, beta_2=beta_2, epsilon=1e-8, **kwargs)
    optimizer.build(variables)
    for step_gradients in gradients:
        optimizer.apply(step_gradients, variables)
    return variables, optimizer


@pytest.mark.parametrize("learning_rate", [1e-3, keras.optimizers.schedules.CosineDecay(1e-3, 4)])
def test_fused_adam_equals_keras_adam(learning_rate):
    # The fused kernel forms 1 - beta_2 in float32 from float32(beta_2), Keras in
    # float64 from beta_2: the same as Keras given beta_2 = float32(0.999), ...
    expected, keras_adam = _train(keras.optimizers.Adam, learning_rate,
                                  beta_2=float(np.float32(0.999)))
    got, fused = _train(FusedAdam, learning_rate)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    for a, b in zip(fused.variables, keras_adam.variables):  # step count and both slots
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
    assert int(fused.iterations.numpy()) == 6
    # ... and within 1e-4 of Keras given 0.999 itself (1 - beta_2 differs by 5e-5 of itself).
    expected, keras_adam = _train(keras.optimizers.Adam, learning_rate)
    for a, b in zip(fused.variables, keras_adam.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7, err_msg=a.path)


def test_fused_adam_moves_against_the_gradient():
    variable = keras.Variable(np.zeros(3, np.float32))
    optimizer = FusedAdam(0.1)
    optimizer.apply([tf.constant([1.0, -2.0, 0.0])], [variable])
    # The first Adam step is lr * sign(g) (bias-corrected m / sqrt(v) = g / |g|).
    np.testing.assert_allclose(variable.numpy(), [-0.1, 0.1, 0.0], atol=1e-6)


def test_fused_adam_leaves_amsgrad_and_sparse_gradients_to_keras():
    expected, _ = _train(keras.optimizers.Adam, 1e-3, amsgrad=True)
    got, _ = _train(FusedAdam, 1e-3, amsgrad=True)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    table = keras.Variable(np.ones((4, 2), np.float32))
    FusedAdam(0.1).apply([tf.IndexedSlices(tf.ones((1, 2)), tf.constant([2]), tf.constant([4, 2]))],
                         [table])
    assert np.all(table.numpy()[[0, 1, 3]] == 1.0) and np.all(table.numpy()[2] < 1.0)


def test_default_optimizer_is_the_papers_fused_adam():
    optimizer = default_optimizer()
    assert isinstance(optimizer, FusedAdam)
    assert float(optimizer.learning_rate) == pytest.approx(1e-4)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.5, 0.999, 1e-8)
