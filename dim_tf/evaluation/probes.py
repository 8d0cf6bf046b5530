"""Probes of frozen features: the paper's classifier, a linear probe and k-NN.

- `train_probe(kind="classifier")`: the paper's frozen-feature classifier
  (Hjelm et al. 2019, sec. 4.1): flatten -> linear 200 -> dropout 0.1 -> BN ->
  ReLU -> linear(classes), Adam 1e-4, batch 64. The paper reports the mean test
  accuracy of the last 100 of 1000 epochs; here the accuracy after
  `epochs` epochs is reported (see the report's settings).
- `train_probe(kind="linear")`: a linear classifier on standardised features
  (Adam 1e-3), the usual self-supervised linear evaluation.
- `knn_classify`: weighted k-nearest-neighbour vote by cosine similarity,
  weight exp(similarity / temperature) (Wu et al. 2018), no training.

Accuracies are returned in percent; top-5 only when there are more than 10 classes.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dim_tf.errors import ConfigError, DataError
from dim_tf.models.heads import build_paper_classifier


def _accuracies(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    top1 = float(np.mean(np.argmax(scores, axis=1) == labels) * 100.0)
    top5 = None
    if num_classes > 10:
        best5 = np.argsort(-scores, axis=1)[:, :5]
        top5 = float(np.mean(np.any(best5 == labels[:, None], axis=1)) * 100.0)
    return {"top1": top1, "top5": top5}


def build_probe(kind: str, num_classes: int) -> keras.Model:
    """The probe network of `kind` ("classifier" or "linear") on flat features."""
    if kind == "classifier":
        return build_paper_classifier(num_classes)
    if kind == "linear":
        return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(num_classes)],
                                name="linear_probe")
    raise ConfigError(f"Unknown probe kind {kind!r}; choose from classifier, linear.")


def train_probe(
    kind: str,
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    num_classes: int, epochs: int = 20, batch_size: int = 64, seed: int = 0,
) -> dict:
    """Trains a probe on (train_x, train_y) and returns test {"top1", "top5"} in percent."""
    _check_labels(train_y, test_y, num_classes)
    keras.utils.set_random_seed(seed)
    train_x = train_x.reshape(len(train_x), -1).astype(np.float32)
    test_x = test_x.reshape(len(test_x), -1).astype(np.float32)
    if kind == "linear":  # standardise with training statistics
        mean, std = train_x.mean(0), train_x.std(0) + 1e-6
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    model = build_probe(kind, num_classes)
    learning_rate = 1e-4 if kind == "classifier" else 1e-3
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train_x, train_y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    scores = model.predict(test_x, batch_size=1024, verbose=0)
    return _accuracies(scores, test_y, num_classes)


def knn_scores(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
    k: int = 200, temperature: float = 0.07, chunk: int = 512,
) -> np.ndarray:
    """Class scores [N_test, classes]: sum over the k most cosine-similar training
    examples of exp(similarity / temperature), per class."""
    train = tf.math.l2_normalize(tf.constant(train_x.reshape(len(train_x), -1), tf.float32), axis=1)
    labels = tf.constant(train_y, tf.int64)
    k = min(k, len(train_x))
    out = []
    for start in range(0, len(test_x), chunk):
        query = tf.math.l2_normalize(
            tf.constant(test_x[start:start + chunk].reshape(-1, train.shape[1]), tf.float32), axis=1)
        similarity, index = tf.math.top_k(tf.matmul(query, train, transpose_b=True), k=k)
        weights = tf.exp(similarity / temperature)
        votes = tf.one_hot(tf.gather(labels, index), num_classes) * weights[..., None]
        out.append(tf.reduce_sum(votes, axis=1).numpy())
    return np.concatenate(out)


def knn_classify(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    num_classes: int, k: int = 200, temperature: float = 0.07,
) -> dict:
    """Weighted k-NN test accuracy {"top1", "top5"} in percent."""
    _check_labels(train_y, test_y, num_classes)
    return _accuracies(knn_scores(train_x, train_y, test_x, num_classes, k, temperature),
                       test_y, num_classes)


def _check_labels(train_y, test_y, num_classes):
    for name, labels in (("train", train_y), ("test", test_y)):
        if len(labels) == 0:
            raise DataError(f"The {name} split has no examples to probe.")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(f"{name} labels must lie in [0, {num_classes}); got "
                             f"[{labels.min()}, {labels.max()}].")
    if len(np.unique(train_y)) < 2:
        raise DataError("Probes need at least two classes in the training split.")
