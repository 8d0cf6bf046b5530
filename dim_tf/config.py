"""Training configuration: one frozen dataclass, validated before any work starts.

No TensorFlow here: validation must be instant and must run before a strategy,
a dataset or a model exists. Field names match the command-line flags of
`python -m dim_tf.train`, so errors can name the flag to fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

ENCODERS = ("basic32x32", "basic64x64", "alex64x64", "resnet19_32x32", "foldbasic32x32",
            "foldresnet19_32x32", "foldalex64x64")
ENCODER_IMAGE_SIZE = {"basic32x32": 32, "basic64x64": 64, "alex64x64": 64, "resnet19_32x32": 32,
                      "foldbasic32x32": 32, "foldresnet19_32x32": 32, "foldalex64x64": 64}
ESTIMATORS = ("jsd", "dv", "nce", "gan", "kl", "rkl", "h2", "x2")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
LOCAL_CRITICS = ("dot", "concat")
NEGATIVES = ("replica", "global")
FOLDER_PREFIX = "folder:"
SAMPLE_PREFIX = "sample:"
TFRECORD_PREFIX = "tfrecord:"
# Image folders shipped inside the package, usable offline as --dataset=sample:NAME.
SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "samples")
SAMPLES = ("cifar10",)


# Settings that define the model, the optimisers or the data order: a run resumed
# in the same model_dir must keep them. The others (epochs, logging, paths, ...) may change.
RUN_DEFINING_FIELDS = (
    "encoder", "channels", "y_units", "estimator", "alpha", "beta", "gamma", "mi_units",
    "local_critic", "negatives", "gradient_penalty_weight", "batch_size", "learning_rate", "seed",
    "mixed_precision",
    "random_crop", "random_flip", "shuffle_buffer", "dataset", "train_split", "monitor",
)


# Each worker would read its own clock and stop at a different step, deadlocking the collectives.
MULTI_WORKER_TIME_BUDGET = ("--time_budget_minutes is not supported with several workers; "
                            "bound the run with --epochs and --steps_per_epoch.")


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag and what is allowed."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see `python -m dim_tf.train --help`)."""

    model_dir: str
    dataset: str = "cifar10"
    data_dir: str | None = None
    manual_dir: str | None = None
    download: bool = False
    train_split: str = "train"
    channels: int = 3
    encoder: str = "basic32x32"
    y_units: int = 64
    estimator: str = "jsd"
    alpha: float = 0.0
    beta: float = 1.0
    gamma: float = 0.1
    mi_units: int = 2048
    local_critic: str = "dot"
    negatives: str = "global"
    gradient_penalty_weight: float = 1.0
    batch_size: int = 64
    epochs: int = 1000
    steps_per_epoch: int | None = None
    time_budget_minutes: float | None = None
    learning_rate: float = 1e-4
    seed: int = 0
    strategy: str = "auto"
    mixed_precision: bool = False
    force_mixed_precision: bool = False
    random_crop: bool = False
    random_flip: bool = False
    skip_corrupt: bool = False
    monitor: bool = True
    shuffle_buffer: int = 10_000
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50
    export_dir: str | None = None
    verbose: int = 1

    def __post_init__(self):
        self.validate()

    @property
    def image_size(self) -> int:
        """Side of the square images the encoder takes."""
        return ENCODER_IMAGE_SIZE[self.encoder]

    @property
    def folder(self) -> str | None:
        """The image-folder root of a `folder:PATH` or `sample:NAME` dataset, else None."""
        return image_folder_root(self.dataset)

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid flag."""
        _choice("encoder", self.encoder, ENCODERS)
        _choice("estimator", self.estimator.lower(), ESTIMATORS + ("infonce",))
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("local_critic", self.local_critic, LOCAL_CRITICS)
        _choice("negatives", self.negatives, NEGATIVES)
        _choice("channels", self.channels, (1, 3))
        for name in ("alpha", "beta", "gamma", "gradient_penalty_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{name} must be a finite number >= 0; got {value!r}.")
        if self.alpha == 0 and self.beta == 0:
            raise ConfigError("--alpha and --beta are both 0: set --beta (local MI) or --alpha "
                              "(global MI) above 0.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"--learning_rate must be > 0; got {self.learning_rate!r}.")
        _at_least("batch_size", self.batch_size, 2, "(DIM needs at least one negative per image)")
        _at_least("epochs", self.epochs, 1)
        _at_least("mi_units", self.mi_units, 1)
        _at_least("y_units", self.y_units, 1)
        _at_least("checkpoint_every", self.checkpoint_every, 1)
        _at_least("keep_checkpoints", self.keep_checkpoints, 1)
        _at_least("log_every", self.log_every, 1)
        _at_least("shuffle_buffer", self.shuffle_buffer, 1)
        if self.steps_per_epoch is not None:
            _at_least("steps_per_epoch", self.steps_per_epoch, 1)
        if self.time_budget_minutes is not None and not (
                math.isfinite(self.time_budget_minutes) and self.time_budget_minutes >= 0):
            raise ConfigError("--time_budget_minutes must be a number of minutes (0: no budget); "
                              f"got {self.time_budget_minutes!r}.")
        if self.time_budget_minutes and self.strategy == "multi_worker":
            raise ConfigError(MULTI_WORKER_TIME_BUDGET)
        if not self.model_dir:
            raise ConfigError("--model_dir is required: the directory for checkpoints and logs.")
        if not self.dataset:
            raise ConfigError("--dataset is required: a TFDS name (cifar10) or folder:PATH.")
        if self.dataset.startswith(SAMPLE_PREFIX):
            _choice("dataset", self.dataset, tuple(SAMPLE_PREFIX + n for n in SAMPLES))

    def check_paths(self) -> None:
        """Raises ConfigError if the image folder, its split or --manual_dir is missing.

        Separate from `validate` so a finished run's settings can be reloaded
        (e.g. to export it) where its data is not present.
        """
        folder = self.folder
        if folder is not None:
            if not folder:
                raise ConfigError("--dataset=folder: needs a path, e.g. folder:~/images.")
            if not os.path.isdir(folder):
                raise ConfigError(
                    f"--dataset={self.dataset}: folder {folder!r} does not exist. Expected an "
                    "image folder laid out as PATH/<split>/<label>/*.jpg|png."
                )
            split_dir = os.path.join(folder, self.train_split)
            if not os.path.isdir(split_dir):
                found = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
                raise ConfigError(
                    f"--train_split={self.train_split}: no folder {split_dir!r}. Splits found in "
                    f"{folder!r}: {', '.join(found) or 'none'}."
                )
        records = tfrecord_root(self.dataset)
        if records is not None and not os.path.exists(os.path.join(records, "schema.json")):
            raise ConfigError(f"--dataset={self.dataset}: no {records}/schema.json; expected TFRecord "
                              "shards written by `python -m pipelines.ingest`.")
        if self.manual_dir is not None and not os.path.isdir(os.path.expanduser(self.manual_dir)):
            raise ConfigError(f"--manual_dir={self.manual_dir}: directory does not exist.")

    @classmethod
    def from_json(cls, text: str, **overrides) -> "TrainConfig":
        """The config saved by `to_json` (unknown keys ignored), with overrides."""
        values = {k: v for k, v in json.loads(text).items() if k in cls.__dataclass_fields__}
        values.update(overrides)
        return cls(**values)

    def resume_conflicts(self, saved: "TrainConfig") -> list[str]:
        """Run-defining settings that differ from those a run was started with."""
        return [f"--{name}: run has {getattr(saved, name)!r}, now {getattr(self, name)!r}"
                for name in RUN_DEFINING_FIELDS if getattr(saved, name) != getattr(self, name)]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


PROBES = ("classifier", "linear", "knn")
FEATURE_LAYERS = ("conv", "fc", "y")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Everything that defines an evaluation (see `python -m dim_tf.evaluate --help`).

    Exactly one of `model_dir` (a training run: its newest checkpoint) or
    `saved_model` (an exported version directory) names the encoder.
    """

    model_dir: str | None = None
    saved_model: str | None = None
    report_dir: str | None = None
    dataset: str | None = None
    data_dir: str | None = None
    manual_dir: str | None = None
    download: bool = False
    train_split: str = "train"
    test_split: str = "test"
    layers: tuple[str, ...] = FEATURE_LAYERS
    probes: tuple[str, ...] = PROBES
    probe_epochs: int = 20
    probe_batch_size: int = 64
    knn_k: int = 200
    knn_temperature: float = 0.07
    diagnostics: bool = True
    diagnostic_steps: int = 1000
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    batch_size: int = 256
    random_init: bool = False
    seed: int = 0

    def __post_init__(self):
        if (self.model_dir is None) == (self.saved_model is None):
            raise ConfigError("Give exactly one of --model_dir (a training run) or --saved_model "
                              "(an exported version directory).")
        if self.saved_model is not None and self.random_init:
            raise ConfigError("--random_init needs --model_dir (the architecture comes from the run).")
        if self.saved_model is not None and not self.dataset:
            raise ConfigError("--saved_model needs --dataset (a run's dataset is only known "
                              "with --model_dir).")
        if self.report_dir is None and self.model_dir is None:
            raise ConfigError("--report_dir is required with --saved_model.")
        for layer in self.layers:
            _choice("layers", layer, FEATURE_LAYERS)
        for probe in self.probes:
            _choice("probes", probe, PROBES)
        for name in ("probe_epochs", "probe_batch_size", "knn_k", "diagnostic_steps", "batch_size"):
            _at_least(name, getattr(self, name), 1)
        for name in ("max_train_examples", "max_test_examples"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 2)
        if not (math.isfinite(self.knn_temperature) and self.knn_temperature > 0):
            raise ConfigError(f"--knn_temperature must be > 0; got {self.knn_temperature!r}.")
        if self.model_dir is not None and not os.path.exists(os.path.join(self.model_dir, "config.json")):
            raise ConfigError(f"--model_dir={self.model_dir}: no config.json; expected a directory "
                              "written by `python -m dim_tf.train`.")
        if self.saved_model is not None and not os.path.exists(
                os.path.join(self.saved_model, "saved_model.pb")):
            raise ConfigError(f"--saved_model={self.saved_model}: no saved_model.pb; pass a version "
                              "directory such as saved_models/NAME/1.")

    def resolved_report_dir(self) -> str:
        suffix = "evaluation_random_init" if self.random_init else "evaluation"
        return self.report_dir or os.path.join(self.model_dir, suffix)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def image_folder_root(dataset: str) -> str | None:
    """Root directory of an image-folder dataset (`folder:PATH`, `sample:NAME`), else None."""
    if dataset.startswith(FOLDER_PREFIX):
        return os.path.expanduser(dataset[len(FOLDER_PREFIX):])
    if dataset.startswith(SAMPLE_PREFIX):
        return os.path.join(SAMPLES_DIR, dataset[len(SAMPLE_PREFIX):])
    return None


def tfrecord_root(dataset: str) -> str | None:
    """Directory of a `tfrecord:DIR` dataset (written by the pipeline's ingest), else None."""
    if dataset.startswith(TFRECORD_PREFIX):
        return os.path.expanduser(dataset[len(TFRECORD_PREFIX):])
    return None


def _choice(flag, value, allowed):
    if value not in allowed:
        raise ConfigError(
            f"--{flag}={value!r} is not valid. Allowed: {', '.join(str(a) for a in allowed)}."
        )


def _at_least(flag, value, minimum, why=""):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"--{flag} must be an integer >= {minimum}{' ' + why if why else ''}; "
                          f"got {value!r}.")
