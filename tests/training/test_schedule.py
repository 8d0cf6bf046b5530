"""The learning-rate schedule (dim_tf/training/schedule.py) and the run it shapes.

The formula against a NumPy reference, the constant rate left exactly as it was,
serialisation, the length measured from the throughput (a simulated clock makes
it exact), schedule.json, resuming, and the run ending at the schedule's end.
End-to-end runs here are in-process `train()` calls on 32 generated images.
"""

import dataclasses
import glob
import json
import math
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf.config import SCHEDULE_FILE, TrainConfig
from dim_tf.errors import DamagedRunFileError, Preempted
from dim_tf.training import callbacks as callbacks_lib
from dim_tf.training import run as run_lib
from dim_tf.training import schedule as schedule_lib
from dim_tf.training.optimizers import default_optimizer
from dim_tf.training.schedule import WarmupThenDecay
from tests.training.synthetic import write_image_folder

PEAK = 1e-3


def reference_rate(step, total, decay, warmup=0, final=0.0, peak=PEAK):
    """The schedule's formula, in NumPy float64 (see WarmupThenDecay's docstring)."""
    rise = min(step / warmup, 1.0) if warmup else 1.0
    if not total:
        return peak * rise
    p = np.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * p)) if decay == "cosine" else 1 - p
    return peak * rise * (final + (1 - final) * shape)


# ------------------------------------------------------------------ the formula


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warmup_then_decay_to_the_final_fraction_at_the_last_step(decay):
    schedule = WarmupThenDecay(PEAK, decay, warmup_steps=10, final_lr_fraction=0.1, total_steps=110)
    rate = lambda step: float(schedule(tf.constant(step, tf.int64)))  # noqa: E731
    assert rate(0) == 0.0                                    # warm-up from 0 ...
    assert rate(5) == pytest.approx(0.5 * PEAK, rel=1e-6)    # ... linearly ...
    assert rate(10) == pytest.approx(PEAK, rel=1e-6)         # ... to the peak at step W
    middle = 0.1 + 0.9 * 0.5                                 # halfway: cos(pi/2) = 0, 1 - 1/2
    assert rate(60) == pytest.approx(middle * PEAK, rel=1e-6)
    assert rate(110) == pytest.approx(0.1 * PEAK, rel=1e-6)  # f * peak at step T
    assert rate(500) == pytest.approx(0.1 * PEAK, rel=1e-6)  # and stays there
    for step in (1, 3, 9, 11, 30, 59, 61, 85, 109):
        assert rate(step) == pytest.approx(reference_rate(step, 110, decay, 10, 0.1), rel=1e-5)
    # A quarter of the way: cosine is still high, linear already 3/4.
    quarter = {"cosine": 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, "linear": 0.1 + 0.9 * 0.75}
    assert rate(35) == pytest.approx(quarter[decay] * PEAK, rel=1e-6)


def test_without_warmup_or_length_the_rate_is_the_peak_until_the_length_is_fixed():
    schedule = WarmupThenDecay(PEAK, "cosine", warmup_steps=4)
    assert schedule.length is None
    assert [float(schedule(s)) for s in (0, 2, 4, 1000)] == pytest.approx(
        [0.0, PEAK / 2, PEAK, PEAK], rel=1e-6)
    schedule.fix_length(104)  # the decay is computed from the fixed length: at step 54, halfway
    assert schedule.length == 104
    assert float(schedule(54)) == pytest.approx(PEAK / 2, rel=1e-6)
    assert float(WarmupThenDecay(PEAK, "linear", total_steps=10)(0)) == pytest.approx(PEAK)


@pytest.mark.parametrize("kwargs, message", [
    (dict(decay="step"), "decay must be one of"),
    (dict(decay="cosine", warmup_steps=-1), "must be >= 0"),
    (dict(decay="cosine", final_lr_fraction=1.5), "final_lr_fraction"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmupThenDecay(PEAK, **kwargs)


def test_constant_is_the_plain_float_and_the_optimiser_is_unchanged():
    config = TrainConfig(model_dir="unused", learning_rate=2e-4)
    rate = schedule_lib.learning_rate_for(config)
    assert type(rate) is float and rate == 2e-4
    optimizer = default_optimizer(rate)
    assert isinstance(optimizer._learning_rate, keras.Variable)  # as before: a tracked variable
    assert schedule_lib.schedule_of(optimizer) is None
    unnamed = lambda o: {k: v for k, v in o.get_config().items() if k != "name"}  # noqa: E731
    assert unnamed(optimizer) == unnamed(default_optimizer(2e-4))


def test_a_decaying_config_gives_its_schedule_and_the_optimiser_uses_it():
    config = TrainConfig(model_dir="unused", learning_rate=PEAK, lr_schedule="linear",
                         warmup_steps=3, final_lr_fraction=0.2)
    schedule = schedule_lib.learning_rate_for(config)
    assert isinstance(schedule, WarmupThenDecay) and schedule.length is None
    assert (schedule.decay, schedule.warmup_steps, schedule.final_lr_fraction) == ("linear", 3, 0.2)
    # Keras keeps the schedule where `schedule_of` reads it (a private attribute:
    # this fails if Keras moves it), also inside a loss-scale optimiser.
    optimizer = default_optimizer(schedule)
    assert schedule_lib.schedule_of(optimizer) is schedule
    assert schedule_lib.schedule_of(keras.optimizers.LossScaleOptimizer(optimizer)) is schedule
    variable = tf.Variable([1.0, 2.0])
    optimizer.build([variable])
    schedule.fix_length(13)

    @tf.function
    def step():
        optimizer.apply_gradients([(tf.ones(2), variable)])

    for _ in range(5):  # traced once: the length and the step are read live
        step()
    assert float(optimizer.learning_rate) == pytest.approx(reference_rate(5, 13, "linear", 3, 0.2))


def test_schedule_round_trips_through_keras_serialisation():
    schedule = WarmupThenDecay(PEAK, "cosine", warmup_steps=7, final_lr_fraction=0.05,
                               total_steps=300)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(again, WarmupThenDecay) and again.get_config() == schedule.get_config()
    assert again.length == 300 and again.total_steps is not schedule.total_steps
    optimizer = keras.optimizers.Adam.from_config(default_optimizer(schedule).get_config())
    restored = schedule_lib.schedule_of(optimizer)
    for step in (0, 3, 7, 150, 300):
        assert float(restored(step)) == float(schedule(step))


def test_schedule_length_is_not_part_of_a_checkpoint(tmp_path):
    """The run records it in schedule.json; checkpoints stay as they were."""
    variable = tf.Variable(1.0)
    optimizer = default_optimizer(WarmupThenDecay(PEAK, "cosine", total_steps=9))
    optimizer.build([variable])
    names = {n for n, _ in tf.train.list_variables(
        tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / "ckpt")))}
    assert not any("total_steps" in n or "learning_rate" in n for n in names)


# ------------------------------------------------------- length and schedule.json


def test_length_from_throughput():
    # 300 steps done, 60 s of 600 trained, 5 steps/s: 540 s x 5 more.
    assert schedule_lib.length_from_throughput(300, 5.0, 60.0, 600.0) == 300 + 2700
    assert schedule_lib.length_from_throughput(300, 5.0, 700.0, 600.0) == 300  # time is up


def test_record_round_trips_and_a_damaged_one_is_named(tmp_path):
    assert schedule_lib.read_record(str(tmp_path)) is None
    record = schedule_lib.ScheduleRecord("cosine", 3000, "time", 300, 5.0, 600.0)
    schedule_lib.write_record(str(tmp_path), record)
    assert schedule_lib.read_record(str(tmp_path)) == record
    assert json.loads((tmp_path / SCHEDULE_FILE).read_text())["total_steps"] == 3000
    (tmp_path / SCHEDULE_FILE).write_text('{"total_steps": "many"')
    with pytest.raises(DamagedRunFileError, match=SCHEDULE_FILE):
        schedule_lib.read_record(str(tmp_path))


class SimulatedClock(callbacks_lib.TrainingClock):
    """A training clock on which each step takes SECONDS_PER_STEP and nothing else
    takes time: calibrated lengths and time budgets become exact step counts."""

    SECONDS_PER_STEP = 0.5

    def __init__(self, trained_before, budget_seconds):
        self.steps = 0
        super().__init__(trained_before, budget_seconds,
                         now=lambda: self.steps * self.SECONDS_PER_STEP)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1  # the first callback to see the step's end reads the time
        super().on_train_batch_end(batch, logs)


class _Model:
    """What the callbacks use of a model in `fit`."""

    def __init__(self):
        self.optimizer = keras.optimizers.Adam()
        self.stop_training = False

    def step(self):
        self.optimizer.iterations.assign_add(1)


def test_calibration_times_the_steps_fixes_the_length_records_it_and_stops_there(tmp_path):
    schedule = WarmupThenDecay(PEAK, "cosine", warmup_steps=2)
    clock = SimulatedClock(trained_before=0.0, budget_seconds=None)
    end = callbacks_lib.ScheduleLength(schedule, clock, epoch_steps=10_000, schedule_seconds=30.0,
                                       calibration_steps=20, model_dir=str(tmp_path))
    model = _Model()
    for callback in (clock, end):
        callback.set_model(model)
        callback.on_train_begin()
    # Step 2 (the first tenth) is the mark; steps 2-20 take 9 s: 2 steps/s. At step
    # 20 the clock reads 10 s: 20 s left hold 40 steps, so the schedule ends at 60.
    for expected_step in range(1, 61):
        model.step()
        clock.on_train_batch_end(expected_step)
        end.on_train_batch_end(expected_step)
        assert schedule.length == (None if expected_step < 20 else 60)
        assert model.stop_training == (expected_step == 60)
    assert end.reached
    assert schedule_lib.read_record(str(tmp_path)) == schedule_lib.ScheduleRecord(
        "cosine", 60, "time", fixed_at_step=20, steps_per_second=2.0, schedule_seconds=30.0)


def test_calibration_keeps_the_end_of_the_epochs_if_it_comes_first():
    schedule = WarmupThenDecay(PEAK, "linear")
    clock = SimulatedClock(trained_before=0.0, budget_seconds=None)
    end = callbacks_lib.ScheduleLength(schedule, clock, epoch_steps=40, schedule_seconds=3600.0,
                                       calibration_steps=10, model_dir=None)
    model = _Model()
    for callback in (clock, end):
        callback.set_model(model)
    for step in range(1, 11):
        model.step()
        clock.on_train_batch_end(step)
        end.on_train_batch_end(step)
    assert schedule.length == 40 and not end.reached


# --------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "images"
    write_image_folder(root, {"train": 32})  # batch 8: 4 steps per epoch
    return root


@pytest.fixture
def wired(monkeypatch):
    """`build_model` with both players on `learning_rate_for(config)`, as
    dim_model.build_model wires it (a no-op where it already does)."""
    built = run_lib.build_model

    def build_model(config, monitor_classes=None):
        model = built(config, monitor_classes)
        if config.lr_schedule != "constant" and schedule_lib.schedule_of(model.optimizer) is None:
            rate = schedule_lib.learning_rate_for(config)
            model.compile(default_optimizer(rate), default_optimizer(rate))
        return model

    monkeypatch.setattr(run_lib, "build_model", build_model)


@pytest.fixture
def simulated_time(monkeypatch):
    monkeypatch.setattr(run_lib.callbacks_lib, "TrainingClock", SimulatedClock)


def tiny_config(image_tree, model_dir, **overrides):
    values = dict(model_dir=str(model_dir), dataset=f"folder:{image_tree}", encoder="basic32x32",
                  mi_units=16, batch_size=8, epochs=3, verbose=0, learning_rate=1e-3, seed=5,
                  checkpoint_every=2, log_every=1, monitor=False, lr_schedule="cosine",
                  warmup_steps=2, final_lr_fraction=0.1)
    values.update(overrides)
    return TrainConfig(**values)


def final_tensors(model_dir, step):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", f"ckpt-{step}"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def assert_same_tensors(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-6, err_msg=name)


def logged_scalars(model_dir, tag):
    """{step: value} of a TensorBoard scalar of the run's training logs."""
    values = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "logs", "train", "events.out.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def sigterm_at_step(monkeypatch, step):
    """SIGTERM this process when training reaches `step` (as a preemption notice would)."""
    reached = []

    def kill_point(name):
        if name == "train.step_end":
            reached.append(name)
            if len(reached) == step:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(callbacks_lib, "kill_point", kill_point)


@pytest.mark.e2e  # whole training runs, in-process
def test_epochs_schedule_resumes_exactly_and_logs_the_scheduled_rate(
        tmp_path, image_tree, wired, monkeypatch, caplog):
    steps = 12
    straight = tiny_config(image_tree, tmp_path / "straight")
    result = run_lib.train(straight)
    assert (result.end_step, result.total_steps, result.stopped_by) == (steps, steps, "epochs")
    assert schedule_lib.read_record(straight.model_dir) == schedule_lib.ScheduleRecord(
        "cosine", steps, "epochs", fixed_at_step=0)
    # TensorBoard's learning rate at step s is the schedule's value there: the rate of
    # the update that makes the step count s + 1.
    logged = logged_scalars(straight.model_dir, "optimizer/learning_rate")
    assert sorted(logged) == list(range(1, steps + 1))
    for step, value in logged.items():
        assert value == pytest.approx(reference_rate(step, steps, "cosine", 2, 0.1), rel=1e-5)

    interrupted = dataclasses.replace(straight, model_dir=str(tmp_path / "interrupted"))
    sigterm_at_step(monkeypatch, 6)  # once: the resumed run counts on from 6
    with pytest.raises(Preempted, match="at step 6 of 12"):
        run_lib.train(interrupted)
    resumed = run_lib.train(interrupted)
    assert (resumed.start_step, resumed.end_step, resumed.stopped_by) == (6, steps, "epochs")
    assert_same_tensors(final_tensors(interrupted.model_dir, steps),
                        final_tensors(straight.model_dir, steps))
    assert logged_scalars(interrupted.model_dir, "optimizer/learning_rate") == pytest.approx(logged)
    # More --epochs later: the schedule, fixed by the epochs the run started with, has
    # ended; nothing is trained (a new schedule needs --start_over).
    caplog.set_level("INFO", logger="absl")  # another test may have lowered absl's verbosity
    longer = run_lib.train(dataclasses.replace(straight, epochs=5))
    assert (longer.start_step, longer.end_step, longer.total_steps) == (steps, steps, steps)
    assert longer.stopped_by == "lr_schedule"
    assert "fixed at 12 steps (schedule.json) when it started; --epochs now plans 20" in caplog.text
    assert "already finished its learning-rate schedule (12 steps" in caplog.text


@pytest.mark.e2e
def test_a_60_minute_schedule_stopped_at_15_continues_to_30_and_60_then_ends(
        tmp_path, image_tree, wired, simulated_time, caplog):
    """On the simulated clock (0.5 s a step) --schedule_minutes=0.5 plays the hour
    (60 steps). The length is measured once, by the first run that gets through
    --schedule_calibration_steps, and kept by every resume."""
    caplog.set_level("INFO", logger="absl")  # another test may have lowered absl's verbosity
    config = tiny_config(image_tree, tmp_path / "run", epochs=100, checkpoint_every=100,
                         schedule_minutes=0.5, schedule_calibration_steps=10)
    record_file = tmp_path / "run" / SCHEDULE_FILE

    def train_for(seconds):
        caplog.clear()
        return run_lib.train(dataclasses.replace(config, time_budget_minutes=seconds / 60))

    # Stopped before its throughput is measured (as a crash would): nothing recorded.
    early = train_for(1.9)
    assert (early.end_step, early.stopped_by, early.total_steps) == (4, "time_budget", 400)
    assert not record_file.exists()
    # "15 minutes": this run measures steps 5-14 (2 steps/s, 7 s trained at step 14):
    # the schedule ends at 14 + (30 - 7) x 2 = 60.
    first = train_for(7.5)
    assert (first.start_step, first.end_step, first.stopped_by) == (4, 15, "time_budget")
    assert first.total_steps == 60
    record = schedule_lib.read_record(config.model_dir)
    assert record == schedule_lib.ScheduleRecord("cosine", 60, "time", fixed_at_step=14,
                                                 steps_per_second=2.0, schedule_seconds=30.0)
    assert "2.00 steps/s over steps 5-14" in caplog.text
    # "30 minutes": the recorded length is kept; nothing is measured again.
    second = train_for(15)
    assert (second.start_step, second.end_step, second.stopped_by) == (15, 30, "time_budget")
    assert "steps/s over steps" not in caplog.text
    # "60 minutes": the schedule's last step ends the run, saved in its checkpoint.
    third = train_for(30)
    assert (third.start_step, third.end_step, third.total_steps) == (30, 60, 60)
    assert third.stopped_by == "lr_schedule" and not third.stopped_by_time_budget
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-60")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["end_step"], summary["stopped_by"]) == (60, "lr_schedule")
    # A larger budget: the schedule is complete, nothing is trained.
    more = train_for(45)
    assert (more.start_step, more.end_step, more.stopped_by) == (60, 60, "lr_schedule")
    assert "already finished its learning-rate schedule (60 steps" in caplog.text
    assert schedule_lib.read_record(config.model_dir) == record
    # Every step's rate, over the five runs: warm-up and peak until the length was
    # fixed at step 14, then the cosine of the 60-step schedule.
    logged = logged_scalars(config.model_dir, "optimizer/learning_rate")
    assert sorted(logged) == list(range(1, 61))
    for step, value in logged.items():
        expected = reference_rate(step, 60 if step >= 14 else 0, "cosine", 2, 0.1)
        assert value == pytest.approx(expected, rel=1e-5), step
