"""Probes: separable toy features, k-NN against a brute-force reference, errors."""

import numpy as np
import pytest

from dim_tf.evaluation.probes import knn_classify, knn_scores, train_probe


def _separable(n, centres, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centres), n)
    return (centres[labels] + rng.normal(0, 0.5, (n, centres.shape[1]))).astype(np.float32), labels


@pytest.mark.parametrize("kind", ["classifier", "linear"])
def test_probe_separates_a_separable_set(kind):
    centres = np.random.default_rng(0).normal(0, 5, (4, 16))
    train_x, train_y = _separable(512, centres, seed=1)
    test_x, test_y = _separable(256, centres, seed=2)
    result = train_probe(kind, train_x, train_y, test_x, test_y, num_classes=4, epochs=30)
    assert result["top1"] > 98.0 and result["top5"] is None


def test_random_labels_stay_at_chance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = rng.integers(0, 4, 400)
    result = train_probe("linear", x[:300], y[:300], x[300:], y[300:], num_classes=4, epochs=10)
    assert result["top1"] < 45.0


def _brute_force_knn(train_x, train_y, test_x, classes, k, temperature):
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    scores = np.zeros((len(test_x), classes))
    for i, q in enumerate(test_x):
        sims = train @ (q / np.linalg.norm(q))
        for j in np.argsort(-sims)[:k]:
            scores[i, train_y[j]] += np.exp(sims[j] / temperature)
    return scores


def test_knn_matches_brute_force_reference():
    rng = np.random.default_rng(4)
    train_x = rng.normal(size=(300, 12)).astype(np.float32)
    train_y = rng.integers(0, 12, 300)
    test_x = rng.normal(size=(40, 12)).astype(np.float32)
    test_y = rng.integers(0, 12, 40)
    for k, temperature in ((1, 0.07), (10, 0.5), (500, 0.1)):
        expected = _brute_force_knn(train_x, train_y, test_x, 12, min(k, 300), temperature)
        actual = knn_scores(train_x, train_y, test_x, 12, k=k, temperature=temperature, chunk=7)
        np.testing.assert_allclose(actual, expected, rtol=1e-4)
    result = knn_classify(train_x, train_y, test_x, test_y, 12, k=10, temperature=0.5)
    expected = _brute_force_knn(train_x, train_y, test_x, 12, 10, 0.5)
    assert result["top1"] == pytest.approx(np.mean(expected.argmax(1) == test_y) * 100)
    top5 = np.mean([t in np.argsort(-row)[:5] for row, t in zip(expected, test_y)]) * 100
    assert result["top5"] == pytest.approx(top5)


def test_probe_errors_name_the_problem():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="at least two classes"):
        train_probe("linear", x, np.zeros(4, int), x, np.zeros(4, int), 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        knn_classify(x, np.array([0, 1, 2, 1]), x, np.array([0, 1, 0, 1]), 2)
