"""Command-line flags of the pipeline, whole or one stage of it.

One set of flags for `python -m pipelines.run` (and `--only=STAGE`), so one
flagfile drives the whole pipeline or any stage of it. Training flags are
those of `python -m dim_tf.train` (one per `TrainConfig` field, same names
and help), evaluation flags those of `python -m dim_tf.evaluate` prefixed
with `eval_`.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import flags

from dim_tf import (FEATURE_NAMES, ConfigError, EvalConfig, TrainConfig, beam_pipeline_options,
                    config_values, define_config_flags)
from pipelines.train import training_settings
from pipelines.volume import place_on_volume

STAGE_NAMES = ("ingest", "train", "evaluate", "push", "embed")
INGEST_RUNNERS = ("local", "beam")
TRAIN_LAUNCHERS = ("in_process", "tfjob")
EMBED_FORMATS = ("tfrecord", "parquet")
# --tfjob_NAME flag -> pipelines.tfjob.TFJobSettings field.
TFJOB_FIELDS = ("image", "workers", "namespace", "pvc", "mount_path", "memory", "accelerator",
                "accelerator_count")

# TrainConfig fields that are the ingest stage's parameters.
INGEST_FIELDS = ("dataset", "data_dir", "manual_dir", "download", "skip_corrupt")
# TrainConfig fields the train stage does not take: the pipeline sets the run
# directory and the dataset (the ingested examples) itself.
_TRAIN_FIELDS_SET_BY_PIPELINE = ("model_dir", *INGEST_FIELDS)
# EvalConfig fields the evaluate stage takes, each from its flag --eval_NAME.
EVAL_FIELDS = ("layers", "probes", "probe_epochs", "probe_batch_size", "knn_k", "knn_temperature",
               "diagnostics", "diagnostic_steps", "max_train_examples", "max_test_examples",
               "batch_size", "seed")
# EvalConfig fields the pipeline sets itself (model, report directory, dataset)
# or takes from shared flags (--train_split, --test_split).
_EVAL_FIELDS_NOT_FLAGS = tuple(f.name for f in dataclasses.fields(EvalConfig)
                               if f.name not in EVAL_FIELDS)
_EVAL_PREFIX = "eval_"

flags.DEFINE_string("pipeline_root", None, "Directory of the pipeline's artifacts and its "
                    "metadata store (metadata.sqlite).")
flags.DEFINE_string("pipeline_name", "dim", "Name of the pipeline: pushed models go to "
                    "saved_models/NAME unless --push_destination says otherwise.")
flags.DEFINE_enum("only", None, STAGE_NAMES, "Run just this stage; the stages before it must "
                  "have run with the same flags (their results are taken from the cache).")
flags.DEFINE_list("force", [], "Stages to run again even when their cached result is valid "
                  f"({', '.join(STAGE_NAMES)}, or all).")
flags.DEFINE_string("test_split", "test", "Labelled split the evaluation tests probes on "
                    "(ingested with --train_split).")
flags.DEFINE_integer("examples_per_shard", 10_000, "Images per TFRecord shard written by ingest.")
flags.DEFINE_enum("ingest_runner", "local", INGEST_RUNNERS, "How ingest reads an image folder: "
                  "in its own process, or as an Apache Beam pipeline (the same files) on the runner "
                  "--beam_pipeline_args selects.")
flags.DEFINE_string("beam_pipeline_args", None, "Beam's own pipeline options for "
                    "--ingest_runner=beam and the embed stage, as one string, e.g. "
                    "\"--runner=FlinkRunner --flink_master=HOST:8081\" (default: the DirectRunner, a "
                    "worker process per core).")
flags.DEFINE_list("embed_splits", [], "Embed stage: the ingested splits to embed with the pushed "
                  "encoder through Beam's RunInference (default none: the stage does nothing).")
flags.DEFINE_list("embed_features", ["y"], "Embed stage: the encoder outputs to write "
                  "(y, fc, conv, local).")
flags.DEFINE_enum("embed_format", "tfrecord", EMBED_FORMATS, "Embed stage: the files written.")
flags.DEFINE_bool("baseline", True, "Also evaluate a randomly initialised encoder of the same "
                  "architecture (needed by --min_gain_over_random).")
flags.DEFINE_string("push_destination", None, "Model base path the blessed encoder is exported "
                    "to as a new numeric version (default: saved_models/PIPELINE_NAME).")
flags.DEFINE_string("blessing_metric", "linear/conv", "PROBE/LAYER whose top-1 test accuracy "
                    "(percent) decides the blessing, e.g. linear/conv, classifier/y, knn/fc.")
flags.DEFINE_float("min_accuracy", 0.0, "Blessing: the metric must be at least this (percent).")
flags.DEFINE_float("min_gain_over_random", None, "Blessing: the metric must beat the randomly "
                   "initialised encoder by at least this many points (needs --baseline).")

flags.DEFINE_enum("train_launcher", "in_process", TRAIN_LAUNCHERS, "How the train stage "
                  "trains: in its own process (with --strategy), or as a Kubeflow TFJob of a chief "
                  "and --tfjob_workers workers, waited for (pipelines/tfjob.py).")
flags.DEFINE_string("tfjob_image", None, "--train_launcher=tfjob: the image of the job's pods "
                    "(the step image, docs/scale-out.md).")
flags.DEFINE_integer("tfjob_workers", 1, "--train_launcher=tfjob: workers besides the chief.")
flags.DEFINE_string("tfjob_namespace", "kubeflow", "--train_launcher=tfjob: the job's namespace.")
flags.DEFINE_string("tfjob_pvc", None, "--train_launcher=tfjob: the claim holding the pipeline "
                    "root, mounted at --tfjob_mount_path in every pod.")
flags.DEFINE_string("tfjob_mount_path", "/pipeline", "--train_launcher=tfjob: where the claim is "
                    "mounted (the pipeline root must be under it).")
flags.DEFINE_string("tfjob_memory", "16G", "--train_launcher=tfjob: memory per pod.")
flags.DEFINE_string("tfjob_accelerator", None, "--train_launcher=tfjob: accelerator per pod, "
                    "e.g. nvidia.com/gpu.")
flags.DEFINE_integer("tfjob_accelerator_count", 1, "--train_launcher=tfjob: how many of "
                     "--tfjob_accelerator per pod.")

# The training and evaluation flags, made from the configs.
define_config_flags(TrainConfig, exclude=("model_dir",))
define_config_flags(EvalConfig, prefix=_EVAL_PREFIX, exclude=_EVAL_FIELDS_NOT_FLAGS)

FLAGS = flags.FLAGS


def stage_parameters(values: flags.FlagValues = FLAGS) -> dict[str, dict]:
    """{stage: parameters} from parsed flags."""
    destination = values.push_destination or os.path.join("saved_models", values.pipeline_name)
    return {
        "ingest": {**{name: values[name].value for name in INGEST_FIELDS},
                   "splits": [values.train_split, values.test_split],
                   "channels": values.channels, "examples_per_shard": values.examples_per_shard,
                   "runner": values.ingest_runner, "beam_pipeline_args": values.beam_pipeline_args},
        "train": {**config_values(TrainConfig, exclude=_TRAIN_FIELDS_SET_BY_PIPELINE,
                                  flag_values=values),
                  "launcher": values.train_launcher,
                  "tfjob": {name: values[f"tfjob_{name}"].value for name in TFJOB_FIELDS}},
        "evaluate": {**config_values(EvalConfig, prefix=_EVAL_PREFIX,
                                     exclude=_EVAL_FIELDS_NOT_FLAGS, flag_values=values),
                     "train_split": values.train_split, "test_split": values.test_split,
                     "baseline": values.baseline},
        "push": {"destination": os.path.abspath(destination),
                 "blessing_metric": values.blessing_metric, "min_accuracy": values.min_accuracy,
                 "min_gain_over_random": values.min_gain_over_random},
        "embed": {"splits": values.embed_splits, "features": values.embed_features,
                  "output_format": values.embed_format, "channels": values.channels,
                  "batch_size": values.eval_batch_size,
                  "beam_pipeline_args": values.beam_pipeline_args},
    }


def validate_parameters(parameters: dict[str, dict]) -> None:
    """Checks what can be checked before any stage runs, so a typo in a training or
    blessing flag does not surface only after ingest.

    Raises:
        ConfigError: a training setting is invalid, the blessing metric is not
            among the evaluated ones, a split to embed is not ingested, or Beam does
            not know a pipeline option.
    """
    training_settings(parameters["train"], model_dir="<pipeline>", dataset="tfrecord:<ingested>")
    embedded = parameters["embed"]
    unknown = [split for split in embedded["splits"] if split not in parameters["ingest"]["splits"]]
    if unknown:
        raise ConfigError(f"--embed_splits={','.join(embedded['splits'])}: {', '.join(unknown)} "
                          "not ingested; the ingest writes --train_split and --test_split "
                          f"({', '.join(parameters['ingest']['splits'])}).")
    unknown = [name for name in embedded["features"] if name not in FEATURE_NAMES]
    if unknown or not embedded["features"]:
        raise ConfigError(f"--embed_features={','.join(embedded['features'])}: give names among "
                          f"{', '.join(FEATURE_NAMES)}.")
    if parameters["ingest"]["runner"] == "beam" or embedded["splits"]:
        beam_pipeline_options(parameters["ingest"]["beam_pipeline_args"])  # Beam loads, not TF
    evaluated = parameters["evaluate"]
    probe, _, layer = parameters["push"]["blessing_metric"].partition("/")
    if probe not in evaluated["probes"] or layer not in evaluated["layers"]:
        raise ConfigError(
            f"--blessing_metric={parameters['push']['blessing_metric']}: not evaluated; it must be "
            f"PROBE/LAYER with PROBE in --eval_probes ({', '.join(evaluated['probes'])}) and LAYER "
            f"in --eval_layers ({', '.join(evaluated['layers'])}).")


def forced_stages(values: flags.FlagValues = FLAGS) -> set[str]:
    """The stages --force names (all of them for `all`).

    Raises:
        ConfigError: --force names something that is not a stage.
    """
    forced = set(values.force)
    if "all" in forced:
        return set(STAGE_NAMES)
    unknown = forced - set(STAGE_NAMES)
    if unknown:
        raise ConfigError(f"--force={','.join(sorted(unknown))}: not a stage; stages: "
                          f"{', '.join(STAGE_NAMES)}, all.")
    return forced


def pipeline_flag_names(values: flags.FlagValues = FLAGS) -> list[str]:
    """Every flag of `python -m pipelines.run` but --only, in definition order: what a
    Kubeflow run takes as run-time parameters (each of its steps is one stage)."""
    return [flag.name for flag in values.get_key_flags_for_module(sys.modules[__name__])
            if flag.name != "only"]


def place_flags_on_volume(mount_path: str, values: flags.FlagValues = FLAGS) -> None:
    """Rewrites the path flags in `values` onto the volume mounted at `mount_path`
    (`pipelines.volume.place_on_volume`).

    Raises:
        ConfigError: a path flag names a place off the volume that is not a URI.
    """
    current = {name: values[name].value for name in pipeline_flag_names(values)}
    for name, value in place_on_volume(current, mount_path).items():
        if value != current[name]:
            values[name].value = value
