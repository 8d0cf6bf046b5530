"""`train(config)`: a resumable DIM training run from a `TrainConfig`.

The run owns `model_dir`:

    model_dir/config.json        resolved settings (and flags.txt from the CLI)
    model_dir/checkpoints/       model + both optimisers, every N steps and epoch
    model_dir/logs/train/        TensorBoard scalars
    model_dir/summary.json       steps done, wall time, images/s, last metrics
    model_dir/training_time.json wall time trained up to each checkpoint (for --time_budget_minutes)
    model_dir/schedule.json      the learning-rate schedule's length, once fixed (schedule.py)

Rerunning the same config continues from the newest readable checkpoint (even
after kill -9, see checkpoints.py), with the same batches an uninterrupted run
would have seen; a finished run is not trained again. A run with a decaying
learning rate (--lr_schedule) ends at the schedule's last step, or at the end of
--epochs if that comes first; a time-based schedule's length is measured in the
run's first steps and kept for its resumes. One process trains in a
model_dir at a time, and the directory is probed for writing before training
(model_dir.py). A NaN or Inf in any term or gradient stops the run before that
step changes any weight (dim_model.py); nothing non-finite is saved.

Training does not export: `python -m dim_tf.train --export_dir` exports the
finished run with `dim_tf.serving.export.export_run`.

Fault injection points (dim_tf/faults.py): "train.step_end" after every step's
training and before its checkpoint, and the "checkpoint.*" points of a save.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import keras
import tensorflow as tf
from absl import logging

from dim_tf import io
from dim_tf.config import (
    CHECKPOINTS_DIR,
    MULTI_WORKER_TIME_BUDGET,
    MULTI_WORKER_TIME_SCHEDULE,
    RUN_CONFIG_FILE,
    SUMMARY_FILE,
    TRAIN_LOG_DIR,
    TrainConfig,
)
from dim_tf.data import labels, loaders, streams
from dim_tf.data import source as source_lib
from dim_tf.errors import (ConfigError, DamagedRunFileError, DataError, NonFiniteError, Preempted,
                           RunNotFoundError, TrainingError)
from dim_tf.training import callbacks as callbacks_lib
from dim_tf.training import model_dir as model_dir_lib
from dim_tf.training import schedule as schedule_lib
from dim_tf.training.checkpoints import (
    CheckpointStore,
    checkpoint_bytes,
    restore_latest,
    training_checkpoint,
)
from dim_tf.training.checkpoints import remove_leftovers as remove_checkpoint_leftovers
from dim_tf.training.dim_model import DeepInfoMax, build_model
from dim_tf.training.precision import use_precision
from dim_tf.training.restore import saved_run_config
from dim_tf.training.strategy import is_chief, make_strategy, worker_id
from dim_tf.training.xla import choose_jit_compile


@dataclasses.dataclass
class TrainResult:
    """What one call of `train` did; summary.json holds it (all but `chief`).

    total_steps: where the run ends: its --epochs, or its learning-rate
        schedule's last step if that comes first (once fixed).
    stopped_by: why training ended at `end_step`: "epochs", "lr_schedule" (the
        schedule's last step) or "time_budget".
    chief: whether this process is the run's chief, the one that writes in
        model_dir (always, but for the other workers of a multi-worker run).
    """

    model_dir: str
    total_steps: int
    start_step: int
    end_step: int
    seconds: float
    trained_seconds: float
    stopped_by_time_budget: bool
    stopped_by: str
    images_per_second: float | None
    metrics: dict
    skipped_images: tuple[str, ...]
    chief: bool = True

    def summary(self) -> dict:
        """The content of summary.json (only the chief writes one)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "chief"}

    @classmethod
    def read(cls, model_dir: str) -> TrainResult:
        """The chief's result of the last `train` of the run in `model_dir` (its
        summary.json), e.g. after a run on a cluster's pods.

        Raises:
            RunNotFoundError: no summary.json (the run never finished a `train`).
            DamagedRunFileError: summary.json cannot be read as one.
        """
        path = os.path.join(model_dir, SUMMARY_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                summary = json.load(f)
            return cls(**dict(summary, skipped_images=tuple(summary["skipped_images"])))
        except FileNotFoundError:
            raise RunNotFoundError(f"{path} does not exist: no training of this run has "
                                   "finished.") from None
        except (ValueError, TypeError, KeyError) as error:
            raise DamagedRunFileError(f"{path} is not a run summary ({error}); rerun the "
                                      "training to rewrite it.") from None


@dataclasses.dataclass(frozen=True)
class _StepPlan:
    """Steps per epoch, in --epochs, and in the learning-rate schedule once fixed."""

    steps_per_epoch: int
    epoch_steps: int
    schedule_steps: int | None = None

    @property
    def total_steps(self) -> int:
        """Where the run ends: its epochs' end, or the schedule's if that comes first."""
        if self.schedule_steps is None:
            return self.epoch_steps
        return min(self.epoch_steps, self.schedule_steps)

    def stopped_by(self, step: int) -> str | None:
        """Why `step` ends the run ("epochs" or "lr_schedule"), or None if it does not."""
        if step >= self.epoch_steps:
            return "epochs"
        if self.schedule_steps is not None and step >= self.schedule_steps:
            return "lr_schedule"
        return None


@dataclasses.dataclass(frozen=True)
class _Start:
    """The model at the step training continues from, and where its checkpoints go."""

    model: DeepInfoMax
    store: CheckpointStore
    step: int
    scratch: str | None  # a non-chief worker's throw-away checkpoint directory


@dataclasses.dataclass(frozen=True)
class _Callbacks:
    clock: callbacks_lib.TrainingClock
    stopper: callbacks_lib.StopOnSigterm | callbacks_lib.StopClusterOnSigterm
    schedule_end: callbacks_lib.ScheduleLength | None
    in_order: list[keras.callbacks.Callback]

    def stopped(self) -> bool:
        """Whether `fit` was stopped before its epochs' end: SIGTERM, the time budget
        or the learning-rate schedule's last step."""
        return (self.stopper.requested or self.clock.budget_reached
                or (self.schedule_end is not None and self.schedule_end.reached))


def train(config: TrainConfig, extra_files: dict[str, str] | None = None,
          start_over: bool = False) -> TrainResult:
    """Trains (or resumes) the run of `config`; see the module docstring.

    Args:
        config: the run's settings.
        extra_files: {file name: text} written into model_dir by the chief
            (the CLI's resolved flags).
        start_over: move an existing run in model_dir aside (to a sibling
            `MODEL_DIR.old-TIMESTAMP`) and train from step 0.

    Raises:
        ConfigError, DataError: before any training, for bad settings or data,
            a model_dir with another run's settings, or one that cannot be written.
        DamagedRunFileError: model_dir's config.json cannot be read.
        ModelDirBusy: another process is training in model_dir.
        CheckpointError: a checkpoint could not be written (earlier ones are kept),
            or none of the run's checkpoints can be read.
        NonFiniteError: a term or gradient became NaN/Inf; the last checkpoint is kept.
        Preempted: SIGTERM; the current step was saved.
        TrainingError: a run file (config.json, summary.json, ...) could not be written.
    """
    config.check_paths()
    use_precision(config.mixed_precision, config.force_mixed_precision)
    jit = choose_jit_compile(config.jit_compile)
    logging.info("XLA %s: %s.", "on" if jit.enabled else "off", jit.reason)
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"--batch_size={config.batch_size} must be divisible by the number of "
                          f"replicas ({replicas}).")
    if not is_chief(strategy):  # only the chief writes in model_dir, so only it takes the lock
        return _train_with(config, strategy, False, extra_files, start_over)
    model_dir_lib.check_writable(config.model_dir)
    with model_dir_lib.ModelDirLock(config.model_dir):
        _clear_model_dir(config.model_dir, start_over)
        return _train_with(config, strategy, True, extra_files, start_over)


def _train_with(config: TrainConfig, strategy: tf.distribute.Strategy, chief: bool,
                extra_files: dict[str, str] | None, start_over: bool) -> TrainResult:
    """`train` once the chief owns model_dir (or on a non-chief worker)."""
    if not start_over:
        _check_resumable(config)
    source = _prepare_source(config)
    plan = _plan_steps(config, source)
    labels.check_labels(config.model_dir, source.label_names, config.dataset)
    start = _restore_or_start(config, strategy, source, chief, start_over, plan)
    budget, trained_before = _time_budget(config, strategy, start.step)
    if chief:
        _write_run_files(config, source, start, plan, extra_files)
    plan = _fix_schedule_length(config, strategy, start, plan, chief, start_over)
    callbacks = _make_callbacks(config, strategy, start, plan, chief, trained_before, budget)
    logs = _fit(config, strategy, source, plan, start, callbacks)
    return _result(config, source, plan, start, callbacks, logs, chief)


def _clear_model_dir(model_dir: str, start_over: bool) -> None:
    """With the lock held: moves the old run aside (`start_over`), then deletes what
    killed writes left behind."""
    if start_over:
        moved_to = model_dir_lib.start_over(model_dir)
        if moved_to:
            logging.warning("--start_over: moved the previous run in %s to %s.", model_dir, moved_to)
    removed = model_dir_lib.remove_leftovers(model_dir)
    removed += remove_checkpoint_leftovers(os.path.join(model_dir, CHECKPOINTS_DIR))
    if removed:
        logging.info("Removed %d temporary file(s) left by an interrupted run: %s",
                     len(removed), ", ".join(removed))


def _check_resumable(config: TrainConfig) -> None:
    """Refuses to continue a run in model_dir with different run-defining settings."""
    saved = saved_run_config(config.model_dir)
    if saved is None:
        return
    conflicts = config.resume_conflicts(saved)
    if conflicts:
        raise ConfigError(
            f"--model_dir={config.model_dir} holds a run with other settings, which this run would "
            "resume from:\n  " + "\n  ".join(conflicts) + "\nUse a new --model_dir, the run's "
            "own settings (its flags.txt works as a --flagfile), or --start_over to move the old "
            "run aside and train from step 0."
        )


def _prepare_source(config: TrainConfig) -> source_lib.ImageSource:
    source = loaders.load_source(config.data, config.train_split, config.data_dir,
                                 config.manual_dir, config.download)
    if source.is_image_folder:  # every file decoded once: unusable ones stop the run or are skipped
        source = source_lib.usable_images(source, config.channels, skip_bad=config.skip_corrupt)
    if source.num_examples == 0:
        raise DataError(f"--dataset={config.dataset} split {config.train_split!r} has no images.")
    # Smaller images (28x28 MNIST-like data) are resized up, not refused: no encoder
    # exists for every size, and evaluation and serving resize them up the same way.
    source_lib.log_if_enlarged(source, config.channels, config.image_size,
                               random_crop=config.random_crop, encoder=config.encoder)
    return source


def _plan_steps(config: TrainConfig, source: source_lib.ImageSource) -> _StepPlan:
    """Steps per epoch (whole batches, capped by --steps_per_epoch) and in all."""
    steps_per_epoch = source.num_examples // config.batch_size
    if steps_per_epoch == 0:
        raise DataError(
            f"--dataset={config.dataset} split {config.train_split!r} has {source.num_examples} "
            f"images, fewer than one batch (--batch_size={config.batch_size})."
        )
    if config.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    return _StepPlan(steps_per_epoch, config.epochs * steps_per_epoch)


def _fix_schedule_length(config: TrainConfig, strategy: tf.distribute.Strategy, start: _Start,
                         plan: _StepPlan, chief: bool, start_over: bool) -> _StepPlan:
    """Fixes the learning-rate schedule's length, if known before training, and returns
    the plan ending there.

    The length is the run's schedule.json if it has one (written when the length
    was first fixed: a resumed run never measures again), else --epochs' steps,
    unless the schedule spans time (--schedule_minutes or --time_budget_minutes)
    and its throughput can be measured before those end: then it is fixed during
    training (`callbacks.ScheduleLength`).
    """
    schedule = schedule_lib.schedule_of(start.model.optimizer)
    if schedule is None:  # constant learning rate
        return plan
    if config.schedule_seconds is not None and isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy):  # --strategy=auto found a cluster
        raise ConfigError(MULTI_WORKER_TIME_SCHEDULE)
    # After --start_over the chief has moved the old record away (the other workers
    # must not read it meanwhile).
    record = None if start_over else schedule_lib.read_record(config.model_dir)
    if record is None and (config.schedule_seconds is None
                           or _calibration_end(config, plan, start.step) >= plan.epoch_steps):
        record = schedule_lib.ScheduleRecord(config.lr_schedule, plan.epoch_steps, "epochs",
                                             fixed_at_step=start.step)
        if chief:
            schedule_lib.write_record(config.model_dir, record)
    if record is None:
        logging.info("Learning-rate schedule: the %s decay spans %g min of training; its length "
                     "in steps is fixed from the throughput of steps %d-%d.", config.lr_schedule,
                     config.schedule_seconds / 60, start.step, _calibration_end(config, plan,
                                                                                start.step))
        return plan
    schedule.fix_length(record.total_steps)
    if record.length_from == "epochs" and record.total_steps != plan.epoch_steps:
        logging.warning("The learning-rate schedule of the run in %s was fixed at %d steps (%s) "
                        "when it started; --epochs now plans %d. The schedule is kept; the run "
                        "ends at whichever comes first (--start_over trains a new schedule).",
                        config.model_dir, record.total_steps, schedule_lib.SCHEDULE_FILE,
                        plan.epoch_steps)
    return dataclasses.replace(plan, schedule_steps=record.total_steps)


def _calibration_end(config: TrainConfig, plan: _StepPlan, start_step: int) -> int:
    """The step at which a time-based schedule's throughput is measured: after
    --schedule_calibration_steps steps of one `fit` (a resumed partial epoch's own
    `fit` counts only if it is long enough)."""
    offset = start_step % plan.steps_per_epoch
    partial = plan.steps_per_epoch - offset if offset else 0
    if partial and partial < config.schedule_calibration_steps:
        start_step += partial
    return start_step + config.schedule_calibration_steps


def _restore_or_start(config: TrainConfig, strategy: tf.distribute.Strategy,
                      source: source_lib.ImageSource, chief: bool, start_over: bool,
                      plan: _StepPlan) -> _Start:
    """Builds the model and restores the run's newest readable checkpoint, if any."""
    checkpoint_dir = os.path.join(config.model_dir, CHECKPOINTS_DIR)
    monitor_classes = len(source.label_names) if len(source.label_names) >= 2 else None
    with strategy.scope():
        model = build_model(config, monitor_classes)
    checkpoint = training_checkpoint(model)
    # Every worker restores the chief's checkpoint (only the chief repairs the
    # directory); with --start_over the chief has just emptied it, and the other
    # workers must not read what it is moving away. Non-chief workers must take
    # part in saving too, but into a scratch directory that is then discarded.
    if start_over:
        store, restored = CheckpointStore(checkpoint, checkpoint_dir, config.keep_checkpoints), None
    else:
        store, restored = restore_latest(checkpoint, checkpoint_dir, config.keep_checkpoints,
                                         repair=chief)
    scratch = None
    if not chief:
        scratch = os.path.join(config.model_dir, f".worker_{worker_id(strategy)}")
        shutil.rmtree(scratch, ignore_errors=True)  # a killed run's copy
        store = CheckpointStore(checkpoint, scratch, max_to_keep=1)
    step = callbacks_lib.global_step(model)
    if restored:
        logging.info("Resuming from %s at step %d of %d.", restored, step, plan.total_steps)
    return _Start(model, store, step, scratch)


def _time_budget(config: TrainConfig, strategy: tf.distribute.Strategy,
                 start_step: int) -> tuple[float | None, float]:
    """(--time_budget_minutes in seconds or None, seconds trained before `start_step`)."""
    budget = config.time_budget_minutes * 60 if config.time_budget_minutes else None
    if budget is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ConfigError(MULTI_WORKER_TIME_BUDGET)  # --strategy=auto found a cluster
    trained_before = model_dir_lib.trained_seconds_at(config.model_dir, start_step) if start_step else 0.0
    if trained_before is None:
        if budget is not None:
            logging.warning("No training time is recorded for step %d (a run from before "
                            "--time_budget_minutes existed): counting its time as 0.", start_step)
        trained_before = 0.0
    return budget, trained_before


def _write_run_files(config: TrainConfig, source: source_lib.ImageSource, start: _Start,
                     plan: _StepPlan, extra_files: dict[str, str] | None) -> None:
    """The chief's files describing the run: its settings, class list and `extra_files`
    (after checking that one more checkpoint fits, if there is training to do)."""
    if start.step < plan.total_steps:
        model_dir_lib.check_free_space(config.model_dir, checkpoint_bytes(start.model))
    _write_run_file(config.model_dir, RUN_CONFIG_FILE, config.to_json())
    _write_run_file(config.model_dir, labels.LABELS_FILE, labels.labels_json(source.label_names))
    for name, text in (extra_files or {}).items():
        _write_run_file(config.model_dir, name, text)


def _write_run_file(model_dir: str, name: str, text: str) -> None:
    path = os.path.join(model_dir, name)
    try:
        io.atomic_write_text(path, text)
    except OSError as error:
        raise TrainingError(f"Could not write {path}: {error.strerror or error}. Free space or "
                            "fix the permissions there, then rerun the same command.") from error


def _make_callbacks(config: TrainConfig, strategy: tf.distribute.Strategy, start: _Start,
                    plan: _StepPlan, chief: bool, trained_before: float,
                    budget: float | None) -> _Callbacks:
    clock = callbacks_lib.TrainingClock(trained_before, budget)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Workers receive signals independently: they agree on the step to stop after.
        stopper = callbacks_lib.StopClusterOnSigterm(strategy.cluster_resolver)
    else:
        stopper = callbacks_lib.StopOnSigterm()
    schedule = schedule_lib.schedule_of(start.model.optimizer)
    schedule_end = None if schedule is None else callbacks_lib.ScheduleLength(
        schedule, clock, plan.epoch_steps, config.schedule_seconds,
        config.schedule_calibration_steps, config.model_dir if chief else None)
    # The kill point and the stop callbacks run before the checkpoint callback:
    # a step is killed before its save, and the stop request of a step (SIGTERM,
    # the schedule's end) is seen before that epoch's final save.
    in_order = [callbacks_lib.KillPoint(), stopper, clock,
                *([schedule_end] if schedule_end else []),
                callbacks_lib.CheckpointEvery(start.store, config.checkpoint_every, clock,
                                              config.model_dir if chief else None),
                callbacks_lib.ScalarLogger(os.path.join(config.model_dir, TRAIN_LOG_DIR) if chief
                                           else None, config.log_every, config.batch_size)]
    return _Callbacks(clock, stopper, schedule_end, in_order)


def _fit(config: TrainConfig, strategy: tf.distribute.Strategy, source: source_lib.ImageSource,
         plan: _StepPlan, start: _Start, callbacks: _Callbacks) -> dict:
    """Trains from the start step to the end (unless it is already reached, or the time
    budget is spent); returns the last logs. Raises NonFiniteError naming the step
    and the terms in their TensorBoard tags."""
    clock = callbacks.clock
    finished = plan.stopped_by(start.step)
    if finished == "lr_schedule":
        logging.info("Run in %s already finished its learning-rate schedule (%d steps, %s): "
                     "nothing to train.", config.model_dir, start.step, schedule_lib.SCHEDULE_FILE)
        return {}
    if finished:
        logging.info("Run in %s already finished (%d steps): nothing to train.", config.model_dir,
                     start.step)
        return {}
    if clock.budget_reached:
        logging.info("Run in %s has trained %.1f min, its whole --time_budget_minutes=%g: nothing "
                     "to train.", config.model_dir, clock.trained_before / 60,
                     config.time_budget_minutes)
        return {}
    try:
        return _fit_from(start.model, strategy, source, config, plan.steps_per_epoch, start.step,
                         callbacks.in_order, stop=callbacks.stopped)
    except NonFiniteError as error:
        logged = {m.name for m in start.model.metrics}
        named = ", ".join(f"{callbacks_lib.metric_tag(t)} ({t})" if t in logged else t
                          for t in error.terms)
        raise NonFiniteError(
            f"Training stopped at step {error.step} of {plan.total_steps}: NaN or Inf "
            f"in {named}. No weight of that step was applied or saved; the last checkpoint "
            f"({start.store.latest_checkpoint or 'none'}) is intact. Lower --learning_rate or check "
            "the data, then rerun to resume from it.", step=error.step, terms=error.terms,
        ) from None


def _fit_from(model, strategy, source, config, steps_per_epoch, start_step, callbacks,
              stop=lambda: False) -> dict:
    """Runs model.fit from `start_step` to the end, finishing a partial epoch first
    (unless `stop()` became true in it)."""

    def dataset_from(step):
        def fn(context):
            return streams.training_dataset(
                source, global_batch_size=config.batch_size, steps_per_epoch=steps_per_epoch,
                start_step=step, seed=config.seed, image_size=config.image_size,
                channels=config.channels, augmentation=config.augmentation, views=config.views,
                shuffle_buffer=config.shuffle_buffer, input_context=context,
            )
        return strategy.distribute_datasets_from_function(fn)

    epoch, offset = divmod(start_step, steps_per_epoch)
    history = {}
    if offset:
        history = model.fit(dataset_from(start_step), initial_epoch=epoch, epochs=epoch + 1,
                            steps_per_epoch=steps_per_epoch - offset, callbacks=callbacks,
                            verbose=config.verbose, shuffle=False).history
        epoch += 1
    if epoch < config.epochs and not stop():
        history = model.fit(dataset_from(epoch * steps_per_epoch), initial_epoch=epoch,
                            epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                            callbacks=callbacks, verbose=config.verbose, shuffle=False).history
    return {k: v[-1] for k, v in history.items()}


def _result(config: TrainConfig, source: source_lib.ImageSource, plan: _StepPlan, start: _Start,
            callbacks: _Callbacks, logs: dict, chief: bool) -> TrainResult:
    """The TrainResult (summary.json on the chief); raises Preempted after a SIGTERM."""
    clock = callbacks.clock
    seconds = clock.now() - clock.started
    end_step = callbacks_lib.global_step(start.model)
    if callbacks.stopper.requested:
        raise Preempted(
            f"Stopped by SIGTERM at step {end_step} of {plan.total_steps}; checkpoint "
            f"{start.store.latest_checkpoint} holds it. Rerun the same command to resume."
        )
    if start.scratch:
        shutil.rmtree(start.scratch, ignore_errors=True)
    if callbacks.schedule_end is not None:  # a time-based length is fixed during training
        plan = dataclasses.replace(plan, schedule_steps=callbacks.schedule_end.length)
    trained = end_step - start.step
    stopped_by = plan.stopped_by(end_step)
    result = TrainResult(
        model_dir=config.model_dir, total_steps=plan.total_steps, start_step=start.step,
        end_step=end_step, seconds=seconds, trained_seconds=clock.trained_seconds(),
        stopped_by_time_budget=stopped_by is None and clock.budget_reached,
        stopped_by=stopped_by or "time_budget",
        images_per_second=(trained * config.batch_size / seconds) if trained else None,
        metrics={k: float(v) for k, v in logs.items()},
        skipped_images=source.corrupt, chief=chief,
    )
    if chief:
        _write_run_file(config.model_dir, SUMMARY_FILE, json.dumps(result.summary(), indent=2))
    return result
