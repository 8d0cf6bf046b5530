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

_EXPORTS = {
    "ConfigError": "dim_tf.config",
    "EvalConfig": "dim_tf.config",
    "kill_point": "dim_tf.faults",
    "TrainConfig": "dim_tf.config",
    "DataError": "dim_tf.data.pipeline",
    "ImageSource": "dim_tf.data.pipeline",
    "load_source": "dim_tf.data.pipeline",
    "training_dataset": "dim_tf.data.pipeline",
    "read_tfrecord_schema": "dim_tf.data.tfrecords",
    "write_tfrecord_dataset": "dim_tf.data.tfrecords",
    "ENCODERS": "dim_tf.models.encoders",
    "FEATURE_NAMES": "dim_tf.models.encoders",
    "build_encoder": "dim_tf.models.encoders",
    "encoder_image_size": "dim_tf.models.encoders",
    "ESTIMATORS": "dim_tf.objectives.estimators",
    "MIEstimate": "dim_tf.objectives.estimators",
    "canonical_estimator": "dim_tf.objectives.estimators",
    "per_example_mi": "dim_tf.objectives.estimators",
    "restore_latest": "dim_tf.training.checkpoints",
    "training_checkpoint": "dim_tf.training.checkpoints",
    "DeepInfoMax": "dim_tf.training.dim_model",
    "default_optimizer": "dim_tf.training.dim_model",
    "TrainResult": "dim_tf.training.run",
    "NonFiniteError": "dim_tf.training.errors",
    "TrainingError": "dim_tf.training.run",
    "build_model": "dim_tf.training.run",
    "train": "dim_tf.training.run",
    "make_strategy": "dim_tf.training.strategy",
    "evaluate": "dim_tf.evaluation.run",
    "export_encoder": "dim_tf.serving.export",
    "export_run": "dim_tf.serving.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dim_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
