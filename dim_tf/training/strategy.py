"""Choosing a `tf.distribute` strategy by name, and who writes files."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from dim_tf.config import STRATEGIES
from dim_tf.errors import ConfigError


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy `name`:

    - ``auto``: a TPU if one is attached (TPU_NAME set or a local TPU device),
      else MirroredStrategy over all GPUs, else the default (CPU) strategy;
    - ``one_device``: the first GPU, else the CPU;
    - ``mirrored``: MirroredStrategy over all local GPUs (or the CPU);
    - ``multi_worker``: MultiWorkerMirroredStrategy configured by TF_CONFIG;
    - ``tpu``: TPUStrategy on the TPU named by TPU_NAME (or the local one).

    Raises:
        ConfigError: unknown name, or the hardware/configuration is missing.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy={name!r} is not valid. Allowed: {', '.join(STRATEGIES)}.")
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        if os.environ.get("TPU_NAME") or tf.config.list_physical_devices("TPU"):
            return _tpu_strategy()
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                              "(cluster and task) on every worker.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy()


def _tpu_strategy() -> tf.distribute.TPUStrategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise ConfigError(f"--strategy=tpu: no TPU could be reached ({error}). Set TPU_NAME or "
                          "run on a TPU VM.") from error
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, logs and exports.

    Single-process strategies are always chief; under multi-worker training the
    chief is the "chief" task, or worker 0 when the cluster has no chief.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_id(strategy: tf.distribute.Strategy) -> str:
    """A name for this process among the workers (for temporary directories)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        return f"{resolver.task_type}_{resolver.task_id}"
    return "chief"
