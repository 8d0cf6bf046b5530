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


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


# d/du of the positive term g and of the negative term f*(g) above.
_F_PAIR_DERIVATIVES = {
    "jsd": (lambda u: _sigmoid(-u), lambda u: _sigmoid(u)),
    "gan": (lambda u: _sigmoid(-u), lambda u: _sigmoid(u)),
    "kl": (lambda u: np.ones_like(u), lambda u: np.exp(u)),
    "rkl": (lambda u: np.exp(-u), lambda u: np.ones_like(u)),
    "h2": (lambda u: np.exp(-u), lambda u: np.exp(u)),
    "x2": (lambda u: np.ones_like(u), lambda u: u / 2.0 + 1.0),
}


def numpy_mi_gradient(scores, positive_index, estimator):
    """Float64 closed-form gradient of each row's loss w.r.t. that row's scores
    ([rows, candidates, locations]; a row's loss depends on its own scores only),
    with log-sum-exp / softmax written stably so it is exact for scores of any size."""
    scores = scores.astype(np.float64)
    rows, candidates, locations = scores.shape
    grad = np.zeros_like(scores)
    for i in range(rows):
        p = positive_index[i]
        pos = scores[i, p, :]
        neg_mask = np.arange(candidates) != p
        neg = scores[i, neg_mask, :].reshape(-1)
        if estimator == "dv":
            grad[i, p, :] = -1.0 / locations
            grad[i, neg_mask, :] = _softmax(neg).reshape(candidates - 1, locations)
        elif estimator == "nce":
            m = neg.max()
            lse = m + np.log(np.sum(np.exp(neg - m)))
            weight = _sigmoid(lse - pos)  # d softplus(lse - pos_l) / d(lse - pos_l)
            grad[i, p, :] = -weight / locations
            grad[i, neg_mask, :] = (weight.sum() / locations * _softmax(neg)).reshape(
                candidates - 1, locations)
        else:
            dg, df_star = _F_PAIR_DERIVATIVES[estimator]
            grad[i, p, :] = -dg(pos) / locations
            grad[i, neg_mask, :] = df_star(scores[i, neg_mask, :]) / neg.size
    return grad


def _row_losses_and_gradients(scores, positive_index, estimator):
    """per_example_mi's per-row losses, MI estimates and d(sum of row losses)/d(scores)."""
    scores = tf.convert_to_tensor(scores)
    with tf.GradientTape() as tape:
        tape.watch(scores)
        result = per_example_mi(scores, positive_index, estimator)
        total = tf.reduce_sum(result.loss)
    return result.loss.numpy(), result.mi.numpy(), tape.gradient(total, scores)


# bfloat16 keeps 8 significant bits: rounding a float32 score to it moves it by at
# most |u| * 2^-8 (round to nearest). To first order a row's loss then moves by at
# most sum_k |dL/du_k| |u_k| 2^-8; the factor 2 covers the second-order term.
BFLOAT16_RELATIVE_ROUNDING = 2.0**-8


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_bfloat16_scores_are_estimated_in_float32(estimator):
    """Mixed precision hands the estimators bfloat16-rounded values: the result must
    be float32, equal the float64 reference of those rounded values to float32
    accuracy (an estimator computing in bfloat16 would be ~2^-8 off), and differ
    from the float32 scores' estimate only by what the input rounding explains."""
    rng = np.random.default_rng(5)
    scores32 = rng.normal(0.0, 3.0, size=(6, 5, 4)).astype(np.float32)
    positive_index = rng.integers(0, 5, size=6).astype(np.int32)
    scores16 = tf.cast(scores32, tf.bfloat16)
    rounded = tf.cast(scores16, tf.float64).numpy()
    assert np.any(rounded != scores32)  # the rounding is real

    loss16, mi16, grad16 = _row_losses_and_gradients(scores16, positive_index, estimator)
    assert loss16.dtype == np.float32 and mi16.dtype == np.float32
    assert grad16.dtype == tf.bfloat16  # the gradient flows back in the scores' dtype
    want_loss, want_mi = numpy_mi_loss(rounded, positive_index, estimator)
    # float32 arithmetic over <= 20 terms of size <= ~e^10: relative error well below 1e-5.
    np.testing.assert_allclose(loss16, want_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mi16, want_mi, rtol=1e-5, atol=1e-5)

    exact_loss, _ = numpy_mi_loss(scores32, positive_index, estimator)
    grad = numpy_mi_gradient(scores32, positive_index, estimator)
    bound = 2.0 * BFLOAT16_RELATIVE_ROUNDING * np.sum(np.abs(grad * scores32), axis=(1, 2))
    assert np.all(np.abs(loss16 - exact_loss) <= bound + 1e-5), (loss16 - exact_loss, bound)


# Scores of magnitude 90-120: exp(u) overflows float32 above u = 88.7 and
# sigmoid(-u) underflows to 0 (so log sigmoid = -inf) below u = -103, so only
# log-sum-exp / softplus formulations stay exact here.
def _large_scores(separated: bool):
    """[4, 4, 3] scores of magnitude 90-120; positives on the diagonal.

    separated: positives +, negatives - (a trained critic). Otherwise signs are
    random (a critic that is confidently wrong about some pairs)."""
    rng = np.random.default_rng(6)
    magnitude = rng.uniform(90.0, 120.0, size=(4, 4, 3))
    if separated:
        sign = -np.ones((4, 4, 3))
        sign[np.arange(4), np.arange(4)] = 1.0
    else:
        sign = rng.choice([-1.0, 1.0], size=(4, 4, 3))
    return (sign * magnitude).astype(np.float32), np.arange(4, dtype=np.int32)


# kl and h2 average exp(u) over negatives and rkl / h2 exp(-u) over positives: with a
# wrongly signed score above 88.7 their true value exceeds float32 (e^90 > 3.4e38), an
# overflow inherent to those bounds. Every estimator is exact on separated scores.
_FINITE_FOR_ANY_SIGN = ("jsd", "dv", "nce", "gan", "x2")
_LARGE_CASES = [(e, True) for e in ESTIMATORS] + [(e, False) for e in _FINITE_FOR_ANY_SIGN]


@pytest.mark.parametrize("estimator, separated", _LARGE_CASES,
                         ids=[f"{e}-{'separated' if s else 'mixed'}" for e, s in _LARGE_CASES])
@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_large_scores_equal_float64_log_sum_exp_reference(estimator, separated, dtype):
    """Losses and gradients at |u| ~ 100 equal the float64 log-sum-exp reference:
    a naive log(mean(exp)), log(sigmoid) or softmax gives inf or NaN here, and
    exp() of a large positive score inside the negatives' masked sum gives a NaN
    gradient (inf * 0)."""
    scores, positive_index = _large_scores(separated)
    scores = tf.cast(scores, dtype)
    values = tf.cast(scores, tf.float64).numpy()  # what the estimator is given
    loss, mi, grad = _row_losses_and_gradients(scores, positive_index, estimator)
    want_loss, want_mi = numpy_mi_loss(values, positive_index, estimator)
    # Losses here are sums of terms up to ~120 (x2: u^2/4 ~ 3600): float32 keeps
    # ~7 digits, so rtol 1e-5 with atol 1e-4 for values that cancel to near 0.
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mi, want_mi, rtol=1e-5, atol=1e-4)
    want_grad = numpy_mi_gradient(values, positive_index, estimator)
    # The gradient comes back in the scores' dtype: bfloat16 rounds it by 2^-8.
    rtol = 1e-5 if dtype == tf.float32 else BFLOAT16_RELATIVE_ROUNDING
    np.testing.assert_allclose(tf.cast(grad, tf.float64), want_grad, rtol=rtol, atol=1e-6)


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
