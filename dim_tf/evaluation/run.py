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

import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dim_tf.config import EvalConfig, TrainConfig, image_folder_root
from dim_tf.data import pipeline
from dim_tf.evaluation import diagnostics, probes, report
from dim_tf.evaluation.features import (
    SplitFeatures,
    cached_features,
    checkpoint_digest,
    encode_dataset,
    saved_model_digest,
)


def _run_config(model_dir: str) -> TrainConfig:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return TrainConfig.from_json(f.read(), model_dir=model_dir)


def load_encoder(config: EvalConfig):
    """(encode fn images -> features dict, image size, channels, fingerprint, run config)."""
    if config.saved_model is not None:
        signature = tf.saved_model.load(config.saved_model).signatures["encode_normalized"]
        spec = signature.structured_input_signature[1]["images"]
        # Keyed by content: a version directory may be replaced in place (export --overwrite).
        fingerprint = {"saved_model": os.path.abspath(config.saved_model),
                       "saved_model_sha256": saved_model_digest(config.saved_model)}
        return (lambda images: signature(images=images), int(spec.shape[1]), int(spec.shape[3]),
                fingerprint, None)
    from dim_tf.training.checkpoints import training_checkpoint
    from dim_tf.training.precision import use_precision
    from dim_tf.training.run import build_model

    run = _run_config(config.model_dir)
    use_precision(run.mixed_precision, run.force_mixed_precision)
    if config.random_init:  # the baseline's weights are a function of the key below
        keras.utils.set_random_seed(config.seed)
    model = build_model(run)
    # A retrained run reaches the same ckpt-N path with other weights: the key names
    # the checkpoint's content, or the seed and architecture of a random encoder.
    fingerprint = {"model_dir": os.path.abspath(config.model_dir), "random_init": config.random_init,
                   "seed": config.seed, "encoder": run.encoder, "channels": run.channels,
                   "y_units": run.y_units, "mixed_precision": run.mixed_precision}
    if not config.random_init:
        latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints"))
        if latest is None:
            raise FileNotFoundError(f"No checkpoint in {config.model_dir}/checkpoints: train first "
                                    "or pass --random_init for the untrained baseline.")
        training_checkpoint(model).restore(latest).assert_existing_objects_matched().expect_partial()
        fingerprint.update(checkpoint=latest, checkpoint_sha256=checkpoint_digest(latest))
    encoder = model.encoder
    return (lambda images: encoder(images, training=False), run.image_size, run.channels,
            fingerprint, run)


def _load_split(config: EvalConfig, dataset: str, split: str, channels: int, data_dir, manual_dir):
    source = pipeline.load_source(dataset, split, data_dir, manual_dir, config.download)
    if image_folder_root(dataset) is not None:  # unusable files are logged and skipped
        source = pipeline.usable_images(source, channels, skip_bad=True)
    return source


def evaluate(config: EvalConfig, progress: bool = True) -> dict:
    """Runs the evaluation of `config` and writes its report; returns the results dict."""
    started = time.perf_counter()
    encode, size, channels, fingerprint, run = load_encoder(config)
    dataset = config.dataset or run.dataset
    data_dir = config.data_dir or (run.data_dir if run else None)
    manual_dir = config.manual_dir or (run.manual_dir if run else None)
    report_dir = config.resolved_report_dir()
    os.makedirs(report_dir, exist_ok=True)

    splits: dict[str, SplitFeatures] = {}
    names: tuple[str, ...] = ()
    for split, limit in ((config.train_split, config.max_train_examples),
                         (config.test_split, config.max_test_examples)):
        source = _load_split(config, dataset, split, channels, data_dir, manual_dir)
        pipeline.log_if_enlarged(source, channels, size)  # resized up as in training and serving
        names = names or source.label_names
        data = pipeline.evaluation_dataset(source, batch_size=config.batch_size, image_size=size,
                                           channels=channels, limit=limit)
        key = dict(fingerprint, dataset=dataset, split=split, limit=limit, layers=list(config.layers),
                   examples=source.num_examples)
        splits[split] = cached_features(
            os.path.join(report_dir, "cache"), key,
            lambda: encode_dataset(encode, data, config.layers, progress=progress))
    train, test = splits[config.train_split], splits[config.test_split]
    features_done = time.perf_counter()

    probe_results = _run_probes(config, train, test, len(names))
    probes_done = time.perf_counter()

    diag = {}
    if config.diagnostics and "y" in train.features:
        steps = config.diagnostic_steps
        train_images = train.images.astype(np.float32) / 127.5 - 1.0
        test_images = test.images.astype(np.float32) / 127.5 - 1.0
        y_train, y_test = train.features["y"], test.features["y"]
        # Small evaluation sets get smaller batches than the diagnostics' defaults.
        fits = min(train.size, test.size)
        diag["ndm"] = diagnostics.neural_dependency_measure(
            y_train, y_test, steps=steps, batch_size=min(128, fits), seed=config.seed)
        diag["mine_nats"] = diagnostics.mine_estimate(
            train_images, y_train, test_images, y_test, steps=steps, batch_size=min(64, fits),
            seed=config.seed)
        diag["ms_ssim"] = diagnostics.decoder_ms_ssim(
            y_train, train_images, y_test, test_images, steps=steps, batch_size=min(64, fits),
            seed=config.seed)
    finished = time.perf_counter()

    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()}
    settings.update(dataset=dataset, image_size=size, channels=channels,
                    train_examples=train.size, test_examples=test.size,
                    checkpoint=fingerprint.get("checkpoint"))
    paper = None
    if run is not None and not config.random_init:
        paper = report.paper_reference(dataset, run.estimator, run.alpha, run.beta)
    results = {
        "settings": settings,
        "probes": probe_results,
        "diagnostics": diag,
        "paper": paper,
        "timing_seconds": {
            "features": features_done - started, "probes": probes_done - features_done,
            "diagnostics": finished - probes_done, "total": finished - started,
        },
    }
    report.write_report(
        report_dir, results, model_dir=config.model_dir, label_names=names,
        test_images=test.images, test_labels=test.labels, test_codes=test.features.get("y"),
        train_images=train.images, train_codes=train.features.get("y"), seed=config.seed,
    )
    return results


def _run_probes(config: EvalConfig, train: SplitFeatures, test: SplitFeatures, num_classes: int) -> dict:
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
