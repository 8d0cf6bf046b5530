"""The adversarial train_step: who updates what, the adversarial sign, learning."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf import DeepInfoMax, build_encoder
from dim_tf.errors import NonFiniteError
from tests.training.synthetic import disc_images


def _model(**kwargs):
    defaults = dict(mi_units=32, beta=1.0, gamma=0.1)
    defaults.update(kwargs)
    return DeepInfoMax(build_encoder("basic32x32"), **defaults)


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


def test_discriminator_loss_has_no_gradient_into_the_encoder():
    model = _model(alpha=0.5)
    model.compile()
    images = tf.constant(disc_images(8))
    with tf.GradientTape(persistent=True) as tape:
        encoder_loss, prior_loss, _, _ = model._step_terms(images, training=True)
        encoder_loss, prior_loss = tf.reduce_mean(encoder_loss), tf.reduce_mean(prior_loss)
    to_encoder = tape.gradient(prior_loss, model.encoder_side_variables)
    assert all(g is None or not np.any(g.numpy()) for g in to_encoder)
    # The encoder-side loss does depend on D (it has to fool it) ...
    to_prior = tape.gradient(encoder_loss, model.prior_variables)
    assert any(g is not None and np.any(g.numpy()) for g in to_prior)
    # ... and on every encoder-side variable.
    to_encoder = tape.gradient(encoder_loss, model.encoder_side_variables)
    assert all(g is not None for g in to_encoder)


def test_each_optimizer_moves_only_its_own_player():
    images = disc_images(16)
    # Encoder side frozen (lr 0): no encoder-side weight may move, D must.
    model = _model(alpha=0.5)
    model.compile(keras.optimizers.Adam(0.0), keras.optimizers.Adam(1e-3))
    enc, disc = _values(model.encoder_side_variables), _values(model.prior_variables)
    model.fit(images, batch_size=8, epochs=1, verbose=0)
    assert not any(_changed(enc, model.encoder_side_variables))
    assert all(_changed(disc, model.prior_variables))
    # Prior discriminator frozen: D may not move, every encoder-side weight must.
    model = _model(alpha=0.5)
    model.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(0.0))
    enc, disc = _values(model.encoder_side_variables), _values(model.prior_variables)
    model.fit(images, batch_size=8, epochs=1, verbose=0)
    assert not any(_changed(disc, model.prior_variables))
    assert all(_changed(enc, model.encoder_side_variables))


def test_encoder_learns_to_fool_a_frozen_discriminator():
    """With D frozen and the prior term dominant, the encoder's updates must raise
    D's score on the codes: a wrong sign in the adversarial loss lowers it."""
    images = tf.constant(disc_images(32))
    model = _model(beta=1e-6, gamma=1.0)
    model.compile(keras.optimizers.Adam(1e-3), keras.optimizers.SGD(0.0))

    def mean_score():
        codes = tf.sigmoid(model.encoder(images, training=False)["y"])
        return float(tf.reduce_mean(model.prior_discriminator(codes)))

    model.fit(images, batch_size=16, epochs=1, verbose=0)  # settle BN statistics
    before = mean_score()
    model.fit(images, batch_size=16, epochs=15, verbose=0)
    after = mean_score()
    assert after > before + 0.1, (before, after)


def test_discriminator_learns_to_tell_prior_from_codes():
    images = disc_images(32)
    model = _model(beta=1.0, gamma=0.1)
    model.compile(keras.optimizers.Adam(0.0), keras.optimizers.Adam(1e-3))
    history = model.fit(images, batch_size=16, epochs=10, verbose=0).history
    assert history["prior_disc_loss"][-1] < history["prior_disc_loss"][0]
    assert history["prior_disc_accuracy"][-1] > 0.9


def test_local_objective_learns_on_synthetic_images():
    """200 steps of DIM(L) (JSD) on generated disc images take the local loss from
    above 0 to well below 0, near its bound -2 log 2 = -1.386."""
    images = disc_images(256)
    model = _model(mi_units=64)
    model.compile(keras.optimizers.Adam(1e-3, beta_1=0.5))
    dataset = tf.data.Dataset.from_tensor_slices(images).shuffle(256, seed=0).batch(32, drop_remainder=True)
    start = model.evaluate(dataset, verbose=0, return_dict=True)["local_loss"]
    model.fit(dataset.repeat(), steps_per_epoch=200, epochs=1, verbose=0)
    end = model.evaluate(dataset, verbose=0, return_dict=True)
    assert start > 0.0
    assert end["local_loss"] < -0.8, (start, end)
    assert end["local_mi"] == pytest.approx(-end["local_loss"])


def test_test_step_reports_validation_losses_without_updating():
    model = _model(alpha=1.0)
    model.compile()
    before = _values(model.weights)
    logs = model.evaluate(disc_images(8), batch_size=4, verbose=0, return_dict=True)
    assert not any(_changed(before, model.weights))
    assert {"local_loss", "global_loss", "prior_disc_loss"} <= set(logs)


def _state(model):
    return _values(model.trainable_weights + model.optimizer.variables
                   + model.prior_optimizer.variables)


def test_non_finite_step_names_step_and_terms_and_moves_nothing():
    model = _model()
    model.compile()
    images = disc_images(12)
    model.fit(images[:8], batch_size=4, epochs=1, verbose=0, shuffle=False)  # steps 1 and 2
    before = _state(model)
    images = images[8:].copy()
    images[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="NaN or Inf") as error:
        model.fit(images, batch_size=4, epochs=1, verbose=0)
    step, names = error.value.step, error.value.terms
    assert step == 3
    # The gradients are always NaN; whether the losses are too depends on the kernels
    # (oneDNN's fused batch norm + ReLU maps a NaN activation to 0 going forward).
    assert "encoder_gradients" in names
    # No weight, slot or iteration count of either player moved.
    assert not any(_changed(before, model.trainable_weights + model.optimizer.variables
                            + model.prior_optimizer.variables))


def test_non_finite_prior_discriminator_is_named_alone():
    model = _model()
    model.compile()
    model.prior_discriminator.layers[-1].bias.assign([np.inf])  # D(.) = +inf everywhere
    before = _state(model)
    with pytest.raises(NonFiniteError) as error:
        model.fit(disc_images(4), batch_size=4, epochs=1, verbose=0)
    step, names = error.value.step, error.value.terms
    assert step == 1 and "prior_disc_loss" in names
    assert not {"loss", "local_loss", "local_mi", "encoder_gradients"} & set(names)
    assert not any(_changed(before, model.trainable_weights + model.optimizer.variables
                            + model.prior_optimizer.variables))


def test_other_errors_are_not_taken_for_non_finite_steps():
    model = _model()
    model.compile()
    with pytest.raises(ValueError) as error:  # 31x31 images: the encoder's input is 32x32
        model.fit(disc_images(4, size=31), batch_size=4, epochs=1, verbose=0)
    assert not isinstance(error.value, NonFiniteError)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"estimator": "mine"}, "is not valid. Allowed: jsd, dv, nce"),
        ({"alpha": 0.0, "beta": 0.0}, "alpha and beta are both 0"),
        ({"gamma": -1.0}, "gamma must be"),
        ({"local_critic": "bilinear"}, "local_critic must be one of"),
        ({"negatives": "all"}, "negatives must be one of"),
        ({"negative_group_size": 1}, "negative_group_size"),
        ({"mi_units": 0}, "mi_units"),
        ({"score_clip": -1.0}, "score_clip must be"),
        ({"score_penalty": float("nan")}, "score_penalty must be"),
    ],
)
def test_invalid_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)


def test_online_monitor_learns_without_touching_the_encoder():
    """The monitor trains on labels from stop-gradient features: its loss has no
    gradient into the encoder side, and with the DIM optimisers frozen the
    encoder's weights stay exactly as they were while the monitor learns."""
    images = disc_images(32)
    labels = (images[:, 16, 16, 0] > 0).astype(np.int64)  # a label readable from the image
    labels[::8] = -1  # some unlabelled images: ignored
    model = _model(monitor_classes=2, monitor_layers=("fc", "y"))
    model.compile(keras.optimizers.SGD(0.0), keras.optimizers.SGD(0.0), keras.optimizers.Adam(1e-2))
    features = model.encoder(tf.constant(images), training=False)
    with tf.GradientTape() as tape:
        loss, _, _ = model._monitor_terms(features, tf.constant(labels), training=True)
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.encoder_side_variables + model.prior_variables)
    assert all(g is None for g in grads)
    before = _values(model.encoder_side_variables + model.prior_variables)
    monitor_before = _values(model.monitor_variables)
    history = model.fit(images, labels, batch_size=16, epochs=10, verbose=0).history
    assert not any(_changed(before, model.encoder_side_variables + model.prior_variables))
    assert all(_changed(monitor_before, model.monitor_variables))
    assert history["monitor_y_accuracy"][-1] > history["monitor_y_accuracy"][0]
    assert history["monitor_fc_accuracy"][-1] > 0.8


def test_monitor_loss_is_averaged_over_the_labelled_images_only():
    """As in the reference code: with 2 labelled images in a batch of 8 the
    monitor's step is that of the mean cross-entropy over those 2, not a quarter
    of it (on STL-10 train+unlabelled, 1 image in 21 has a label)."""
    images = disc_images(8)
    labels = np.full([8], -1, np.int64)
    labels[[1, 5]] = [0, 1]
    model = _model(monitor_classes=2, monitor_layers=("y",), gamma=0.0)
    learning_rate = 0.5
    model.compile(keras.optimizers.SGD(0.0), None, keras.optimizers.SGD(learning_rate))
    monitor = model.monitors["y"]
    for layer in monitor.layers:  # the classifier's dropout would draw other masks here
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    before = _values(monitor.trainable_variables)
    features = model.encoder(tf.constant(images), training=True)
    with tf.GradientTape() as tape:
        logits = monitor(features["y"], training=True)
        expected_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels[[1, 5]], tf.gather(logits, [1, 5])))
    grads = tape.gradient(expected_loss, monitor.trainable_variables)
    model.train_step((tf.constant(images), tf.constant(labels)))
    for b, g, v in zip(before, grads, monitor.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - learning_rate * g.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=v.path)


@pytest.fixture
def mixed_float16():
    """The GPU policy, on this CPU: float16 compute with dynamic loss scaling."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


def test_mixed_float16_scales_the_float16_players_losses(mixed_float16):
    from dim_tf.training.precision import StepCountingLossScaleOptimizer

    model = _model(monitor_classes=2)
    model.compile()
    assert isinstance(model.optimizer, StepCountingLossScaleOptimizer)
    assert isinstance(model.monitor_optimizer, StepCountingLossScaleOptimizer)
    # The prior discriminator computes in float32: no scaling.
    assert not isinstance(model.prior_optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.encoder(tf.zeros([1, 32, 32, 3]))["local"].dtype == tf.float16
    logs = model.fit(disc_images(8), np.array([0, 1] * 4), batch_size=4, epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in logs.values())
    assert int(model.optimizer.iterations) == 2


def test_mixed_float16_overflow_skips_the_step_halves_the_scale_and_counts_it(mixed_float16):
    model = _model()
    model.compile()
    model.fit(disc_images(4), batch_size=4, epochs=1, verbose=0)
    model.optimizer.dynamic_scale.assign(1e38)  # scaled float16 gradients overflow
    encoder_before = _values(model.encoder_side_variables)
    prior_before = _values(model.prior_variables)
    model.fit(disc_images(4), batch_size=4, epochs=1, verbose=0)  # no NaN error: a skipped step
    assert not any(_changed(encoder_before, model.encoder_side_variables))
    assert all(_changed(prior_before, model.prior_variables)[::2])  # D's kernels still learn
    assert float(model.optimizer.dynamic_scale) == pytest.approx(5e37)
    assert int(model.optimizer.iterations) == 2  # the step is counted: the data position moves on


def test_float16_checkpoint_restores_for_bfloat16_evaluation(mixed_float16, tmp_path):
    from dim_tf.training.checkpoints import training_checkpoint

    model = _model()
    model.compile()
    model.fit(disc_images(4), batch_size=4, epochs=1, verbose=0)
    path = training_checkpoint(model).save(str(tmp_path / "ckpt"))
    keras.config.set_dtype_policy("mixed_bfloat16")
    on_cpu = _model()
    on_cpu.compile()
    training_checkpoint(on_cpu).restore(path).assert_existing_objects_matched().expect_partial()
    for restored, saved in zip(on_cpu.encoder.weights, model.encoder.weights):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())
    assert int(on_cpu.optimizer.iterations) == 1
