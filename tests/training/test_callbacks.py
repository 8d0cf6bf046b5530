"""The training run's callbacks on their own: tags, the time budget, SIGTERM, the
learning rate logged (the schedule's own callback is in test_schedule.py).

The run uses them end to end in tests/test_train_cli.py and
tests/faults/test_training_faults.py.
"""

import glob
import os
import signal

import keras
import pytest
import tensorflow as tf

from dim_tf.training.callbacks import ScalarLogger, StopOnSigterm, TrainingClock, metric_tag
from dim_tf.training.schedule import WarmupThenDecay


def _fitting_model():
    model = keras.Sequential()
    model.stop_training = False  # as `fit` sets it
    return model


def test_metric_tags_group_the_training_logs():
    names = ("loss", "local_loss", "global_loss", "local_mi", "global_mi", "prior_loss",
             "prior_disc_loss", "prior_disc_accuracy", "monitor_y_accuracy")
    assert {name: metric_tag(name) for name in names} == {
        "loss": "loss/total", "local_loss": "loss/local", "global_loss": "loss/global",
        "local_mi": "mi/local", "global_mi": "mi/global", "prior_loss": "prior/loss",
        "prior_disc_loss": "prior/disc_loss", "prior_disc_accuracy": "prior/disc_accuracy",
        "monitor_y_accuracy": "monitor/y_accuracy"}


def test_training_clock_counts_on_from_the_restored_time_and_stops_at_the_budget():
    model = _fitting_model()
    clock = TrainingClock(trained_before=5.0, budget_seconds=3600.0)
    clock.set_model(model)
    assert not clock.budget_reached and 5.0 <= clock.trained_seconds() < 3600.0
    clock.on_train_batch_end(0)
    assert not clock.budget_reached and not model.stop_training
    clock.trained_before = 3600.0  # as if an hour had passed
    clock.on_train_batch_end(1)
    assert clock.budget_reached and model.stop_training
    assert TrainingClock(3600.0, 3600.0).budget_reached  # spent before training starts
    assert not TrainingClock(1e9, None).budget_reached   # no budget


def test_sigterm_finishes_the_step_then_stops_and_the_handler_is_restored():
    model = _fitting_model()
    stopper = StopOnSigterm()
    stopper.set_model(model)
    previous = signal.getsignal(signal.SIGTERM)
    stopper.on_train_begin()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.requested and not model.stop_training  # the step goes on
        stopper.on_train_batch_end(0)
        assert model.stop_training
    finally:
        stopper.on_train_end()
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.parametrize("rate", [2e-4, WarmupThenDecay(1e-3, "linear", warmup_steps=2,
                                                        total_steps=12)],
                         ids=["constant", "schedule"])
def test_logged_learning_rate_is_the_value_at_the_current_step(tmp_path, rate):
    model = _fitting_model()
    model.optimizer = keras.optimizers.Adam(rate)
    logger = ScalarLogger(str(tmp_path), every=1, global_batch_size=8)
    logger.set_model(model)
    logger.on_train_begin()
    model.optimizer.iterations.assign(7)
    logger.on_train_batch_end(6, {"loss": 1.0})
    [events] = glob.glob(str(tmp_path / "events.out.*"))
    logged = {(e.step, v.tag): float(tf.make_ndarray(v.tensor))
              for e in tf.compat.v1.train.summary_iterator(events) for v in e.summary.value}
    # The linear schedule at step 7: 1e-3 * (1 - (7 - 2) / (12 - 2)).
    expected = 2e-4 if isinstance(rate, float) else 5e-4
    assert logged[(7, "optimizer/learning_rate")] == pytest.approx(expected, rel=1e-6)
