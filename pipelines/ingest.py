"""Ingest stage: a TFDS dataset or an image folder -> TFRecord shards, schema, statistics.

Output `examples` (type Examples): a directory readable as
`--dataset=tfrecord:DIR`, with schema.json (features, class names, splits) and
statistics.json (images per split and label, image sizes and channels, corrupt
files found). With `--ingest_runner=beam` an image folder is ingested on Apache
Beam (`dim_tf.data.beam_ingest`: the same files, byte for byte), on the runner
`--beam_pipeline_args` selects. Run alone:

    python -m pipelines.run --only=ingest --flagfile=configs/pipeline_cifar10.flags --pipeline_root=DIR
"""

from __future__ import annotations

import os

from dim_tf import DatasetSpec, load_source, write_tfrecord_dataset, write_tfrecord_dataset_beam
from pipelines.stage import Stage, StageContext
from pipelines.store import Artifact, NewArtifact


def examples_dataset(examples: Artifact) -> str:
    """The `--dataset` value of the ingested examples, for the stages after ingest."""
    return str(DatasetSpec.tfrecords(examples.uri))


def execute(context: StageContext) -> list[NewArtifact]:
    p = context.parameters
    sources = {split: load_source(p["dataset"], split, p["data_dir"], p["manual_dir"], p["download"])
               for split in dict.fromkeys(p["splits"])}
    examples = os.path.join(context.output_dir, "examples")
    settings = dict(check_channels=p["channels"], examples_per_shard=p["examples_per_shard"],
                    skip_corrupt=p["skip_corrupt"])
    properties = {"source": p["dataset"], "runner": p["runner"]}
    if p["runner"] == "beam":
        statistics, properties["counters"] = write_tfrecord_dataset_beam(
            sources, examples, pipeline_args=p["beam_pipeline_args"], **settings)
    else:
        statistics = write_tfrecord_dataset(sources, examples, **settings)
    properties["splits"] = {
        split: {"num_examples": s["num_examples"], "corrupt_files": len(s["corrupt_files"])}
        for split, s in statistics.items()}
    return [NewArtifact("examples", "Examples", examples, properties)]


# The Beam ingest writes the same files: how it ran does not change the result.
STAGE = Stage(name="ingest", inputs={}, execute=execute,
              operational_parameters=("runner", "beam_pipeline_args"))
