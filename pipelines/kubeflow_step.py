r"""One stage of the pipeline as a Kubeflow Pipelines step (what each compiled step runs).

    python -m pipelines.kubeflow_step --only=STAGE --volume=/pipeline \
        --executor_input='{{$}}' --pipeline_root=... [every pipeline flag]

The step is `python -m pipelines.run --only=STAGE` with two additions:

- every path flag is put on the volume mounted at --volume before anything
  runs (`pipelines.volume`): relative paths go under it, and a path off it
  that is not an object-store URI is refused, since it would vanish with the
  pod;
- after the stage, its Kubeflow output artifacts (and metrics) are written
  for the launcher from --executor_input, the JSON Kubeflow substitutes for
  `{{$}}` (`pipelines.kubeflow_artifacts`).

Exit statuses are those of pipelines.run.
"""

from __future__ import annotations

import json

from absl import flags

from dim_tf import ConfigError, run_cli
from pipelines import flags as pipeline_flags
from pipelines.flags import FLAGS
from pipelines.kubeflow_artifacts import publish
from pipelines.run import print_results, run_from_flags

flags.adopt_module_key_flags(pipeline_flags)
flags.DEFINE_string("volume", None, "Where the pipeline's volume is mounted in the step's pod.")
flags.DEFINE_string("executor_input", None, "The Kubeflow launcher's executor input (JSON).")


def main() -> None:
    if FLAGS.only is None or not FLAGS.volume or not FLAGS.executor_input:
        raise ConfigError("A Kubeflow step needs --only=STAGE, --volume and --executor_input "
                          "(the compiled pipeline passes all three).")
    try:
        executor_input = json.loads(FLAGS.executor_input)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--executor_input is not JSON ({error}): the compiled step passes "
                          "Kubeflow's '{{$}}' placeholder.") from error
    pipeline_flags.place_flags_on_volume(FLAGS.volume)
    results = run_from_flags()
    print_results(results, FLAGS.only)
    print(f"Kubeflow outputs written to {publish(FLAGS.only, results, executor_input)}")


if __name__ == "__main__":
    run_cli(main, "pipelines.kubeflow_step")
