"""Every setting of dim-tf: the allowed names, the defaults and the help of each field.

No TensorFlow here: validation must be instant and must run before a strategy,
a dataset or a model exists. Field names are the command-line flags
(`dim_tf.cli.define_config_flags` makes them from the fields' defaults and
`help` metadata), so errors can name the flag to fix. Other modules import
their allowed names and defaults from here rather than repeating them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

from dim_tf.errors import ConfigError

ENCODERS = ("basic32x32", "basic64x64", "alex64x64", "resnet19_32x32", "foldbasic32x32",
            "foldresnet19_32x32", "foldalex64x64")
ENCODER_IMAGE_SIZE = {"basic32x32": 32, "basic64x64": 64, "alex64x64": 64, "resnet19_32x32": 32,
                      "foldbasic32x32": 32, "foldresnet19_32x32": 32, "foldalex64x64": 64}
# The f-divergences of Nowozin et al. 2016 that DIM can use (jsd first: the paper's).
F_DIVERGENCES = ("jsd", "gan", "kl", "rkl", "h2", "x2")
ESTIMATORS = ("jsd", "dv", "nce") + F_DIVERGENCES[1:]
ESTIMATOR_ALIASES = {"infonce": "nce", "js": "jsd", "chi2": "x2", "hellinger": "h2"}
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
# --jit_compile: auto compiles the step with XLA where that was measured to pay
# (dim_tf.training.xla), on and off force it.
JIT_COMPILE = ("auto", "on", "off")
LOCAL_CRITICS = ("dot", "concat")
LR_SCHEDULES = ("constant", "cosine", "linear")
MAX_VIEWS = 4
NEGATIVES = ("replica", "global")
PROBES = ("classifier", "linear", "knn")
FEATURE_LAYERS = ("conv", "fc", "y")
# A training run's directory (model_dir): the files every stage after training reads.
RUN_CONFIG_FILE = "config.json"  # the run's TrainConfig
FLAGS_FILE = "flags.txt"  # the command line's flags, usable as a --flagfile
CHECKPOINTS_DIR = "checkpoints"
TRAIN_LOG_DIR = os.path.join("logs", "train")  # TensorBoard scalars
SUMMARY_FILE = "summary.json"
EVALUATION_DIR = "evaluation"  # `python -m dim_tf.evaluate`'s default report directory
REPORT_JSON = "report.json"
SCHEDULE_FILE = "schedule.json"  # the learning-rate schedule's length in steps, once fixed

# The encoder's outputs: local map, conv map, fc, global code y.
FEATURE_NAMES = ("local", "conv", "fc", "y")
# What a signature of an exported encoder takes: its input tensor's name and kind.
#   pixels:   uint8 [batch, height, width, 1 or 3], any size (resized in the graph)
#   encoded:  string [batch] of JPEG, PNG, GIF, BMP or WebP files, each of its own size
#             (over TF Serving's REST API each one as {"b64": ...})
#   normalized: float32 [batch, size, size, channels] already in [-1, 1]
PIXELS, ENCODED, NORMALIZED = "pixels", "encoded", "normalized"
SIGNATURE_INPUTS = {PIXELS: "images", ENCODED: "image_bytes", NORMALIZED: "images"}


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """One signature of an exported encoder: its input kind and its outputs."""

    input_kind: str
    outputs: tuple[str, ...]

    @property
    def input_name(self) -> str:
        return SIGNATURE_INPUTS[self.input_kind]


# The signatures of an exported encoder (written by dim_tf.serving, read by evaluation
# and the clients). Every output a signature returns travels in every REST response
# (REST cannot filter outputs, gRPC can): the `embed*` ones return the code alone.
SERVING_SIGNATURE = "serving_default"
NORMALIZED_SIGNATURE = "encode_normalized"
SIGNATURES = {
    SERVING_SIGNATURE: SignatureSpec(PIXELS, FEATURE_NAMES),  # unchanged since the first export
    NORMALIZED_SIGNATURE: SignatureSpec(NORMALIZED, FEATURE_NAMES),
    "embed": SignatureSpec(PIXELS, ("y",)),  # retrieval: the code alone
    "embed_encoded": SignatureSpec(ENCODED, ("y",)),
    "probe_features": SignatureSpec(PIXELS, ("conv", "fc", "y")),  # linear probes, k-NN
    "probe_features_encoded": SignatureSpec(ENCODED, ("conv", "fc", "y")),
}
# The width of the MI heads in the paper's DIM(L) runs.
DEFAULT_MI_UNITS = 2048

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Image folders shipped inside the package, usable offline as --dataset=sample:NAME.
SAMPLES_DIR = os.path.join(PACKAGE_DIR, "data", "samples")
SAMPLES = ("cifar10",)


def _shipped_configs_dir() -> str:
    """The flagfiles of configs/: installed into the package by a wheel, beside it in
    a checkout (or an editable install)."""
    installed = os.path.join(PACKAGE_DIR, "configs")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(PACKAGE_DIR),
                                                                   "configs")


SHIPPED_CONFIGS_DIR = _shipped_configs_dir()

# Settings that define the model, the optimisers or the data order: a run resumed
# in the same model_dir must keep them. The others (epochs, logging, paths, ...) may change.
RUN_DEFINING_FIELDS = (
    "encoder", "channels", "y_units", "estimator", "alpha", "beta", "gamma", "mi_units",
    "local_critic", "negatives", "gradient_penalty_weight", "batch_size", "learning_rate", "seed",
    "mixed_precision",
    "random_crop", "random_flip", "shuffle_buffer", "dataset", "train_split", "monitor",
    "views", "crop_padding", "crop_min_area", "shared_flip", "color_jitter",
    "color_jitter_probability", "grayscale_probability", "score_clip", "score_penalty",
    "lr_schedule", "warmup_steps", "final_lr_fraction", "schedule_minutes",
    "schedule_calibration_steps",
)


# Each worker would time its own steps and fix a different schedule length.
MULTI_WORKER_TIME_SCHEDULE = ("--schedule_minutes is not supported with several workers (each "
                              "would time its own steps); decay over --epochs instead.")
# Each worker would read its own clock and stop at a different step, deadlocking the collectives.
MULTI_WORKER_TIME_BUDGET = ("--time_budget_minutes is not supported with several workers; "
                            "bound the run with --epochs and --steps_per_epoch.")


def canonical_estimator(name: str) -> str:
    """The canonical name of an estimator (case and aliases folded).

    Raises:
        ConfigError: `name` is not a known estimator; the message lists the choices.
    """
    key = str(name).strip().lower()
    key = ESTIMATOR_ALIASES.get(key, key)
    if key not in ESTIMATORS:
        raise ConfigError(f"--estimator={name!r} is not valid. Allowed: {', '.join(ESTIMATORS)} "
                          f"(aliases: {', '.join(sorted(ESTIMATOR_ALIASES))}).")
    return key


def setting(default=dataclasses.MISSING, *, help: str, **metadata) -> dataclasses.Field:
    """A config field with its flag's help text (and e.g. `choices`) as metadata."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


# ---------------------------------------------------------------------------- datasets

CATALOGUE, FOLDER, SAMPLE, TFRECORD = "catalogue", "folder", "sample", "tfrecord"
_PREFIXED = (FOLDER, SAMPLE, TFRECORD)
DATASET_HELP = ("TFDS catalogue name (cifar10, cifar100, stl10, ...), folder:PATH for a "
                "tfds.ImageFolder tree PATH/<split>/<label>/*.jpg|png, tfrecord:DIR for shards "
                "written by the pipeline's ingest, or sample:cifar10 for the images shipped with "
                "dim_tf.")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A `--dataset` value, parsed once: its kind and what it names.

    kind: "catalogue" (a TFDS name, `cifar10` or `cifar10:3.0.2`), "folder"
        (`folder:PATH`), "sample" (`sample:NAME`, shipped with dim_tf) or
        "tfrecord" (`tfrecord:DIR`).
    name: the catalogue or sample name, or the path (user directory expanded).
    """

    kind: str
    name: str

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        """Raises ConfigError for an empty value, path or unknown sample."""
        if not text:
            raise ConfigError(f"--dataset is required: {DATASET_HELP}")
        prefix, colon, rest = text.partition(":")
        if colon and prefix in _PREFIXED:
            if not rest:
                raise ConfigError(f"--dataset={text} needs a {'name' if prefix == SAMPLE else 'path'}"
                                  f", e.g. {prefix}:{'cifar10' if prefix == SAMPLE else '~/images'}.")
            if prefix == SAMPLE and rest not in SAMPLES:
                raise ConfigError(f"--dataset={text!r} is not valid. Allowed: "
                                  f"{', '.join(SAMPLE + ':' + n for n in SAMPLES)}.")
            return cls(prefix, rest if prefix == SAMPLE else os.path.expanduser(rest))
        return cls(CATALOGUE, text)

    @classmethod
    def tfrecords(cls, directory: str) -> "DatasetSpec":
        """The `tfrecord:DIR` dataset of the shards in `directory`."""
        return cls(TFRECORD, directory)

    def __str__(self) -> str:
        return self.name if self.kind == CATALOGUE else f"{self.kind}:{self.name}"

    @property
    def image_folder(self) -> str | None:
        """The root of an image-folder dataset (`folder:` or `sample:`), else None."""
        if self.kind == FOLDER:
            return self.name
        if self.kind == SAMPLE:
            return os.path.join(SAMPLES_DIR, self.name)
        return None

    @property
    def tfrecord_dir(self) -> str | None:
        """The directory of a `tfrecord:` dataset, else None."""
        return self.name if self.kind == TFRECORD else None

    @property
    def path(self) -> str | None:
        """The directory a `folder:` or `tfrecord:` dataset names, else None."""
        return self.name if self.kind in (FOLDER, TFRECORD) else None

    @property
    def catalogue_name(self) -> str | None:
        """The TFDS name of a catalogue dataset without its version (`cifar10`), else None."""
        return self.name.split(":")[0].split("/")[0].lower() if self.kind == CATALOGUE else None

    @property
    def copy_of(self) -> str | None:
        """The catalogue dataset this one is (a copy of), as far as its name says: the
        catalogue name, the sample's name, or for a folder or TFRecord directory a
        path component naming one (`/data/cifar10_jpeg` is CIFAR-10, `cifar100` is not).
        Chooses the paper's table in evaluation reports."""
        if self.kind == CATALOGUE:
            return self.catalogue_name
        if self.kind == SAMPLE:
            return self.name
        for part in reversed(re.split(r"[\\/]", self.name.lower())):
            match = re.match(r"(cifar-?100|cifar-?10|stl-?10|tiny_?imagenet|celeb_?a)(?![0-9])", part)
            if match:
                return match.group(1).replace("-", "").replace("_", "")
        return None


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What the training stream does to each view of an image (`TrainConfig.augmentation`).

    random_crop: a size x size crop at a random offset of the image reflect-padded by
        `crop_padding` pixels on each side (a translation of up to that many pixels;
        an image larger than the encoder's size is cropped along its extent as well).
    crop_padding: pixels of reflection padding for `random_crop`.
    crop_min_area: random-resized crop (Inception / SimCLR style): a crop of
        [crop_min_area, 1] of the view's area (after the crop or resize) and aspect ratio in [3/4, 4/3], resized
        back to the encoder's size; 1.0 is off.
    random_flip: horizontal flips with probability 1/2.
    shared_flip: with several views, all views of an image share one flip.
    color_jitter: strength s of brightness, contrast and saturation jitter (factors in
        [1 - 0.8 s, 1 + 0.8 s]) and hue jitter (up to 0.2 s of a turn), SimCLR's
        parametrisation; 0 is off.
    color_jitter_probability: probability that a view is colour-jittered.
    grayscale_probability: probability that a view is turned grey (kept 3-channel).
    """

    random_crop: bool = False
    crop_padding: int = 4
    crop_min_area: float = 1.0
    random_flip: bool = False
    shared_flip: bool = False
    color_jitter: float = 0.0
    color_jitter_probability: float = 0.8
    grayscale_probability: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether any view differs from the plain resized image."""
        return (self.random_crop or self.crop_min_area < 1.0 or self.random_flip
                or self.color_jitter > 0 or self.grayscale_probability > 0)


def dataset_spec(text: str) -> DatasetSpec:
    """`DatasetSpec.parse(text)`."""
    return DatasetSpec.parse(text)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see `python -m dim_tf.train --help`)."""

    model_dir: str = setting(help="Directory for checkpoints, logs and the run's settings.")
    dataset: str = setting("cifar10", help=DATASET_HELP)
    data_dir: str | None = setting(None, help="TFDS data directory (default: TFDS's own).")
    manual_dir: str | None = setting(None, help="Folder holding a catalogue dataset's original "
                                     "archives, to prepare it without network.")
    download: bool = setting(False, help="Let TFDS download a catalogue dataset that is not "
                             "prepared (needs network).")
    train_split: str = setting("train", help="Split to train on (TFDS syntax, e.g. "
                               "train+unlabelled).")
    channels: int = setting(3, help="Input channels of the encoder: 1 or 3; images are converted.",
                            choices=(1, 3))
    encoder: str = setting("basic32x32", help="Encoder architecture.", choices=ENCODERS)
    y_units: int = setting(64, help="Width of the global code Y.")
    estimator: str = setting("jsd", help="MI estimator (aliases: "
                             f"{', '.join(f'{a}={c}' for a, c in ESTIMATOR_ALIASES.items())}).",
                             choices=ESTIMATORS)
    alpha: float = setting(0.0, help="Weight of the global MI objective.")
    beta: float = setting(1.0, help="Weight of the local MI objective.")
    gamma: float = setting(0.1, help="Weight of the prior-matching objective.")
    mi_units: int = setting(DEFAULT_MI_UNITS, help="Width of the encode-and-dot MI heads.")
    local_critic: str = setting("dot", help="dot (encode-and-dot) or concat "
                                "(concat-and-convolve).", choices=LOCAL_CRITICS)
    negatives: str = setting("global", choices=NEGATIVES, help=(
        "global: every other image of the global batch is a negative (the paper); replica: only "
        "the replica's own batch (R replicas: batch/R - 1 negatives per image, a different "
        "estimator; less communication at scale)."))
    gradient_penalty_weight: float = setting(1.0, help=(
        "Weight of the prior discriminator's zero-centred gradient penalty (batch mean). The "
        "reference code's effective weight is 1/batch_size (docs/training.md)."))
    batch_size: int = setting(64, help="Global batch size.")
    epochs: int = setting(1000, help="Training epochs.")
    steps_per_epoch: int | None = setting(None, help="Cap on the steps of one epoch.")
    time_budget_minutes: float | None = setting(None, help=(
        "Stop once the run has trained this many minutes of wall time in all (summed over "
        "resumes), saving the step reached; rerun with a larger budget to go on. 0: no budget."))
    learning_rate: float = setting(1e-4, help="Adam learning rate (both players).")
    seed: int = setting(0, help="Seed of initialisation, data order and prior samples.")
    strategy: str = setting("auto", help="tf.distribute strategy.", choices=STRATEGIES)
    mixed_precision: bool = setting(False, help=(
        "Mixed precision: mixed_bfloat16 on CPU and TPU, mixed_float16 with dynamic loss scaling "
        "on GPU (scores, estimators and losses stay float32). On a CPU without bfloat16 units "
        "(no AVX512_BF16, AMX or Arm BF16) it falls back to float32, which is faster there."))
    force_mixed_precision: bool = setting(False, help=(
        "With --mixed_precision, compute in bfloat16 even on a CPU without bfloat16 units."))
    jit_compile: str = setting("auto", help=(
        "Compile the training step with XLA: auto does where it was measured to pay (AVX2-only "
        "x86 CPUs, GPUs, TPUs; not AVX-512 CPUs: docs/performance.md) and logs why; on, off."),
        choices=JIT_COMPILE)
    random_crop: bool = setting(False, help=(
        "Random crops to the encoder's size from the image reflect-padded by --crop_padding "
        "pixels (on 32x32 CIFAR: translations of up to that many pixels)."))
    crop_padding: int = setting(4, help="Pixels of reflection padding on each side for "
                                "--random_crop (0: crop larger images only).")
    crop_min_area: float = setting(1.0, help=(
        "Random-resized crops: a crop of this to 1 of the view's area (after --random_crop or "
        "the resize; aspect ratio 3/4 to 4/3) resized to the encoder's size. 1: off."))
    random_flip: bool = setting(False, help="Random horizontal flips.")
    shared_flip: bool = setting(False, help="With --views above 1, flip all views of an image "
                                "together.")
    color_jitter: float = setting(0.0, help=(
        "Colour jitter strength s: brightness, contrast and saturation factors in "
        "[1 - 0.8s, 1 + 0.8s], hue shifted up to 0.2s (SimCLR's). 0: off."))
    color_jitter_probability: float = setting(0.8, help="Probability that a view is "
                                              "colour-jittered (with --color_jitter).")
    grayscale_probability: float = setting(0.0, help="Probability that a view is turned grey.")
    views: int = setting(1, help=(
        "Augmented views of each image per step. 1: the paper's DIM. 2 or more: each view's "
        "global code is scored against the local maps of the image's other views (positives) "
        "and other images' (negatives), as in Augmented Multiscale DIM (Bachman et al. 2019)."))
    score_clip: float = setting(0.0, help=(
        "Soft clip c of the critic scores, c * tanh(s / c), before the estimator. AMDIM clips "
        "at 20 scores divided by sqrt(width), about 20 * sqrt(mi_units) here. 0: off."))
    score_penalty: float = setting(0.0, help=(
        "Weight of an L2 penalty on the raw critic scores (the mean of s^2). AMDIM's 0.05 on "
        "scores divided by sqrt(width) is about 0.05 / mi_units here. 0: off."))
    lr_schedule: str = setting("constant", choices=LR_SCHEDULES, help=(
        "Learning-rate schedule (both players): constant (the paper), or after --warmup_steps "
        "a cosine or linear decay to --final_lr_fraction of --learning_rate at the run's end "
        "(--epochs, or --schedule_minutes of training)."))
    warmup_steps: int = setting(0, help="Steps of linear learning-rate warm-up from 0.")
    final_lr_fraction: float = setting(0.0, help="Learning rate at the schedule's end, as a "
                                       "fraction of --learning_rate.")
    schedule_minutes: float | None = setting(None, help=(
        "Minutes of training the decay spans (default: --time_budget_minutes). The step count "
        "is fixed from the throughput of the first --schedule_calibration_steps steps and saved "
        "in the run, so a resumed run keeps it; the run ends at that step."))
    schedule_calibration_steps: int = setting(300, help=(
        "Steps timed to fix a time-based schedule's length."))
    skip_corrupt: bool = setting(False, help="Skip image files that do not decode (they are "
                                 "listed in the log).")
    monitor: bool = setting(True, help=(
        "Train the paper's classifier on frozen conv/fc/y features alongside DIM and log its "
        "accuracy (labelled datasets only; labels never reach the encoder)."))
    shuffle_buffer: int = setting(10_000, help="Shuffle buffer (images).")
    checkpoint_every: int = setting(500, help="Save a checkpoint every this many steps (and at "
                                    "every epoch end).")
    keep_checkpoints: int = setting(3, help="Checkpoints kept.")
    log_every: int = setting(50, help="Write TensorBoard scalars every this many steps.")
    verbose: int = setting(1, help="Console output: 0 silent, 1 progress bar, 2 one line per "
                           "epoch.")

    def __post_init__(self):
        # Aliases and case are folded here, so a saved run and its resume agree.
        object.__setattr__(self, "estimator", canonical_estimator(self.estimator))
        self.validate()

    @property
    def image_size(self) -> int:
        """Side of the square images the encoder takes."""
        return ENCODER_IMAGE_SIZE[self.encoder]

    @property
    def data(self) -> DatasetSpec:
        """The parsed `dataset`."""
        return DatasetSpec.parse(self.dataset)

    @property
    def folder(self) -> str | None:
        """The image-folder root of a `folder:PATH` or `sample:NAME` dataset, else None."""
        return self.data.image_folder

    @property
    def augmentation(self) -> Augmentation:
        """The training stream's augmentation of each view."""
        return Augmentation(**{f.name: getattr(self, f.name)
                               for f in dataclasses.fields(Augmentation)})

    @property
    def schedule_seconds(self) -> float | None:
        """Seconds of training a time-based learning-rate schedule spans, else None."""
        if self.lr_schedule == "constant":
            return None
        minutes = self.schedule_minutes or self.time_budget_minutes
        return minutes * 60 if minutes else None

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid flag."""
        _choice("encoder", self.encoder, ENCODERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("jit_compile", self.jit_compile, JIT_COMPILE)
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
        self._validate_augmentation()
        self._validate_objective_options()
        self._validate_schedule()
        if self.time_budget_minutes is not None and not (
                math.isfinite(self.time_budget_minutes) and self.time_budget_minutes >= 0):
            raise ConfigError("--time_budget_minutes must be a number of minutes (0: no budget); "
                              f"got {self.time_budget_minutes!r}.")
        if self.time_budget_minutes and self.strategy == "multi_worker":
            raise ConfigError(MULTI_WORKER_TIME_BUDGET)
        if not self.model_dir:
            raise ConfigError("--model_dir is required: the directory for checkpoints and logs.")
        DatasetSpec.parse(self.dataset)

    def _validate_augmentation(self) -> None:
        _at_least("views", self.views, 1)
        if self.views > MAX_VIEWS:
            raise ConfigError(f"--views must be at most {MAX_VIEWS} (each view costs one more "
                              f"encoder pass); got {self.views}.")
        _at_least("crop_padding", self.crop_padding, 0)
        _in_range("crop_min_area", self.crop_min_area, 0.0, 1.0, low_open=True)
        _in_range("color_jitter", self.color_jitter, 0.0, 1.25)
        _in_range("color_jitter_probability", self.color_jitter_probability, 0.0, 1.0)
        _in_range("grayscale_probability", self.grayscale_probability, 0.0, 1.0)

    def _validate_objective_options(self) -> None:
        for name in ("score_clip", "score_penalty"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{name} must be a finite number >= 0 (0: off); got {value!r}.")

    def _validate_schedule(self) -> None:
        _at_least("warmup_steps", self.warmup_steps, 0)
        _at_least("schedule_calibration_steps", self.schedule_calibration_steps, 10)
        _in_range("final_lr_fraction", self.final_lr_fraction, 0.0, 1.0)
        if self.schedule_minutes is not None and not (
                math.isfinite(self.schedule_minutes) and self.schedule_minutes > 0):
            raise ConfigError(f"--schedule_minutes must be a number of minutes > 0; got "
                              f"{self.schedule_minutes!r}.")
        if self.schedule_minutes and self.strategy == "multi_worker":
            raise ConfigError(MULTI_WORKER_TIME_SCHEDULE)

    def check_paths(self) -> None:
        """Raises ConfigError if the image folder, its split or --manual_dir is missing.

        Separate from `validate` so a finished run's settings can be reloaded
        (e.g. to export it) where its data is not present.
        """
        folder = self.folder
        if folder is not None:
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
        records = self.data.tfrecord_dir
        if records is not None and not os.path.exists(os.path.join(records, "schema.json")):
            raise ConfigError(f"--dataset={self.dataset}: no {records}/schema.json; expected TFRecord "
                              "shards written by `python -m pipelines.run --only=ingest`.")
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


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Everything that defines an evaluation (see `python -m dim_tf.evaluate --help`).

    Exactly one of `model_dir` (a training run: its newest checkpoint) or
    `saved_model` (an exported version directory) names the encoder.
    """

    model_dir: str | None = setting(None, help="Training run to evaluate (its newest checkpoint).")
    saved_model: str | None = setting(None, help="Exported SavedModel version directory to "
                                      "evaluate.")
    report_dir: str | None = setting(None, help="Where the report goes (default: "
                                     "MODEL_DIR/evaluation).")
    dataset: str | None = setting(None, help="Dataset (default: the run's): " + DATASET_HELP)
    data_dir: str | None = setting(None, help="TFDS data directory.")
    manual_dir: str | None = setting(None, help="Folder with a catalogue dataset's original "
                                     "archives.")
    download: bool = setting(False, help="Let TFDS download the dataset (needs network).")
    train_split: str = setting("train", help="Labelled split the probes train on.")
    test_split: str = setting("test", help="Split the probes are tested on.")
    layers: tuple[str, ...] = setting(FEATURE_LAYERS, help="Layers to probe.",
                                      choices=FEATURE_LAYERS)
    probes: tuple[str, ...] = setting(PROBES, help="Probes (classifier: the paper's).",
                                      choices=PROBES)
    probe_epochs: int = setting(20, help="Training epochs of each probe.")
    probe_batch_size: int = setting(64, help="Probe batch size.")
    knn_k: int = setting(200, help="Neighbours of the k-NN probe.")
    knn_temperature: float = setting(0.07, help="k-NN vote temperature.")
    diagnostics: bool = setting(True, help="Measure NDM, MINE and the decoder's MS-SSIM.")
    diagnostic_steps: int = setting(1000, help="Training steps of each diagnostic network.")
    max_train_examples: int | None = setting(None, help="Use only the first N training images.")
    max_test_examples: int | None = setting(None, help="Use only the first N test images.")
    batch_size: int = setting(256, help="Encoding batch size.")
    random_init: bool = setting(False, help="Evaluate a randomly initialised encoder of the "
                                "run's architecture (the baseline).")
    seed: int = setting(0, help="Seed of probes and diagnostics.")

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
        if self.dataset:
            DatasetSpec.parse(self.dataset)
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
        if self.model_dir is not None and not os.path.exists(os.path.join(self.model_dir,
                                                                            RUN_CONFIG_FILE)):
            raise ConfigError(f"--model_dir={self.model_dir}: no config.json; expected a directory "
                              "written by `python -m dim_tf.train`.")
        if self.saved_model is not None and not os.path.exists(
                os.path.join(self.saved_model, "saved_model.pb")):
            raise ConfigError(f"--saved_model={self.saved_model}: no saved_model.pb; pass a version "
                              "directory such as saved_models/NAME/1.")

    def resolved_report_dir(self) -> str:
        suffix = EVALUATION_DIR + ("_random_init" if self.random_init else "")
        return self.report_dir or os.path.join(self.model_dir, suffix)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """An export of a training run's encoder (see `python -m dim_tf.export --help`)."""

    model_dir: str | None = setting(None, help="Training run directory (written by "
                                    "dim_tf.train); its newest checkpoint is exported.")
    export_dir: str | None = setting(None, help="Model base path (TF Serving's "
                                     "--model_base_path); the version is written inside it.")
    version: int | None = setting(None, help="Version number (default: the next free integer).")
    overwrite: bool = setting(False, help="Replace the version if it exists.")

    def __post_init__(self):
        for name in ("model_dir", "export_dir"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required.")
        if self.version is not None:
            _at_least("version", self.version, 1)


def _choice(flag, value, allowed):
    if value not in allowed:
        raise ConfigError(
            f"--{flag}={value!r} is not valid. Allowed: {', '.join(str(a) for a in allowed)}."
        )


def _in_range(flag, value, low, high, low_open=False):
    inside = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (low < value if low_open else low <= value) and value <= high)
    if not inside:
        raise ConfigError(f"--{flag} must be a number in {'(' if low_open else '['}{low:g}, "
                          f"{high:g}]; got {value!r}.")


def _at_least(flag, value, minimum, why=""):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"--{flag} must be an integer >= {minimum}{' ' + why if why else ''}; "
                          f"got {value!r}.")
