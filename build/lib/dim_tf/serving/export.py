"""Versioned SavedModel export of a trained encoder, for TF Serving and Keras.

`export_encoder` writes `export_dir/<version>/` the way TF Serving expects it:

- signature `serving_default`: `images`, uint8 [batch, height, width, 1 or 3],
  any batch and image size; inside the graph the training preprocessing runs
  (channels converted, antialiased resize to the encoder's size, scaling to
  [-1, 1]) and the encoder runs in inference mode. Outputs `y` (the global
  code), `fc`, `conv` and `local`, in float32.
- signature `encode_normalized`: `images`, float32 [batch, size, size,
  channels] already scaled to [-1, 1]; the same outputs.
- `assets.extra/tf_serving_warmup_requests` and the run's metadata files.

The version is written to a hidden temporary directory beside it and renamed
into place, so a server watching `export_dir` (it loads the highest numeric
version) never sees a partial export; an existing version is replaced only
with `overwrite=True`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from dim_tf.data.pipeline import convert_channels, resize_to, scale_to_unit_range
from dim_tf.models.encoders import FEATURE_NAMES
from dim_tf.serving.warmup import write_warmup_file

SERVING_SIGNATURE = "serving_default"
NORMALIZED_SIGNATURE = "encode_normalized"
WARMUP_FILE = "tf_serving_warmup_requests"


def next_version(export_dir: str) -> int:
    """1 + the highest numeric version directory in `export_dir` (1 if none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def _serving_functions(encoder: keras.Model):
    size, channels = int(encoder.input_shape[1]), int(encoder.input_shape[3])

    def features(images):
        outputs = encoder(images, training=False)
        return {name: tf.cast(outputs[name], tf.float32) for name in FEATURE_NAMES}

    def serve_uint8(images):
        rank_ok = tf.debugging.Assert(
            tf.equal(tf.rank(images), 4),
            ["images must be uint8 [batch, height, width, channels]; got shape", tf.shape(images)])
        with tf.control_dependencies([rank_ok]):
            # Static rank 4 from here on (the reshape only runs after the check).
            images = tf.reshape(images, tf.shape(images)[:4] + tf.zeros([4], tf.int32))
        depth_ok = tf.debugging.Assert(
            tf.logical_or(tf.equal(tf.shape(images)[-1], 1), tf.equal(tf.shape(images)[-1], 3)),
            ["images must have 1 (gray) or 3 (RGB) channels; got shape", tf.shape(images)])
        with tf.control_dependencies([depth_ok]):
            prepared = resize_to(convert_channels(images, channels), size)
        return features(scale_to_unit_range(tf.ensure_shape(prepared, [None, size, size, channels])))

    uint8_spec = tf.TensorSpec(None, tf.uint8, name="images")
    float_spec = tf.TensorSpec([None, size, size, channels], tf.float32, name="images")
    return (serve_uint8, uint8_spec), (features, float_spec)


def warmup_requests(encoder: keras.Model, batch_sizes=(1, 4)) -> list[dict[str, np.ndarray]]:
    """A few deterministic uint8 requests at the training size."""
    size, channels = int(encoder.input_shape[1]), int(encoder.input_shape[3])
    rng = np.random.default_rng(0)
    return [{"images": rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)}
            for n in batch_sizes]


def export_encoder(
    encoder: keras.Model,
    export_dir: str,
    version: int | None = None,
    overwrite: bool = False,
    extra_assets: dict[str, str] | None = None,
) -> str:
    """Exports `encoder` as `export_dir/<version>` (see the module docstring).

    Args:
        encoder: a model from `build_encoder` (trained weights).
        export_dir: the model's base path (TF Serving's --model_base_path).
        version: version number; default: the next free integer.
        overwrite: replace an existing version.
        extra_assets: {file name: text} written to `assets.extra/` (training
            flags, dataset, step, evaluation summary).

    Returns:
        The path of the version directory.

    Raises:
        FileExistsError: the version exists and `overwrite` is False.
    """
    os.makedirs(export_dir, exist_ok=True)
    version = next_version(export_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer; got {version}.")
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"Export version {final} exists; pass --overwrite to replace it "
                              "or --version to choose another.")
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    (serve, serve_spec), (normalized, normalized_spec) = _serving_functions(encoder)
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[serve_spec])
    archive.add_endpoint(NORMALIZED_SIGNATURE, normalized, input_signature=[normalized_spec])

    staging = tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=export_dir)
    try:
        archive.write_out(staging, verbose=False)
        extra = os.path.join(staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        write_warmup_file(os.path.join(extra, WARMUP_FILE), warmup_requests(encoder), SERVING_SIGNATURE)
        for name, text in (extra_assets or {}).items():
            with open(os.path.join(extra, name), "w", encoding="utf-8") as f:
                f.write(text)
        _replace_directory(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _replace_directory(source: str, target: str) -> None:
    """Renames `source` to `target`; an existing `target` is moved aside first and
    deleted after, so `target` is always either the old or the new version."""
    if not os.path.exists(target):
        os.rename(source, target)  # fails rather than merging if a racer created it
        return
    aside = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(target))
    os.rmdir(aside)
    os.rename(target, aside)
    os.rename(source, target)
    shutil.rmtree(aside, ignore_errors=True)


def run_assets(model_dir: str, step: int) -> dict[str, str]:
    """assets.extra files describing a training run: its settings, flags, step and,
    when present, its evaluation summary."""
    assets = {}
    for name, source in (("config.json", "config.json"), ("flags.txt", "flags.txt"),
                         ("evaluation.json", os.path.join("evaluation", "report.json"))):
        path = os.path.join(model_dir, source)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                assets[name] = f.read()
    info = {"model_dir": os.path.abspath(model_dir), "step": int(step)}
    if "config.json" in assets:
        config = json.loads(assets["config.json"])
        info.update({k: config[k] for k in ("dataset", "train_split", "encoder", "estimator")})
    assets["export_info.json"] = json.dumps(info, indent=2, sort_keys=True)
    return assets


def export_run(
    model_dir: str, export_dir: str, version: int | None = None, overwrite: bool = False
) -> str:
    """Restores the newest checkpoint of the training run in `model_dir` and exports
    its encoder (see `export_encoder`). Returns the version directory.

    Raises:
        FileNotFoundError: `model_dir` has no config.json or no checkpoint.
    """
    from dim_tf.config import TrainConfig
    from dim_tf.training.checkpoints import training_checkpoint
    from dim_tf.training.run import build_model

    config_path = os.path.join(model_dir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: --model_dir must be a directory "
                                "written by `python -m dim_tf.train`.")
    with open(config_path, encoding="utf-8") as f:
        config = TrainConfig.from_json(f.read(), model_dir=model_dir)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"No checkpoint in {os.path.join(model_dir, 'checkpoints')}: "
                                "train first, or check --model_dir.")
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    model = build_model(config)
    checkpoint = training_checkpoint(model)
    checkpoint.restore(latest).assert_existing_objects_matched().expect_partial()
    step = int(model.optimizer.iterations.numpy())
    return export_encoder(model.encoder, export_dir, version, overwrite,
                          extra_assets=run_assets(model_dir, step))
