"""Versioned SavedModel export of a trained encoder, for TF Serving and Keras.

`export_encoder` writes `export_dir/<version>/` the way TF Serving expects it:
the version is written to a temporary directory beside it and renamed into
place, so a server watching `export_dir` (it loads the highest numeric
version) never sees a partial export, and an existing version is never
overwritten unless asked.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf


def next_version(export_dir: str) -> int:
    """1 + the highest numeric version directory in `export_dir` (1 if none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def export_encoder(
    encoder: keras.Model, export_dir: str, version: int | None = None, overwrite: bool = False
) -> str:
    """Exports `encoder` as `export_dir/<version>` and returns that path.

    Signature `serving_default`: `images`, float32 [batch, size, size, channels]
    scaled to [-1, 1] -> {"local", "conv", "fc", "y"}, encoder in inference mode.

    Raises:
        FileExistsError: the version exists and `overwrite` is False.
    """
    os.makedirs(export_dir, exist_ok=True)
    version = next_version(export_dir) if version is None else int(version)
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"Export version {final} exists; pass overwrite=True (--overwrite) "
                              "or choose another version.")
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    spec = tf.TensorSpec([None] + list(encoder.input_shape[1:]), tf.float32, name="images")
    archive.add_endpoint(
        "serving_default", lambda images: encoder(images, training=False), input_signature=[spec]
    )
    staging = tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=export_dir)
    try:
        archive.write_out(staging, verbose=False)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
