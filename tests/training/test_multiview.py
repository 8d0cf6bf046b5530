"""Multi-view DIM: which (code, map) pairs are positives and negatives, against a
NumPy reference built view by view, its symmetries, and that every estimator,
critic and choice of negatives trains on [n, V, H, W, C] batches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf import DeepInfoMax
from dim_tf.config import ESTIMATORS, LOCAL_CRITICS
from tests.objectives.test_estimators import numpy_mi_loss
from tests.training.synthetic import disc_images
from tests.training.test_xla import tiny_encoder

N = 4  # images per batch


def _model(**kwargs):
    defaults = dict(mi_units=8, alpha=0.5, beta=1.0, gamma=0.1)
    defaults.update(kwargs)
    keras.utils.set_random_seed(0)
    return DeepInfoMax(tiny_encoder(), **defaults)


def _views(views, n=N, seed=0):
    """[n, views, 16, 16, 3]: every view a different picture, so a wrong pairing shows."""
    return disc_images(n * views, size=16, seed=seed).reshape(n, views, 16, 16, 3)


def _per_view_features(model, images, training):
    """{name: [n, V, ...]} features. In inference mode each view is encoded on its
    own (no batch statistics: nothing depends on how the model lays views out); in
    training mode the batch is the image-major [n * V] batch of the contract."""
    n, views = images.shape[:2]
    if not training:
        per_view = [model.encoder(images[:, v], training=False) for v in range(views)]
        return {k: np.stack([f[k].numpy() for f in per_view], axis=1) for k in per_view[0]}
    features = model.encoder(images.reshape((n * views,) + images.shape[2:]), training=True)
    return {k: f.numpy().reshape((n, views) + tuple(f.shape[1:])) for k, f in features.items()}


def _candidates(i, n, group):
    """Candidate images of row i (all, or its group of `group` consecutive images)."""
    if group is None:
        return np.arange(n)
    return np.arange(group * (i // group), group * (i // group) + group)


def _reference_pair_scores(model, features, a, b, group, training):
    """NumPy-assembled local and global scores of view a's codes against view b's
    maps: row i's positive is image i's view-b map, its negatives other images'
    view-b maps. Returns {"local": (scores, positive), "global": (...)}."""
    y, local = features["y"], features["local"]
    n = y.shape[0]
    found = {}
    if model.local_critic is None:
        # The heads' own layers, applied as the step does (all views in one batch).
        flat_y = y.reshape((-1,) + y.shape[2:])
        flat_local = local.reshape((-1,) + local.shape[2:])
        codes = model.local_code_projection(flat_y, training=training).numpy().reshape(n, -1, model.mi_units)
        maps = model.local_map_projection(flat_local, training=training).numpy()
        maps = maps.reshape(n, -1, maps.shape[1] * maps.shape[2], model.mi_units)
        rows = [np.einsum("u,jlu->jl", codes[i, a].astype(np.float64),
                          maps[_candidates(i, n, group), b].astype(np.float64)) for i in range(n)]
        positive = np.array([list(_candidates(i, n, group)).index(i) for i in range(n)])
        found["local"] = (np.stack(rows), positive)
    else:
        # Concat-and-convolve: own view-b map, then the next image's of its group.
        neighbour = [_candidates(i, n, group)[(list(_candidates(i, n, group)).index(i) + 1)
                                              % len(_candidates(i, n, group))] for i in range(n)]
        pairs = np.stack([local[:, b], local[neighbour, b]], axis=1)
        found["local"] = (model.local_critic(y[:, a], pairs).numpy().astype(np.float64),
                          np.zeros(n, np.int64))
    critic = model.global_critic
    encoded_maps = critic.encode_maps(local[:, b]).numpy()
    candidates = np.stack([encoded_maps[_candidates(i, n, group)] for i in range(n)])
    scores = critic.pair_scores(critic.encode_codes(y[:, a]), candidates).numpy()
    found["global"] = (scores.astype(np.float64)[:, :, np.newaxis],
                       np.array([list(_candidates(i, n, group)).index(i) for i in range(n)]))
    return found


_REFERENCE_CASES = [
    # views, critic, estimator, negative_group_size, training
    (2, "dot", "nce", None, True),
    (3, "dot", "jsd", None, False),
    (2, "dot", "jsd", 2, True),
    (2, "concat", "nce", None, False),
    (3, "concat", "jsd", 2, True),
]


@pytest.mark.parametrize("views, local_critic, estimator, group, training", _REFERENCE_CASES)
def test_terms_equal_a_numpy_reference_over_every_ordered_view_pair(
        views, local_critic, estimator, group, training):
    """Each image's local and global loss and MI are the mean, over the V(V-1)
    ordered pairs (a, b), of the estimator on view a's code scored against view b's
    map of the same image (positive) and of the other images (negatives)."""
    model = _model(local_critic=local_critic, estimator=estimator, negative_group_size=group)
    model.compile()
    images = _views(views)
    _, _, terms, monitored = model._step_terms(tf.constant(images), training=training)
    features = _per_view_features(model, images, training)
    for name in ("conv", "fc", "y"):  # what the online monitor sees: view 0's features
        np.testing.assert_allclose(monitored[name].numpy(), features[name][:, 0], rtol=1e-5,
                                   atol=1e-5, err_msg=name)
    pairs = [(a, b) for a in range(views) for b in range(views) if a != b]
    assert len(pairs) == views * (views - 1)
    for objective in ("local", "global"):
        per_pair = [numpy_mi_loss(*_reference_pair_scores(model, features, a, b, group, training)[objective],
                                  estimator) for a, b in pairs]
        want_loss = np.mean([loss for loss, _ in per_pair], axis=0)
        want_mi = np.mean([mi for _, mi in per_pair], axis=0)
        assert terms[f"{objective}_loss"].shape == (N,)
        np.testing.assert_allclose(terms[f"{objective}_loss"].numpy(), want_loss, rtol=2e-5, atol=2e-5,
                                   err_msg=objective)
        np.testing.assert_allclose(terms[f"{objective}_mi"].numpy(), want_mi, rtol=2e-5, atol=2e-5,
                                   err_msg=objective)
    # The prior's encoder term is the mean over every view's code.
    logits = model.prior_discriminator(tf.sigmoid(features["y"].reshape(N * views, -1))).numpy()
    want_prior = np.logaddexp(0.0, -logits[:, 0].astype(np.float64)).reshape(N, views).mean(axis=1)
    np.testing.assert_allclose(terms["prior_loss"].numpy(), want_prior, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_permuting_the_views_of_the_batch_changes_no_term(training):
    """The objective treats views alike: the same permutation of every image's views
    (as a different augmentation draw order would give) leaves each image's terms."""
    model = _model(estimator="nce")
    model.compile()
    images = _views(3)
    _, _, terms, _ = model._step_terms(tf.constant(images), training=training)
    _, _, permuted, _ = model._step_terms(tf.constant(images[:, [2, 0, 1]]), training=training)
    for name in ("local_loss", "local_mi", "global_loss", "global_mi", "prior_loss"):
        np.testing.assert_allclose(permuted[name].numpy(), terms[name].numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("local_critic, training", [("dot", False), ("dot", True), ("concat", False)])
def test_two_identical_views_give_the_single_view_objective(local_critic, training):
    """V = 2 copies of each image: every pair scores the single view's matrix, so the
    local and global terms and the encoder's prior term are the single-view ones
    (in training mode too: a duplicated batch has the same batch statistics)."""
    model = _model(local_critic=local_critic, estimator="nce")
    model.compile()
    single = disc_images(N, size=16)
    _, _, want, _ = model._step_terms(tf.constant(single), training=training)
    _, _, got, _ = model._step_terms(tf.constant(np.stack([single, single], 1)), training=training)
    for name in ("local_loss", "local_mi", "global_loss", "global_mi", "prior_loss"):
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def _cases():
    for i, estimator in enumerate(ESTIMATORS):
        for j, critic in enumerate(LOCAL_CRITICS):
            # Alternate the negatives: the whole batch, groups of 2, replica-local.
            negatives = [dict(), dict(negative_group_size=2), dict(negatives="replica")][(i + j) % 3]
            yield estimator, critic, negatives


@pytest.mark.parametrize("estimator, local_critic, negatives", list(_cases()))
def test_every_estimator_critic_and_negatives_gives_finite_losses_and_gradients(
        estimator, local_critic, negatives):
    model = _model(estimator=estimator, local_critic=local_critic, score_clip=10.0,
                   score_penalty=0.05, **negatives)
    model.compile()
    images = tf.constant(_views(2))
    with tf.GradientTape(persistent=True) as tape:
        encoder_loss, prior_loss, terms, _ = model._step_terms(images, training=True)
        encoder_loss, prior_loss = tf.reduce_mean(encoder_loss), tf.reduce_mean(prior_loss)
    assert all(t.shape == (N,) for t in terms.values())
    assert all(np.all(np.isfinite(t.numpy())) for t in terms.values())
    for loss, variables in ((encoder_loss, model.encoder_side_variables),
                            (prior_loss, model.prior_variables)):
        gradients = tape.gradient(loss, variables)
        assert all(g is not None for g in gradients), [v.path for v, g in zip(variables, gradients)
                                                      if g is None]
        assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in gradients)
    del tape


def test_fit_and_evaluate_on_views_train_the_encoder_and_the_monitor_on_view_0():
    model = _model(monitor_classes=2, score_penalty=0.05)
    model.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-2))
    images = _views(2, n=8)
    labels = np.array([0, 1] * 4)
    before = [v.numpy().copy() for v in model.encoder_side_variables + model.monitor_variables]
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0, shuffle=False).history
    assert int(model.optimizer.iterations) == 2
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert {"local_score_penalty", "global_score_penalty", "monitor_fc_accuracy"} <= set(history)
    after = model.encoder_side_variables + model.monitor_variables
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, after))
    logs = model.evaluate(images, labels, batch_size=4, verbose=0, return_dict=True)
    assert np.isfinite(logs["loss"])


def test_batches_of_another_rank_are_refused():
    model = _model()
    model.compile()
    with pytest.raises(ValueError, match=r"\[n, V, H, W, C\]"):
        model._step_terms(tf.zeros([2, 16, 16]), training=False)
