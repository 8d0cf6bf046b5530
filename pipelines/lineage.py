r"""List a pipeline root's runs, executions and artifacts, with lineage.

    python -m pipelines.lineage --pipeline_root=DIR               # every execution
    python -m pipelines.lineage --pipeline_root=DIR --artifact=7  # where artifact 7 came from
    python -m pipelines.lineage --pipeline_root=DIR --check       # store integrity

Reads the metadata store only; nothing is run and TensorFlow is not loaded.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import flags

from dim_tf import ConfigError, run_cli
from pipelines.store import METADATA_FILE, MetadataStore

FLAGS = flags.FLAGS


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def list_executions(store: MetadataStore, out=sys.stdout) -> None:
    for run in store.pipeline_runs():
        print(f"pipeline run {run['id']} {run['status']} ({_when(run['started'])} -> "
              f"{_when(run['ended'])}): {run['command']}", file=out)
        for execution in store.executions(pipeline_run=run["id"]):
            took = f"{execution.ended - execution.started:.1f}s" if execution.ended else "-"
            source = f" from {execution.cached_from}" if execution.cached_from else ""
            print(f"  execution {execution.id:>4} {execution.stage:<9} {execution.status}{source:<9} "
                  f"run {execution.run_id} {took:>8} code {execution.code_version}", file=out)
            for artifact in store.inputs(execution.id):
                print(f"      in  {artifact.id:>4} {artifact.name:<20} {artifact.uri}", file=out)
            for artifact in store.outputs(execution.id):
                gone = "" if artifact.exists() else "  (deleted)"
                print(f"      out {artifact.id:>4} {artifact.name:<20} {artifact.uri}{gone}", file=out)
            if execution.error:
                print(f"      error: {execution.error.splitlines()[-1]}", file=out)


def show_execution(store: MetadataStore, execution_id: int, out=sys.stdout) -> None:
    execution = store.execution(execution_id)
    record = {k: v for k, v in execution.__dict__.items()}
    record["started"], record["ended"] = _when(execution.started), _when(execution.ended)
    record["inputs"] = {a.name: {"id": a.id, "uri": a.uri} for a in store.inputs(execution_id)}
    record["outputs"] = {a.name: {"id": a.id, "type": a.type, "uri": a.uri,
                                  "properties": a.properties} for a in store.outputs(execution_id)}
    print(json.dumps(record, indent=2, default=str), file=out)


def show_lineage(store: MetadataStore, artifact_id: int, out=sys.stdout) -> None:
    for depth, artifact, producer in store.lineage(artifact_id):
        print(f"{'  ' * depth}artifact {artifact.id} {artifact.type} {artifact.name}: {artifact.uri}\n"
              f"{'  ' * depth}  <- execution {producer.id} {producer.stage} ({producer.status}, "
              f"{_when(producer.ended)}, code {producer.code_version})", file=out)


def _define_flags() -> None:
    """The command's flags, defined only when it runs, so importing this module
    never clashes with another entry point's flags."""
    flags.DEFINE_string("pipeline_root", None, "Pipeline root holding metadata.sqlite.")
    flags.DEFINE_integer("artifact", None, "Show the lineage of this artifact id.")
    flags.DEFINE_integer("execution", None, "Show one execution in full (parameters, inputs, outputs).")
    flags.DEFINE_bool("check", False, "Check the store's integrity; exit 1 if it fails.")
    flags.mark_flag_as_required("pipeline_root")


def main() -> None:
    path = os.path.join(FLAGS.pipeline_root, METADATA_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"--pipeline_root={FLAGS.pipeline_root}: no metadata store at {path}; "
                          "run the pipeline first.")
    with MetadataStore(path) as store:
        if FLAGS.check:
            verdict = store.integrity_check()
            print(f"integrity: {verdict}")
            sys.exit(0 if verdict == "ok" else 1)
        if FLAGS.artifact is not None:
            show_lineage(store, FLAGS.artifact)
        elif FLAGS.execution is not None:
            show_execution(store, FLAGS.execution)
        else:
            list_executions(store)


if __name__ == "__main__":
    _define_flags()
    run_cli(main, "pipelines.lineage")
