"""The Keras callbacks of a training run (`dim_tf.training.run`).

- `TrainingClock`: wall time trained, summed over resumes; stops at the time budget.
- `ScheduleLength`: fixes a time-based learning-rate schedule's length from the
  measured throughput; stops at the schedule's end.
- `CheckpointEvery`: saves every N steps and at every epoch end.
- `KillPoint`: the fault injection point "train.step_end" (dim_tf/faults.py).
- `StopOnSigterm`: a SIGTERM finishes the current step and stops.
- `StopClusterOnSigterm`: its multi-worker form: a SIGTERM to any worker stops
  every worker after the same step.
- `ScalarLogger`: TensorBoard scalars, tagged by `metric_tag`.

Their order in `fit` matters: the kill point and the stop request of a step
come before that step's checkpoint (see `run.py`).
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from typing import Callable

import keras
import tensorflow as tf
from absl import logging

from dim_tf.faults import kill_point
from dim_tf.training import model_dir as model_dir_lib
from dim_tf.training import schedule as schedule_lib
from dim_tf.training.checkpoints import CheckpointStore


def global_step(model: keras.Model) -> int:
    """Training steps done (works for mirrored variables too)."""
    return int(model.optimizer.iterations.numpy())


def metric_tag(name: str) -> str:
    """The TensorBoard tag of a training log key: `local_mi` -> `mi/local`,
    `prior_disc_loss` -> `prior/disc_loss`, `monitor_y_accuracy` -> `monitor/y_accuracy`,
    `local_loss` -> `loss/local`, `loss` -> `loss/total`."""
    if name.startswith("monitor_"):
        return f"monitor/{name[8:]}"
    if name.endswith("_mi"):
        return f"mi/{name[:-3]}"
    if name.startswith("prior_"):
        return f"prior/{name[6:]}"
    return f"loss/{name[:-5] if name.endswith('_loss') else 'total'}"


class TrainingClock(keras.callbacks.Callback):
    """Wall time trained by the run, summed over resumes; stops at the time budget.

    The time counts from this callback's creation, before `fit` (dataset start-up
    and tracing included), and continues from what the restored checkpoint's step
    had trained (`trained_before`). `now` is the clock read (seconds; tests pass
    a simulated one).
    """

    def __init__(self, trained_before: float, budget_seconds: float | None,
                 now: Callable[[], float] = time.perf_counter):
        super().__init__()
        self.trained_before, self.budget_seconds, self.now = trained_before, budget_seconds, now
        self.started = now()
        self.budget_reached = budget_seconds is not None and trained_before >= budget_seconds

    def trained_seconds(self) -> float:
        return self.trained_before + self.now() - self.started

    def on_train_batch_end(self, batch, logs=None):
        if self.budget_seconds is not None and self.trained_seconds() >= self.budget_seconds:
            self.budget_reached = True
            self.model.stop_training = True


class ScheduleLength(keras.callbacks.Callback):
    """Stops at the learning-rate schedule's last step; first fixes the length of a
    time-based schedule from the throughput measured in this process.

    With `schedule_seconds` and no length yet, each `fit` skips its first tenth of
    `calibration_steps` steps (tracing, the input pipeline filling its buffers),
    then times the rest of them on `clock`, the run's training time. The schedule
    then ends at `schedule_lib.length_from_throughput`, or at `epoch_steps` if
    that comes first; the length is recorded in schedule.json (chief only:
    `model_dir` is None elsewhere) and logged. Each `fit` times its steps afresh,
    so a partial epoch's `fit` too short to time is not mixed with the next one's
    start-up.

    Place it after the clock (which it reads) and before `CheckpointEvery`, so
    that the epoch-end checkpoint saves the schedule's last step.
    """

    def __init__(self, schedule: schedule_lib.WarmupThenDecay, clock: TrainingClock,
                 epoch_steps: int, schedule_seconds: float | None = None,
                 calibration_steps: int = 300, model_dir: str | None = None):
        super().__init__()
        self.schedule, self.clock, self.epoch_steps = schedule, clock, epoch_steps
        self.schedule_seconds, self.calibration_steps = schedule_seconds, calibration_steps
        self.skipped_steps = max(1, calibration_steps // 10)
        self.model_dir = model_dir
        self.length = schedule.length
        self.reached = False
        self._batches, self._mark = 0, None

    def on_train_begin(self, logs=None):
        self._batches, self._mark = 0, None

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if self.length is None and self.schedule_seconds is not None:
            self._calibrate(step)
        if self.length is not None and step >= self.length:
            self.reached = True
            self.model.stop_training = True

    def _calibrate(self, step: int) -> None:
        self._batches += 1
        if self._batches == self.skipped_steps:
            self._mark = (step, self.clock.trained_seconds())
        elif self._batches == self.calibration_steps:
            first_step, first_seconds = self._mark
            trained = self.clock.trained_seconds()
            self._fix(first_step, step, (step - first_step) / max(trained - first_seconds, 1e-9),
                      trained)

    def _fix(self, first_step: int, step: int, steps_per_second: float, trained: float) -> None:
        by_time = schedule_lib.length_from_throughput(step, steps_per_second, trained,
                                                      self.schedule_seconds)
        self.length = min(by_time, self.epoch_steps)
        self.schedule.fix_length(self.length)
        length_from = "time" if by_time < self.epoch_steps else "epochs"
        if self.model_dir:
            schedule_lib.write_record(self.model_dir, schedule_lib.ScheduleRecord(
                self.schedule.decay, self.length, length_from, fixed_at_step=step,
                steps_per_second=round(steps_per_second, 4),
                schedule_seconds=self.schedule_seconds))
        logging.info(
            "Learning-rate schedule: %.2f steps/s over steps %d-%d, %.1f of %.1f min trained: "
            "the %s decay ends at step %d%s.", steps_per_second, first_step, step, trained / 60,
            self.schedule_seconds / 60, self.schedule.decay, self.length,
            "" if length_from == "time" else " (the end of --epochs, which comes first)")


class CheckpointEvery(keras.callbacks.Callback):
    """Saves every `every` steps and at the end of every epoch, then records the
    time trained up to the saved step (chief only: `model_dir` is None elsewhere)."""

    def __init__(self, store: CheckpointStore, every: int, clock: TrainingClock,
                 model_dir: str | None):
        super().__init__()
        self.store, self.every, self.clock, self.model_dir = store, every, clock, model_dir
        self.last_saved = None

    def _save(self):
        step = global_step(self.model)
        if step != self.last_saved:
            self.store.save(checkpoint_number=step)
            self.last_saved = step
            if self.model_dir:
                model_dir_lib.record_trained_seconds(self.model_dir, step, self.clock.trained_seconds())

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) % self.every == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


class KillPoint(keras.callbacks.Callback):
    """Fault injection point "train.step_end": a step trained, its checkpoint not yet written."""

    def on_train_batch_end(self, batch, logs=None):
        kill_point("train.step_end")


class StopOnSigterm(keras.callbacks.Callback):
    """On SIGTERM, finishes the current step and stops; the epoch-end checkpoint
    (`CheckpointEvery`) then saves exactly that step."""

    def __init__(self):
        super().__init__()
        self.requested = False
        self._previous = None

    def on_train_begin(self, logs=None):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum, frame):
        self.requested = True

    def on_train_batch_end(self, batch, logs=None):
        if self.requested:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class StopClusterOnSigterm(keras.callbacks.Callback):
    """`StopOnSigterm` for a multi-worker cluster: a SIGTERM to any worker makes
    every worker finish the same step and stop, so that the epoch-end checkpoint
    (`CheckpointEvery`, a collective save) holds that step everywhere.

    Workers receive signals on their own, and one stopping alone would leave the
    others waiting in the next all-reduce. TensorFlow's PreemptionCheckpointHandler
    agrees on the step through the cluster's coordination service: the signalled
    worker names the step after its current one and waits until every worker has
    acknowledged it. It is used for that agreement only (its own save is a no-op):
    the run's checkpoints stay where and as `CheckpointStore` writes them. It
    counts its calls, one per step, from zero in every process, which is the same
    count on all workers of one start.
    """

    def __init__(self, cluster_resolver: tf.distribute.cluster_resolver.ClusterResolver):
        super().__init__()
        self.requested = False
        # The handler keeps its call count in a checkpoint of its own; each start
        # begins at zero, so it lives in a directory of this process (removed at
        # exit). A non-chief's handler makes and at its end deletes a sibling
        # `workertemp_<task>` of that directory: both go one level down.
        self._bookkeeping = tempfile.TemporaryDirectory(prefix="dim_tf_preemption_")
        self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            cluster_resolver, tf.train.Checkpoint(),
            checkpoint_dir=os.path.join(self._bookkeeping.name, "handler"),
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=self._request, grace_period=0, save_fn=lambda: None))

    def _request(self):
        self.requested = True
        self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if not self.requested:
            self._handler.save_checkpoint_if_preempted()


class ScalarLogger(keras.callbacks.Callback):
    """TensorBoard scalars at the global step: losses, MI, prior game, lr, images/s
    (nothing is written when `log_dir` is None: a non-chief worker).

    Batch-level values are the running means of the current epoch (Keras' trackers).
    """

    def __init__(self, log_dir: str | None, every: int, global_batch_size: int):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.every, self.global_batch_size = every, global_batch_size
        self.images_per_second = None
        self._tick = None

    def on_train_begin(self, logs=None):
        self._tick = (time.perf_counter(), global_step(self.model))

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if step % self.every:
            return
        now = time.perf_counter()
        then, then_step = self._tick
        if step > then_step:
            self.images_per_second = (step - then_step) * self.global_batch_size / (now - then)
        self._tick = (now, step)
        self._write(logs, step, "")

    def on_epoch_end(self, epoch, logs=None):
        self._write(logs, global_step(self.model), "epoch_")

    def _write(self, logs, step, prefix):
        if self.writer is None or not logs:
            return
        with self.writer.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(prefix + metric_tag(name), float(value))
            lr = self.model.optimizer.learning_rate
            tf.summary.scalar(prefix + "optimizer/learning_rate", float(lr.numpy() if hasattr(lr, "numpy") else lr))
            if self.images_per_second is not None:
                tf.summary.scalar(prefix + "speed/images_per_second", self.images_per_second)
        self.writer.flush()
