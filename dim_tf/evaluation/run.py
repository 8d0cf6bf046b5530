"""`evaluate(config)`: how good is a representation? Probes, MI measures, a report.

For a training run (`model_dir`, its newest checkpoint, or a randomly
initialised encoder of the same architecture with `random_init` for the
baseline) or an exported SavedModel (`saved_model`):

1. encode the labelled train and test splits once (cached features of the
   `conv`, `fc` and `y` layers, encoder frozen and in inference mode);
2. train the probes on the train split and measure test accuracy (skipped
   with a note when the data has no labels);
3. measure NDM on y, a MINE estimate of I(X; Y) and the MS-SSIM of a decoder
   trained on y;
4. write report.json, report.md and the pictures into the report directory.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from dim_tf.config import NORMALIZED_SIGNATURE, DatasetSpec, EvalConfig, TrainConfig
from dim_tf.data.loaders import load_source
from dim_tf.data.source import ImageSource, log_if_enlarged, usable_images
from dim_tf.data.streams import evaluation_dataset
from dim_tf.errors import ConfigError
from dim_tf.evaluation import probes, report
from dim_tf.evaluation.diagnostics import DIAGNOSTICS, DiagnosticData
from dim_tf.evaluation.features import (
    EncodeFn,
    SplitFeatures,
    cached_features,
    checkpoint_digest,
    encode_dataset,
    saved_model_digest,
)
from dim_tf.evaluation.paper import paper_reference
from dim_tf.training.restore import restore_run


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What an evaluation measured; `to_dict()` is the content of report.json
    (without its "artifacts").

    settings: the EvalConfig's fields plus the dataset, image_size, channels,
        train_examples, test_examples and checkpoint (None: random or SavedModel).
    probes: probe kind -> layer -> {"top1", "top5"} in percent (top5 None with
        10 classes or fewer), or {"skipped": reason}.
    diagnostics: "ndm", "mine_nats", "ms_ssim" -> value ({} when not measured).
    paper: the paper's Table 1 row for the run's setting (`paper_reference`), or None.
    timing_seconds: "features", "probes", "diagnostics", "total" -> seconds.
    """

    settings: dict
    probes: dict
    diagnostics: dict
    paper: dict | None
    timing_seconds: dict

    def to_dict(self) -> dict:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class LoadedEncoder:
    """The encoder to evaluate and what the evaluation needs to know of it.

    encode: images in [-1, 1] -> {layer: features}, in inference mode.
    fingerprint: names the encoder by content, keying the feature cache.
    checkpoint: the checkpoint restored (None for a random encoder or a SavedModel).
    run: the training run's settings (None for a SavedModel).
    """

    encode: EncodeFn
    image_size: int
    channels: int
    fingerprint: dict
    checkpoint: str | None
    run: TrainConfig | None


def load_encoder(config: EvalConfig) -> LoadedEncoder:
    """The encoder `config` names: its run's newest checkpoint (or random weights of
    the run's architecture with `random_init`), or an exported SavedModel.

    Raises:
        RunNotFoundError: the run has no config.json or no checkpoint.
        ConfigError: the SavedModel has no normalized-input signature.
    """
    if config.saved_model is not None:
        signatures = tf.saved_model.load(config.saved_model).signatures
        if NORMALIZED_SIGNATURE not in signatures:
            raise ConfigError(f"--saved_model={config.saved_model} has no {NORMALIZED_SIGNATURE!r} "
                              f"signature (it has {', '.join(signatures) or 'none'}); pass a "
                              "version directory written by `python -m dim_tf.export`.")
        signature = signatures[NORMALIZED_SIGNATURE]
        spec = signature.structured_input_signature[1]["images"]
        # Keyed by content: a version directory may be replaced in place (export --overwrite).
        fingerprint = {"saved_model": os.path.abspath(config.saved_model),
                       "saved_model_sha256": saved_model_digest(config.saved_model)}
        return LoadedEncoder(lambda images: signature(images=images), int(spec.shape[1]),
                             int(spec.shape[3]), fingerprint, checkpoint=None, run=None)

    restored = restore_run(config.model_dir, random_init=config.random_init, seed=config.seed)
    run = restored.config
    # A retrained run reaches the same ckpt-N path with other weights: the key names
    # the checkpoint's content, or the seed and architecture of a random encoder.
    fingerprint = {"model_dir": os.path.abspath(config.model_dir), "random_init": config.random_init,
                   "seed": config.seed, "encoder": run.encoder, "channels": run.channels,
                   "y_units": run.y_units, "mixed_precision": run.mixed_precision}
    if restored.checkpoint is not None:
        fingerprint.update(checkpoint=restored.checkpoint,
                           checkpoint_sha256=checkpoint_digest(restored.checkpoint))
    encoder = restored.encoder
    return LoadedEncoder(lambda images: encoder(images, training=False), run.image_size,
                         run.channels, fingerprint, restored.checkpoint, run)


def evaluate(config: EvalConfig, progress: bool = True) -> EvaluationResult:
    """Runs the evaluation of `config` and writes its report (report.json holds
    `result.to_dict()`).

    Raises:
        DimError: RunNotFoundError for a run without config.json or checkpoint,
            DataError for data that cannot be used, ConfigError for bad settings.
    """
    started = time.perf_counter()
    encoder = load_encoder(config)
    run = encoder.run
    dataset = config.dataset or run.dataset
    report_dir = config.resolved_report_dir()
    os.makedirs(report_dir, exist_ok=True)

    train, test, label_names = _encode_splits(config, encoder, dataset, report_dir, progress)
    features_done = time.perf_counter()
    probe_results = _run_probes(config, train, test, len(label_names))
    probes_done = time.perf_counter()
    diagnostics = _run_diagnostics(config, train, test)
    finished = time.perf_counter()

    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()}
    settings.update(dataset=dataset, image_size=encoder.image_size, channels=encoder.channels,
                    train_examples=train.size, test_examples=test.size,
                    checkpoint=encoder.checkpoint)
    paper = None
    if run is not None and not config.random_init:
        paper = paper_reference(dataset, run.estimator, run.alpha, run.beta)
    result = EvaluationResult(
        settings=settings, probes=probe_results, diagnostics=diagnostics, paper=paper,
        timing_seconds={
            "features": features_done - started, "probes": probes_done - features_done,
            "diagnostics": finished - probes_done, "total": finished - started,
        },
    )
    report.write_report(
        report_dir, result.to_dict(), model_dir=config.model_dir, label_names=label_names,
        test_images=test.images, test_labels=test.labels, test_codes=test.features.get("y"),
        train_images=train.images, train_codes=train.features.get("y"), seed=config.seed,
    )
    return result


def _encode_splits(config: EvalConfig, encoder: LoadedEncoder, dataset: str, report_dir: str,
                   progress: bool) -> tuple[SplitFeatures, SplitFeatures, tuple[str, ...]]:
    """The features of the train and test splits (from the cache when they are in
    it) and the label names."""
    run = encoder.run
    data_dir = config.data_dir or (run.data_dir if run else None)
    manual_dir = config.manual_dir or (run.manual_dir if run else None)
    spec = DatasetSpec.parse(dataset)
    splits: dict[str, SplitFeatures] = {}
    names: tuple[str, ...] = ()
    for split, limit in ((config.train_split, config.max_train_examples),
                         (config.test_split, config.max_test_examples)):
        source = _load_split(config, spec, split, encoder.channels, data_dir, manual_dir)
        # Resized up as in training and serving.
        log_if_enlarged(source, encoder.channels, encoder.image_size)
        names = names or source.label_names
        data = evaluation_dataset(source, batch_size=config.batch_size,
                                  image_size=encoder.image_size, channels=encoder.channels,
                                  limit=limit)
        data_key = dict(dataset=dataset, split=split, limit=limit, layers=list(config.layers),
                        examples=source.num_examples)
        splits[split] = cached_features(
            os.path.join(report_dir, "cache"), encoder.fingerprint, data_key,
            lambda: encode_dataset(encoder.encode, data, config.layers, progress=progress))
    return splits[config.train_split], splits[config.test_split], names


def _load_split(config: EvalConfig, spec: DatasetSpec, split: str, channels: int,
                data_dir: str | None, manual_dir: str | None) -> ImageSource:
    source = load_source(spec, split, data_dir, manual_dir, config.download)
    if source.is_image_folder:  # unusable files are logged and skipped
        source = usable_images(source, channels, skip_bad=True)
    return source


def _run_probes(config: EvalConfig, train: SplitFeatures, test: SplitFeatures,
                num_classes: int) -> dict:
    if not (train.labelled and test.labelled) or num_classes < 2:
        why = ("the data has a single class" if num_classes == 1 and train.labelled and test.labelled
               else "the train and test splits are not both labelled")
        return {"skipped": f"{why}: classification probes need labels of at least 2 classes. "
                           "The MI measures (NDM, MINE, decoder MS-SSIM) still ran."}
    results: dict = {}
    for kind in config.probes:
        results[kind] = {}
        for layer in config.layers:
            if kind == "knn":
                accuracy = probes.knn_classify(train.features[layer], train.labels,
                                               test.features[layer], test.labels, num_classes,
                                               config.knn_k, config.knn_temperature)
            else:
                accuracy = probes.train_probe(kind, train.features[layer], train.labels,
                                              test.features[layer], test.labels, num_classes,
                                              config.probe_epochs, config.probe_batch_size,
                                              config.seed)
            logging.info("probe %s on %s: %s", kind, layer, accuracy)
            results[kind][layer] = accuracy
    return results


def _run_diagnostics(config: EvalConfig, train: SplitFeatures, test: SplitFeatures) -> dict:
    """Every diagnostic on the y codes ({} when switched off or y was not encoded)."""
    if not config.diagnostics or "y" not in train.features:
        return {}
    train_data = DiagnosticData(train.features["y"], _to_unit_range(train.images))
    test_data = DiagnosticData(test.features["y"], _to_unit_range(test.images))
    # Small evaluation sets get smaller batches than the diagnostics' defaults.
    fits = min(train.size, test.size)
    results = {}
    for name, (measure, defaults) in DIAGNOSTICS.items():
        settings = dataclasses.replace(defaults, steps=config.diagnostic_steps,
                                       batch_size=min(defaults.batch_size, fits), seed=config.seed)
        results[name] = measure(train_data, test_data, settings)
    return results


def _to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 pixels as the encoder saw them, in [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0
