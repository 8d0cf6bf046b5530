"""The DIM pipeline: its stages in order, and the runner that threads artifacts through them.

    ingest -> train -> evaluate -> push -> embed

`run_pipeline` runs (or takes from the cache) each stage in order, feeding it
the artifacts its inputs name. With `only=STAGE` the upstream stages must
already have a cached result for the same parameters (that is how one stage
runs alone); nothing upstream is recomputed then.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import uuid

from pipelines import embed, evaluate, ingest, push, train
from pipelines.stage import Stage, StageNotRun, StageResult, find_cached, fingerprint, run_stage
from pipelines.store import METADATA_FILE, Artifact, MetadataStore

STAGES: tuple[Stage, ...] = (ingest.STAGE, train.STAGE, evaluate.STAGE, push.STAGE, embed.STAGE)


def open_store(pipeline_root: str) -> MetadataStore:
    """The metadata store of `pipeline_root` (created if new)."""
    return MetadataStore(os.path.join(pipeline_root, METADATA_FILE))


def _stage_inputs(stage: Stage, results: dict[str, StageResult]) -> dict[str, Artifact]:
    inputs = {}
    for name, (upstream, output) in stage.inputs.items():
        artifact = results[upstream].outputs.get(output)
        if artifact is None:
            if name in stage.optional_inputs:
                continue
            raise StageNotRun(f"Stage {stage.name} needs {upstream}'s {output!r}, which its "
                              "last execution did not produce.")
        inputs[name] = artifact
    return inputs


def run_pipeline(
    pipeline_root: str,
    parameters: dict[str, dict],
    only: str | None = None,
    force: set[str] = frozenset(),
    command: str | None = None,
) -> dict[str, StageResult]:
    """Runs the pipeline (or the stage `only`) under `pipeline_root`.

    Args:
        pipeline_root: artifacts and the metadata store live here.
        parameters: {stage name: its parameters} (see `pipelines.flags.stage_parameters`).
        only: run just this stage; its upstream stages must have cached results.
        force: stages to run again even if their cached result is valid.
        command: recorded with the pipeline run (default: this process's command line).

    Returns:
        {stage name: StageResult} of the stages run or resolved.

    Raises:
        StageNotRun: with `only`, an upstream stage has no result for these parameters.
        Whatever a stage raised; it is recorded as failed and a rerun resumes it.
    """
    os.makedirs(pipeline_root, exist_ok=True)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    results: dict[str, StageResult] = {}
    with open_store(pipeline_root) as store:
        store.begin_pipeline_run(run_id, command or shlex.join([sys.executable] + sys.argv))
        status = "failed"
        try:
            for stage in STAGES:
                inputs = _stage_inputs(stage, results)
                if only is not None and stage.name != only:
                    key = fingerprint(stage, parameters[stage.name], inputs)
                    cached = find_cached(store, stage, key)
                    if cached is None:
                        raise StageNotRun(
                            f"Stage {only} needs the result of stage {stage.name} for these flags, "
                            f"and {pipeline_root} has none: run `python -m pipelines.run "
                            f"--only={stage.name}` (or `python -m pipelines.run`) with the same "
                            "flags first.")
                    results[stage.name] = cached
                    continue
                results[stage.name] = run_stage(store, pipeline_root, stage, parameters[stage.name],
                                                inputs, pipeline_run=run_id,
                                                force=stage.name in force)
                if stage.name == only:
                    break
            status = "complete"
        finally:
            store.end_pipeline_run(run_id, status)
    return results
