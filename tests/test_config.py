"""TrainConfig validation and its agreement with the library."""

import pytest

from dim_tf import config as config_lib
from dim_tf.models.encoders import ENCODERS, encoder_image_size
from dim_tf.objectives.estimators import ESTIMATORS
from dim_tf.training.strategy import STRATEGIES


def test_choices_agree_with_the_library():
    # config.py avoids importing TensorFlow, so it repeats these names.
    assert config_lib.ENCODERS == ENCODERS
    assert config_lib.ESTIMATORS == ESTIMATORS
    assert config_lib.STRATEGIES == STRATEGIES
    assert all(config_lib.ENCODER_IMAGE_SIZE[n] == encoder_image_size(n) for n in ENCODERS)


def test_defaults_are_the_papers_dim_l(tmp_path):
    config = config_lib.TrainConfig(model_dir=str(tmp_path))
    assert (config.alpha, config.beta, config.gamma) == (0.0, 1.0, 0.1)
    assert (config.estimator, config.mi_units, config.batch_size) == ("jsd", 2048, 64)
    assert config.learning_rate == 1e-4 and config.image_size == 32


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"epochs": 0}, "--epochs"),
        ({"steps_per_epoch": 0}, "--steps_per_epoch"),
        ({"time_budget_minutes": -1.0}, "--time_budget_minutes"),
        ({"time_budget_minutes": 5.0, "strategy": "multi_worker"}, "--time_budget_minutes"),
        ({"time_budget_minutes": float("nan")}, "--time_budget_minutes"),
        ({"learning_rate": -1.0}, "--learning_rate"),
        ({"gamma": float("nan")}, "--gamma"),
        ({"channels": 4}, "--channels"),
        ({"negatives": "all"}, "--negatives"),
        ({"train_split": "validation", "dataset": "sample:cifar10"}, "--train_split"),
        ({"manual_dir": "/no/such/dir"}, "--manual_dir"),
        ({"views": 0}, "--views"),
        ({"views": config_lib.MAX_VIEWS + 1}, "--views"),
        ({"crop_padding": -1}, "--crop_padding"),
        ({"crop_min_area": 0.0}, "--crop_min_area"),
        ({"crop_min_area": 1.5}, "--crop_min_area"),
        ({"color_jitter": -0.1}, "--color_jitter"),
        ({"color_jitter_probability": 1.1}, "--color_jitter_probability"),
        ({"grayscale_probability": float("nan")}, "--grayscale_probability"),
        ({"score_clip": -1.0}, "--score_clip"),
        ({"score_penalty": float("inf")}, "--score_penalty"),
        ({"lr_schedule": "step"}, "--lr_schedule"),
        ({"warmup_steps": -1}, "--warmup_steps"),
        ({"final_lr_fraction": 2.0}, "--final_lr_fraction"),
        ({"schedule_minutes": 0.0}, "--schedule_minutes"),
        ({"schedule_minutes": 5.0, "strategy": "multi_worker"}, "--schedule_minutes"),
        ({"schedule_calibration_steps": 1}, "--schedule_calibration_steps"),
    ],
)
def test_each_invalid_value_names_its_flag(tmp_path, overrides, flag):
    with pytest.raises(config_lib.ConfigError, match=flag):
        config_lib.TrainConfig(model_dir=str(tmp_path), **overrides).check_paths()


def test_json_round_trip(tmp_path):
    config = config_lib.TrainConfig(model_dir=str(tmp_path), estimator="nce", epochs=3)
    assert config_lib.TrainConfig.from_json(config.to_json()) == config
    moved = config_lib.TrainConfig.from_json(config.to_json(), model_dir="elsewhere")
    assert moved.model_dir == "elsewhere" and moved.estimator == "nce"


def test_the_paper_setting_has_no_augmentation_views_or_schedule(tmp_path):
    config = config_lib.TrainConfig(model_dir=str(tmp_path))
    assert config.views == 1 and not config.augmentation.enabled
    assert (config.score_clip, config.score_penalty, config.lr_schedule) == (0.0, 0.0, "constant")
    assert config.schedule_seconds is None


def test_augmentation_gathers_its_fields(tmp_path):
    config = config_lib.TrainConfig(model_dir=str(tmp_path), random_crop=True, crop_padding=2,
                                    color_jitter=0.5, grayscale_probability=0.2, shared_flip=True)
    assert config.augmentation == config_lib.Augmentation(
        random_crop=True, crop_padding=2, color_jitter=0.5, grayscale_probability=0.2,
        shared_flip=True)
    assert config.augmentation.enabled


@pytest.mark.parametrize("schedule, budget, minutes, seconds", [
    ("constant", 60.0, None, None),  # a constant rate needs no length
    ("cosine", None, None, None),  # decays over --epochs
    ("cosine", 60.0, None, 3600.0),  # over the time budget
    ("linear", 15.0, 60.0, 3600.0),  # over --schedule_minutes, stopped earlier by the budget
])
def test_schedule_seconds(tmp_path, schedule, budget, minutes, seconds):
    config = config_lib.TrainConfig(model_dir=str(tmp_path), lr_schedule=schedule,
                                    time_budget_minutes=budget, schedule_minutes=minutes)
    assert config.schedule_seconds == seconds


def test_new_run_defining_settings_are_checked_on_resume(tmp_path):
    saved = config_lib.TrainConfig(model_dir=str(tmp_path), views=2, color_jitter=0.5)
    conflicts = config_lib.TrainConfig(model_dir=str(tmp_path)).resume_conflicts(saved)
    assert any("views" in c for c in conflicts) and any("color_jitter" in c for c in conflicts)
