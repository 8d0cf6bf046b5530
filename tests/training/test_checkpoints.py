"""Checkpoints restore the model and both optimisers exactly, and survive faults."""

import glob
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf import DeepInfoMax, build_encoder, restore_latest, training_checkpoint
from dim_tf.training.checkpoints import CheckpointStore, remove_leftovers
from dim_tf.errors import CheckpointError
from tests.training.synthetic import disc_images


def _compiled_model():
    model = DeepInfoMax(build_encoder("basic32x32"), mi_units=32, alpha=0.5, gamma=0.1)
    model.compile()
    return model


def _batches(start, stop):
    images = disc_images(8 * 6, seed=3).reshape(6, 8, 32, 32, 3)
    return tf.data.Dataset.from_tensor_slices(images[start:stop])


def test_k_steps_checkpoint_restore_k_steps_equals_2k_straight(tmp_path):
    keras.utils.set_random_seed(0)
    straight = _compiled_model()
    straight.fit(_batches(0, 6), epochs=1, verbose=0)

    keras.utils.set_random_seed(0)
    first_half = _compiled_model()
    first_half.fit(_batches(0, 3), epochs=1, verbose=0)
    manager, restored_from = restore_latest(training_checkpoint(first_half), str(tmp_path))
    assert restored_from is None
    manager.save()

    keras.utils.set_random_seed(99)  # a fresh model with different initial weights
    resumed = _compiled_model()
    _, restored_from = restore_latest(training_checkpoint(resumed), str(tmp_path))
    assert restored_from is not None
    assert int(resumed.optimizer.iterations) == 3
    assert int(resumed.prior_optimizer.iterations) == 3
    resumed.fit(_batches(3, 6), epochs=1, verbose=0)

    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, err_msg=a.path)
    for optimizer in ("optimizer", "prior_optimizer"):
        for a, b in zip(getattr(straight, optimizer).variables, getattr(resumed, optimizer).variables):
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, err_msg=a.path)


def test_checkpoint_needs_compiled_model():
    model = DeepInfoMax(build_encoder("basic32x32"), mi_units=8)
    with pytest.raises(ValueError, match="Compile"):
        training_checkpoint(model)


# ------------------------------------------------ CheckpointStore under faults


def _store(directory, value=0.0, max_to_keep=3):
    variable = tf.Variable([value, value])
    return CheckpointStore(tf.train.Checkpoint(v=variable), str(directory), max_to_keep), variable


def _saved(directory, steps):
    store, variable = _store(directory)
    for step in steps:
        variable.assign([float(step), float(step)])
        store.save(step)
    return store


def test_store_keeps_the_newest_and_tensorflow_reads_its_state_file(tmp_path):
    store = _saved(tmp_path, [1, 2, 3, 4])
    assert store.numbers() == [2, 3, 4]
    assert not glob.glob(str(tmp_path / "ckpt-1.*"))
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-4")
    assert tf.train.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths == [
        str(tmp_path / f"ckpt-{n}") for n in (2, 3, 4)]


def test_leftovers_of_killed_saves_are_removed_and_complete_checkpoints_kept(tmp_path):
    _saved(tmp_path, [2])
    (tmp_path / ".saving-ckpt-4-123").mkdir()
    (tmp_path / ".saving-ckpt-4-123" / "ckpt-4.index").write_bytes(b"x")
    (tmp_path / "ckpt-4.data-00000-of-00001").write_bytes(b"partial")
    (tmp_path / "ckpt-6_temp").mkdir()
    (tmp_path / "checkpoint.tmp-99-0123abcd").write_text("partial")  # dim_tf.io's temporary name
    removed = remove_leftovers(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [
        ".saving-ckpt-4-123", "checkpoint.tmp-99-0123abcd", "ckpt-4.data-00000-of-00001", "ckpt-6_temp"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]


def test_unreadable_newest_falls_back_to_the_previous_and_is_set_aside(tmp_path, caplog):
    _saved(tmp_path, [2, 4])
    data = tmp_path / "ckpt-4.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:3])
    store, variable = _store(tmp_path)
    with caplog.at_level("WARNING", logger="absl"):
        assert store.restore_newest_readable() == str(tmp_path / "ckpt-2")
    assert variable.numpy().tolist() == [2.0, 2.0]
    assert str(tmp_path / "ckpt-4") in caplog.text and "cannot be read" in caplog.text
    assert sorted(os.listdir(tmp_path / "unreadable")) == [
        "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-2")


def test_a_non_owner_falls_back_without_touching_the_files(tmp_path):
    _saved(tmp_path, [2, 4])
    (tmp_path / "ckpt-4.index").write_bytes(b"not an index")
    before = sorted(os.listdir(tmp_path))
    store, variable = _store(tmp_path)
    assert store.restore_newest_readable(repair=False) == str(tmp_path / "ckpt-2")
    assert sorted(os.listdir(tmp_path)) == before


def test_no_readable_checkpoint_raises_naming_each_and_moves_nothing(tmp_path):
    _saved(tmp_path, [2, 4])
    for index in glob.glob(str(tmp_path / "*.index")):
        Path(index).write_bytes(b"not an index")
    before = sorted(os.listdir(tmp_path))
    store, _ = _store(tmp_path)
    with pytest.raises(CheckpointError, match="No checkpoint in .* can be read") as error:
        store.restore_newest_readable()
    assert str(tmp_path / "ckpt-2") in str(error.value) and str(tmp_path / "ckpt-4") in str(error.value)
    assert sorted(os.listdir(tmp_path)) == before


def test_a_failed_write_names_the_checkpoint_and_leaves_the_earlier_ones(tmp_path, monkeypatch):
    store = _saved(tmp_path, [2])

    def full_disk(prefix):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        Path(f"{prefix}.data-00000-of-00001").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.checkpoint, "write", full_disk)
    with pytest.raises(CheckpointError, match="Could not write checkpoint .*ckpt-4: OSError: .*No "
                                              "space left on device.*newest: .*ckpt-2"):
        store.save(4)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]


def _conv_bn_relu_with_padding_layers(self, x, filters, kernel, stride, padding, name,
                                      dropout=0.0):
    """The encoders' block as it was built before PaddedConv2D: ZeroPadding2D, then 'valid'."""
    from keras import layers

    from dim_tf.models.encoders import pytorch_default_initializer

    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, kernel, stride, padding="valid", use_bias=False,
                      kernel_initializer=pytorch_default_initializer(), name=f"{name}_conv")(x)
    if dropout:
        x = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    x = self.batch_norm(f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _trained(encoder_name, seed):
    keras.utils.set_random_seed(seed)
    model = DeepInfoMax(build_encoder(encoder_name), mi_units=16, alpha=0.5, gamma=0.1)
    model.compile()
    model.fit(_batches(0, 2), epochs=1, verbose=0)  # moving statistics and Adam slots move
    return model


@pytest.mark.parametrize("encoder_name", ["basic32x32", "resnet19_32x32"])
def test_checkpoints_of_encoders_with_padding_layers_restore_and_resume(tmp_path, monkeypatch,
                                                                         encoder_name):
    from dim_tf.models import encoders

    with monkeypatch.context() as patch:
        patch.setattr(encoders._Builder, "conv_bn_relu", _conv_bn_relu_with_padding_layers)
        old = _trained(encoder_name, seed=0)
        assert any(isinstance(l, keras.layers.ZeroPadding2D) for l in old.encoder.layers)
        store, _ = restore_latest(training_checkpoint(old), str(tmp_path))
        store.save(2)

    keras.utils.set_random_seed(7)  # other initial weights, which the restore must replace
    new = DeepInfoMax(build_encoder(encoder_name), mi_units=16, alpha=0.5, gamma=0.1)
    new.compile()
    assert not any(isinstance(l, keras.layers.ZeroPadding2D) for l in new.encoder.layers)
    _, restored_from = restore_latest(training_checkpoint(new), str(tmp_path))
    assert restored_from == str(tmp_path / "ckpt-2")  # read, not set aside as unreadable

    old_weights = {v.path: v.numpy() for v in old.weights}
    assert sorted(old_weights) == sorted(v.path for v in new.weights)
    for variable in new.weights:
        np.testing.assert_array_equal(variable.numpy(), old_weights[variable.path], variable.path)
    for optimizer in ("optimizer", "prior_optimizer"):
        for a, b in zip(getattr(old, optimizer).variables, getattr(new, optimizer).variables):
            np.testing.assert_array_equal(b.numpy(), a.numpy(), a.path)
    images = disc_images(4, seed=5)
    for training in (False, True):
        expected, got = old.encoder(images, training=training), new.encoder(images, training=training)
        for key in expected:
            np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-5,
                                       atol=1e-5, err_msg=f"{key}, training={training}")

    # The next save is in today's layout, and restores as such.
    store = CheckpointStore(training_checkpoint(new), str(tmp_path))
    store.save(3)
    again = DeepInfoMax(build_encoder(encoder_name), mi_units=16, alpha=0.5, gamma=0.1)
    again.compile()
    training_checkpoint(again).restore(str(tmp_path / "ckpt-3")).assert_existing_objects_matched()
    for a, b in zip(new.weights, again.weights):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), a.path)
