"""Train stage: Deep InfoMax on the ingested examples, with `dim_tf.train`.

Inputs `examples`; output `model` (type Model): a dim_tf run directory
(checkpoints, TensorBoard logs, config.json, summary.json). The training
flags are those of `python -m dim_tf.train`, including `--strategy`
(one_device, mirrored, multi_worker, tpu). With `--train_launcher=tfjob` the
stage launches a Kubeflow TFJob of a chief and `--tfjob_workers` workers
training into the same run directory on the shared volume, and waits for it
(`pipelines.tfjob`). An interrupted training resumes from its last checkpoint
when the stage runs again. Run alone:

    python -m pipelines.run --only=train --flagfile=configs/pipeline_cifar10.flags --pipeline_root=DIR
"""

from __future__ import annotations

import os

from dim_tf import TrainConfig, TrainResult, train
from pipelines import tfjob
from pipelines.ingest import examples_dataset
from pipelines.stage import Stage, StageContext
from pipelines.store import NewArtifact

# Parameters that change how training runs but not the model it produces: not
# part of the cache key.
OPERATIONAL_PARAMETERS = ("strategy", "verbose", "log_every", "checkpoint_every", "keep_checkpoints",
                          "launcher", "tfjob")


def training_settings(parameters: dict, model_dir: str,
                      dataset: str) -> tuple[TrainConfig, tfjob.TFJobSettings | None]:
    """The stage's TrainConfig, and the TFJob's settings with --train_launcher=tfjob.

    Raises:
        ConfigError: an invalid training or TFJob setting.
    """
    settings = dict(parameters)
    launcher, job = settings.pop("launcher"), settings.pop("tfjob")
    config = TrainConfig(model_dir=model_dir, dataset=dataset, **settings)
    return config, (tfjob.TFJobSettings(**job) if launcher == "tfjob" else None)


def execute(context: StageContext) -> list[NewArtifact]:
    model_dir = os.path.join(context.output_dir, "model")
    config, job_settings = training_settings(
        context.parameters, model_dir, examples_dataset(context.inputs["examples"]))
    if job_settings is None:
        result = train(config)
    else:
        tfjob.launch(tfjob.build_tfjob(config, job_settings))
        result = TrainResult.read(model_dir)
    return [NewArtifact("model", "Model", model_dir, {
        "steps": result.end_step, "images_per_second": result.images_per_second,
        "metrics": result.metrics, "encoder": config.encoder, "estimator": config.estimator})]


STAGE = Stage(name="train", inputs={"examples": ("ingest", "examples")}, execute=execute,
              resumable=True, operational_parameters=OPERATIONAL_PARAMETERS)
