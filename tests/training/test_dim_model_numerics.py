"""DeepInfoMax's numbers, not just their finiteness: mixed precision against float32
and float64 references, and the gradient penalty's exact share of D's update."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf import DeepInfoMax, build_encoder
from dim_tf.objectives import prior as prior_lib
from dim_tf.objectives.estimators import ESTIMATORS
from tests.objectives.test_estimators import numpy_mi_gradient, numpy_mi_loss
from tests.training.synthetic import disc_images

BATCH = 4


def _model(**kwargs):
    defaults = dict(mi_units=32, alpha=0.5, beta=1.0, gamma=0.1)
    defaults.update(kwargs)
    return DeepInfoMax(build_encoder("basic32x32"), **defaults)


@contextlib.contextmanager
def _dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _twin_models(policy, **kwargs):
    """A float32 model and a `policy` model with the same weights, both compiled."""
    with _dtype_policy("float32"):
        reference = _model(**kwargs)
        reference.compile()
    with _dtype_policy(policy):  # compile inside: float16 wraps its optimisers for loss scaling
        mixed = _model(**kwargs)
        mixed.compile()
    mixed.set_weights(reference.get_weights())  # variables are float32 under both policies
    return reference, mixed


def _softplus(x):
    return np.logaddexp(0.0, x)


def _f64(x):
    return tf.cast(x, tf.float64).numpy()


def _numpy_discriminator(model, z):
    """D's logits and dD/dz at the rows of z, in float64 from D's float32 weights."""
    w1, b1, w2, b2, w3, b3 = (v.numpy().astype(np.float64) for v in model.prior_variables)
    h1 = z @ w1 + b1
    h2 = np.maximum(h1, 0) @ w2 + b2
    logits = np.maximum(h2, 0) @ w3[:, 0] + b3[0]
    grad_z = (((h2 > 0) * w3[:, 0]) @ w2.T * (h1 > 0)) @ w1.T
    return logits, grad_z


def _reference_terms(model, features):
    """Critic scores recomputed from the model's heads, outside `objectives.scores`,
    and the float64 reference of every per-example term given those scores.

    Returns ({"local": scores, "global": scores, "codes": sigmoid(y)}, {term: values})."""
    y, local = features["y"], features["local"]
    n = int(y.shape[0])
    found = {}
    if model.local_critic is None:  # encode-and-dot: the dot products in float64
        codes = model.local_code_projection(y, training=True)
        maps = model.local_map_projection(local, training=True)
        maps = _f64(maps).reshape(n, -1, maps.shape[-1])
        found["local"] = (np.einsum("iu,jlu->ijl", _f64(codes), maps), np.arange(n))
    else:  # concat-and-convolve: own map and the next image's
        scores = model.local_critic(y, tf.stack([local, tf.roll(local, -1, axis=0)], axis=1))
        assert scores.dtype == tf.float32  # spec sec. 8: scores stay float32
        found["local"] = (_f64(scores), np.zeros(n, np.int32))
    critic = model.global_critic
    scores = critic.pair_scores(critic.encode_codes(y),
                                tf.tile(critic.encode_maps(local)[tf.newaxis], [n, 1, 1]))
    assert scores.dtype == tf.float32
    found["global"] = (_f64(scores)[:, :, np.newaxis], np.arange(n))

    terms = {}
    for name in ("local", "global"):
        terms[f"{name}_loss"], terms[f"{name}_mi"] = numpy_mi_loss(*found[name], model.estimator)
    codes = 1.0 / (1.0 + np.exp(-_f64(y)))
    prior = _f64(model._prior_samples(tf.constant(n), stream=0))
    real, real_grad = _numpy_discriminator(model, prior)
    fake, fake_grad = _numpy_discriminator(model, codes)
    terms["prior_loss"] = _softplus(-fake)
    terms["prior_disc_loss"] = _softplus(-real) + _softplus(fake)
    terms["prior_gradient_penalty"] = 0.5 * (np.sum(real_grad**2, 1) + np.sum(fake_grad**2, 1))
    terms["loss"] = (model.beta * terms["local_loss"] + model.alpha * terms["global_loss"]
                     + model.gamma * terms["prior_loss"])
    found["codes"] = codes
    return found, terms


def _check_terms_against_reference(model, images, train_step):
    """The model's per-example terms equal the float64 reference of its own float32
    scores and codes (and, if `train_step`, are what a training step reports);
    returns (scores and codes, model terms)."""
    _, _, terms, features = model._step_terms(images, training=True)
    compute_dtype = tf.as_dtype(model.encoder.compute_dtype)
    assert features["local"].dtype == compute_dtype and features["y"].dtype == compute_dtype
    assert all(t.dtype == tf.float32 for t in terms.values())
    found, want = _reference_terms(model, features)
    for name, values in want.items():
        # Float32 arithmetic on float32 scores (sums of <= 64 terms, scores <= ~20):
        # ~1e-6 relative; a score or estimator rounded to 16 bits is off by >= 2^-11.
        np.testing.assert_allclose(terms[name].numpy(), values, rtol=2e-5, atol=2e-5, err_msg=name)
    if not train_step:
        return found, {k: v.numpy().astype(np.float64) for k, v in terms.items()}
    # The training step reports the batch means of these very terms.
    logs = model.train_step(images)
    assert set(logs) == set(want) | {"prior_disc_accuracy"}
    for name in want:
        np.testing.assert_allclose(float(logs[name]), np.mean(terms[name].numpy()),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    return found, {k: v.numpy().astype(np.float64) for k, v in terms.items()}


# Relative rounding of one cast (round to nearest): bfloat16 keeps 8 significant
# bits, float16 11. On the way from the image to a score an activation is rounded
# about 12 times (3 conv-BN-ReLU blocks to the local map, 2 fc-BN-ReLU blocks to Y,
# 4 roundings in a head), so scores and codes may differ from float32 by up to
# ~12 roundings of the largest value; we allow 16.
ROUNDING = {"mixed_bfloat16": 2.0**-8, "mixed_float16": 2.0**-11}
ROUNDINGS_TO_A_SCORE = 16

_CASES = ([("mixed_bfloat16", critic, e) for critic in ("dot", "concat") for e in ESTIMATORS]
          + [("mixed_float16", critic, "jsd") for critic in ("dot", "concat")])


@pytest.mark.parametrize("policy, local_critic, estimator", _CASES,
                         ids=["-".join(case) for case in _CASES])
def test_mixed_precision_step_matches_float32(policy, local_critic, estimator):
    """The same model and batch under float32 and a mixed policy: each run's losses
    and MI estimates equal the float64 estimator of its own float32 scores, the
    scores and codes of the two runs differ by what 16-bit activations explain,
    and the losses differ by no more than those score differences propagate to."""
    images = tf.constant(disc_images(BATCH))
    reference, mixed = _twin_models(policy, estimator=estimator, local_critic=local_critic)
    # The step's code path does not depend on the estimator: run it once per critic.
    train_step = estimator == "jsd"
    found32, terms32 = _check_terms_against_reference(reference, images, train_step)
    with _dtype_policy(policy):
        found16, terms16 = _check_terms_against_reference(mixed, images, train_step)

    tolerance = ROUNDINGS_TO_A_SCORE * ROUNDING[policy]
    for name in ("local", "global", "codes"):
        want = found32[name][0] if name != "codes" else found32[name]
        got = found16[name][0] if name != "codes" else found16[name]
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max(),
                                   err_msg=name)
        assert not np.array_equal(got, want)  # the policies really computed differently
    for name in ("local", "global"):
        scores32, positive = found32[name]
        delta = np.abs(found16[name][0] - scores32)
        # First-order propagation of the observed score differences through the
        # estimator (its float64 gradient); x2 factor for the second-order term
        # (e.g. exp(u) moves by e^du - 1 ~ du (1 + du/2)); atol: float32 round-off.
        gradient = numpy_mi_gradient(scores32, positive, estimator)
        bound = 2.0 * np.sum(np.abs(gradient) * delta, axis=(1, 2)) + 1e-5 * (1 + np.abs(terms32[f"{name}_loss"]))
        for term in (f"{name}_loss", f"{name}_mi"):
            error = np.abs(terms16[term] - terms32[term])
            assert np.all(error <= bound), (term, error, bound)
    # D computes in float32 on sigmoid(Y): its terms move only with the codes. D is
    # piecewise linear with |dD/dz| = sqrt(2 x its penalty share) <= sqrt(2 penalty),
    # so |d softplus(+-D)| <= sqrt(2 penalty) |d codes| (x2 for a ReLU switch).
    code_shift = np.linalg.norm(found16["codes"] - found32["codes"], axis=1)
    lipschitz = np.sqrt(2.0 * terms32["prior_gradient_penalty"])
    for term in ("prior_loss", "prior_disc_loss"):
        error = np.abs(terms16[term] - terms32[term])
        assert np.all(error <= 2.0 * lipschitz * code_shift + 1e-6), (term, error)


@pytest.mark.parametrize("local_critic, estimator", [("dot", "nce"), ("concat", "jsd")])
def test_score_clip_and_penalty_enter_the_estimator_and_the_loss_as_amdim_defines_them(
        local_critic, estimator):
    """With score_clip c and score_penalty w, each objective's estimator sees
    c tanh(s / c) of its raw scores s, its penalty is the mean of s^2 over a row's
    candidates and locations, and the encoder's loss is
    beta (local + w pen_local) + alpha (global + w pen_global) + gamma prior."""
    clip, weight = 0.1, 0.05  # a clip well inside the scores' range at initialisation
    images = tf.constant(disc_images(BATCH))
    model = _model(local_critic=local_critic, estimator=estimator, score_clip=clip,
                   score_penalty=weight)
    model.compile()
    _, _, terms, features = model._step_terms(images, training=True)
    found, want = _reference_terms(model, features)
    loss = model.gamma * want["prior_loss"]
    for name, objective_weight in (("local", model.beta), ("global", model.alpha)):
        scores, positive = found[name]
        clipped_loss, clipped_mi = numpy_mi_loss(clip * np.tanh(scores / clip), positive, estimator)
        penalty = np.mean(scores**2, axis=(1, 2))
        for term, values in ((f"{name}_loss", clipped_loss), (f"{name}_mi", clipped_mi),
                             (f"{name}_score_penalty", penalty)):
            np.testing.assert_allclose(terms[term].numpy(), values, rtol=2e-5, atol=2e-5, err_msg=term)
        # The clip bites: the unclipped estimator differs.
        assert np.max(np.abs(clipped_loss - want[f"{name}_loss"])) > 1e-3, name
        loss = loss + objective_weight * (clipped_loss + weight * penalty)
    np.testing.assert_allclose(terms["loss"].numpy(), loss, rtol=2e-5, atol=2e-5)
    assert np.max(np.abs(loss - want["loss"])) > 1e-3
    logs = model.train_step(images)
    assert {"local_score_penalty", "global_score_penalty"} <= set(logs)


# ------------------------------------------------------------- gradient penalty


def _d_optimizer(kind):
    if kind == "sgd":
        return keras.optimizers.SGD(1.0)  # update = -gradient: linear, exact to compare
    return keras.optimizers.Adam(1e-4, beta_1=0.5, beta_2=0.999, epsilon=1e-8)  # the paper's


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _expected_step(kind, before, gradients):
    """D's weights after one step of a fresh `kind` optimiser from `before`."""
    variables = [keras.Variable(b) for b in before]
    optimizer = _d_optimizer(kind)
    optimizer.apply_gradients(zip(gradients, variables))
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_gradient_penalty_adds_its_weighted_gradient_to_the_discriminator_update(kind):
    """Two identical models, penalty weight 0 and 10, one train_step on the same batch:
    D's update is the optimiser's step on grad(loss) and on grad(loss) + 10 grad(penalty)
    respectively (gradients taken by hand on `objectives.prior`), the two updates differ
    by a margin, and the encoder side moves identically (the penalty never reaches it)."""
    weight = 10.0
    images = tf.constant(disc_images(BATCH))
    plain = _model(gradient_penalty_weight=0.0)
    penalised = _model(gradient_penalty_weight=weight)
    penalised.set_weights(plain.get_weights())
    for model in (plain, penalised):
        model.compile(keras.optimizers.SGD(0.01), _d_optimizer(kind))

    # The penalty has no path into the encoder side (None, not merely zero: zeros would
    # mean the codes were not cut and only D's piecewise linearity hid it).
    with tf.GradientTape(persistent=True) as tape:
        _, _, terms, _ = penalised._step_terms(images, training=True)
        penalty, disc_loss = (tf.reduce_mean(terms[k]) for k in ("prior_gradient_penalty",
                                                                 "prior_disc_loss"))
    for term in (penalty, disc_loss):
        assert all(g is None for g in tape.gradient(term, penalised.encoder_side_variables))
    del tape

    # D's gradients by hand, at the step's parameters, batch and prior samples.
    # (Running the encoder here moves only BN moving statistics, which a training
    # step does not read.)
    codes = prior_lib.squash_codes(plain.encoder(images, training=True)["y"])
    prior = plain._prior_samples(tf.shape(codes)[0], stream=0)
    d_vars = plain.prior_variables
    with tf.GradientTape(persistent=True) as tape:
        by_hand = prior_lib.discriminator_terms(plain.prior_discriminator, prior, codes)
        loss, penalty = tf.reduce_mean(by_hand.loss), tf.reduce_mean(by_hand.gradient_penalty)
    loss_grads, penalty_grads = tape.gradient(loss, d_vars), tape.gradient(penalty, d_vars)
    del tape
    # D's output bias has no penalty gradient (it does not change dD/dz).
    penalty_grads = [tf.zeros_like(v) if g is None else g for g, v in zip(penalty_grads, d_vars)]

    d_before = _values(d_vars)
    encoder_before = _values(plain.encoder_side_variables)
    logs = penalised.train_step(images)
    plain.train_step(images)
    np.testing.assert_allclose(float(logs["prior_gradient_penalty"]), float(penalty), rtol=1e-5)

    want_plain = _expected_step(kind, d_before, loss_grads)
    want_penalised = _expected_step(
        kind, d_before, [g + weight * p for g, p in zip(loss_grads, penalty_grads)])
    # SGD: float32 round-off of w - g (1e-6 relative to the update). Adam's first step
    # is lr * g / (|g| + eps'): tiny gradients differing in their last bits may move
    # an entry by a fraction of lr, hence atol 1e-2 lr.
    tolerance = dict(rtol=1e-5, atol=1e-7) if kind == "sgd" else dict(rtol=1e-4, atol=1e-6)
    for got, want, name in zip(plain.prior_variables, want_plain, [v.path for v in d_vars]):
        np.testing.assert_allclose(got.numpy(), want, **tolerance, err_msg=f"plain {name}")
    for got, want, name in zip(penalised.prior_variables, want_penalised, [v.path for v in d_vars]):
        np.testing.assert_allclose(got.numpy(), want, **tolerance, err_msg=f"penalised {name}")

    # The penalty's share of the update is large, not round-off: the kernels' updates
    # differ by more than 10% of the unpenalised update.
    for i in (0, 2, 4):  # fc1, fc2 and logit kernels
        update_plain = plain.prior_variables[i].numpy() - d_before[i]
        update_penalised = penalised.prior_variables[i].numpy() - d_before[i]
        margin = np.linalg.norm(update_penalised - update_plain) / np.linalg.norm(update_plain)
        assert margin > 0.1, (d_vars[i].path, margin)

    # The encoder side took the very same step in both models, and did move.
    for before, a, b in zip(encoder_before, plain.encoder_side_variables,
                            penalised.encoder_side_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert all(not np.array_equal(before, v.numpy())
               for before, v in zip(encoder_before, plain.encoder_side_variables))
