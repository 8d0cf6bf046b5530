r"""Run the DIM pipeline, or one of its stages, from the command line.

    python -m pipelines.run --flagfile=configs/pipeline_cifar10.flags
    python -m pipelines.run --only=train --flagfile=configs/pipeline_cifar10.flags --pipeline_root=DIR

Run from the repository root (the `pipelines` package is not installed with
dim-tf). Rerunning a command reuses every stage whose inputs and parameters
did not change, reruns the ones that did, and resumes a stage that failed or
was killed. `--force=train` (or all) reruns stages regardless. `--only=STAGE`
runs one stage, taking the stages before it from the cache.

Exit statuses are dim_tf's: 0 done; 1 a stage stopped; 2 bad flags or data, or
`--only` a stage whose upstream stages have not run with these flags; 143
SIGTERM (rerun the same command to resume).
"""

from __future__ import annotations

from absl import flags

from dim_tf import ConfigError, run_cli
from pipelines import flags as pipeline_flags
from pipelines.flags import FLAGS
from pipelines.stage import StageResult, print_stage_result

flags.adopt_module_key_flags(pipeline_flags)


def run_from_flags(values: flags.FlagValues = FLAGS) -> dict[str, StageResult]:
    """Runs the pipeline (or the stage --only names) the parsed flags describe.

    Raises:
        ConfigError: bad flags, checked before TensorFlow loads (the stages load it),
            so a typo fails in a second.
        Whatever a stage raised.
    """
    if not values.pipeline_root:
        raise ConfigError("--pipeline_root is required: the directory of the pipeline's "
                          "artifacts and metadata store.")
    force = pipeline_flags.forced_stages(values)
    parameters = pipeline_flags.stage_parameters(values)
    pipeline_flags.validate_parameters(parameters)

    from pipelines.pipeline import run_pipeline

    return run_pipeline(values.pipeline_root, parameters, only=values.only, force=force)


def print_results(results: dict[str, StageResult], only: str | None) -> None:
    """The console summary: each stage run (or just `only`), and the blessing."""
    for name in (only,) if only else results:
        print_stage_result(results[name])
    push = results.get("push")
    if push is not None and only in (None, "push"):
        blessing = push.outputs["blessing"].properties
        print("blessed: " + ("yes, pushed to " + str(push.outputs["pushed_model"].uri)
                             if blessing["blessed"] else "no: " + "; ".join(blessing["reasons"])))


def main() -> None:
    print_results(run_from_flags(), FLAGS.only)


if __name__ == "__main__":
    run_cli(main, "pipelines.run")
