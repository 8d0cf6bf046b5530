"""What the diagnostics share: their inputs and settings, one validation, one training loop.

Every diagnostic is an `Evaluator`, `(train, test, settings) -> float`: it
trains its own small network on the training split with Adam for
`settings.steps` steps of `settings.batch_size` rows and measures one number on
the test split. All of them validate and prepare their inputs with `prepare`
(codes standardised per dimension with the training split's statistics, so one
learning rate suits codes of any scale) and train with `fit`.

Deterministic given `settings.seed`: weights come from seeded initialisers
(`initializer`) and batches and shuffles from one NumPy generator per call,
drawn in a fixed order, so the caller's global random state is neither used
nor changed. The networks compute in float32 whatever the global Keras
precision policy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Protocol, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from dim_tf.errors import ConfigError, DataError
from dim_tf.models.encoders import pytorch_default_initializer

# Rows per call when a trained network scores a whole split.
EVAL_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class DiagnosticData:
    """One split: the codes y [N, D] and, row for row, the images [N, H, W, C] in
    [-1, 1] they encode (None where a diagnostic looks at the codes only, as NDM)."""

    codes: np.ndarray
    images: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class DiagnosticSettings:
    """How a diagnostic trains its network.

    steps: Adam steps.
    batch_size: rows per step (and per held-out batch where the measure is
        batched), >= 2: negatives come from the other rows of a batch.
    learning_rate: Adam learning rate.
    seed: seed of the initial weights, the batches and the shuffles.
    """

    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-4
    seed: int = 0


class Evaluator(Protocol):
    """A diagnostic: trains on `train`, returns its measure on `test`."""

    def __call__(self, train: DiagnosticData, test: DiagnosticData,
                 settings: DiagnosticSettings) -> float: ...


# ---------------------------------------------------------------------------- validation


def prepare(train: DiagnosticData, test: DiagnosticData, settings: DiagnosticSettings, *,
            images: bool, batched_test: bool) -> tuple[DiagnosticData, DiagnosticData]:
    """The two splits checked and as float32, codes standardised with the training
    split's mean and standard deviation (constant dimensions are only centred).

    Args:
        images: whether the diagnostic uses the images (else they are ignored).
        batched_test: whether the test split is measured in whole batches, so it
            needs `settings.batch_size` rows too.

    Raises (naming the argument, e.g. `codes_train`, `images_test`; both are ValueErrors):
        ConfigError: a setting is out of range.
        DataError: an array is not finite or has the wrong rank, images lie
            outside [-1, 1], images and codes disagree in rows, the splits
            disagree in shape, or a split has fewer than `settings.batch_size` rows.
    """
    _check_settings(settings)
    train_codes = _as_float_array("codes_train", train.codes, 2, "[N, D]")
    test_codes = _as_float_array("codes_test", test.codes, 2, "[N, D]")
    train_images = test_images = None
    if images:
        train_images = _as_images("images_train", train.images)
        test_images = _as_images("images_test", test.images)
        _check_pairs("images_train", train_images, "codes_train", train_codes)
        _check_pairs("images_test", test_images, "codes_test", test_codes)
        _check_same_width("images_train", train_images, "images_test", test_images)
    _check_same_width("codes_train", train_codes, "codes_test", test_codes)
    _check_rows("codes_train", train_codes, settings.batch_size)
    if batched_test:
        _check_rows("codes_test", test_codes, settings.batch_size)
    train_codes, test_codes = _standardise(train_codes, test_codes)
    return DiagnosticData(train_codes, train_images), DiagnosticData(test_codes, test_images)


def _check_settings(settings: DiagnosticSettings) -> None:
    steps, batch_size, learning_rate = settings.steps, settings.batch_size, settings.learning_rate
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"steps must be a positive integer; got {steps!r}.")
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 2):
        raise ConfigError(
            "batch_size must be an integer >= 2 (negatives come from the other rows of a "
            f"batch); got {batch_size!r}."
        )
    if (not isinstance(learning_rate, (int, float, np.floating)) or isinstance(learning_rate, bool)
            or not math.isfinite(learning_rate) or learning_rate <= 0):
        raise ConfigError(f"learning_rate must be a finite number > 0; got {learning_rate!r}.")


def _as_float_array(name: str, array, rank: int, layout: str) -> np.ndarray:
    try:
        values = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name} must be a numeric array {layout}; got {type(array).__name__} "
                         f"({error}).") from None
    if values.ndim != rank:
        raise DataError(f"{name} must have shape {layout}; got shape {values.shape}.")
    if values.shape[0] == 0 or values.size == 0:
        raise DataError(f"{name} is empty (shape {values.shape}).")
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(np.size(values) - np.count_nonzero(finite))
        raise DataError(f"{name} contains {bad} NaN or infinite value(s).")
    return values


def _as_images(name: str, images) -> np.ndarray:
    values = _as_float_array(name, images, 4, "[N, H, W, C]")
    low, high = float(values.min()), float(values.max())
    if low < -1.0 - 1e-5 or high > 1.0 + 1e-5:
        raise DataError(f"{name} must be scaled to [-1, 1]; got values in [{low:g}, {high:g}].")
    return values


def _check_pairs(images_name, images, codes_name, codes) -> None:
    if len(images) != len(codes):
        raise DataError(f"{images_name} and {codes_name} must pair row for row; got "
                         f"{len(images)} images and {len(codes)} codes.")


def _check_same_width(train_name, train, test_name, test) -> None:
    if train.shape[1:] != test.shape[1:]:
        raise DataError(f"{train_name} and {test_name} must have the same shape after the "
                         f"first axis; got {train.shape} and {test.shape}.")


def _check_rows(name: str, array: np.ndarray, batch_size: int) -> None:
    if len(array) < batch_size:
        raise DataError(f"{name} has {len(array)} rows, fewer than batch_size={batch_size}.")


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant dimensions carry nothing; only centre them
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


# ---------------------------------------------------------------------------- training


def fit(loss: Callable[..., tf.Tensor], variables: Sequence[tf.Variable],
        batch: Callable[[np.ndarray], tuple], rows: int, settings: DiagnosticSettings,
        rng: np.random.Generator) -> None:
    """Minimises `loss(*batch(index))` over `variables` with Adam for `settings.steps`
    steps, `index` being the training rows of each step (`batch_indices` of `rows`).

    `batch` may draw from `rng` too (e.g. NDM's shuffles): it runs right after the
    step's rows are drawn, so the order of the draws is fixed by the seed.
    """
    optimizer = keras.optimizers.Adam(settings.learning_rate)

    @tf.function(jit_compile=False)
    def step(*tensors):
        with tf.GradientTape() as tape:
            value = loss(*tensors)
        optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))

    batches = batch_indices(rows, settings.batch_size, rng)
    for _ in range(settings.steps):
        step(*batch(next(batches)))


def batch_indices(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of row indices, epoch by epoch: no row repeats within a batch."""
    order, position = rng.permutation(n), 0
    while True:
        if position + batch_size > n:
            order, position = rng.permutation(n), 0
        yield order[position:position + batch_size]
        position += batch_size


def chunked(fn: Callable[..., tf.Tensor]) -> Callable[..., np.ndarray]:
    """`fn` traced once for any number of rows and run over chunks of NumPy arrays
    (the same rows of each), its outputs concatenated."""
    compiled = tf.function(fn, reduce_retracing=True, jit_compile=False)

    def run(*arrays: np.ndarray) -> np.ndarray:
        return np.concatenate([
            compiled(*(a[start:start + EVAL_CHUNK] for a in arrays)).numpy()
            for start in range(0, len(arrays[0]), EVAL_CHUNK)
        ])

    return run


# ---------------------------------------------------------------------------- networks
# Every kernel initialiser is PyTorch's default (as in the rest of the package)
# with its own seed drawn from `rng`, so weights depend on the seed only; layers
# are float32 whatever the global precision policy.


def initializer(rng: np.random.Generator) -> keras.initializers.Initializer:
    config = pytorch_default_initializer().get_config()
    config["seed"] = int(rng.integers(2**31 - 1))
    return keras.initializers.VarianceScaling.from_config(config)


def dense(units: int, rng: np.random.Generator, name: str, activation=None) -> layers.Dense:
    return layers.Dense(units, activation=activation, kernel_initializer=initializer(rng),
                        dtype="float32", name=name)
