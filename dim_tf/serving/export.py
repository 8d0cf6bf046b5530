"""Versioned SavedModel export of a trained encoder, for TF Serving and Keras.

`export_encoder` writes `export_dir/<version>/` the way TF Serving expects it:

- the signatures of `dim_tf.serving.signatures` (`serving_default` on uint8
  images of any size, `embed*` and `probe_features*` on uint8 or encoded
  images, `encode_normalized` on float32 images in [-1, 1]);
- `assets.extra/tf_serving_warmup_requests` (every signature, a few sizes) and
  the run's metadata files;
- `encoder.keras`: the encoder as a Keras file, for fine-tuning it in Keras.

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

from dim_tf.config import (
    EVALUATION_DIR,
    FLAGS_FILE,
    REPORT_JSON,
    RUN_CONFIG_FILE,
    ExportConfig,
)
from dim_tf.data.labels import LABELS_FILE
from dim_tf.errors import DamagedRunFileError
from dim_tf.faults import kill_point
from dim_tf.io import atomic_write_text
from dim_tf.serving.signatures import serving_functions, warmup_requests
from dim_tf.serving.versions import reserve_version
from dim_tf.serving.warmup import write_warmup_file
from dim_tf.training.restore import restore_run, saved_run_config

WARMUP_FILE = "tf_serving_warmup_requests"
# The encoder as a Keras file, beside the SavedModel in each version directory (TF
# Serving reads only saved_model.pb, variables/ and the assets).
KERAS_FILE = "encoder.keras"
# assets.extra file -> the run's file it copies (relative to model_dir).
_RUN_FILES = {RUN_CONFIG_FILE: RUN_CONFIG_FILE, FLAGS_FILE: FLAGS_FILE, LABELS_FILE: LABELS_FILE,
              "evaluation.json": os.path.join(EVALUATION_DIR, REPORT_JSON)}


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
        VersionExistsError: the version exists and `overwrite` is False.
        ExportBusyError: another export into `export_dir` did not finish in time.
    """
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    for name, (function, spec) in serving_functions(encoder).items():
        archive.add_endpoint(name, function, input_signature=[spec])

    with reserve_version(export_dir, version, overwrite, lock_timeout) as slot:
        archive.write_out(slot.staging, verbose=False)
        kill_point("export.saved_model_written")
        keras.saving.save_model(encoder, os.path.join(slot.staging, KERAS_FILE))
        extra = os.path.join(slot.staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        write_warmup_file(os.path.join(extra, WARMUP_FILE), warmup_requests(encoder))
        for name, text in (extra_assets or {}).items():
            atomic_write_text(os.path.join(extra, name), text)
            kill_point("export.asset_written")
        slot.publish()
    return slot.path


def run_assets(model_dir: str, step: int) -> dict[str, str]:
    """assets.extra files describing a training run: its settings, flags, step and,
    when present, its class list (labels.json, copied unchanged so the label
    indices users of the export see are the training run's) and its evaluation
    summary.

    Raises:
        DamagedRunFileError: one of the run's JSON files does not parse.
    """
    assets = {}
    for name, source in _RUN_FILES.items():
        path = os.path.join(model_dir, source)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                assets[name] = f.read()
            if name.endswith(".json"):  # a damaged file must not be published as the run's
                try:
                    json.loads(assets[name])
                except json.JSONDecodeError as error:
                    raise DamagedRunFileError(
                        f"{path} is not valid JSON ({error}); expected the file the training "
                        "run wrote. Restore or delete it.") from error
    info = {"model_dir": os.path.abspath(model_dir), "step": int(step)}
    config = saved_run_config(model_dir)
    if config is not None:
        info.update({k: getattr(config, k) for k in ("dataset", "train_split", "encoder", "estimator")})
    assets["export_info.json"] = json.dumps(info, indent=2, sort_keys=True)
    return assets


def export_run(config: ExportConfig, extra_assets: dict[str, str] | None = None) -> str:
    """Restores the newest checkpoint of the training run in `config.model_dir` and
    exports its encoder into `config.export_dir` (see `export_encoder`), with the
    run's `run_assets` and `extra_assets` (e.g. an evaluation report made
    elsewhere). Returns the version directory.

    Raises:
        RunNotFoundError: `model_dir` has no config.json or no checkpoint.
        DamagedRunFileError: one of the run's files does not parse.
        VersionExistsError, ExportBusyError: as `export_encoder`.
    """
    run = restore_run(config.model_dir)
    return export_encoder(run.encoder, config.export_dir, config.version, config.overwrite,
                          extra_assets={**run_assets(config.model_dir, run.step),
                                        **(extra_assets or {})})
