"""Ingest stage: a TFDS dataset or an image folder -> TFRecord shards, schema, statistics.

Output `examples` (type Examples): a directory readable as
`--dataset=tfrecord:DIR`, with schema.json (features, class names, splits) and
statistics.json (images per split and label, image sizes and channels, corrupt
files found). Run alone:

    python -m pipelines.run --only=ingest --flagfile=configs/pipeline_cifar10.flags --pipeline_root=DIR
"""

from __future__ import annotations

import os

from dim_tf import DatasetSpec, load_source, write_tfrecord_dataset
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
    statistics = write_tfrecord_dataset(sources, examples, check_channels=p["channels"],
                                        examples_per_shard=p["examples_per_shard"],
                                        skip_corrupt=p["skip_corrupt"])
    summary = {split: {"num_examples": s["num_examples"], "corrupt_files": len(s["corrupt_files"])}
               for split, s in statistics.items()}
    return [NewArtifact("examples", "Examples", examples, {"splits": summary, "source": p["dataset"]})]


STAGE = Stage(name="ingest", inputs={}, execute=execute)
