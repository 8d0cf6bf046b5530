r"""Export a trained encoder as a versioned SavedModel for TF Serving.

    python -m dim_tf.export --model_dir=runs/quick --export_dir=saved_models/quick

writes saved_models/quick/<next version>/ (or --version=N; an existing version
is replaced only with --overwrite). Serve it with
    tensorflow_model_server --rest_api_port=8501 --model_name=quick \
        --model_base_path=$PWD/saved_models/quick
"""

from __future__ import annotations

import sys

from absl import app, flags

flags.DEFINE_string("model_dir", None, "Training run directory (written by dim_tf.train).")
flags.DEFINE_string("export_dir", None, "Model base path; the version is written inside it.")
flags.DEFINE_integer("version", None, "Version number (default: next free integer).")
flags.DEFINE_bool("overwrite", False, "Replace the version if it exists.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"dim_tf.export: error: unexpected arguments {argv[1:]}")
    for name in ("model_dir", "export_dir"):
        if not getattr(FLAGS, name):
            sys.exit(f"dim_tf.export: error: --{name} is required.")
    if FLAGS.version is not None and FLAGS.version < 1:
        sys.exit(f"dim_tf.export: error: --version must be >= 1; got {FLAGS.version}.")
    from dim_tf.serving.export import export_run

    try:
        path = export_run(FLAGS.model_dir, FLAGS.export_dir, FLAGS.version, FLAGS.overwrite)
    except (FileNotFoundError, FileExistsError, TimeoutError, ValueError) as error:
        sys.exit(f"dim_tf.export: error: {error}")
    print(f"dim_tf.export: wrote {path}")


if __name__ == "__main__":
    app.run(main)
