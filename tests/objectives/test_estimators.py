"""Estimators against direct NumPy implementations, bounds and known MI."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.objectives.estimators import (
    ESTIMATORS,
    canonical_estimator,
    per_example_mi,
)

LOG2 = math.log(2.0)


def _softplus(x):
    return np.logaddexp(0.0, x)


# Positive term g(u) and negative term f*(g(u)) of each f-divergence, written
# from Nowozin et al. (2016), Table 6, independently of the library.
_F_PAIRS = {
    "jsd": (lambda u: LOG2 - _softplus(-u), lambda u: _softplus(u) - LOG2),
    "gan": (lambda u: -_softplus(-u), lambda u: _softplus(u)),
    "kl": (lambda u: u + 1.0, lambda u: np.exp(u)),
    "rkl": (lambda u: -np.exp(-u), lambda u: u - 1.0),
    "h2": (lambda u: 1.0 - np.exp(-u), lambda u: np.exp(u) - 1.0),
    "x2": (lambda u: u, lambda u: u * u / 4.0 + u),
}


def numpy_mi_loss(scores, positive_index, estimator):
    """Loop-level reference: per-row loss and MI estimate."""
    rows, candidates, locations = scores.shape
    losses, mis = [], []
    for i in range(rows):
        p = positive_index[i]
        pos = scores[i, p, :].astype(np.float64)
        neg = np.delete(scores[i], p, axis=0).reshape(-1).astype(np.float64)
        if estimator == "dv":
            m = neg.max()
            loss = m + np.log(np.mean(np.exp(neg - m))) - pos.mean()
            mi = -loss
        elif estimator == "nce":
            per_loc = []
            for l in range(locations):
                logits = np.concatenate([[pos[l]], neg])
                m = logits.max()
                per_loc.append(-(pos[l] - m - np.log(np.sum(np.exp(logits - m)))))
            loss = np.mean(per_loc)
            mi = np.log(len(neg) + 1) - loss
        else:
            g, f_star = _F_PAIRS[estimator]
            loss = f_star(neg).mean() - g(pos).mean()
            mi = -loss
        losses.append(loss)
        mis.append(mi)
    return np.array(losses), np.array(mis)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_matches_numpy_reference(estimator):
    rng = np.random.default_rng(0)
    scores = rng.normal(0.0, 2.0, size=(6, 5, 4)).astype(np.float32)
    positive_index = rng.integers(0, 5, size=6).astype(np.int32)
    result = per_example_mi(scores, positive_index, estimator)
    expected_loss, expected_mi = numpy_mi_loss(scores, positive_index, estimator)
    np.testing.assert_allclose(result.loss.numpy(), expected_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.mi.numpy(), expected_mi, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_float32_from_bfloat16_and_finite_for_extreme_scores(estimator):
    scores = tf.constant(np.full((4, 4, 3), 80.0), tf.bfloat16)
    result = per_example_mi(scores, tf.range(4), estimator)
    assert result.loss.dtype == tf.float32 and result.mi.dtype == tf.float32
    if estimator not in ("kl", "h2", "x2"):  # exp / square overflow is inherent to those bounds
        assert np.all(np.isfinite(result.loss.numpy()))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradient_matches_numerical(estimator):
    rng = np.random.default_rng(1)
    scores = tf.constant(rng.normal(size=(3, 4, 2)), tf.float64)
    positive_index = tf.constant([0, 2, 3])

    def batch_loss(s):
        return tf.reduce_mean(per_example_mi(tf.cast(s, tf.float32), positive_index, estimator).loss)

    with tf.GradientTape() as tape:
        tape.watch(scores)
        loss = batch_loss(scores)
    analytic = tape.gradient(loss, scores).numpy()
    eps = 1e-3
    numeric = np.zeros_like(analytic)
    flat = scores.numpy().reshape(-1)
    for k in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[k] += eps
        down[k] -= eps
        numeric.reshape(-1)[k] = (
            batch_loss(tf.constant(up.reshape(scores.shape))).numpy()
            - batch_loss(tf.constant(down.reshape(scores.shape))).numpy()
        ) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, atol=2e-3, rtol=2e-2)


def test_jsd_reaches_its_bound_for_separated_scores():
    n, locations = 8, 5
    scores = np.full((n, n, locations), -30.0, np.float32)
    scores[np.arange(n), np.arange(n), :] = 30.0
    result = per_example_mi(scores, np.arange(n), "jsd")
    np.testing.assert_allclose(result.loss.numpy(), -2 * LOG2, atol=1e-6)
    # And never below it, whatever the scores.
    rng = np.random.default_rng(2)
    random_loss = per_example_mi(rng.normal(0, 10, (n, n, locations)), np.arange(n), "jsd").loss
    assert np.all(random_loss.numpy() >= -2 * LOG2 - 1e-6)


def test_infonce_never_exceeds_log_candidates():
    rng = np.random.default_rng(3)
    n, locations = 6, 4
    log_k = math.log((n - 1) * locations + 1)
    for scale in (0.1, 1.0, 10.0, 100.0):
        scores = rng.normal(0, scale, (n, n, locations)).astype(np.float32)
        scores[np.arange(n), np.arange(n), :] += scale * 5
        mi = per_example_mi(scores, np.arange(n), "nce").mi.numpy()
        assert np.all(mi <= log_k + 1e-5)
    # Perfect separation reaches log K; equal scores give log K - log K = 0.
    scores = np.zeros((n, n, locations), np.float32)
    np.testing.assert_allclose(per_example_mi(scores, np.arange(n), "nce").mi, 0.0, atol=1e-6)
    scores[np.arange(n), np.arange(n), :] = 100.0
    np.testing.assert_allclose(per_example_mi(scores, np.arange(n), "nce").mi, log_k, atol=1e-5)


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError) as error:
        per_example_mi(np.zeros((2, 2, 1), np.float32), [0, 1], "wasserstein")
    for name in ESTIMATORS:
        assert name in str(error.value)
    assert canonical_estimator("infoNCE") == "nce"
    assert canonical_estimator("JSD") == "jsd"


def test_needs_a_negative():
    with pytest.raises(ValueError, match="at least one negative"):
        per_example_mi(np.zeros((1, 1, 3), np.float32), [0], "jsd")


def _correlated_gaussians(rng, n, dims, rho):
    x = rng.normal(size=(n, dims))
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(n, dims))
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("estimator", ["jsd", "dv", "nce"])
def test_trained_critic_estimates_known_mutual_information(estimator):
    """A critic trained on correlated Gaussians (I = -d/2 log(1 - rho^2) = 1.02 nats
    for d = 2, rho = 0.8) gives an estimate within 0.15 nats below the truth and
    no more than 0.05 above it (finite-sample noise). For JSD, whose value is
    not in nats, the MI estimate is the DV bound of the JSD-trained critic
    (its optimum is the log density ratio, Poole et al. 2019)."""
    import keras

    dims, rho = 2, 0.8
    true_mi = -dims / 2 * math.log(1 - rho**2)
    rng = np.random.default_rng(4)

    def mlp():
        return keras.Sequential([
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(32),
        ])

    embed_x, embed_y = mlp(), mlp()

    def scores_of(x, y):
        # rows: y_i; candidates: x_j; one location.
        return tf.einsum("iu,ju->ij", embed_y(y), embed_x(x))[:, :, tf.newaxis]

    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(per_example_mi(scores_of(x, y), tf.range(tf.shape(x)[0]), estimator).loss)
        variables = embed_x.trainable_variables + embed_y.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    for _ in range(800):
        step(*_correlated_gaussians(rng, 256, dims, rho))

    eval_estimator = "dv" if estimator == "jsd" else estimator
    estimates = []
    for _ in range(4):
        x, y = _correlated_gaussians(rng, 2048, dims, rho)
        estimates.append(float(tf.reduce_mean(
            per_example_mi(scores_of(x, y), tf.range(2048), eval_estimator).mi)))
    estimate = float(np.mean(estimates))
    assert true_mi - 0.15 < estimate < true_mi + 0.05, (estimate, true_mi)
