"""The learning-rate schedule of both players: warm-up, then a decay to the run's end.

`learning_rate_for(config)` gives the optimisers' learning rate:

- `--lr_schedule=constant` (the paper): the plain float `--learning_rate`, so
  the optimisers, their checkpoints and every update are exactly today's;
- `cosine` or `linear`: a `WarmupThenDecay` schedule of `--learning_rate`.

The schedule is a function of the optimiser's step count (`iterations`, which
checkpoints restore), so a resumed run uses the learning rate an uninterrupted
run would at every step. Its length, the step the decay ends at, is not known
when the model is built: it lives in a variable that the training run sets
(`fix_length`) before training when it comes from `--epochs`, or once the
throughput is measured when it comes from time (`--schedule_minutes`, default
`--time_budget_minutes`): see `length_from_throughput`. Until the length is
fixed the rate is the warm-up's, then the peak: the decay is computed from the
fixed length, so it cannot start before the length is known. A time-based
length is fixed after `--schedule_calibration_steps` steps; if the warm-up ends
earlier, the rate holds the peak until then and steps down to the schedule's
value at that step (for a calibration of 3% of the run, 0.2% with cosine, 3%
with linear); a warm-up at least as long as the calibration avoids the step.

A fixed length is recorded in `model_dir/schedule.json` (`ScheduleRecord`); a
resumed run reads it instead of measuring again, and it ends where the schedule
does (training/run.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import keras
import tensorflow as tf

from dim_tf import io
from dim_tf.config import LR_SCHEDULES, SCHEDULE_FILE, TrainConfig
from dim_tf.errors import DamagedRunFileError, TrainingError
from dim_tf.training import precision

DECAYS = tuple(s for s in LR_SCHEDULES if s != "constant")


@keras.saving.register_keras_serializable(package="dim_tf")
class WarmupThenDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate` after a linear warm-up, decayed to `final_lr_fraction` of it at the end.

    With W = warmup_steps, T = total_steps, f = final_lr_fraction and
    p = clip((step - W) / (T - W), 0, 1), the rate at `step` (the optimiser's
    count of steps done: the rate of the update that makes it step + 1) is

        learning_rate * min(step / W, 1) * (f + (1 - f) * d(p)),
        d(p) = (1 + cos(pi p)) / 2 ("cosine") or 1 - p ("linear"),

    rising from 0 at step 0 to the peak at step W and reaching f * learning_rate
    at step T, where the run ends (as optax's warmup_cosine_decay_schedule with
    decay_steps = T). While T is 0 (the length not fixed yet) d = 1.

    `total_steps` is a non-trainable int64 variable, created where the schedule
    is (build it inside the strategy's scope, as the model), so that the run can
    fix it after the optimisers exist; it is not part of checkpoints (the run
    records it in schedule.json).

    Args:
        learning_rate: the peak rate.
        decay: "cosine" or "linear".
        warmup_steps: W >= 0 (0: no warm-up).
        final_lr_fraction: f in [0, 1].
        total_steps: T, or 0 until it is fixed.
    """

    def __init__(self, learning_rate: float, decay: str, warmup_steps: int = 0,
                 final_lr_fraction: float = 0.0, total_steps: int = 0):
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}; got {decay!r}.")
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0; got {learning_rate!r}.")
        if int(warmup_steps) < 0 or int(total_steps) < 0:
            raise ValueError(f"warmup_steps and total_steps must be >= 0; got {warmup_steps!r}, "
                             f"{total_steps!r}.")
        if not 0.0 <= final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1]; got {final_lr_fraction!r}.")
        self.learning_rate = float(learning_rate)
        self.decay = decay
        self.warmup_steps = int(warmup_steps)
        self.final_lr_fraction = float(final_lr_fraction)
        self.total_steps = tf.Variable(int(total_steps), dtype=tf.int64, trainable=False,
                                       name="lr_schedule_total_steps")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        total = tf.cast(self.total_steps, tf.float32)
        warmup = float(self.warmup_steps)
        rise = tf.minimum(step / warmup, 1.0) if self.warmup_steps else tf.constant(1.0)
        progress = tf.clip_by_value((step - warmup) / tf.maximum(total - warmup, 1.0), 0.0, 1.0)
        if self.decay == "cosine":
            shape = 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        f = self.final_lr_fraction
        decayed = tf.where(total > 0, f + (1.0 - f) * shape, 1.0)
        return self.learning_rate * rise * decayed

    @property
    def length(self) -> int | None:
        """T, or None while it is not fixed."""
        return int(self.total_steps.numpy()) or None

    def fix_length(self, total_steps: int) -> None:
        """Sets T (>= 1); the optimisers' next steps use it."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; got {total_steps!r}.")
        self.total_steps.assign(int(total_steps))

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "decay": self.decay,
                "warmup_steps": self.warmup_steps, "final_lr_fraction": self.final_lr_fraction,
                "total_steps": int(self.total_steps.numpy())}


def learning_rate_for(config: TrainConfig) -> float | WarmupThenDecay:
    """Both players' learning rate for `config` (call inside the strategy's scope).

    `--lr_schedule=constant` returns `config.learning_rate` itself: the optimiser
    then keeps its own learning-rate variable, as it always has.
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    return WarmupThenDecay(config.learning_rate, config.lr_schedule, config.warmup_steps,
                           config.final_lr_fraction)


def schedule_of(optimizer: keras.optimizers.Optimizer) -> WarmupThenDecay | None:
    """The `WarmupThenDecay` an optimiser (or the inner one of a loss-scale
    optimiser) was built with, else None.

    Keras offers no public accessor: it keeps the schedule in `_learning_rate`
    (`learning_rate` is the rate at the current step).
    tests/training/test_schedule.py fails if that changes.
    """
    rate = getattr(precision.unscaled(optimizer), "_learning_rate", None)
    return rate if isinstance(rate, WarmupThenDecay) else None


def length_from_throughput(step: int, steps_per_second: float, trained_seconds: float,
                           schedule_seconds: float) -> int:
    """The step a time-based schedule ends at: `step` plus the steps the time left
    (`schedule_seconds` - `trained_seconds`, the run's training time over all its
    resumes) holds at `steps_per_second`; at least `step` (time is up: it ends now)."""
    remaining = max(schedule_seconds - trained_seconds, 0.0)
    return step + int(remaining * steps_per_second)


@dataclasses.dataclass(frozen=True)
class ScheduleRecord:
    """model_dir/schedule.json: a schedule's length, once fixed.

    lr_schedule: the decay ("cosine" or "linear").
    total_steps: the step it ends at (the run ends there too).
    length_from: "epochs" (--epochs x steps per epoch) or "time" (measured).
    fixed_at_step: the step count when the length was fixed.
    steps_per_second: the throughput measured ("time"), else None.
    schedule_seconds: the training time it spans ("time"), else None.
    """

    lr_schedule: str
    total_steps: int
    length_from: str
    fixed_at_step: int
    steps_per_second: float | None = None
    schedule_seconds: float | None = None


def schedule_path(model_dir: str) -> str:
    return os.path.join(model_dir, SCHEDULE_FILE)


def read_record(model_dir: str) -> ScheduleRecord | None:
    """The run's recorded schedule, or None if its length was never fixed.

    Raises:
        DamagedRunFileError: schedule.json exists but is not what training wrote.
    """
    path = schedule_path(model_dir)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = ScheduleRecord(**json.load(f))
        if record.total_steps < 1:
            raise ValueError(f"total_steps is {record.total_steps}")
    except (ValueError, TypeError) as error:
        raise DamagedRunFileError(
            f"{path} is not valid ({error}); expected the learning-rate schedule training "
            "wrote. Delete it to measure the schedule's length again, or rerun with "
            "--start_over.") from error
    return record


def write_record(model_dir: str, record: ScheduleRecord) -> None:
    """Writes schedule.json atomically.

    Raises:
        TrainingError: it could not be written.
    """
    path = schedule_path(model_dir)
    try:
        io.atomic_write_json(path, dataclasses.asdict(record))
    except OSError as error:
        raise TrainingError(f"Could not write {path}: {error.strerror or error}. Free space or "
                            "fix the permissions there, then rerun the same command.") from error
