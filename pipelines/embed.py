"""Embed stage: the ingested splits through the pushed encoder, on Apache Beam's RunInference.

Inputs `pushed_model` (optional: only a blessed model is pushed) and `examples`.
For each split of `--embed_splits` it writes, under its output directory,
`<split>-NNNNN-of-MMMMM.tfrecord` (or .parquet): one row per image, its
`image/name` as `id` and the `--embed_features` of the encoder
(`dim_tf.embed_with_beam`; read them back with `dim_tf.read_embeddings`). Output
`embeddings` (type Embeddings): the directory, with embeddings.json (the Beam
counters per split, or why nothing was embedded: no `--embed_splits`, or no model
was pushed). Run alone:

    python -m pipelines.run --only=embed --embed_splits=test --flagfile=configs/pipeline_cifar10.flags --pipeline_root=DIR
"""

from __future__ import annotations

import os

from absl import logging

from dim_tf import atomic_write_json, embed_with_beam
from pipelines.stage import Stage, StageContext
from pipelines.store import NewArtifact

SUMMARY_FILE = "embeddings.json"


def execute(context: StageContext) -> list[NewArtifact]:
    p = context.parameters
    model = context.inputs.get("pushed_model")
    summary = {"splits": {}, "features": list(p["features"]), "format": p["output_format"],
               "model": model.uri if model else None, "skipped": None}
    if not p["splits"] or model is None:
        summary["skipped"] = "no --embed_splits" if not p["splits"] else "no model was pushed"
        logging.info("embed: nothing to embed (%s).", summary["skipped"])
    else:
        summary["splits"] = {
            split: embed_with_beam(
                model.uri, os.path.join(context.output_dir, split),
                examples=context.inputs["examples"].uri, split=split,
                features=tuple(p["features"]), output_format=p["output_format"],
                batch_size=p["batch_size"], channels=p["channels"],
                pipeline_args=p["beam_pipeline_args"])
            for split in p["splits"]}
    # Written even when nothing was embedded: the execution's record of why.
    atomic_write_json(os.path.join(context.output_dir, SUMMARY_FILE), summary)
    return [NewArtifact("embeddings", "Embeddings", context.output_dir, summary)]


STAGE = Stage(name="embed",
              inputs={"pushed_model": ("push", "pushed_model"), "examples": ("ingest", "examples")},
              optional_inputs=("pushed_model",), execute=execute,
              operational_parameters=("beam_pipeline_args",))
