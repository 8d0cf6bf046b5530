"""What the benchmark computes: FLOP counts against hand counts, its JSON record, bf16 dtypes."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf.benchmark import InputConfig, StepConfig, benchmark_input, benchmark_step, gemm_ceilings
from dim_tf.config import Augmentation
from dim_tf.flops import function_flops

REPO_ROOT = __file__.rsplit("/tests/", 1)[0]


def test_training_step_flops_of_a_small_model_match_a_hand_count():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(5, 3, padding="same"),
        keras.layers.Conv2D(4, 1),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images))
        return loss, tape.gradient(loss, model.trainable_variables)

    flops = function_flops(step, tf.TensorSpec([2, 8, 8, 3]))
    positions = 2 * 8 * 8
    conv1 = 2 * positions * 3 * 3 * 3 * 5  # 3x3 conv, 3 -> 5 channels
    conv2 = 2 * positions * 5 * 4          # 1x1 conv, 5 -> 4
    dense = 2 * 2 * 256 * 2                # [2, 256] x [256, 2]
    # Backward: every layer's weight gradient, and the input gradient of every layer
    # but the first (nothing needs the gradient with respect to the images).
    assert flops == {"Conv2D": conv1 + conv2, "Conv2DBackpropFilter": conv1 + conv2,
                     "Conv2DBackpropInput": conv2, "MatMul": 3 * dense}


def test_batched_products_and_einsum_are_counted_with_broadcasting():
    @tf.function
    def products(a, b, c):
        return tf.matmul(a, b, transpose_b=True), tf.einsum("nmc,kc->nmk", a[0], c)

    flops = function_flops(products, tf.TensorSpec([3, 4, 5, 6]), tf.TensorSpec([7, 6]),
                           tf.TensorSpec([2, 6]))
    assert flops == {"BatchMatMulV2": 2 * 3 * 4 * 5 * 6 * 7, "Einsum": 2 * 4 * 5 * 6 * 2}


def test_the_paper_step_costs_two_gflop_per_image_mostly_in_the_local_head():
    from dim_tf.config import TrainConfig
    from dim_tf.training.dim_model import build_model

    model = build_model(TrainConfig(model_dir="unused", mi_units=2048, batch_size=8, monitor=False))
    flops = function_flops(tf.function(model.train_step),
                           (tf.TensorSpec([8, 32, 32, 3]), tf.TensorSpec([8], tf.int64)))
    per_image = sum(flops.values()) / 8
    # The local head's mi_units x mi_units 1x1 convolution on the 8 x 8 local map, forward
    # and its two backward products: about 80% of the step.
    square_layer = 3 * 2 * 64 * 2048 * 2048
    assert 0.75 < square_layer / per_image < 0.85
    assert 1.9e9 < per_image < 2.1e9


def test_two_views_cost_two_encoder_passes_and_heads_per_source_image():
    """FLOP per source image with 2 views: twice the single view's (two encoder passes,
    the heads on both views, two view pairs of scores, the prior on both codes)."""
    from dim_tf.config import TrainConfig
    from dim_tf.training.dim_model import build_model

    per_image = {}
    for views in (1, 2):
        model = build_model(TrainConfig(model_dir="unused", mi_units=64, batch_size=8, monitor=False,
                                        views=views, estimator="nce"))
        shape = [8] + ([views] if views > 1 else []) + [32, 32, 3]
        flops = function_flops(tf.function(model.train_step),
                               (tf.TensorSpec(shape), tf.TensorSpec([8], tf.int64)))
        per_image[views] = sum(flops.values()) / 8
    assert per_image[2] == pytest.approx(2 * per_image[1], rel=1e-3)


def test_benchmark_feeds_views_and_score_stabilisation_to_the_step():
    record = benchmark_step(StepConfig(mi_units=16, batch_size=8, views=2, score_clip=10.0,
                                       score_penalty=0.05), steps=1, warmup=1, repeats=1)
    assert record["config"]["views"] == 2 and record["config"]["score_penalty"] == 0.05
    assert record["images_per_second"] > 0 and record["flop_per_image"] > 0
    # The step ran on [8, 2, 32, 32, 3] batches: twice the single view's work per image.
    single = benchmark_step(StepConfig(mi_units=16, batch_size=8), steps=1, warmup=1, repeats=1)
    assert record["flop_per_image"] == pytest.approx(2 * single["flop_per_image"], rel=1e-2)


def test_input_benchmark_streams_augmented_views(tmp_path):
    from tests.training.synthetic import write_image_folder

    write_image_folder(tmp_path, {"train": 8})
    augmentation = Augmentation(random_crop=True, random_flip=True, color_jitter=0.5,
                                grayscale_probability=0.2)
    record = benchmark_input(f"folder:{tmp_path}", batch_size=4, augmentation=augmentation, views=2,
                             steps=2, warmup=1, repeats=1)
    assert record["views"] == 2 and record["augmentation"]["color_jitter"] == 0.5
    assert record["images_per_second"] > 0
    json.dumps(record)


def test_input_flags_default_to_crops_and_flips_and_are_checked_as_training_checks_them():
    assert InputConfig().augmentation == Augmentation(random_crop=True, random_flip=True)
    from dim_tf.errors import ConfigError

    with pytest.raises(ConfigError, match="color_jitter"):
        InputConfig(color_jitter=-1.0).augmentation


@pytest.mark.e2e
def test_input_only_command_takes_views_and_the_crop_and_flip_flags(tmp_path):
    from tests.training.synthetic import write_image_folder

    write_image_folder(tmp_path, {"train": 8})
    out = subprocess.run(
        [sys.executable, "-m", "dim_tf.benchmark", "--input_only", f"--dataset=folder:{tmp_path}",
         "--batch_size=4", "--views=2", "--norandom_crop", "--random_flip", "--shared_flip",
         "--repeats=1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    assert record["views"] == 2
    assert record["augmentation"]["random_crop"] is False
    assert record["augmentation"]["random_flip"] is True and record["augmentation"]["shared_flip"] is True


def test_benchmark_record_has_every_field():
    ceilings = {"tensorflow_float32": 100.0, "numpy_float32": 400.0, "tensorflow_bfloat16": 200.0}
    record = benchmark_step(StepConfig(mi_units=16, batch_size=8), steps=1, warmup=1, repeats=2,
                            ceilings=ceilings)
    for key in ("images_per_second", "images_per_second_min", "images_per_second_max", "ms_per_step",
                "flop_per_image", "achieved_gflops", "gemm_gflops", "percent_of_best_float32_gemm",
                "peak_rss_mb", "cpu", "cpu_flags", "onednn_max_cpu_isa", "config"):
        assert key in record, key
    assert record["images_per_second_min"] <= record["images_per_second"] <= record["images_per_second_max"]
    achieved = record["achieved_gflops"]
    assert record["gemm_gflops"] == ceilings
    assert record["xla"] is False  # --jit_compile=auto, which the suite makes mean off
    # The headline is against the fastest float32 library, not TensorFlow's own matmul.
    assert record["best_float32_gemm"] == "numpy_float32"
    assert record["percent_of_best_float32_gemm"] == pytest.approx(achieved / 4)
    assert record["percent_of_tensorflow_float32_gemm"] == pytest.approx(achieved)
    assert record["percent_of_numpy_float32_gemm"] == pytest.approx(achieved / 4)
    assert record["percent_of_tensorflow_bfloat16_gemm"] == pytest.approx(achieved / 2)
    json.dumps(record)


def test_profiled_benchmark_reports_time_by_op_type(tmp_path):
    record = benchmark_step(StepConfig(mi_units=16, batch_size=8), steps=2, warmup=1, repeats=1,
                            profile_dir=str(tmp_path))
    assert record["precision"] == "float32"
    op_ms = record["op_ms_per_step"]
    assert "MatMul" in op_ms and all(ms >= 0 for ms in op_ms.values())
    assert list(op_ms.values()) == sorted(op_ms.values(), reverse=True)
    assert list(tmp_path.glob("**/*.xplane.pb"))  # the trace TensorBoard reads
    rates = record["gflops_by_op"]
    assert "MatMul" in rates
    for op, gflops in rates.items():
        flop_per_step = record["flop_by_op"][op] * 8
        assert gflops == pytest.approx(flop_per_step / (op_ms[op] / 1000) / 1e9, rel=0.01, abs=0.1)


def test_gemm_ceilings_are_positive_and_finite():
    ceilings = gemm_ceilings(size=256, repeats=2)
    assert sorted(ceilings) == ["numpy_float32", "tensorflow_bfloat16", "tensorflow_float32"]
    assert all(np.isfinite(g) and g > 0 for g in ceilings.values())


@pytest.mark.slow  # an XLA compilation; the compiled step itself is tested in tests/training/test_xla.py
def test_xla_step_is_timed_compiled():
    record = benchmark_step(StepConfig(mi_units=16, batch_size=8, jit_compile="on"), steps=1,
                            warmup=1, repeats=1)
    assert record["xla"] is True
    assert np.isfinite(record["images_per_second"]) and record["images_per_second"] > 0


@pytest.mark.e2e
def test_bfloat16_benchmark_keeps_estimator_outputs_in_float32():
    # A fresh process: the dtype policy is global.
    code = (
        "import keras, tensorflow as tf\n"
        "from dim_tf.config import TrainConfig\n"
        "from dim_tf.training.dim_model import build_model\n"
        "keras.config.set_dtype_policy('mixed_bfloat16')\n"
        "model = build_model(TrainConfig(model_dir='x', mi_units=16, batch_size=4, monitor=False,"
        " mixed_precision=True))\n"
        "logs = model.train_step((tf.random.uniform([4, 32, 32, 3], -1, 1), tf.zeros([4], tf.int64)))\n"
        "features = model.encoder(tf.zeros([1, 32, 32, 3]))\n"
        "print({k: v.dtype.name for k, v in logs.items()}, features['local'].dtype.name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, check=True).stdout.strip().splitlines()[-1]
    logs, local_dtype = out.rsplit(" ", 1)
    assert local_dtype == "bfloat16"
    assert "bfloat16" not in logs and "float32" in logs


def test_benchmark_reports_the_precision_that_ran(monkeypatch):
    """--mixed_precision on a CPU without bfloat16 units runs, and says it ran, float32."""
    from dim_tf.training import precision

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda *args, **kwargs: None)
    try:
        record = benchmark_step(StepConfig(mi_units=16, batch_size=8, mixed_precision=True),
                                steps=1, warmup=1, repeats=1)
    finally:
        keras.config.set_dtype_policy("float32")
    assert record["precision"] == "float32"
    assert record["config"]["mixed_precision"] is True
