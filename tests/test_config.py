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
