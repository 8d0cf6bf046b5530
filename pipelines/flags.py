"""Command-line flags of the pipeline and of each stage run alone.

One set of flags for every entry point (`python -m pipelines.run` and
`python -m pipelines.<stage>`), so one flagfile drives the whole pipeline or
any stage of it. Training flags are those of `python -m dim_tf.train` (one per
`TrainConfig` field, same names), evaluation flags those of
`python -m dim_tf.evaluate` prefixed with `eval_`.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

from dim_tf import EvalConfig, TrainConfig

STAGE_NAMES = ("ingest", "train", "evaluate", "push")

# TrainConfig fields the pipeline sets itself (paths of artifacts) or that belong
# to the ingest stage.
_TRAIN_FIELDS_SET_BY_PIPELINE = ("model_dir", "export_dir", "dataset", "data_dir", "manual_dir",
                                 "download", "skip_corrupt")
INGEST_FIELDS = ("dataset", "data_dir", "manual_dir", "download", "skip_corrupt")
EVAL_FIELDS = ("layers", "probes", "probe_epochs", "probe_batch_size", "knn_k", "knn_temperature",
               "diagnostics", "diagnostic_steps", "max_train_examples", "max_test_examples",
               "batch_size", "seed")
# Parameters that change how a stage runs but not what it produces.
TRAIN_OPERATIONAL = ("strategy", "verbose", "log_every", "checkpoint_every", "keep_checkpoints")

flags.DEFINE_string("pipeline_root", None, "Directory of the pipeline's artifacts and its "
                    "metadata store (metadata.sqlite).")
flags.DEFINE_string("pipeline_name", "dim", "Name of the pipeline: pushed models go to "
                    "saved_models/NAME unless --push_destination says otherwise.")
flags.DEFINE_list("force", [], "Stages to run again even when their cached result is valid "
                  f"({', '.join(STAGE_NAMES)}, or all).")
flags.DEFINE_string("test_split", "test", "Labelled split the evaluation tests probes on "
                    "(ingested with --train_split).")
flags.DEFINE_integer("examples_per_shard", 10_000, "Images per TFRecord shard written by ingest.")
flags.DEFINE_bool("baseline", True, "Also evaluate a randomly initialised encoder of the same "
                  "architecture (needed by --min_gain_over_random).")
flags.DEFINE_string("push_destination", None, "Model base path the blessed encoder is exported "
                    "to as a new numeric version (default: saved_models/PIPELINE_NAME).")
flags.DEFINE_string("blessing_metric", "linear/conv", "PROBE/LAYER whose top-1 test accuracy "
                    "(percent) decides the blessing, e.g. linear/conv, classifier/y, knn/fc.")
flags.DEFINE_float("min_accuracy", 0.0, "Blessing: the metric must be at least this (percent).")
flags.DEFINE_float("min_gain_over_random", None, "Blessing: the metric must beat the randomly "
                   "initialised encoder by at least this many points (needs --baseline).")


def _define(name: str, field: dataclasses.Field, owner: str) -> None:
    kind = str(field.type).replace(" ", "")
    default = field.default if field.default is not dataclasses.MISSING else None
    if isinstance(default, tuple):
        default = list(default)
    text = f"{owner}.{field.name} (see `python -m dim_tf.{owner_cli(owner)} --help`)."
    if kind.startswith("bool"):
        flags.DEFINE_bool(name, default, text)
    elif kind.startswith("int"):
        flags.DEFINE_integer(name, default, text)
    elif kind.startswith("float"):
        flags.DEFINE_float(name, default, text)
    elif kind.startswith("tuple"):
        flags.DEFINE_list(name, default, text)
    else:
        flags.DEFINE_string(name, default, text)


def owner_cli(owner: str) -> str:
    return "train" if owner == "TrainConfig" else "evaluate"


for _field in dataclasses.fields(TrainConfig):
    if _field.name not in ("model_dir", "export_dir"):
        _define(_field.name, _field, "TrainConfig")
for _field in dataclasses.fields(EvalConfig):
    if _field.name in EVAL_FIELDS:
        _define(f"eval_{_field.name}", _field, "EvalConfig")

FLAGS = flags.FLAGS


def stage_parameters(values: flags.FlagValues = FLAGS) -> dict[str, dict]:
    """{stage: parameters} from parsed flags."""
    train_fields = [f.name for f in dataclasses.fields(TrainConfig)
                    if f.name not in _TRAIN_FIELDS_SET_BY_PIPELINE]
    destination = values.push_destination or os.path.join("saved_models", values.pipeline_name)
    return {
        "ingest": {**{name: values[name].value for name in INGEST_FIELDS},
                   "splits": [values.train_split, values.test_split],
                   "channels": values.channels, "examples_per_shard": values.examples_per_shard},
        "train": {name: values[name].value for name in train_fields},
        "evaluate": {**{name: values[f"eval_{name}"].value for name in EVAL_FIELDS},
                     "train_split": values.train_split, "test_split": values.test_split,
                     "baseline": values.baseline},
        "push": {"destination": os.path.abspath(destination),
                 "blessing_metric": values.blessing_metric, "min_accuracy": values.min_accuracy,
                 "min_gain_over_random": values.min_gain_over_random},
    }


def validate_parameters(parameters: dict[str, dict]) -> None:
    """Checks what can be checked before any stage runs, so a typo in a training or
    blessing flag does not surface only after ingest.

    Raises:
        ConfigError: a training setting is invalid.
        flags.ValidationError: the blessing metric is not among the evaluated ones.
    """
    TrainConfig(model_dir="<pipeline>", dataset="tfrecord:<ingested>", **parameters["train"])
    evaluated = parameters["evaluate"]
    probe, _, layer = parameters["push"]["blessing_metric"].partition("/")
    if probe not in evaluated["probes"] or layer not in evaluated["layers"]:
        raise flags.ValidationError(
            f"--blessing_metric={parameters['push']['blessing_metric']}: not evaluated; it must be "
            f"PROBE/LAYER with PROBE in --eval_probes ({', '.join(evaluated['probes'])}) and LAYER "
            f"in --eval_layers ({', '.join(evaluated['layers'])}).")


def forced_stages(values: flags.FlagValues = FLAGS) -> set[str]:
    forced = set(values.force)
    if "all" in forced:
        return set(STAGE_NAMES)
    unknown = forced - set(STAGE_NAMES)
    if unknown:
        raise flags.ValidationError(f"--force={','.join(sorted(unknown))}: not a stage; stages: "
                                    f"{', '.join(STAGE_NAMES)}, all.")
    return forced
