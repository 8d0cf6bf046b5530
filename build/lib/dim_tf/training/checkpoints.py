"""Checkpoints of a `DeepInfoMax` model and both of its optimisers.

`tf.train.Checkpoint` restores weights, batch-norm statistics, Adam slots and
iteration counts exactly (the prior's random stream is keyed on the encoder
optimiser's iteration count, so it resumes too). `tf.train.CheckpointManager`
writes each checkpoint under a new name and then atomically replaces the small
`checkpoint` index file, so an interrupted save never corrupts the last good
checkpoint.
"""

from __future__ import annotations

import tensorflow as tf


def training_checkpoint(model) -> tf.train.Checkpoint:
    """A checkpoint of `model`, its encoder optimiser and its prior optimiser.

    Raises:
        ValueError: the model has not been compiled (no optimisers yet).
    """
    if getattr(model, "optimizer", None) is None:
        raise ValueError("Compile the DeepInfoMax model before checkpointing it: "
                         "its optimisers are part of the checkpoint.")
    parts = {"model": model, "encoder_optimizer": model.optimizer}
    if model.prior_optimizer is not None:
        parts["prior_optimizer"] = model.prior_optimizer
    if model.monitor_optimizer is not None:
        parts["monitor_optimizer"] = model.monitor_optimizer
    return tf.train.Checkpoint(**parts)


def restore_latest(
    checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int = 3
) -> tuple[tf.train.CheckpointManager, str | None]:
    """Restores the newest checkpoint in `directory`, if any.

    Returns:
        (manager for further saves, path restored from or None).
    """
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    return manager, manager.latest_checkpoint
