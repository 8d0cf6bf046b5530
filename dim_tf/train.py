r"""Train a Deep InfoMax encoder from the command line.

    python -m dim_tf.train --flagfile=configs/quick.flags
    python -m dim_tf.train --flagfile=configs/local_jsd.flags --model_dir=runs/dim_l
    python -m dim_tf.train --flagfile=configs/local_jsd.flags \
        --dataset=folder:~/my_images --model_dir=runs/mine

Flags after --flagfile override it. Every setting is checked before any
training; a bad value exits with status 2 and a message naming the flag.
Rerunning a command resumes its run from the last checkpoint in --model_dir;
--start_over moves that run aside instead. With --export_dir the trained
encoder is exported there once training is done. Exit statuses: 0 done, 1
training stopped (NaN/Inf, a checkpoint that cannot be written or read,
model_dir in use by another run), 2 bad settings or data (before training),
143 SIGTERM (saved; rerun to resume).
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags, logging

from dim_tf import cli
from dim_tf.config import FLAGS_FILE, ExportConfig, TrainConfig

cli.define_config_flags(TrainConfig)
_EXPORT_DIR = {f.name: f for f in dataclasses.fields(ExportConfig)}["export_dir"]
flags.DEFINE_string("export_dir", None, "After training, export the encoder as a SavedModel "
                    "into this directory. " + _EXPORT_DIR.metadata["help"])
flags.DEFINE_bool("start_over", False,
                  "Move an existing run in --model_dir aside (to MODEL_DIR.old-TIMESTAMP) and "
                  "train from step 0, instead of resuming it or refusing other settings.")

FLAGS = flags.FLAGS

# Actions on this invocation, not settings of the run: kept out of flags.txt so
# that reusing it as a --flagfile never discards a run.
_ACTION_FLAGS = ("start_over",)


def _flags_text() -> str:
    """Every setting of this invocation, as a flagfile (the run's flags.txt)."""
    module_flags = FLAGS.get_key_flags_for_module(sys.modules[__name__])
    return "".join(f.serialize() + "\n" for f in module_flags
                   if f.value is not None and f.name not in _ACTION_FLAGS)


def main() -> None:
    config = TrainConfig(**cli.config_values(TrainConfig))
    config.check_paths()
    export = (ExportConfig(model_dir=config.model_dir, export_dir=FLAGS.export_dir)
              if FLAGS.export_dir else None)

    # Heavy imports only once the settings are known to be valid.
    from dim_tf.training.run import train

    result = train(config, extra_files={FLAGS_FILE: _flags_text()},
                   start_over=FLAGS.start_over)
    exported = None
    if export is not None and result.chief:  # the other workers' encoders are the chief's
        from dim_tf.serving.export import export_run

        exported = export_run(export)
    speed = f", {result.images_per_second:.1f} images/s" if result.images_per_second else ""
    logging.info("Trained steps %d -> %d of %d in %.1f s%s.", result.start_step, result.end_step,
                 result.total_steps, result.seconds, speed)
    budget = (f"; time budget of {config.time_budget_minutes:g} min reached after "
              f"{result.trained_seconds / 60:.1f} min of training in all (a larger "
              "--time_budget_minutes continues)" if result.stopped_by_time_budget else "")
    if result.stopped_by == "lr_schedule":
        budget = "; the learning-rate schedule has ended (the run is complete)"
    print(f"dim_tf.train: {config.model_dir}: step {result.end_step}/{result.total_steps}, "
          f"{result.seconds:.1f} s{speed}{budget}"
          + (f", exported {exported}" if exported else ""))


if __name__ == "__main__":
    cli.run(main, "dim_tf.train")
