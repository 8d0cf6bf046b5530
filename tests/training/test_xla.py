"""`fit` compiled by XLA (`jit_compile=True`), as Keras does by itself on one GPU.

Keras turns XLA on when a GPU is visible and no strategy is set, so every
estimator, both local critics, the global objective, the prior game and the
finiteness guard must compile. XLA drops `tf.debugging.Assert`, so the guard's
test checks that a non-finite step still stops, names its terms and moves
nothing under XLA.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from dim_tf import DeepInfoMax, build_encoder
from dim_tf.config import ESTIMATORS, LOCAL_CRITICS
from dim_tf.models.normalization import BatchNormalization
from dim_tf.errors import NonFiniteError
from tests.training.synthetic import disc_images

POLICIES = ("float32", "mixed_bfloat16")


@pytest.fixture
def policy(request):
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


def tiny_encoder() -> keras.Model:
    """A 16x16 encoder with the project's batch norm (its fused kernel and custom
    gradient are what XLA must compile), small enough to compile in a second."""
    images = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, 2, padding="same", use_bias=False)(images)
    x = layers.ReLU()(BatchNormalization(momentum=0.9, epsilon=1e-5)(x))
    local = x                                                   # 8x8x8 local map
    x = layers.Flatten()(local)
    fc = layers.ReLU()(BatchNormalization(momentum=0.9, epsilon=1e-5)(layers.Dense(16, use_bias=False)(x)))
    y = layers.Dense(4)(fc)
    return keras.Model(images, {"local": local, "conv": local, "fc": fc, "y": y})


def _sgd():
    # SGD keeps updates proportional to the gradients; Adam's first steps are
    # lr * sign(g) and would turn round-off into full-size differences.
    return keras.optimizers.SGD(0.01), keras.optimizers.SGD(0.01)


def _fit(model, images, jit_compile=True, optimizers=(), **kwargs):
    model.compile(*optimizers, jit_compile=jit_compile)
    assert model.jit_compile == jit_compile
    return model.fit(images, batch_size=4, epochs=1, verbose=0, shuffle=False, **kwargs).history


def _cases():
    """By default every estimator in float32 with the critics alternating (each critic
    with four estimators), and in mixed_bfloat16 JSD with the dot critic and infoNCE
    with the concat critic; the other fourteen pairs run with `-m slow` (each case is
    an XLA compilation of several seconds, and the estimators share one code path)."""
    default_bfloat16 = {("jsd", "dot"), ("nce", "concat")}
    for policy in POLICIES:
        for i, estimator in enumerate(ESTIMATORS):
            for j, critic in enumerate(LOCAL_CRITICS):
                if policy == "float32":
                    slow = (i + j) % 2
                else:
                    slow = (estimator, critic) not in default_bfloat16
                yield pytest.param(estimator, critic, policy,
                                   marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("estimator, local_critic, policy", _cases(), indirect=["policy"])
def test_every_estimator_and_critic_trains_under_xla(estimator, local_critic, policy):
    """A step (local, global and prior terms) under XLA gives the terms and the
    encoder side's update of the same step without it."""
    images = disc_images(4, size=16)
    kwargs = dict(estimator=estimator, local_critic=local_critic, alpha=0.5, beta=1.0, gamma=0.1,
                  mi_units=8)
    keras.utils.set_random_seed(0)
    compiled = DeepInfoMax(tiny_encoder(), **kwargs)
    plain = DeepInfoMax(tiny_encoder(), **kwargs)
    plain.set_weights(compiled.get_weights())
    initial = [v.numpy() for v in compiled.encoder_side_variables]
    history = _fit(compiled, images, optimizers=_sgd())
    reference = _fit(plain, images, jit_compile=False, optimizers=_sgd())
    assert int(compiled.optimizer.iterations) == int(compiled.prior_optimizer.iterations) == 1
    # bfloat16: XLA fuses and rounds in other places than TensorFlow's kernels.
    # XLA's stateless RNG draws other prior samples from the same seed, so only
    # D's own terms and update may differ more (they are not compared).
    rtol = 1e-4 if policy == "float32" else 3e-2
    for key in ("local_loss", "local_mi", "global_loss", "global_mi", "prior_loss"):
        np.testing.assert_allclose(history[key], reference[key], rtol=rtol, atol=rtol, err_msg=key)
    moved = np.concatenate([(v.numpy() - w).ravel()
                            for v, w in zip(compiled.encoder_side_variables, initial)])
    expected = np.concatenate([(v.numpy() - w).ravel()
                               for v, w in zip(plain.encoder_side_variables, initial)])
    assert np.linalg.norm(expected) > 0
    assert np.linalg.norm(moved - expected) <= 10 * rtol * np.linalg.norm(expected)


def test_multi_view_step_with_score_stabilisation_trains_under_xla():
    """Views [n, 2, H, W, C] (their reshape and strided view slices, the monitor's
    view 0) and the soft clip and score penalty compile, and give the step without
    XLA (the monitor's dropout draws other masks under XLA: its terms may differ)."""
    images = disc_images(8, size=16).reshape(4, 2, 16, 16, 3)
    kwargs = dict(estimator="nce", local_critic="dot", alpha=0.5, beta=1.0, gamma=0.1,
                  mi_units=8, score_clip=1.0, score_penalty=0.05, monitor_classes=2)
    labels = np.array([0, 1, 0, -1])
    keras.utils.set_random_seed(0)
    compiled = DeepInfoMax(tiny_encoder(), **kwargs)
    plain = DeepInfoMax(tiny_encoder(), **kwargs)
    plain.set_weights(compiled.get_weights())
    history = _fit(compiled, images, optimizers=_sgd(), y=labels)
    reference = _fit(plain, images, jit_compile=False, optimizers=_sgd(), y=labels)
    for key in ("local_loss", "local_mi", "local_score_penalty", "global_loss", "global_mi",
                "global_score_penalty", "prior_loss"):
        np.testing.assert_allclose(history[key], reference[key], rtol=1e-4, atol=1e-4, err_msg=key)
    for a, b in zip(compiled.encoder_side_variables, plain.encoder_side_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)


@pytest.mark.parametrize("policy", [pytest.param("float32", marks=pytest.mark.slow),
                                    "mixed_bfloat16"], indirect=True)
def test_paper_encoder_trains_under_xla(policy):
    model = DeepInfoMax(build_encoder("basic32x32"), mi_units=16, alpha=0.5, monitor_classes=2)
    labels = np.array([0, 1, 0, -1])
    history = _fit(model, disc_images(4), y=labels)
    assert np.isfinite(history["loss"][0])
    assert int(model.optimizer.iterations) == 1


def test_non_finite_step_under_xla_stops_naming_its_terms_and_moves_nothing():
    model = DeepInfoMax(tiny_encoder(), mi_units=8, alpha=0.5)
    images = disc_images(12, size=16)
    _fit(model, images[:8])                                     # steps 1 and 2 are applied
    variables = model.trainable_weights + model.optimizer.variables + model.prior_optimizer.variables
    before = [v.numpy().copy() for v in variables]
    bad = images[8:].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="NaN or Inf") as error:
        model.fit(bad, batch_size=4, epochs=1, verbose=0)
    assert error.value.step == 3
    assert "encoder_gradients" in error.value.terms
    assert not any(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables))
    # The record is cleared once raised: training goes on from the last good step.
    model.fit(images[:4], batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 3


def test_steps_after_a_non_finite_one_in_the_same_execution_are_not_applied():
    """With steps_per_execution=3 the bad step is the first of three: the two
    finite steps after it in the same compiled loop must not run either."""
    model = DeepInfoMax(tiny_encoder(), mi_units=8)
    model.compile(jit_compile=True, steps_per_execution=3)
    images = disc_images(12, size=16)
    images[0, 0, 0, 0] = np.inf
    with pytest.raises(NonFiniteError) as error:
        model.fit(images, batch_size=4, epochs=1, verbose=0, shuffle=False)
    assert error.value.step == 1
    assert int(model.optimizer.iterations) == 0
