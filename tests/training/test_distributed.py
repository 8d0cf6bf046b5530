"""A step under tf.distribute equals the single-device step on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf import DeepInfoMax, build_encoder
from tests.ports import free_ports
from tests.training.synthetic import disc_images

GLOBAL_BATCH = 8
STEPS = 3
REPO_ROOT = Path(__file__).resolve().parents[2]


def model_kwargs(**overrides):
    kwargs = dict(mi_units=32, alpha=0.5, beta=1.0, gamma=0.1, estimator="jsd")
    kwargs.update(overrides)
    return kwargs


def step_batches(views: int = 1) -> np.ndarray:
    """[STEPS, GLOBAL_BATCH, 32, 32, 3] fixed training batches, or with several views
    [STEPS, GLOBAL_BATCH, views, 32, 32, 3]."""
    images = disc_images(STEPS * GLOBAL_BATCH * views, seed=7)
    shape = (STEPS, GLOBAL_BATCH) + ((views,) if views > 1 else ()) + (32, 32, 3)
    return images.reshape(shape)


def _train(strategy, kwargs, optimizers, initial_weights=None, steps=STEPS, views=1):
    """Trains `steps` steps on the batches in order and returns (model, history)."""
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = DeepInfoMax(build_encoder("basic32x32"), **kwargs)
        model.compile(*optimizers())
    if initial_weights is not None:
        model.set_weights(initial_weights)
    dataset = tf.data.Dataset.from_tensor_slices(step_batches(views)[:steps])
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False).history
    return model, history


def _sgd():
    # SGD, not Adam: Adam's first steps are nearly invariant to the gradient's
    # scale and would hide a wrong loss reduction.
    return keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1)


def _adam():
    # Adam with slots (built in the strategy's scope). A large epsilon keeps the
    # update proportional to the gradient: with the default, Adam's first step is
    # lr * sign(g) and turns round-off in near-zero gradients into full steps.
    return (keras.optimizers.Adam(1e-2, beta_1=0.5, epsilon=1.0),
            keras.optimizers.Adam(1e-2, beta_1=0.5, epsilon=1.0))


def _max_difference(model_a, model_b):
    """Largest absolute difference of trainable weights."""
    return max(float(np.max(np.abs(a.numpy() - b.numpy())))
               for a, b in zip(model_a.trainable_weights, model_b.trainable_weights))


def _assert_same_batch_norm_statistics(model_a, model_b):
    # Synchronised batch norm computes the variance as E[x^2] - E[x]^2 over the
    # replicas, which loses a few digits against the single-device two-pass
    # variance: compare moving statistics relatively.
    for a, b in zip(model_a.non_trainable_weights, model_b.non_trainable_weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-5, err_msg=a.path)


_MIRRORED = []


def mirrored_strategy():
    """One MirroredStrategy for the whole process: two instances over the same
    devices assign colliding collective keys and abort each other's all-reduces."""
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _MIRRORED[0]


@pytest.mark.parametrize(
    "negatives, local_critic, estimator, optimizers, steps, views",
    [
        (None, "dot", "jsd", _sgd, 1, 1),
        (None, "dot", "dv", _sgd, 1, 1),
        (None, "concat", "nce", _sgd, 1, 1),
        (None, "dot", "nce", _adam, 2, 1),
        ("replica", "dot", "jsd", _sgd, 1, 1),
        ("replica", "concat", "dv", _sgd, 1, 1),
        # Multi-view DIM: each replica encodes its images' views image-major, so the
        # gathered pool and the prior samples line up with the single device's.
        (None, "dot", "nce", _adam, 2, 2),
        ("replica", "concat", "jsd", _sgd, 1, 2),
    ],
)
def test_mirrored_step_equals_single_device(negatives, local_critic, estimator, optimizers, steps,
                                            views):
    """With DeepInfoMax's defaults (negatives=None here: the argument is not passed)
    every other image of the global batch is a negative on any strategy, as in the
    paper, so the single-device reference is the plain model on the global batch.
    With replica-local negatives
    the reference is the model whose candidates are restricted to groups of one
    replica's batch (images, whatever the views)."""
    kwargs = model_kwargs(local_critic=local_critic, estimator=estimator)
    assert "negatives" not in kwargs and "negative_group_size" not in kwargs
    group = GLOBAL_BATCH // 2 if negatives == "replica" else None
    single, single_logs = _train(tf.distribute.get_strategy(), dict(kwargs, negative_group_size=group),
                                 optimizers, steps=steps, views=views)
    initial = _train_initial_weights(kwargs, group)
    mirrored_kwargs = kwargs if negatives is None else dict(kwargs, negatives=negatives)
    mirrored, mirrored_logs = _train(mirrored_strategy(), mirrored_kwargs, optimizers, initial,
                                     steps=steps, views=views)
    assert _max_difference(single, mirrored) < 1e-5
    _assert_same_batch_norm_statistics(single, mirrored)
    for key in single_logs:
        np.testing.assert_allclose(mirrored_logs[key], single_logs[key], rtol=1e-4, atol=1e-5)
    # The reference is not trivially equal: the choice of negatives changes the step.
    other, _ = _train(
        tf.distribute.get_strategy(),
        dict(kwargs, negative_group_size=GLOBAL_BATCH // 2 if group is None else None),
        optimizers, steps=steps, views=views,
    )
    assert _max_difference(single, other) > 1e-4


def _train_initial_weights(kwargs, group):
    keras.utils.set_random_seed(0)
    model = DeepInfoMax(build_encoder("basic32x32"), **dict(kwargs, negative_group_size=group))
    return [w.numpy() for w in model.weights]


def test_wrong_loss_reduction_would_be_caught():
    """Halving the learning rate (the effect of averaging instead of summing over
    two replicas) moves weights by far more than the equality tolerance."""
    single, _ = _train(tf.distribute.get_strategy(), model_kwargs(), _sgd, steps=1)
    halved, _ = _train(
        tf.distribute.get_strategy(), model_kwargs(),
        lambda: (keras.optimizers.SGD(0.05), keras.optimizers.SGD(0.05)), steps=1,
    )
    assert _max_difference(single, halved) > 1e-3


def test_two_workers_on_localhost_train_identically(tmp_path):
    ports = ",".join(str(p) for p in free_ports(2))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), CUDA_VISIBLE_DEVICES="-1")
    outputs = [tmp_path / f"worker{i}.npz" for i in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.training.multi_worker_main", str(i), ports, str(out)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for i, out in enumerate(outputs)
    ]
    try:
        logs = [w.communicate(timeout=300)[0].decode(errors="replace") for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, log in zip(workers, logs):
        assert w.returncode == 0, log[-3000:]
    first, second = (np.load(out) for out in outputs)
    weight_keys = [f"w{i}" for i in range(len(first.files) - 1)]
    for key in weight_keys:
        np.testing.assert_array_equal(first[key], second[key])
    assert np.all(np.isfinite(first["losses"]))
    # And both equal two replicas in one process on the same global batches, whose
    # step equals the single-device one (the tests above). Both synchronise batch
    # norm and all-gather the negatives (the default: the whole global batch); the
    # single process would normalise with the fused kernel instead, and three SGD
    # steps at lr 0.1 amplify that round-off to ~1e-3 in a few units.
    mirrored, _ = _train(mirrored_strategy(), model_kwargs(), _sgd)
    for key, weight in zip(weight_keys, mirrored.weights):
        tolerance = dict(atol=1e-4) if weight.trainable else dict(rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(first[key], weight.numpy(), **tolerance, err_msg=weight.path)
