r"""Run the DIM pipeline, or one of its stages, from the command line.

    python -m pipelines.run --flagfile=configs/pipeline_cifar10.flags
    python -m pipelines.train --flagfile=configs/pipeline_cifar10.flags --pipeline_root=DIR

Rerunning a command reuses every stage whose inputs and parameters did not
change, reruns the ones that did, and resumes a stage that failed or was killed.
`--force=train` (or all) reruns stages regardless.
"""

from __future__ import annotations

import sys

from absl import app, logging

from pipelines import flags as pipeline_flags
from pipelines.flags import FLAGS


def _refuse(error: Exception) -> None:
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def _run(only: str | None) -> None:
    from dim_tf import ConfigError

    if not FLAGS.pipeline_root:
        raise app.UsageError("--pipeline_root is required.")
    # Flags are checked before TensorFlow loads, so a typo fails in a second.
    try:
        force = pipeline_flags.forced_stages()
        parameters = pipeline_flags.stage_parameters()
        pipeline_flags.validate_parameters(parameters)
    except (ConfigError, pipeline_flags.flags.ValidationError) as error:
        _refuse(error)

    from dim_tf import DataError
    from pipelines.pipeline import run_pipeline
    from pipelines.stage import StageNotRun, print_stage_result

    try:
        results = run_pipeline(FLAGS.pipeline_root, parameters, only=only, force=force)
    except (ConfigError, DataError, StageNotRun) as error:
        _refuse(error)
    for name in (only,) if only else results:
        print_stage_result(results[name])
    push = results.get("push")
    if push is not None and only in (None, "push"):
        blessing = push.outputs["blessing"].properties
        print("blessed: " + ("yes, pushed to " + str(push.outputs["pushed_model"].uri)
                             if blessing["blessed"] else "no: " + "; ".join(blessing["reasons"])))


def stage_main(stage: str) -> None:
    """Entry point of `python -m pipelines.<stage>`."""
    app.run(lambda argv: _run(stage))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    _run(None)


if __name__ == "__main__":
    app.run(main)
