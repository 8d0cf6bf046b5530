r"""Evaluate a DIM encoder: frozen-feature probes, MI measures and a report.

    python -m dim_tf.evaluate --model_dir=runs/quick
    python -m dim_tf.evaluate --model_dir=runs/quick --random_init      # untrained baseline
    python -m dim_tf.evaluate --saved_model=saved_models/quick/1 --dataset=sample:cifar10 \
        --report_dir=reports/quick

The report (report.md, report.json, pictures) goes to --report_dir, by default
MODEL_DIR/evaluation (MODEL_DIR/evaluation_random_init with --random_init).
"""

from __future__ import annotations

import sys

from absl import app, flags

from dim_tf import config as config_lib

_D = config_lib.EvalConfig.__dataclass_fields__

flags.DEFINE_string("model_dir", None, "Training run to evaluate (its newest checkpoint).")
flags.DEFINE_string("saved_model", None, "Exported SavedModel version directory to evaluate.")
flags.DEFINE_string("report_dir", None, "Where the report goes (default: MODEL_DIR/evaluation).")
flags.DEFINE_string("dataset", None, "Dataset (default: the run's): TFDS name, folder:PATH or "
                    "sample:cifar10.")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_string("manual_dir", None, "Folder with a catalogue dataset's original archives.")
flags.DEFINE_bool("download", False, "Let TFDS download the dataset (needs network).")
flags.DEFINE_string("train_split", _D["train_split"].default, "Labelled split the probes train on.")
flags.DEFINE_string("test_split", _D["test_split"].default, "Split the probes are tested on.")
flags.DEFINE_list("layers", list(config_lib.FEATURE_LAYERS), "Layers to probe: conv, fc, y.")
flags.DEFINE_list("probes", list(config_lib.PROBES), "Probes: classifier (the paper's), linear, knn.")
flags.DEFINE_integer("probe_epochs", _D["probe_epochs"].default, "Training epochs of each probe.")
flags.DEFINE_integer("probe_batch_size", _D["probe_batch_size"].default, "Probe batch size.")
flags.DEFINE_integer("knn_k", _D["knn_k"].default, "Neighbours of the k-NN probe.")
flags.DEFINE_float("knn_temperature", _D["knn_temperature"].default, "k-NN vote temperature.")
flags.DEFINE_bool("diagnostics", True, "Measure NDM, MINE and the decoder's MS-SSIM.")
flags.DEFINE_integer("diagnostic_steps", _D["diagnostic_steps"].default,
                     "Training steps of each diagnostic network.")
flags.DEFINE_integer("max_train_examples", None, "Use only the first N training images.")
flags.DEFINE_integer("max_test_examples", None, "Use only the first N test images.")
flags.DEFINE_integer("batch_size", _D["batch_size"].default, "Encoding batch size.")
flags.DEFINE_bool("random_init", False, "Evaluate a randomly initialised encoder of the run's "
                  "architecture (the baseline).")
flags.DEFINE_integer("seed", 0, "Seed of probes and diagnostics.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    def fail(message, status=2):
        print(f"dim_tf.evaluate: error: {message}", file=sys.stderr)
        sys.exit(status)

    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    values = {f: getattr(FLAGS, f) for f in _D}
    values["layers"], values["probes"] = tuple(FLAGS.layers), tuple(FLAGS.probes)
    try:
        config = config_lib.EvalConfig(**values)
    except config_lib.ConfigError as error:
        fail(str(error))
    from dim_tf.data.pipeline import DataError
    from dim_tf.evaluation.run import evaluate

    try:
        results = evaluate(config)
    except (DataError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    report_dir = config.resolved_report_dir()
    print(f"dim_tf.evaluate: report in {report_dir}/report.md "
          f"({results['timing_seconds']['total']:.1f} s)")
    probes = results["probes"]
    if "skipped" in probes:
        print(f"  probes skipped: {probes['skipped']}")
    for kind, layers in probes.items():
        if kind != "skipped":
            row = "  ".join(f"{layer} {acc['top1']:.2f}" for layer, acc in layers.items())
            print(f"  {kind:<10} {row}")
    for name, value in results["diagnostics"].items():
        print(f"  {name:<10} {value:.4f}" if value is not None else f"  {name:<10} n/a")


if __name__ == "__main__":
    app.run(main)
