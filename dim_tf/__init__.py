"""dim-tf: Deep InfoMax (Hjelm et al., ICLR 2019) in TensorFlow 2 / Keras 3.

Public API::

    from dim_tf import build_encoder, DeepInfoMax
    with strategy.scope():
        model = DeepInfoMax(build_encoder("basic32x32"), estimator="jsd",
                            alpha=0.0, beta=1.0, gamma=0.1)
        model.compile()
    model.fit(images, epochs=...)

    from dim_tf import TrainConfig, train
    train(TrainConfig(model_dir="runs/quick", dataset="sample:cifar10", epochs=5))

Names are imported on first use, so `python -m dim_tf.train` can reject a bad
flag before TensorFlow loads.
"""

import importlib

__version__ = "0.1.0"

# Public name -> "module" (the same name there) or "module:attribute".
_EXPORTS = {
    # errors: one root, with the exit status of each kind
    "DimError": "dim_tf.errors",
    "ConfigError": "dim_tf.errors",
    "DataError": "dim_tf.errors",
    "RunNotFoundError": "dim_tf.errors",
    "TrainingError": "dim_tf.errors",
    "NonFiniteError": "dim_tf.errors",
    "Preempted": "dim_tf.errors",
    "ExportError": "dim_tf.errors",
    "VersionExistsError": "dim_tf.errors",
    "ExportBusyError": "dim_tf.errors",
    "ServingError": "dim_tf.errors",
    "DamagedRunFileError": "dim_tf.errors",
    "CheckpointError": "dim_tf.errors",
    "ModelDirBusy": "dim_tf.errors",
    # settings
    "DatasetSpec": "dim_tf.config",
    "EvalConfig": "dim_tf.config",
    "ExportConfig": "dim_tf.config",
    "TrainConfig": "dim_tf.config",
    # files and command lines
    "atomic_write_json": "dim_tf.io",
    "atomic_write_text": "dim_tf.io",
    "kill_point": "dim_tf.faults",
    "config_flags": "dim_tf.cli",
    "config_values": "dim_tf.cli",
    "define_config_flags": "dim_tf.cli",
    "run_cli": "dim_tf.cli:run",
    # data
    "ImageSource": "dim_tf.data.source",
    "load_source": "dim_tf.data.loaders",
    "training_dataset": "dim_tf.data.streams",
    "read_tfrecord_schema": "dim_tf.data.tfrecords",
    "write_tfrecord_dataset": "dim_tf.data.tfrecords",
    "write_tfrecord_dataset_beam": "dim_tf.data.beam_ingest",
    "beam_pipeline_options": "dim_tf.data.beam:pipeline_options",
    # models and objectives
    "ENCODERS": "dim_tf.models.encoders",
    "FEATURE_NAMES": "dim_tf.config",
    "build_encoder": "dim_tf.models.encoders",
    "encoder_image_size": "dim_tf.models.encoders",
    "ESTIMATORS": "dim_tf.config",
    "canonical_estimator": "dim_tf.config",
    "MIEstimate": "dim_tf.objectives.estimators",
    "per_example_mi": "dim_tf.objectives.estimators",
    # training
    "DeepInfoMax": "dim_tf.training.dim_model",
    "build_model": "dim_tf.training.dim_model",
    "default_optimizer": "dim_tf.training.optimizers",
    "restore_latest": "dim_tf.training.checkpoints",
    "training_checkpoint": "dim_tf.training.checkpoints",
    "RestoredRun": "dim_tf.training.restore",
    "read_run_config": "dim_tf.training.restore",
    "restore_run": "dim_tf.training.restore",
    "TrainResult": "dim_tf.training.run",
    "train": "dim_tf.training.run",
    "make_strategy": "dim_tf.training.strategy",
    # evaluation and serving
    "EvaluationResult": "dim_tf.evaluation.run",
    "evaluate": "dim_tf.evaluation.run",
    "export_encoder": "dim_tf.serving.export",
    "export_run": "dim_tf.serving.export",
    "embed_with_beam": "dim_tf.serving.beam_embed",
    "read_embeddings": "dim_tf.serving.beam_embed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dim_tf' has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
