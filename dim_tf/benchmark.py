r"""How fast does DIM train here, and how close is that to the machine's best matrix product?

    python -m dim_tf.benchmark                                  # the paper's DIM(L) step
    python -m dim_tf.benchmark --mixed_precision --mi_units=512
    python -m dim_tf.benchmark --suite                          # docs/performance.md's scaling table
    python -m dim_tf.benchmark --profile_dir=/tmp/dim_profile   # + time by op type, a trace for TensorBoard
    python -m dim_tf.benchmark --views=2                        # multi-view DIM's step
    python -m dim_tf.benchmark --jit_compile=on                 # the same step compiled by XLA
    python -m dim_tf.benchmark --input_only --dataset=folder:~/.cache/dim_tf/cifar10_jpeg
    python -m dim_tf.benchmark --input_only --views=2 --color_jitter=0.5 --dataset=...
    python -m dim_tf.benchmark --serving --saved_model=saved_models/quick/1   # as TF Serving runs it

Each configuration prints one JSON line: images/s (median of --repeats timed
runs of --steps steps each, after warm-up, with the min and max), milliseconds
per step, FLOP per training image counted from the traced training step's own
graph (`dim_tf.flops`), the achieved GFLOP/s, and that as a percentage of the
GEMM ceilings the same process measured first: the fastest of five 4096^3
matrix products by TensorFlow (float32 and bfloat16) and by NumPy's BLAS (float32). The headline
is `percent_of_best_float32_gemm`, against the faster float32 library: TF's
own matmul is slow on some CPUs, and a share of it would flatter the step there.
Then the process's peak resident memory.
An image is a source image: with --views=V each step encodes V views of each of
--batch_size images, so its images/s and FLOP per image include V encoder passes
and the heads of every view pair.
Training runs on synthetic images through the same Keras train function `fit`
uses; `--input_only` times the input pipeline alone (decode, augmentation of
every view, batching) on a real dataset, with the training stream's augmentation
flags (random crops and flips on by default).

`--serving` measures an exported encoder instead
(`dim_tf.serving.serving_benchmark`): latency p50/p99 at batch 1, throughput at
batch 1, 8 and 64 with 1, 4 and 16 concurrent callers, for pixel and JPEG
inputs, and the request and response bytes of every signature over REST and
gRPC, in a process that loads the SavedModel without dim_tf's model code.

`--suite` runs each configuration of the table in a fresh subprocess (so its
peak memory and dtype policy are its own) and prints their lines.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from absl import flags

from dim_tf import cli
from dim_tf.config import Augmentation, TrainConfig, setting
from dim_tf.errors import ConfigError

FLAGS = flags.FLAGS

_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
STRATEGIES = ("one_device", "mirrored")
# StepConfig fields that say where the step runs, not what it computes.
_PLACEMENT = ("strategy", "devices")
# The float32 GEMMs of `gemm_ceilings`, of which the fastest is the step's headline denominator.
FLOAT32_GEMMS = ("tensorflow_float32", "numpy_float32")


def _train_setting(name: str, default=dataclasses.MISSING) -> dataclasses.Field:
    """A field with the help (and unless given, the default) of TrainConfig's field `name`."""
    field = _TRAIN_FIELDS[name]
    default = field.default if default is dataclasses.MISSING else default
    return dataclasses.field(default=default, metadata=field.metadata)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """One training-step configuration to time: the run settings that change a
    step's cost, with TrainConfig's defaults (the paper's DIM(L) step), and the
    devices it runs on."""

    encoder: str = _train_setting("encoder")
    estimator: str = _train_setting("estimator")
    mi_units: int = _train_setting("mi_units")
    batch_size: int = _train_setting("batch_size")
    alpha: float = _train_setting("alpha")
    beta: float = _train_setting("beta")
    gamma: float = _train_setting("gamma")
    views: int = _train_setting("views")
    score_clip: float = _train_setting("score_clip")
    score_penalty: float = _train_setting("score_penalty")
    mixed_precision: bool = _train_setting("mixed_precision")
    force_mixed_precision: bool = _train_setting("force_mixed_precision")
    jit_compile: str = _train_setting("jit_compile")
    strategy: str = setting("one_device", help="one_device, or mirrored over --devices logical "
                            "CPUs.", choices=STRATEGIES)
    devices: int = setting(2, help="Logical CPU devices for --strategy=mirrored.")

    def train_config(self) -> TrainConfig:
        """The run settings of this step (without the online monitor, which DIM's
        step does not need).

        Raises:
            ConfigError: a setting is invalid.
        """
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in _PLACEMENT}
        return TrainConfig(model_dir="<benchmark>", monitor=False, **values)


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """The input pipeline `--input_only` times: a dataset and the training stream's
    augmentation of each view (TrainConfig's flags; crops and flips on by default).
    The views and the batch size are StepConfig's."""

    dataset: str | None = setting(None, help="For --input_only: folder:PATH or tfrecord:DIR.")
    random_crop: bool = _train_setting("random_crop", default=True)
    crop_padding: int = _train_setting("crop_padding")
    crop_min_area: float = _train_setting("crop_min_area")
    random_flip: bool = _train_setting("random_flip", default=True)
    shared_flip: bool = _train_setting("shared_flip")
    color_jitter: float = _train_setting("color_jitter")
    color_jitter_probability: float = _train_setting("color_jitter_probability")
    grayscale_probability: float = _train_setting("grayscale_probability")

    @property
    def augmentation(self) -> Augmentation:
        """The augmentation these flags ask for.

        Raises:
            ConfigError: a setting is invalid (TrainConfig's checks).
        """
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(Augmentation)}
        return TrainConfig(model_dir="<benchmark>", **values).augmentation


def cpu_name() -> str:
    """The CPU model as `lscpu` names it (figures are only comparable on one CPU)."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The /proc/cpuinfo flags that decide which kernels oneDNN, NumPy's BLAS and XLA run.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def cpu_kind() -> dict:
    """The CPU's model and vector-unit flags, and any ISA limit set for oneDNN:
    what a figure is only comparable under."""
    from dim_tf.training import precision

    flags = precision.cpu_flags()
    return {"cpu": cpu_name(), "cpu_flags": [f for f in VECTOR_FLAGS if f in flags],
            "onednn_max_cpu_isa": precision.onednn_max_isa()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(run_steps, steps: int, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(steps)
        seconds.append(time.perf_counter() - start)
    return seconds


def tensorflow_gemm_gflops(dtype: str, size: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of `repeats` size x size x size `tf.matmul`s of `dtype` in
    a tf.function (a ceiling: on a shared machine other work only slows a repeat)."""
    import tensorflow as tf

    a = tf.random.uniform([size, size], dtype=tf.float32)
    b = tf.random.uniform([size, size], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)

    @tf.function
    def product(x, y):
        # The sum makes the result depend on every element, so nothing is skipped,
        # and returns a scalar, so fetching it costs nothing.
        return tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1], tf.float32))

    product(a, b).numpy()
    seconds = _timed(lambda n: [product(a, b).numpy() for _ in range(n)], 1, repeats)
    return 2 * size**3 / min(seconds) / 1e9


def numpy_gemm_gflops(size: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of `repeats` float32 size x size x size `numpy.matmul`s
    (NumPy's BLAS, OpenBLAS in the PyPI wheels, on all the process's threads)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    seconds = _timed(lambda n: [np.matmul(a, b, out=out) for _ in range(n)], 1, repeats)
    return 2 * size**3 / min(seconds) / 1e9


def gemm_ceilings(size: int = 4096, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of the matrix products a training step is compared against, measured now:
    TensorFlow's float32 `tf.matmul`, NumPy's float32 BLAS GEMM and, where the CPU has
    bfloat16 units TensorFlow may use, TensorFlow's bfloat16 `tf.matmul`. (Under an
    ONEDNN_MAX_CPU_ISA below them, TensorFlow still sends bfloat16 products to oneDNN,
    which then aborts the process.)"""
    from dim_tf.training import precision

    ceilings = {"tensorflow_float32": tensorflow_gemm_gflops("float32", size, repeats),
                "numpy_float32": numpy_gemm_gflops(size, repeats)}
    if precision.cpu_bf16_units() is not None:
        ceilings["tensorflow_bfloat16"] = tensorflow_gemm_gflops("bfloat16", size, repeats)
    return ceilings


def _against_ceilings(achieved_gflops: float, ceilings: dict[str, float]) -> dict:
    """The record's fields comparing `achieved_gflops` with each GEMM ceiling and with
    the best float32 one."""
    fields: dict = {"gemm_gflops": dict(ceilings)}
    for name, gflops in ceilings.items():
        fields[f"percent_of_{name}_gemm"] = 100 * achieved_gflops / gflops
    float32 = {name: ceilings[name] for name in FLOAT32_GEMMS if name in ceilings}
    if float32:
        best = max(float32, key=float32.get)
        fields["best_float32_gemm"] = best
        fields["percent_of_best_float32_gemm"] = 100 * achieved_gflops / float32[best]
    return fields


def _summary(images_per_step: int, steps: int, seconds: list[float]) -> dict:
    rates = [images_per_step * steps / s for s in seconds]
    return {"images_per_second": statistics.median(rates),
            "images_per_second_min": min(rates), "images_per_second_max": max(rates),
            "ms_per_step": 1000 * statistics.median(seconds) / steps}


def op_time_by_type(profile_dir: str, steps: int, top: int = 12) -> dict[str, float]:
    """Milliseconds per step spent in each TensorFlow op type (MatMul, Mul, Cast, ...)
    in the newest profiler trace under `profile_dir`, summed over the host's compute
    threads (so they can add up to more than the step's wall time), largest first.
    oneDNN's fusions keep their own names (FusedBatchNormEx: batch norm + ReLU)."""
    import collections
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    traces = sorted(glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True),
                    key=os.path.getmtime)
    space = xplane_pb2.XSpace()
    with open(traces[-1], "rb") as f:
        space.ParseFromString(f.read())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: (v.display_name or v.name) for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if "::" in name:  # the executor's own spans, which contain the ops
                    continue
                # oneDNN's kernels (_MklMatMul, _MklNativeConv2D, ...) under the op's name.
                kind = name.removeprefix("_MklNative").removeprefix("_Mkl")
                totals[kind] += event.duration_ps / 1e9 / steps
    return {kind: round(ms, 1) for kind, ms in totals.most_common(top)}


def op_gflops(flops: dict[str, int], op_ms_per_step: dict[str, float]) -> dict[str, float]:
    """GFLOP per second of op time, for each op type with both a FLOP count (per step)
    and a profiled time: which products run far below the others (a slow backward
    convolution, say). Op time is summed over threads, so on C busy cores these
    are about 1/C of the wall-clock rate."""
    return {op: round(flops[op] / (ms / 1000) / 1e9, 1)
            for op, ms in op_ms_per_step.items() if op in flops and ms > 0}


def benchmark_step(config: StepConfig, steps: int = 10, warmup: int = 3, repeats: int = 3,
                   ceilings: dict[str, float] | None = None,
                   profile_dir: str | None = None) -> dict:
    """Times training steps of `config` on synthetic data; returns the JSON record.

    With `profile_dir`, `steps` more steps are traced by the TensorFlow profiler
    there (TensorBoard's Profile tab shows the trace) and the record gains their
    time by op type (`op_ms_per_step`) and each product's rate (`gflops_by_op`).

    `ceilings` are `gemm_ceilings()` (the record compares the step with each).
    Call in a fresh process per precision: the dtype policy is global.
    """
    import tensorflow as tf

    from dim_tf.flops import function_flops
    from dim_tf.training.dim_model import build_model
    from dim_tf.training.precision import use_precision

    train_config = config.train_config()
    policy = use_precision(config.mixed_precision, config.force_mixed_precision)
    if config.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(config.devices)])
    elif config.strategy == "one_device":
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    else:
        raise ConfigError(f"--strategy must be one_device or mirrored; got {config.strategy!r}.")
    with strategy.scope():
        model = build_model(train_config)
    size = train_config.image_size
    views = [config.views] if config.views > 1 else []  # one view: the paper's [n, H, W, C]
    images = tf.random.uniform([config.batch_size, *views, size, size, train_config.channels], -1, 1,
                               seed=0)
    labels = tf.zeros([config.batch_size], tf.int64)

    flops = function_flops(tf.function(model.train_step),
                           (tf.TensorSpec(images.shape), tf.TensorSpec(labels.shape, tf.int64)))
    flop_per_image = sum(flops.values()) / config.batch_size

    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((images, labels)).repeat())
    iterator = iter(dataset)
    model.make_train_function()
    train_function = model.train_function

    def run_steps(n):
        for _ in range(n):
            logs = train_function(iterator)
        float(tf.nest.flatten(logs)[0].numpy().ravel()[0])  # wait for the last step

    run_steps(warmup)
    # The policy that ran: --mixed_precision falls back to float32 on CPUs without
    # bfloat16 units, so the flag alone does not say what was measured.
    record = {"kind": "train_step", "config": dataclasses.asdict(config), "precision": policy,
              "xla": bool(model.jit_compile),
              **_summary(config.batch_size, steps, _timed(run_steps, steps, repeats)),
              "flop_per_image": flop_per_image,
              "flop_by_op": {k: v / config.batch_size for k, v in sorted(flops.items())}}
    record["achieved_gflops"] = record["images_per_second"] * flop_per_image / 1e9
    record.update(_against_ceilings(record["achieved_gflops"], ceilings or {}))
    if profile_dir:
        tf.profiler.experimental.start(profile_dir)
        run_steps(steps)
        tf.profiler.experimental.stop()
        record["op_ms_per_step"] = op_time_by_type(profile_dir, steps, top=40)
        record["gflops_by_op"] = op_gflops(flops, record["op_ms_per_step"])
    record["peak_rss_mb"] = peak_rss_mb()
    record.update(cpu_kind())
    return record


def benchmark_input(dataset: str, batch_size: int = 64, image_size: int = 32, channels: int = 3,
                    augmentation: Augmentation | None = None, views: int = 1,
                    steps: int = 100, warmup: int = 20, repeats: int = 3) -> dict:
    """Source images/s of the training input pipeline of `dataset` alone (no model),
    each image augmented into `views` views (default augmentation: InputConfig's)."""
    from dim_tf.data import loaders, streams

    augmentation = augmentation or InputConfig().augmentation
    source = loaders.load_source(dataset, "train")
    stream = streams.training_dataset(
        source, global_batch_size=batch_size, steps_per_epoch=source.num_examples // batch_size,
        start_step=0, seed=0, image_size=image_size, channels=channels, augmentation=augmentation,
        views=views)
    iterator = iter(stream)

    def run_steps(n):
        for _ in range(n):
            next(iterator)

    run_steps(warmup)
    return {"kind": "input_pipeline", "dataset": dataset, "batch_size": batch_size, "views": views,
            "augmentation": dataclasses.asdict(augmentation),
            **_summary(batch_size, steps, _timed(run_steps, steps, repeats)),
            "peak_rss_mb": peak_rss_mb(), **cpu_kind()}


def suite_configs() -> list[StepConfig]:
    """The scaling table: batch size, mi_units, estimator, prior, precision, strategy."""
    base = StepConfig()
    configs = [base]
    configs += [dataclasses.replace(base, batch_size=b) for b in (32, 128, 256)]
    configs += [dataclasses.replace(base, mi_units=m) for m in (512, 1024)]
    configs += [dataclasses.replace(base, estimator=e) for e in ("nce", "dv")]
    configs += [dataclasses.replace(base, gamma=0.0)]
    configs += [dataclasses.replace(base, mixed_precision=True)]
    configs += [dataclasses.replace(base, mixed_precision=True, mi_units=512)]
    configs += [dataclasses.replace(base, strategy="mirrored")]
    # The one-CPU-hour recipe's step (configs/cpu_hour.flags), with one and two views.
    cpu_hour = dataclasses.replace(base, mixed_precision=True, mi_units=256, batch_size=128,
                                   estimator="nce")
    configs += [cpu_hour, dataclasses.replace(cpu_hour, views=2)]
    return configs


def _flags_of(config: StepConfig) -> list[str]:
    return [f"--{k}={v}" for k, v in dataclasses.asdict(config).items()]


def _split_cpu(devices: int) -> None:
    """Splits the CPU into logical devices (must run before TensorFlow initialises)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


def _define_flags() -> None:
    """The command line's flags (defined only when run as a command, so importing
    this module as a library never clashes with another entry point's flags)."""
    cli.define_config_flags(StepConfig)
    flags.DEFINE_integer("steps", 10, "Steps per timed repeat.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, allocation).")
    flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.")
    flags.DEFINE_string("profile_dir", None, "Also trace --steps steps with the TensorFlow "
                        "profiler into this directory and report time by op type.")
    flags.DEFINE_bool("suite", False, "Run the scaling table (each configuration in a subprocess).")
    flags.DEFINE_bool("input_only", False, "Time the input pipeline of --dataset alone.")
    flags.DEFINE_bool("serving", False, "Measure the exported SavedModel --saved_model as TF "
                      "Serving runs it (latency, throughput, bytes per signature).")
    flags.DEFINE_string("saved_model", None, "--serving: a SavedModel version directory, e.g. "
                        "saved_models/quick/1.")
    flags.DEFINE_float("serving_seconds", 2.0, "--serving: seconds per throughput measurement.")
    cli.define_config_flags(InputConfig)


def main() -> None:
    common = [f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}", f"--repeats={FLAGS.repeats}"]
    if FLAGS.suite:
        for config in suite_configs():
            result = subprocess.run([sys.executable, "-m", "dim_tf.benchmark", *_flags_of(config),
                                     *common], capture_output=True, text=True)
            lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
            if result.returncode or not lines:
                print(json.dumps({"config": dataclasses.asdict(config),
                                  "error": result.stderr.strip().splitlines()[-1:]}), flush=True)
            else:
                print(lines[-1], flush=True)
        return
    if FLAGS.serving:
        if not FLAGS.saved_model:
            raise ConfigError("--serving needs --saved_model (a version directory such as "
                              "saved_models/quick/1).")
        from dim_tf.serving.serving_benchmark import benchmark_serving

        result = benchmark_serving(FLAGS.saved_model, FLAGS.serving_seconds)
        print(json.dumps({**cpu_kind(), **result}), flush=True)
        return
    if FLAGS.input_only:
        inputs = InputConfig(**cli.config_values(InputConfig))
        if not inputs.dataset:
            raise ConfigError("--input_only needs --dataset (folder:PATH or tfrecord:DIR).")
        print(json.dumps(benchmark_input(os.path.expanduser(inputs.dataset), FLAGS.batch_size,
                                         augmentation=inputs.augmentation, views=FLAGS.views,
                                         repeats=FLAGS.repeats)), flush=True)
        return
    config = StepConfig(**cli.config_values(StepConfig))
    if config.strategy == "mirrored":
        _split_cpu(config.devices)
    print(json.dumps(benchmark_step(config, FLAGS.steps, FLAGS.warmup, FLAGS.repeats,
                                    gemm_ceilings(), FLAGS.profile_dir)), flush=True)


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "dim_tf.benchmark")
