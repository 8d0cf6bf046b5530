"""TensorBoard projector files of a set of codes: view with `tensorboard --logdir DIR`."""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow as tf

from dim_tf.io import atomic_write_text, fsync_path, temporary_path

PROJECTOR_METADATA = "metadata.tsv"
PROJECTOR_CONFIG = "projector_config.pbtxt"  # the name TensorBoard's projector plugin looks for
EMBEDDING_PREFIX = "embedding.ckpt"


def write_projector(projector_dir: str, codes: np.ndarray, names: list[str]) -> None:
    """Writes (or replaces) `projector_dir`: the codes as a checkpointed variable, one
    name per code (metadata.tsv) and the projector config that ties them together.

    Built in a temporary directory beside `projector_dir` and renamed into place,
    since a checkpoint is several files: a reader sees the old directory or the
    new one, complete.
    """
    temporary = temporary_path(projector_dir)
    os.makedirs(temporary)
    try:
        _write_files(temporary, codes, names)
        _replace_directory(temporary, projector_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # already renamed on success


def _write_files(directory: str, codes: np.ndarray, names: list[str]) -> None:
    from tensorboard.plugins import projector  # only this function needs TensorBoard's protos

    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(codes, dtype=tf.float32))
    # save() also writes the `checkpoint` state file (relative paths) by which
    # the projector finds the newest checkpoint in its log directory.
    prefix = checkpoint.save(os.path.join(directory, EMBEDDING_PREFIX))
    keys = [name for name, _ in tf.train.list_variables(prefix) if name.startswith("embedding/")]
    if len(keys) != 1:
        raise RuntimeError(f"Expected one embedding variable in {prefix}; found {keys}.")

    # One column: TensorBoard reads a header row only when there are several columns.
    # Tabs and newlines inside a name would break the TSV rows.
    rows = [" ".join(name.split()) or "?" for name in names]
    atomic_write_text(os.path.join(directory, PROJECTOR_METADATA), "".join(f"{row}\n" for row in rows))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = keys[0]
    embedding.metadata_path = PROJECTOR_METADATA  # relative to the config file's directory
    projector.visualize_embeddings(directory, config)


def _replace_directory(new: str, target: str) -> None:
    """Renames `new` to `target`, moving an existing `target` aside first and deleting it after."""
    old = None
    if os.path.exists(target):
        old = temporary_path(target)
        os.replace(target, old)
    os.replace(new, target)
    fsync_path(os.path.dirname(os.path.abspath(target)))
    if old:
        shutil.rmtree(old, ignore_errors=True)
