"""The Keras callbacks of a training run (`dim_tf.training.run`).

- `TrainingClock`: wall time trained, summed over resumes; stops at the time budget.
- `CheckpointEvery`: saves every N steps and at every epoch end.
- `KillPoint`: the fault injection point "train.step_end" (dim_tf/faults.py).
- `StopOnSigterm`: a SIGTERM finishes the current step and stops.
- `ScalarLogger`: TensorBoard scalars, tagged by `metric_tag`.

Their order in `fit` matters: the kill point and the stop request of a step
come before that step's checkpoint (see `run.py`).
"""

from __future__ import annotations

import signal
import threading
import time

import keras
import tensorflow as tf

from dim_tf.faults import kill_point
from dim_tf.training import model_dir as model_dir_lib
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
    had trained (`trained_before`).
    """

    def __init__(self, trained_before: float, budget_seconds: float | None):
        super().__init__()
        self.trained_before, self.budget_seconds = trained_before, budget_seconds
        self.started = time.perf_counter()
        self.budget_reached = budget_seconds is not None and trained_before >= budget_seconds

    def trained_seconds(self) -> float:
        return self.trained_before + time.perf_counter() - self.started

    def on_train_batch_end(self, batch, logs=None):
        if self.budget_seconds is not None and self.trained_seconds() >= self.budget_seconds:
            self.budget_reached = True
            self.model.stop_training = True


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
