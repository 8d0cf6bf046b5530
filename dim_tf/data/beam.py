"""Running dim_tf's Apache Beam pipelines (ingest, batch embedding): options and counters.

The engine is Beam's: dim_tf builds the pipeline, Beam runs it. `pipeline_options`
takes Beam's own command-line options, passed through unchanged
(`--beam_pipeline_args="--runner=DataflowRunner --project=P --region=R
--temp_location=gs://B/tmp"`, or FlinkRunner / SparkRunner with theirs). With no
`--runner` the embedded DirectRunner runs the pipeline on this machine, one worker
process per core. `run` runs a pipeline to the end and returns its counters, the
Beam metrics through which the pipelines count what they read, wrote and skipped.

Needs the `beam` extra (`pip install -e ".[beam]"`).
"""

from __future__ import annotations

import shlex
from typing import Sequence

from dim_tf.errors import ConfigError

# Beam's embedded runner with a worker process per core: Beam's own default runs
# every transform in one thread.
_LOCAL_DEFAULTS = ("--runner=DirectRunner", "--direct_running_mode=multi_processing",
                   "--direct_num_workers=0")


def require_beam():
    """The `apache_beam` module, or a ConfigError saying how to install it."""
    try:
        import apache_beam
    except ImportError as error:
        raise ConfigError("Apache Beam is not installed: pip install -e \".[beam]\" (the `beam` "
                          "extra) to run this on Beam.") from error
    return apache_beam


def split_pipeline_args(args: str | Sequence[str] | None) -> list[str]:
    """Beam options given as one shell-quoted string (a flag's value) or a list."""
    if not args:
        return []
    return shlex.split(args) if isinstance(args, str) else list(args)


def pipeline_options(args: str | Sequence[str] | None = None):
    """Beam `PipelineOptions` from Beam's own command-line options (see the module
    docstring); without `--runner`, the local DirectRunner with a worker per core.

    Raises:
        ConfigError: an option Beam does not know (Beam would silently ignore it).
    """
    require_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    args = split_pipeline_args(args)
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in args):
        given = {arg.split("=", 1)[0] for arg in args}
        args = [default for default in _LOCAL_DEFAULTS if default.split("=", 1)[0] not in given] + args
    options = PipelineOptions(args)
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    if unknown:
        raise ConfigError("Beam does not know these pipeline options: "
                          f"{', '.join('--' + name for name in sorted(unknown))}.")
    return options


def run(pipeline, namespace: str) -> dict[str, int]:
    """Runs `pipeline` to the end; returns its counters in `namespace` {name: value}.

    Raises:
        RuntimeError: the pipeline failed (Beam's error, with the worker's traceback).
    """
    from apache_beam.metrics.metric import MetricsFilter

    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    totals: dict[str, int] = {}
    for counter in counters:
        # Runners without committed metrics report attempted values only.
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals
