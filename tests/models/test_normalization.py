"""The fast normalisation layers equal Keras' own: outputs, gradients, moving statistics."""

import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from dim_tf.models import normalization


def _pair(fast_cls, keras_cls, shape, dtype="float32", **kwargs):
    """(fast, keras) layers built for `shape` with the same random non-trivial weights."""
    fast, reference = fast_cls(dtype=dtype, **kwargs), keras_cls(dtype=dtype, **kwargs)
    fast.build(shape)
    reference.build(shape)
    rng = np.random.default_rng(0)
    weights = [w + rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in reference.get_weights()]
    fast.set_weights(weights)
    reference.set_weights(weights)
    return fast, reference


def _outputs_and_gradients(layer, x, upstream, **call_kwargs):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, **call_kwargs)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    return y, tape.gradient(loss, [x] + layer.trainable_variables)


def _inputs(shape, dtype=tf.float32):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(2.0, 3.0, shape), dtype)
    upstream = tf.constant(rng.normal(size=shape), tf.float32)
    return x, upstream


@pytest.mark.parametrize("shape", [(16, 12), (4, 3, 5, 12)], ids=["vectors", "maps"])
def test_batch_norm_training_pass_equals_keras(shape):
    fast, reference = _pair(normalization.BatchNormalization, layers.BatchNormalization, shape,
                            momentum=0.9, epsilon=1e-5)
    x, upstream = _inputs(shape)
    y_fast, grads_fast = _outputs_and_gradients(fast, x, upstream, training=True)
    y_ref, grads_ref = _outputs_and_gradients(reference, x, upstream, training=True)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_fast, grads_ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Moving statistics: Keras' biased variance, not the kernel's Bessel-corrected one.
    np.testing.assert_allclose(fast.moving_mean, reference.moving_mean, rtol=1e-6)
    np.testing.assert_allclose(fast.moving_variance, reference.moving_variance, rtol=1e-5)
    np.testing.assert_allclose(fast(x, training=False), reference(x, training=False), rtol=1e-5, atol=1e-5)


def test_batch_norm_in_bfloat16_returns_bfloat16_with_float32_statistics():
    shape = (8, 4, 4, 16)
    fast, reference = _pair(normalization.BatchNormalization, layers.BatchNormalization, shape,
                            dtype="mixed_bfloat16", momentum=0.9, epsilon=1e-5)
    x, upstream = _inputs(shape, tf.bfloat16)
    y_fast, grads_fast = _outputs_and_gradients(fast, x, upstream, training=True)
    y_ref, grads_ref = _outputs_and_gradients(reference, x, upstream, training=True)
    assert y_fast.dtype == tf.bfloat16 and grads_fast[0].dtype == tf.bfloat16
    assert fast.moving_variance.dtype == "float32"
    np.testing.assert_allclose(tf.cast(y_fast, tf.float32), tf.cast(y_ref, tf.float32), atol=0.05)
    for got, want in zip(grads_fast, grads_ref):
        got, want = tf.cast(got, tf.float32), tf.cast(want, tf.float32)
        np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02 * float(tf.reduce_max(tf.abs(want))))
    np.testing.assert_allclose(fast.moving_variance, reference.moving_variance, rtol=0.02)


def test_batch_norm_synchronised_over_replicas_uses_the_keras_path():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        synced = normalization.BatchNormalization(synchronized=True)
        local = normalization.BatchNormalization(synchronized=False)
    x = tf.zeros([4, 6])
    seen = []
    strategy.run(lambda: seen.append((synced._can_fuse(x, None), local._can_fuse(x, None))))
    assert seen == [(False, True)] * 2
    assert normalization.BatchNormalization(synchronized=True)._can_fuse(x, None)


@pytest.mark.parametrize("shape", [(16, 12), (4, 3, 5, 12)], ids=["vectors", "maps"])
def test_layer_norm_equals_keras(shape):
    fast, reference = _pair(normalization.LayerNormalization, layers.LayerNormalization, shape,
                            epsilon=1e-5)
    x, upstream = _inputs(shape)
    y_fast, grads_fast = _outputs_and_gradients(fast, x, upstream)
    y_ref, grads_ref = _outputs_and_gradients(reference, x, upstream)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_fast, grads_ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_layer_norm_gradient_matches_finite_differences():
    layer = normalization.LayerNormalization(epsilon=1e-5)
    layer.build((3, 5))
    layer.set_weights([np.linspace(0.5, 1.5, 5, dtype="float32"), np.linspace(-1, 1, 5, dtype="float32")])
    upstream = tf.constant(np.random.default_rng(2).normal(size=(3, 5)), tf.float32)
    x = tf.constant(np.random.default_rng(3).normal(size=(3, 5)), tf.float32)
    analytic, numeric = tf.test.compute_gradient(
        lambda v: tf.reduce_sum(layer(v) * upstream)[None], [x], delta=1e-2)
    np.testing.assert_allclose(analytic[0], numeric[0], atol=2e-3)


def test_layer_norm_in_bfloat16_computes_in_float32():
    shape = (8, 4, 4, 16)
    fast, reference = _pair(normalization.LayerNormalization, layers.LayerNormalization, shape,
                            dtype="mixed_bfloat16", epsilon=1e-5)
    x, upstream = _inputs(shape, tf.bfloat16)
    y_fast, grads_fast = _outputs_and_gradients(fast, x, upstream)
    y_ref, _ = _outputs_and_gradients(reference, x, upstream)
    assert y_fast.dtype == tf.bfloat16 and grads_fast[0].dtype == tf.bfloat16
    assert grads_fast[1].dtype == tf.float32
    np.testing.assert_allclose(tf.cast(y_fast, tf.float32), tf.cast(y_ref, tf.float32), atol=0.05)
