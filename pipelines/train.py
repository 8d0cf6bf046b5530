"""Train stage: Deep InfoMax on the ingested examples, with `dim_tf.train`.

Inputs `examples`; output `model` (type Model): a dim_tf run directory
(checkpoints, TensorBoard logs, config.json, summary.json). The training
flags are those of `python -m dim_tf.train`, including `--strategy`
(one_device, mirrored, multi_worker, tpu). An interrupted training resumes
from its last checkpoint when the stage runs again. Run alone:

    python -m pipelines.run --only=train --flagfile=configs/pipeline_cifar10.flags --pipeline_root=DIR
"""

from __future__ import annotations

import os

from dim_tf import TrainConfig, train
from pipelines.ingest import examples_dataset
from pipelines.stage import Stage, StageContext
from pipelines.store import NewArtifact

# Parameters that change how training runs but not the model it produces: not
# part of the cache key.
OPERATIONAL_PARAMETERS = ("strategy", "verbose", "log_every", "checkpoint_every", "keep_checkpoints")


def execute(context: StageContext) -> list[NewArtifact]:
    model_dir = os.path.join(context.output_dir, "model")
    config = TrainConfig(model_dir=model_dir, dataset=examples_dataset(context.inputs["examples"]),
                         **context.parameters)
    result = train(config)
    return [NewArtifact("model", "Model", model_dir, {
        "steps": result.end_step, "images_per_second": result.images_per_second,
        "metrics": result.metrics, "encoder": config.encoder, "estimator": config.estimator})]


STAGE = Stage(name="train", inputs={"examples": ("ingest", "examples")}, execute=execute,
              resumable=True, operational_parameters=OPERATIONAL_PARAMETERS)
