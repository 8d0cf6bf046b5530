"""`train(config)`: a resumable DIM training run from a `TrainConfig`.

The run owns `model_dir`:

    model_dir/config.json        resolved settings (and flags.txt from the CLI)
    model_dir/checkpoints/       model + both optimisers, every N steps and epoch
    model_dir/logs/train/        TensorBoard scalars
    model_dir/summary.json       steps done, wall time, images/s, last metrics
    model_dir/training_time.json wall time trained up to each checkpoint (for --time_budget_minutes)

Rerunning the same config continues from the newest readable checkpoint (even
after kill -9, see checkpoints.py), with the same batches an uninterrupted run
would have seen; a finished run is not trained again. One process trains in a
model_dir at a time, and the directory is probed for writing before training
(model_dir.py). A NaN or Inf in any term or gradient stops the run before that
step changes any weight (dim_model.py); nothing non-finite is saved.

Fault injection points (dim_tf/faults.py): "train.step_end" after every step's
training and before its checkpoint, and the "checkpoint.*" points of a save.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time

import keras
import tensorflow as tf
from absl import logging

from dim_tf.config import MULTI_WORKER_TIME_BUDGET, ConfigError, TrainConfig
from dim_tf.data import labels, pipeline
from dim_tf.models.encoders import build_encoder
from dim_tf.faults import kill_point
from dim_tf.training import model_dir as model_dir_lib
from dim_tf.training.checkpoints import (
    CheckpointStore,
    checkpoint_bytes,
    restore_latest,
    training_checkpoint,
)
from dim_tf.training.checkpoints import remove_leftovers as remove_checkpoint_leftovers
from dim_tf.training.dim_model import DeepInfoMax, default_optimizer
from dim_tf.training.errors import NonFiniteError, Preempted, TrainingError
from dim_tf.training.precision import use_precision
from dim_tf.training.strategy import is_chief, make_strategy, worker_id


@dataclasses.dataclass
class TrainResult:
    model_dir: str
    total_steps: int
    start_step: int
    end_step: int
    seconds: float
    trained_seconds: float
    stopped_by_time_budget: bool
    images_per_second: float | None
    metrics: dict
    skipped_images: tuple[str, ...]
    export_path: str | None


def _write_run_file(path: str, text: str) -> None:
    try:
        model_dir_lib.atomic_write_text(path, text)
    except OSError as error:
        raise TrainingError(f"Could not write {path}: {error.strerror or error}. Free space or "
                            "fix the permissions there, then rerun the same command.") from error


def _global_step(model) -> int:
    """Training steps done (works for mirrored variables too)."""
    return int(model.optimizer.iterations.numpy())


def _metric_tag(name: str) -> str:
    if name.startswith("monitor_"):
        return f"monitor/{name[8:]}"
    if name.endswith("_mi"):
        return f"mi/{name[:-3]}"
    if name.startswith("prior_"):
        return f"prior/{name[6:]}"
    return f"loss/{name[:-5] if name.endswith('_loss') else 'total'}"


class _TrainingClock(keras.callbacks.Callback):
    """Wall time trained by the run, summed over resumes; stops at the time budget.

    The time counts from before `fit` (dataset start-up and tracing included) and
    continues from what the restored checkpoint's step had trained.
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


class _CheckpointEvery(keras.callbacks.Callback):
    """Saves every `every` steps and at the end of every epoch, then records the
    time trained up to the saved step (chief only: `model_dir` is None elsewhere)."""

    def __init__(self, store: CheckpointStore, every: int, clock: _TrainingClock,
                 model_dir: str | None):
        super().__init__()
        self.store, self.every, self.clock, self.model_dir = store, every, clock, model_dir
        self.last_saved = None

    def _save(self):
        step = _global_step(self.model)
        if step != self.last_saved:
            self.store.save(checkpoint_number=step)
            self.last_saved = step
            if self.model_dir:
                model_dir_lib.record_trained_seconds(self.model_dir, step, self.clock.trained_seconds())

    def on_train_batch_end(self, batch, logs=None):
        if _global_step(self.model) % self.every == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


class _KillPoint(keras.callbacks.Callback):
    """Fault injection point "train.step_end": a step trained, its checkpoint not yet written."""

    def on_train_batch_end(self, batch, logs=None):
        kill_point("train.step_end")


class _StopOnSigterm(keras.callbacks.Callback):
    """On SIGTERM, finishes the current step and stops; the epoch-end checkpoint
    (`_CheckpointEvery`) then saves exactly that step."""

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


class _ScalarLogger(keras.callbacks.Callback):
    """TensorBoard scalars at the global step: losses, MI, prior game, lr, images/s.

    Batch-level values are the running means of the current epoch (Keras' trackers).
    """

    def __init__(self, log_dir: str | None, every: int, global_batch_size: int):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.every, self.global_batch_size = every, global_batch_size
        self.images_per_second = None
        self._tick = None

    def on_train_begin(self, logs=None):
        self._tick = (time.perf_counter(), _global_step(self.model))

    def on_train_batch_end(self, batch, logs=None):
        step = _global_step(self.model)
        if step % self.every:
            return
        now = time.perf_counter()
        then, then_step = self._tick
        if step > then_step:
            self.images_per_second = (step - then_step) * self.global_batch_size / (now - then)
        self._tick = (now, step)
        self._write(logs, step, "")

    def on_epoch_end(self, epoch, logs=None):
        self._write(logs, _global_step(self.model), "epoch_")

    def _write(self, logs, step, prefix):
        if self.writer is None or not logs:
            return
        with self.writer.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(prefix + _metric_tag(name), float(value))
            lr = self.model.optimizer.learning_rate
            tf.summary.scalar(prefix + "optimizer/learning_rate", float(lr.numpy() if hasattr(lr, "numpy") else lr))
            if self.images_per_second is not None:
                tf.summary.scalar(prefix + "speed/images_per_second", self.images_per_second)
        self.writer.flush()


def _check_resumable(config: TrainConfig) -> None:
    """Refuses to continue a run in model_dir with different run-defining settings."""
    saved_path = os.path.join(config.model_dir, "config.json")
    if not os.path.exists(saved_path):
        return
    with open(saved_path, encoding="utf-8") as f:
        saved = TrainConfig.from_json(f.read(), model_dir=config.model_dir)
    conflicts = config.resume_conflicts(saved)
    if conflicts:
        raise ConfigError(
            f"--model_dir={config.model_dir} holds a run with other settings, which this run would "
            "resume from:\n  " + "\n  ".join(conflicts) + "\nUse a new --model_dir, the run's "
            "own settings (its flags.txt works as a --flagfile), or --start_over to move the old "
            "run aside and train from step 0."
        )


def _prepare_source(config: TrainConfig) -> pipeline.ImageSource:
    source = pipeline.load_source(config.dataset, config.train_split, config.data_dir,
                                  config.manual_dir, config.download)
    if config.folder is not None:  # every file decoded once: unusable ones stop the run or are skipped
        source = pipeline.usable_images(source, config.channels, skip_bad=config.skip_corrupt)
    if source.num_examples == 0:
        raise pipeline.DataError(f"--dataset={config.dataset} split {config.train_split!r} has no images.")
    # Smaller images (28x28 MNIST-like data) are resized up, not refused: no encoder
    # exists for every size, and evaluation and serving resize them up the same way.
    pipeline.log_if_enlarged(source, config.channels, config.image_size,
                             random_crop=config.random_crop, encoder=config.encoder)
    return source


def build_model(config: TrainConfig, monitor_classes: int | None = None) -> DeepInfoMax:
    """The compiled DeepInfoMax model of `config` (call inside the strategy's scope).

    `monitor_classes` switches the online monitor on (labelled data, config.monitor).
    """
    encoder = build_encoder(config.encoder, channels=config.channels, y_units=config.y_units)
    model = DeepInfoMax(
        encoder, estimator=config.estimator, alpha=config.alpha, beta=config.beta,
        gamma=config.gamma, mi_units=config.mi_units, local_critic=config.local_critic,
        negatives=config.negatives, gradient_penalty_weight=config.gradient_penalty_weight,
        seed=config.seed,
        monitor_classes=monitor_classes if config.monitor else None,
    )
    model.compile(default_optimizer(config.learning_rate), default_optimizer(config.learning_rate))
    return model


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
        ConfigError, pipeline.DataError: before any training, for bad settings or data,
            a model_dir with another run's settings, or one that cannot be written.
        ModelDirBusy: another process is training in model_dir.
        CheckpointError: a checkpoint could not be written (earlier ones are kept),
            or none of the run's checkpoints can be read.
        NonFiniteError: a term or gradient became NaN/Inf; the last checkpoint is kept.
        Preempted: SIGTERM; the current step was saved.
    """
    config.check_paths()
    use_precision(config.mixed_precision, config.force_mixed_precision)
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"--batch_size={config.batch_size} must be divisible by the number of "
                          f"replicas ({replicas}).")
    chief = is_chief(strategy)
    if not chief:  # only the chief writes in model_dir, so only it takes the lock
        return _train_in(config, strategy, chief, extra_files, start_over)
    model_dir_lib.check_writable(config.model_dir)
    with model_dir_lib.ModelDirLock(config.model_dir):
        if start_over:
            moved_to = model_dir_lib.start_over(config.model_dir)
            if moved_to:
                logging.warning("--start_over: moved the previous run in %s to %s.",
                                config.model_dir, moved_to)
        removed = model_dir_lib.remove_leftovers(config.model_dir)
        removed += remove_checkpoint_leftovers(os.path.join(config.model_dir, "checkpoints"))
        if removed:
            logging.info("Removed %d temporary file(s) left by an interrupted run: %s",
                         len(removed), ", ".join(removed))
        return _train_in(config, strategy, chief, extra_files, start_over)


def _train_in(config: TrainConfig, strategy: tf.distribute.Strategy, chief: bool,
              extra_files: dict[str, str] | None, start_over: bool) -> TrainResult:
    """`train` once the chief owns model_dir (or on a non-chief worker)."""
    if not start_over:
        _check_resumable(config)
    source = _prepare_source(config)
    steps_per_epoch = source.num_examples // config.batch_size
    if steps_per_epoch == 0:
        raise pipeline.DataError(
            f"--dataset={config.dataset} split {config.train_split!r} has {source.num_examples} "
            f"images, fewer than one batch (--batch_size={config.batch_size})."
        )
    if config.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    total_steps = config.epochs * steps_per_epoch

    labels.check_labels(config.model_dir, source.label_names, config.dataset)
    checkpoint_dir = os.path.join(config.model_dir, "checkpoints")
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
    start_step = _global_step(model)
    if restored:
        logging.info("Resuming from %s at step %d of %d.", restored, start_step, total_steps)
    budget = config.time_budget_minutes * 60 if config.time_budget_minutes else None
    if budget is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ConfigError(MULTI_WORKER_TIME_BUDGET)  # --strategy=auto found a cluster
    trained_before = model_dir_lib.trained_seconds_at(config.model_dir, start_step) if start_step else 0.0
    if trained_before is None:
        if budget is not None:
            logging.warning("No training time is recorded for step %d (a run from before "
                            "--time_budget_minutes existed): counting its time as 0.", start_step)
        trained_before = 0.0
    if chief:
        if start_step < total_steps:
            model_dir_lib.check_free_space(config.model_dir, checkpoint_bytes(model))
        _write_run_file(os.path.join(config.model_dir, "config.json"), config.to_json())
        _write_run_file(os.path.join(config.model_dir, labels.LABELS_FILE),
                        labels.labels_json(source.label_names))
        for name, text in (extra_files or {}).items():
            _write_run_file(os.path.join(config.model_dir, name), text)

    clock = _TrainingClock(trained_before, budget)
    tick = clock.started
    logger = _ScalarLogger(os.path.join(config.model_dir, "logs", "train") if chief else None,
                           config.log_every, config.batch_size)
    # The kill point and the stop callback run before the checkpoint callback:
    # a step is killed before its save, and the stop request of a step is seen
    # before that epoch's final save.
    stopper = _StopOnSigterm()
    callbacks = [_KillPoint(), stopper, clock,
                 _CheckpointEvery(store, config.checkpoint_every, clock, config.model_dir if chief else None),
                 logger]
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Workers receive signals independently and would stop at different steps,
        # deadlocking the collectives: rely on resuming from the last checkpoint.
        callbacks.remove(stopper)
    logs = {}
    if start_step >= total_steps:
        logging.info("Run in %s already finished (%d steps): nothing to train.", config.model_dir, start_step)
    elif clock.budget_reached:
        logging.info("Run in %s has trained %.1f min, its whole --time_budget_minutes=%g: nothing "
                     "to train.", config.model_dir, trained_before / 60, config.time_budget_minutes)
    else:
        try:
            logs = _fit_from(model, strategy, source, config, steps_per_epoch, start_step, callbacks,
                             stop=lambda: stopper.requested or clock.budget_reached)
        except NonFiniteError as error:
            logged = {m.name for m in model.metrics}
            named = ", ".join(f"{_metric_tag(t)} ({t})" if t in logged else t for t in error.terms)
            raise NonFiniteError(
                f"Training stopped at step {error.step} of {total_steps}: NaN or Inf "
                f"in {named}. No weight of that step was applied or saved; the last checkpoint "
                f"({store.latest_checkpoint or 'none'}) is intact. Lower --learning_rate or check "
                "the data, then rerun to resume from it.", step=error.step, terms=error.terms,
            ) from None
    seconds = time.perf_counter() - tick
    end_step = _global_step(model)
    if stopper.requested:
        raise Preempted(
            f"Stopped by SIGTERM at step {end_step} of {total_steps}; checkpoint "
            f"{store.latest_checkpoint} holds it. Rerun the same command to resume."
        )
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)

    export_path = None
    if config.export_dir and chief:
        from dim_tf.serving.export import export_encoder, run_assets  # export follows training

        export_path = export_encoder(model.encoder, config.export_dir,
                                     extra_assets=run_assets(config.model_dir, end_step))
    trained = end_step - start_step
    result = TrainResult(
        model_dir=config.model_dir, total_steps=total_steps, start_step=start_step,
        end_step=end_step, seconds=seconds, trained_seconds=clock.trained_seconds(),
        stopped_by_time_budget=clock.budget_reached and end_step < total_steps,
        images_per_second=(trained * config.batch_size / seconds) if trained else None,
        metrics={k: float(v) for k, v in logs.items()},
        skipped_images=source.corrupt, export_path=export_path,
    )
    if chief:
        _write_run_file(os.path.join(config.model_dir, "summary.json"),
                        json.dumps(dataclasses.asdict(result), indent=2))
    return result


def _fit_from(model, strategy, source, config, steps_per_epoch, start_step, callbacks,
              stop=lambda: False) -> dict:
    """Runs model.fit from `start_step` to the end, finishing a partial epoch first
    (unless `stop()` became true in it)."""

    def dataset_from(step):
        def fn(context):
            return pipeline.training_dataset(
                source, global_batch_size=config.batch_size, steps_per_epoch=steps_per_epoch,
                start_step=step, seed=config.seed, image_size=config.image_size,
                channels=config.channels, random_crop=config.random_crop,
                random_flip=config.random_flip, shuffle_buffer=config.shuffle_buffer,
                input_context=context,
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
