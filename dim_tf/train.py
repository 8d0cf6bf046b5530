r"""Train a Deep InfoMax encoder from the command line.

    python -m dim_tf.train --flagfile=configs/quick.flags
    python -m dim_tf.train --flagfile=configs/local_jsd.flags --model_dir=runs/dim_l
    python -m dim_tf.train --flagfile=configs/local_jsd.flags \
        --dataset=folder:~/my_images --model_dir=runs/mine

Flags after --flagfile override it. Every setting is checked before any
training; a bad value exits with status 2 and a message naming the flag.
Rerunning a command resumes its run from the last checkpoint in --model_dir;
--start_over moves that run aside instead. Exit statuses: 0 done, 1 training
stopped (NaN/Inf, a checkpoint that cannot be written or read, model_dir in use
by another run), 2 bad settings or data (before training), 143 SIGTERM (saved;
rerun to resume).
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging

from dim_tf import config as config_lib

_DEFAULTS = config_lib.TrainConfig.__dataclass_fields__


def _default(name):
    return _DEFAULTS[name].default


flags.DEFINE_string("dataset", _default("dataset"),
                    "TFDS catalogue name (cifar10, cifar100, stl10, ...), folder:PATH for a "
                    "tfds.ImageFolder tree PATH/<split>/<label>/*.jpg|png, or sample:cifar10 for "
                    "the images shipped with dim_tf.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's own).")
flags.DEFINE_string("manual_dir", None, "Folder holding a catalogue dataset's original archives, "
                    "to prepare it without network.")
flags.DEFINE_bool("download", _default("download"), "Let TFDS download a catalogue dataset that is "
                  "not prepared (needs network).")
flags.DEFINE_string("train_split", _default("train_split"), "Split to train on (TFDS syntax, e.g. "
                    "train+unlabelled).")
flags.DEFINE_integer("channels", _default("channels"), "Input channels of the encoder: 1 or 3; "
                     "images are converted.")
flags.DEFINE_string("model_dir", None, "Directory for checkpoints, logs and the run's settings.")
flags.DEFINE_string("encoder", _default("encoder"), f"One of {', '.join(config_lib.ENCODERS)}.")
flags.DEFINE_integer("y_units", _default("y_units"), "Width of the global code Y.")
flags.DEFINE_string("estimator", _default("estimator"),
                    f"MI estimator: {', '.join(config_lib.ESTIMATORS)}.")
flags.DEFINE_float("alpha", _default("alpha"), "Weight of the global MI objective.")
flags.DEFINE_float("beta", _default("beta"), "Weight of the local MI objective.")
flags.DEFINE_float("gamma", _default("gamma"), "Weight of the prior-matching objective.")
flags.DEFINE_integer("mi_units", _default("mi_units"), "Width of the encode-and-dot MI heads.")
flags.DEFINE_string("local_critic", _default("local_critic"),
                    "dot (encode-and-dot) or concat (concat-and-convolve).")
flags.DEFINE_string("negatives", _default("negatives"),
                    "global: every other image of the global batch is a negative (the paper); "
                    "replica: only the replica's own batch (R replicas: batch/R - 1 negatives "
                    "per image, a different estimator; less communication at scale).")
flags.DEFINE_float("gradient_penalty_weight", _default("gradient_penalty_weight"),
                   "Weight of the prior discriminator's zero-centred gradient penalty (batch "
                   "mean). The reference code's effective weight is 1/batch_size (README).")
flags.DEFINE_integer("batch_size", _default("batch_size"), "Global batch size.")
flags.DEFINE_integer("epochs", _default("epochs"), "Training epochs.")
flags.DEFINE_integer("steps_per_epoch", None, "Cap on the steps of one epoch.")
flags.DEFINE_float("time_budget_minutes", None,
                   "Stop once the run has trained this many minutes of wall time in all (summed "
                   "over resumes), saving the step reached; rerun with a larger budget to go on. "
                   "0: no budget.")
flags.DEFINE_float("learning_rate", _default("learning_rate"), "Adam learning rate (both players).")
flags.DEFINE_integer("seed", _default("seed"), "Seed of initialisation, data order and prior samples.")
flags.DEFINE_string("strategy", _default("strategy"), f"{', '.join(config_lib.STRATEGIES)}.")
flags.DEFINE_bool("mixed_precision", _default("mixed_precision"),
                  "Mixed precision: mixed_bfloat16 on CPU and TPU, mixed_float16 with dynamic "
                  "loss scaling on GPU (scores, estimators and losses stay float32). On a CPU "
                  "without bfloat16 units (no AVX512_BF16, AMX or Arm BF16) it falls back to "
                  "float32, which is faster there.")
flags.DEFINE_bool("force_mixed_precision", _default("force_mixed_precision"),
                  "With --mixed_precision, compute in bfloat16 even on a CPU without bfloat16 units.")
flags.DEFINE_bool("random_crop", _default("random_crop"), "Random crops to the encoder's size.")
flags.DEFINE_bool("random_flip", _default("random_flip"), "Random horizontal flips.")
flags.DEFINE_bool("skip_corrupt", _default("skip_corrupt"),
                  "Skip image files that do not decode (they are listed in the log).")
flags.DEFINE_bool("monitor", _default("monitor"),
                  "Train the paper's classifier on frozen conv/fc/y features alongside DIM and log "
                  "its accuracy (labelled datasets only; labels never reach the encoder).")
flags.DEFINE_integer("shuffle_buffer", _default("shuffle_buffer"), "Shuffle buffer (images).")
flags.DEFINE_integer("checkpoint_every", _default("checkpoint_every"),
                     "Save a checkpoint every this many steps (and at every epoch end).")
flags.DEFINE_integer("keep_checkpoints", _default("keep_checkpoints"), "Checkpoints kept.")
flags.DEFINE_integer("log_every", _default("log_every"), "Write TensorBoard scalars every this many steps.")
flags.DEFINE_string("export_dir", None, "Export the trained encoder as a SavedModel version here.")
flags.DEFINE_integer("verbose", _default("verbose"),
                     "Console output: 0 silent, 1 progress bar, 2 one line per epoch.")
flags.DEFINE_bool("start_over", False,
                  "Move an existing run in --model_dir aside (to MODEL_DIR.old-TIMESTAMP) and "
                  "train from step 0, instead of resuming it or refusing other settings.")

FLAGS = flags.FLAGS


def config_from_flags() -> config_lib.TrainConfig:
    """The TrainConfig of the parsed flags (raises ConfigError naming a bad flag)."""
    values = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(config_lib.TrainConfig)}
    if values["model_dir"] is None:
        raise config_lib.ConfigError("--model_dir is required: the directory for checkpoints and logs.")
    values["estimator"] = values["estimator"].lower()
    config = config_lib.TrainConfig(**values)
    config.check_paths()
    return config


# Actions on this invocation, not settings of the run: kept out of flags.txt so
# that reusing it as a --flagfile never discards a run.
_ACTION_FLAGS = ("start_over",)


def _flags_text() -> str:
    module_flags = FLAGS.get_key_flags_for_module(sys.modules[__name__])
    return "".join(f.serialize() + "\n" for f in module_flags
                   if f.value is not None and f.name not in _ACTION_FLAGS)


def _fail(message: str, status: int) -> None:
    print(f"dim_tf.train: error: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; flags look like --name=value.", 2)
    try:
        config = config_from_flags()
    except config_lib.ConfigError as error:
        _fail(str(error), 2)

    # Heavy imports only once the settings are known to be valid.
    from dim_tf.data.pipeline import DataError
    from dim_tf.training.run import Preempted, TrainingError, train

    try:
        result = train(config, extra_files={"flags.txt": _flags_text()},
                       start_over=FLAGS.start_over)
    except (config_lib.ConfigError, DataError) as error:
        _fail(str(error), 2)
    except Preempted as error:
        _fail(str(error), 128 + 15)  # the conventional status of a SIGTERM-ended process
    except TrainingError as error:
        _fail(str(error), 1)
    speed = f", {result.images_per_second:.1f} images/s" if result.images_per_second else ""
    logging.info("Trained steps %d -> %d of %d in %.1f s%s.", result.start_step, result.end_step,
                 result.total_steps, result.seconds, speed)
    budget = (f"; time budget of {config.time_budget_minutes:g} min reached after "
              f"{result.trained_seconds / 60:.1f} min of training in all (a larger "
              "--time_budget_minutes continues)" if result.stopped_by_time_budget else "")
    print(f"dim_tf.train: {config.model_dir}: step {result.end_step}/{result.total_steps}, "
          f"{result.seconds:.1f} s{speed}{budget}"
          + (f", exported {result.export_path}" if result.export_path else ""))


if __name__ == "__main__":
    app.run(main)
