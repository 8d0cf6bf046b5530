"""A finished (or running) training run, read back: its settings and its model.

Evaluation, export and the benchmark all start from a run directory written by
`train()`; this is the one place that reads its `config.json` and restores its
newest checkpoint into a freshly built model.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import tensorflow as tf

from dim_tf.config import CHECKPOINTS_DIR, RUN_CONFIG_FILE, TrainConfig
from dim_tf.errors import DamagedRunFileError, RunNotFoundError
from dim_tf.training.checkpoints import training_checkpoint
from dim_tf.training.dim_model import DeepInfoMax, build_model
from dim_tf.training.precision import use_precision


def run_config_path(model_dir: str) -> str:
    return os.path.join(model_dir, RUN_CONFIG_FILE)


def saved_run_config(model_dir: str) -> TrainConfig | None:
    """The settings the run in `model_dir` was started with, or None if it has none.

    Raises:
        DamagedRunFileError: config.json exists but is not the JSON training wrote.
    """
    path = run_config_path(model_dir)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return TrainConfig.from_json(text, model_dir=model_dir)
    except (json.JSONDecodeError, TypeError, AttributeError) as error:
        raise DamagedRunFileError(f"{path} is not valid ({error}); expected the file "
                                  "`python -m dim_tf.train` wrote. Restore or delete it.") from error


def read_run_config(model_dir: str) -> TrainConfig:
    """The settings of the run in `model_dir`.

    Raises:
        RunNotFoundError: `model_dir` has no config.json.
    """
    config = saved_run_config(model_dir)
    if config is None:
        raise RunNotFoundError(f"{run_config_path(model_dir)} not found: --model_dir must be a "
                               "directory written by `python -m dim_tf.train` (no config.json).")
    return config


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """A run's settings and its model with the newest checkpoint's weights.

    checkpoint: the path restored, or None for a randomly initialised model.
    step: the training steps the checkpoint had done (0 when random).
    """

    config: TrainConfig
    model: DeepInfoMax
    checkpoint: str | None
    step: int

    @property
    def encoder(self) -> keras.Model:
        return self.model.encoder


def restore_run(model_dir: str, random_init: bool = False, seed: int = 0) -> RestoredRun:
    """Builds the model of the run in `model_dir`, in its precision, and restores its
    newest checkpoint; with `random_init`, keeps the initialisation that `seed` gives
    instead (the untrained baseline of the same architecture).

    Raises:
        RunNotFoundError: no config.json, or no checkpoint (and not `random_init`).
    """
    config = read_run_config(model_dir)
    use_precision(config.mixed_precision, config.force_mixed_precision)
    if random_init:  # the baseline's weights are a function of the seed
        keras.utils.set_random_seed(seed)
    model = build_model(config)
    if random_init:
        return RestoredRun(config, model, None, 0)
    checkpoint_dir = os.path.join(model_dir, CHECKPOINTS_DIR)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest is None:
        raise RunNotFoundError(f"No checkpoint in {checkpoint_dir}: train first, or check "
                               "--model_dir.")
    # The monitor (and its optimiser) are training-only: they are not rebuilt here.
    training_checkpoint(model).restore(latest).assert_existing_objects_matched().expect_partial()
    return RestoredRun(config, model, latest, int(model.optimizer.iterations.numpy()))
