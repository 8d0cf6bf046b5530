"""Versioned SavedModel export of a trained encoder, for TF Serving and Keras.

`export_encoder` writes `export_dir/<version>/` the way TF Serving expects it:

- signature `serving_default`: `images`, uint8 [batch, height, width, 1 or 3],
  any batch and image size; inside the graph the training preprocessing runs
  (`dim_tf.data.pipeline.prepare_batch`: channels converted, antialiased resize
  to the encoder's size, down or up, scaling to [-1, 1]) and the encoder runs
  in inference mode. Outputs `y` (the global
  code), `fc`, `conv` and `local`, in float32.
- signature `encode_normalized`: `images`, float32 [batch, size, size,
  channels] already scaled to [-1, 1]; the same outputs.

A wrong dtype is refused by the signature's TensorSpec; a wrong rank, channel
count, image size or zero height/width fails inside the graph with a message
saying what was expected (neither TF Serving nor a loaded signature checks
shapes). An empty batch returns empty outputs, [0, ...] of the feature sizes.
- `assets.extra/tf_serving_warmup_requests` and the run's metadata files.

The version is written to a hidden staging directory and published by an
atomic rename (`dim_tf.serving.versions`): a server watching `export_dir` (it
loads the highest numeric version) never sees a partial export, even if the
exporter is killed, and concurrent exports get different versions. An
existing version is replaced only with `overwrite=True`, atomically too.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from dim_tf.data.labels import LABELS_FILE
from dim_tf.data.pipeline import prepare_batch
from dim_tf.faults import kill_point
from dim_tf.models.encoders import FEATURE_NAMES
from dim_tf.serving.versions import reserve_version
from dim_tf.serving.warmup import write_warmup_file

SERVING_SIGNATURE = "serving_default"
NORMALIZED_SIGNATURE = "encode_normalized"
WARMUP_FILE = "tf_serving_warmup_requests"


def _require(images: tf.Tensor, condition: tf.Tensor, expected: str) -> tf.Tensor:
    """`images`, once `condition` holds; otherwise the call fails with `expected` and
    the shape that came (TF Serving returns the message to the client)."""
    check = tf.debugging.Assert(condition, [f"{expected}; got shape", tf.shape(images)], summarize=16)
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _serving_functions(encoder: keras.Model):
    size, channels = int(encoder.input_shape[1]), int(encoder.input_shape[3])
    feature_shapes = {name: encoder.output[name].shape[1:] for name in FEATURE_NAMES}

    def features(images):
        def encode():
            outputs = encoder(images, training=False)
            return {name: tf.cast(outputs[name], tf.float32) for name in FEATURE_NAMES}

        def empty():  # the encoder's batch norm fails on a batch of zero images
            return {name: tf.zeros([0, *shape], tf.float32) for name, shape in feature_shapes.items()}

        return tf.cond(tf.shape(images)[0] > 0, encode, empty)

    def serve_normalized(images):
        # Neither the loaded signature nor TF Serving enforces the TensorSpec's shape. The
        # shape is compared as text: from the TensorSpec, TF folds tf.rank() to 4 even
        # when another rank comes, and tensors of unequal length cannot be compared.
        shape = tf.strings.reduce_join(tf.strings.as_string(tf.shape(images)), separator=",")
        shape_ok = tf.strings.regex_full_match(shape, rf"\d+,{size},{size},{channels}")
        return features(_require(images, shape_ok, f"images must be float32 [batch, {size}, "
                                                   f"{size}, {channels}] scaled to [-1, 1]"))

    def serve_uint8(images):
        images = _require(images, tf.equal(tf.rank(images), 4),
                          "images must be uint8 [batch, height, width, channels]")
        # Static rank 4 from here on (the reshape only runs after the check).
        images = tf.reshape(images, tf.shape(images)[:4] + tf.zeros([4], tf.int32))
        shape = tf.shape(images)
        images = _require(images, tf.logical_or(tf.equal(shape[3], 1), tf.equal(shape[3], 3)),
                          "images must have 1 (gray) or 3 (RGB) channels")
        images = _require(images, tf.reduce_all(shape[1:3] > 0),
                          "images must be at least 1x1 pixels (height and width >= 1)")
        return features(prepare_batch(images, size, channels))  # training's pixels, see its docstring

    uint8_spec = tf.TensorSpec(None, tf.uint8, name="images")
    float_spec = tf.TensorSpec([None, size, size, channels], tf.float32, name="images")
    return (serve_uint8, uint8_spec), (serve_normalized, float_spec)


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
    lock_timeout: float = 600.0,
) -> str:
    """Exports `encoder` as `export_dir/<version>` (see the module docstring).

    Args:
        encoder: a model from `build_encoder` (trained weights).
        export_dir: the model's base path (TF Serving's --model_base_path).
        version: version number; default: the next free integer.
        overwrite: replace an existing version.
        extra_assets: {file name: text} written to `assets.extra/` (training
            flags, dataset, step, class names, evaluation summary).
        lock_timeout: seconds to wait for another export into `export_dir`.

    Returns:
        The path of the version directory.

    Raises:
        FileExistsError: the version exists and `overwrite` is False.
        TimeoutError: another export into `export_dir` did not finish in time.
    """
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    (serve, serve_spec), (normalized, normalized_spec) = _serving_functions(encoder)
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[serve_spec])
    archive.add_endpoint(NORMALIZED_SIGNATURE, normalized, input_signature=[normalized_spec])

    with reserve_version(export_dir, version, overwrite, lock_timeout) as slot:
        archive.write_out(slot.staging, verbose=False)
        kill_point("export.saved_model_written")
        extra = os.path.join(slot.staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        write_warmup_file(os.path.join(extra, WARMUP_FILE), warmup_requests(encoder), SERVING_SIGNATURE)
        for name, text in (extra_assets or {}).items():
            with open(os.path.join(extra, name), "w", encoding="utf-8") as f:
                f.write(text)
            kill_point("export.asset_written")
        slot.publish()
    return slot.path


def run_assets(model_dir: str, step: int) -> dict[str, str]:
    """assets.extra files describing a training run: its settings, flags, step and,
    when present, its class list (labels.json, copied unchanged so the label
    indices users of the export see are the training run's) and its evaluation
    summary."""
    assets = {}
    for name, source in (("config.json", "config.json"), ("flags.txt", "flags.txt"),
                         (LABELS_FILE, LABELS_FILE),
                         ("evaluation.json", os.path.join("evaluation", "report.json"))):
        path = os.path.join(model_dir, source)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                assets[name] = f.read()
            if name.endswith(".json"):  # a damaged file must not be published as the run's
                try:
                    json.loads(assets[name])
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} is not valid JSON ({error}); expected the file "
                                     "the training run wrote. Restore or delete it.") from error
    info = {"model_dir": os.path.abspath(model_dir), "step": int(step)}
    if "config.json" in assets:
        config = json.loads(assets["config.json"])
        info.update({k: config[k] for k in ("dataset", "train_split", "encoder", "estimator")})
    assets["export_info.json"] = json.dumps(info, indent=2, sort_keys=True)
    return assets


def export_run(
    model_dir: str, export_dir: str, version: int | None = None, overwrite: bool = False,
    extra_assets: dict[str, str] | None = None,
) -> str:
    """Restores the newest checkpoint of the training run in `model_dir` and exports
    its encoder (see `export_encoder`), with the run's `run_assets` and
    `extra_assets` (e.g. an evaluation report made elsewhere). Returns the
    version directory.

    Raises:
        FileNotFoundError: `model_dir` has no config.json or no checkpoint.
    """
    from dim_tf.config import TrainConfig
    from dim_tf.training.checkpoints import training_checkpoint
    from dim_tf.training.precision import use_precision
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
    use_precision(config.mixed_precision, config.force_mixed_precision)
    model = build_model(config)
    checkpoint = training_checkpoint(model)
    checkpoint.restore(latest).assert_existing_objects_matched().expect_partial()
    step = int(model.optimizer.iterations.numpy())
    return export_encoder(model.encoder, export_dir, version, overwrite,
                          extra_assets={**run_assets(model_dir, step), **(extra_assets or {})})
