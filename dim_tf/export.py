r"""Export a trained encoder as a versioned SavedModel for TF Serving.

    python -m dim_tf.export --model_dir=runs/quick --export_dir=saved_models/quick

writes saved_models/quick/<next version>/ (or --version=N; an existing version
is replaced only with --overwrite). Serve it with
    tensorflow_model_server --rest_api_port=8501 --model_name=quick \
        --model_base_path=$PWD/saved_models/quick

Exit status: 0 exported; 2 bad flags, no such run, or the version exists;
1 another export into --export_dir did not finish in time.
"""

from __future__ import annotations


from dim_tf import cli
from dim_tf.config import ExportConfig

PROGRAM = "dim_tf.export"

cli.define_config_flags(ExportConfig)


def main() -> None:
    config = ExportConfig(**cli.config_values(ExportConfig))
    # Imported once the flags are valid: a bad flag is refused before TensorFlow loads.
    from dim_tf.serving.export import export_run

    print(f"{PROGRAM}: wrote {export_run(config)}")


if __name__ == "__main__":
    cli.run(main, PROGRAM)
