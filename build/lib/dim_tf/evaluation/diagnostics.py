"""Diagnostics of a frozen encoder's code Y: NDM, a MINE estimate and decoder MS-SSIM.

The three measures of the paper's Table 3 (Hjelm et al. 2019, sec. 4) that are
not classifiers. Each trains its own small network on NumPy arrays the caller
has already computed with the frozen encoder, and reports a single float on a
held-out split:

- `neural_dependency_measure` (NDM): how far the dimensions of Y are from
  independent, as a KL divergence in nats between Y and the product of its
  marginals (its total correlation). ~0 for independent dimensions.
- `mine_estimate`: a MINE-style (Belghazi et al. 2018) Donsker-Varadhan lower
  bound on I(X; Y) in nats between images and their codes.
- `decoder_ms_ssim`: the multi-scale SSIM in [0, 1] of images reconstructed
  from Y by a deconvolutional decoder trained with squared error.

Every function is deterministic given `seed`: weights are drawn by seeded
initialisers and batches and shuffles by a NumPy generator, so the caller's
global random state is neither used nor changed. Codes are standardised per
dimension with the training split's statistics before use; none of the three
measures depends on the scale of a dimension in principle, and standardising
makes one learning rate suit codes of any scale. The networks compute in
float32 whatever the global Keras precision policy.
"""

from __future__ import annotations

import math
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from dim_tf.models.encoders import pytorch_default_initializer
from dim_tf.objectives.estimators import (
    negative_expectation,
    per_example_mi,
    positive_expectation,
)

# Standard MS-SSIM weights (Wang et al. 2003), finest scale first.
MS_SSIM_POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Three scales with a 3x3 window fit 32x32 images (coarsest scale 8x8); 64x64
# images use the same setting so that values are comparable across sizes.
SMALL_IMAGE_SCALES = 3
SMALL_IMAGE_FILTER_SIZE = 3
DECODER_IMAGE_SIZES = (32, 64)

# MINE critic temperature: scores = cos / t, so estimates are at most 2 / t = 20 nats.
MINE_TEMPERATURE = 0.1

# NDM: the held-out product of marginals is sampled by this many independent
# per-dimension shuffles of the whole test split.
_NDM_TEST_SHUFFLES = 10
_EVAL_CHUNK = 1024


def neural_dependency_measure(
    codes_train: np.ndarray,
    codes_test: np.ndarray,
    steps: int = 1000,
    batch_size: int = 128,
    learning_rate: float = 1e-4,
    seed: int = 0,
) -> float:
    """Neural dependency measure (NDM) of codes: KL(P(Y) || prod_d P(Y_d)), in nats.

    A discriminator (fc 1000 -> ReLU -> fc 200 -> ReLU -> fc 1, the
    architecture of `build_prior_discriminator`) scores real codes (positives)
    against codes whose every dimension was shuffled independently across the
    batch (negatives, samples of the product of marginals). It is trained with
    the KL f-divergence objective E-[exp(u)] - E+[u + 1], whose optimum is
    u = log p(y) / prod_d p(y_d), and the Donsker-Varadhan estimate
    mean_pos(u) - log mean_neg(exp(u)) is reported on the held-out codes, with
    negatives pooled over several shuffles of the whole test split
    (Hjelm et al. 2019, sec. 4 and Table 3; the paper reports 0.18 on CIFAR-10).

    Why: a low NDM means the code's factors are close to independent, which
    is what prior matching aims at. A held-out DV estimate is a lower bound up to
    sampling noise, so it may be slightly negative when the dimensions are
    independent.

    Codes are standardised per dimension with the training split's mean and
    standard deviation (constant dimensions are only centred); NDM is invariant
    to this, and it makes `learning_rate` meaningful for codes of any scale.

    Args:
        codes_train: [N_train, D] codes that train the discriminator, D >= 2.
        codes_test: [N_test, D] held-out codes the estimate is measured on.
        steps: number of Adam steps.
        batch_size: codes per step; both splits need at least this many rows.
        learning_rate: Adam learning rate.
        seed: seed of the initial weights, batches and shuffles.

    Returns:
        The held-out Donsker-Varadhan estimate in nats (float).

    Raises:
        ValueError: a split is not a finite 2-D array, D < 2, the dimensions of
            the splits differ, a split has fewer than `batch_size` rows, or a
            hyper-parameter is out of range.
    """
    _check_training_arguments(steps, batch_size, learning_rate)
    train = _as_codes("codes_train", codes_train)
    test = _as_codes("codes_test", codes_test)
    if train.shape[1] < 2:
        raise ValueError(
            "NDM measures dependence between code dimensions and needs at least 2; "
            f"codes_train has shape {train.shape}."
        )
    _check_same_width("codes_train", train, "codes_test", test)
    _check_rows("codes_train", train, batch_size)
    _check_rows("codes_test", test, batch_size)
    train, test = _standardise(train, test)

    rng = np.random.default_rng(seed)
    discriminator = _dependency_discriminator(train.shape[1], rng)
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function(jit_compile=False)
    def train_step(real, shuffled):
        with tf.GradientTape() as tape:
            u_pos = discriminator(real, training=True)
            u_neg = discriminator(shuffled, training=True)
            loss = tf.reduce_mean(negative_expectation(u_neg, "kl")) - tf.reduce_mean(
                positive_expectation(u_pos, "kl")
            )
        variables = discriminator.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    batches = _batch_indices(len(train), batch_size, rng)
    for _ in range(steps):
        real = train[next(batches)]
        # Generator.permuted shuffles every column independently along axis 0.
        train_step(real, rng.permuted(real, axis=0))

    score = _chunked(lambda x: tf.squeeze(discriminator(x, training=False), -1))
    u_pos = score(test)
    u_neg = np.concatenate([score(rng.permuted(test, axis=0)) for _ in range(_NDM_TEST_SHUFFLES)])
    return float(np.mean(u_pos) - _log_mean_exp(u_neg))


def mine_estimate(
    images_train: np.ndarray,
    codes_train: np.ndarray,
    images_test: np.ndarray,
    codes_test: np.ndarray,
    steps: int = 1000,
    batch_size: int = 64,
    learning_rate: float = 1e-4,
    seed: int = 0,
) -> float:
    """MINE-style Donsker-Varadhan lower bound on I(X; Y) in nats (Belghazi et al. 2018).

    The critic is separable and bounded, T(x, y) = cos(f(x), g(y)) / 0.1: f is a small conv net on the
    image (conv 3x3 stride 2 64 -> ReLU -> conv 3x3 stride 2 128 -> ReLU ->
    flatten -> dense 256) and g an MLP on the code (dense 256 -> ReLU ->
    dense 256), so one batch of n pairs gives all n x n scores
    scores[i, j] = T(x_j, y_i) with the matching pairs on the diagonal. It is
    trained and evaluated with the per-row DV estimator of
    `dim_tf.objectives.estimators.per_example_mi(..., "dv")`
    (mean_pos T - log mean_neg exp T, the other images of the batch being the
    negatives of each code). The estimate is the mean over held-out batches of
    the shuffled test split.

    Why: MINE is the paper's direct measure of how much information about the
    image the code keeps (Table 3 reports 45.09 for DIM(L) on CIFAR-10, with
    its own critic and settings; this function returns nats). Held-out pairs
    keep the estimate from rewarding a critic that memorised the training set.

    Codes are standardised per dimension with the training split's statistics
    (MI is invariant to it). When Y is a deterministic function of X the true
    I(X; Y) is infinite and an unbounded critic's estimate keeps growing with
    training; the bounded critic caps it at 2 / MINE_TEMPERATURE = 20 nats, so
    compare runs with the same `steps`, `batch_size` and data. A critic that
    overfits the training pairs can make the held-out estimate slightly
    negative when X and Y are independent.

    Args:
        images_train: [N_train, H, W, C] float images in [-1, 1].
        codes_train: [N_train, D] the codes of `images_train`, row for row.
        images_test: [N_test, H, W, C] held-out images in [-1, 1].
        codes_test: [N_test, D] the codes of `images_test`.
        steps: number of Adam steps.
        batch_size: pairs per step and per held-out batch, >= 2; both splits
            need at least this many rows.
        learning_rate: Adam learning rate.
        seed: seed of the initial weights, batches and test order.

    Returns:
        The mean held-out DV estimate in nats (float).

    Raises:
        ValueError: an array is not finite or has the wrong rank, images lie
            outside [-1, 1], images and codes disagree in rows, the splits
            disagree in shapes, a split has fewer than `batch_size` rows, or a
            hyper-parameter is out of range.
    """
    _check_training_arguments(steps, batch_size, learning_rate)
    images_train = _as_images("images_train", images_train)
    images_test = _as_images("images_test", images_test)
    train = _as_codes("codes_train", codes_train)
    test = _as_codes("codes_test", codes_test)
    _check_pairs("images_train", images_train, "codes_train", train)
    _check_pairs("images_test", images_test, "codes_test", test)
    _check_same_width("images_train", images_train, "images_test", images_test)
    _check_same_width("codes_train", train, "codes_test", test)
    _check_rows("codes_train", train, batch_size)
    _check_rows("codes_test", test, batch_size)
    train, test = _standardise(train, test)

    rng = np.random.default_rng(seed)
    image_net, code_net = _mine_critic(images_train.shape[1:], train.shape[1], rng)
    variables = image_net.trainable_variables + code_net.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate)

    def dv(images, codes, training):
        # scores[i, j] = T(image_j, code_i): rows are codes, candidates images.
        # A bounded critic: cosine similarity / MINE_TEMPERATURE lies in [-1/t, 1/t],
        # so the estimate is at most 2/t nats. Unbounded dot products let the DV
        # estimate of a deterministic encoder (whose true I(X; Y) is infinite) grow
        # without limit with training (hundreds of thousands of nats), which
        # compares nothing.
        scores = tf.matmul(tf.math.l2_normalize(code_net(codes, training=training), -1),
                           tf.math.l2_normalize(image_net(images, training=training), -1),
                           transpose_b=True) / MINE_TEMPERATURE
        return per_example_mi(scores[:, :, tf.newaxis], tf.range(tf.shape(scores)[0]), "dv")

    @tf.function(jit_compile=False)
    def train_step(images, codes):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(dv(images, codes, True).loss)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function(jit_compile=False)
    def test_step(images, codes):
        return dv(images, codes, False).mi

    batches = _batch_indices(len(train), batch_size, rng)
    for _ in range(steps):
        index = next(batches)
        train_step(images_train[index], train[index])

    # Shuffled so that each held-out batch mixes the test split (it may be
    # sorted by class); the last incomplete batch is dropped so every row has
    # the same number of negatives.
    order = rng.permutation(len(test))
    estimates = []
    for start in range(0, len(test) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        estimates.append(test_step(images_test[index], test[index]).numpy())
    return float(np.mean(np.concatenate(estimates)))


def decoder_ms_ssim(
    codes_train: np.ndarray,
    images_train: np.ndarray,
    codes_test: np.ndarray,
    images_test: np.ndarray,
    steps: int = 1000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> float:
    """Mean multi-scale SSIM of held-out images decoded from their codes, in [0, 1].

    A decoder maps Y to the image: dense to a 4x4x256 map -> ReLU, then 4x4
    stride-2 transposed convolutions with ReLU (128, 64, 32 [, 32] channels)
    up to H x W, then a 3x3 convolution to C channels with tanh. It is
    trained on the mean squared error in [-1, 1]; the reported value is the
    mean over the test split of `tf.image.ssim_multiscale` on images mapped to
    [0, 1] (max_val=1).

    Why: how well the image can be recovered from Y is the paper's third view
    of the information Y keeps (Table 3: 0.37 for DIM(L) on CIFAR-10). The
    reference code's "MS-SSIM" is a single-scale SSIM; this is the real
    multi-scale SSIM (Wang et al. 2003) at the scales a small image has. The
    standard 5 scales with an 11x11 window need images of at least 161 pixels
    (the coarsest scale, 1/16 of the image, must hold the window). For 32x32
    and 64x64 images only the 3 finest scales are used, with the first 3
    standard power factors (0.0448, 0.2856, 0.3001) renormalised to sum to 1,
    and a 3x3 window (sigma 1.5), which fits the coarsest scale (8x8 for a
    32x32 image). Values are therefore comparable between runs of this
    function, not with 5-scale MS-SSIM on large images. SSIM's structure term
    is ~1 wherever both images are flat, so images with large plain areas set
    a high floor: a decoder fed noise scores ~0.55 on plain coloured discs.

    Codes are standardised per dimension with the training split's statistics
    (an affine change of the input the first dense layer can undo).

    Args:
        codes_train: [N_train, D] codes of `images_train`, row for row.
        images_train: [N_train, H, W, C] float images in [-1, 1], H = W in
            {32, 64}, C in {1, 3}.
        codes_test: [N_test, D] held-out codes.
        images_test: [N_test, H, W, C] the images of `codes_test`.
        steps: number of Adam steps.
        batch_size: pairs per step; the training split needs at least this
            many rows.
        learning_rate: Adam learning rate.
        seed: seed of the initial weights and batches.

    Returns:
        The mean held-out MS-SSIM (float in [0, 1], 1 = perfect reconstruction).

    Raises:
        ValueError: an array is not finite or has the wrong rank or size,
            images lie outside [-1, 1], images and codes disagree in rows, the
            splits disagree in shapes, the training split has fewer than
            `batch_size` rows, or a hyper-parameter is out of range.
    """
    _check_training_arguments(steps, batch_size, learning_rate)
    train = _as_codes("codes_train", codes_train)
    test = _as_codes("codes_test", codes_test)
    images_train = _as_images("images_train", images_train)
    images_test = _as_images("images_test", images_test)
    _check_pairs("images_train", images_train, "codes_train", train)
    _check_pairs("images_test", images_test, "codes_test", test)
    _check_same_width("images_train", images_train, "images_test", images_test)
    _check_same_width("codes_train", train, "codes_test", test)
    height, width, channels = images_train.shape[1:]
    if height != width or height not in DECODER_IMAGE_SIZES or channels not in (1, 3):
        raise ValueError(
            f"decoder_ms_ssim needs square {DECODER_IMAGE_SIZES[0]}x{DECODER_IMAGE_SIZES[0]} or "
            f"{DECODER_IMAGE_SIZES[1]}x{DECODER_IMAGE_SIZES[1]} images with 1 or 3 channels; "
            f"images_train has shape {images_train.shape}."
        )
    _check_rows("codes_train", train, batch_size)
    train, test = _standardise(train, test)

    rng = np.random.default_rng(seed)
    decoder = _decoder(train.shape[1], height, channels, rng)
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function(jit_compile=False)
    def train_step(codes, images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(decoder(codes, training=True) - images))
        variables = decoder.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    batches = _batch_indices(len(train), batch_size, rng)
    for _ in range(steps):
        index = next(batches)
        train_step(train[index], images_train[index])

    @tf.function(jit_compile=False)
    def test_step(codes, images):
        return _small_image_ms_ssim(decoder(codes, training=False), images)

    values = [
        test_step(test[start:start + _EVAL_CHUNK], images_test[start:start + _EVAL_CHUNK]).numpy()
        for start in range(0, len(test), _EVAL_CHUNK)
    ]
    return float(np.mean(np.concatenate(values)))


def _small_image_ms_ssim(images: tf.Tensor, references: tf.Tensor) -> tf.Tensor:
    """Per-image 3-scale MS-SSIM of images in [-1, 1], the measure of `decoder_ms_ssim`.

    Why: the standard 5-scale MS-SSIM does not fit 32x32 or 64x64 images (see
    `decoder_ms_ssim`); this is `tf.image.ssim_multiscale` on the images mapped
    to [0, 1] (max_val=1) with the 3 finest standard power factors,
    renormalised, and a 3x3 window.

    Args:
        images: [N, H, W, C] images in [-1, 1]; the coarsest scale (H/4 x
            W/4, rounded up) must hold the 3x3 window.
        references: [N, H, W, C] images in [-1, 1] to compare with.

    Returns:
        [N] float32 MS-SSIM values in [0, 1].
    """
    factors = MS_SSIM_POWER_FACTORS[:SMALL_IMAGE_SCALES]
    factors = tuple(f / sum(factors) for f in factors)
    to_unit = lambda x: (tf.cast(x, tf.float32) + 1.0) / 2.0  # noqa: E731
    return tf.image.ssim_multiscale(
        to_unit(images), to_unit(references), max_val=1.0, power_factors=factors,
        filter_size=SMALL_IMAGE_FILTER_SIZE,
    )


# ----------------------------------------------------------------------------
# Networks. Every kernel initialiser is PyTorch's default (as in the rest of
# the package) with its own seed drawn from `rng`, so weights depend on `seed`
# only; layers are float32 whatever the global precision policy.


def _initializer(rng: np.random.Generator) -> keras.initializers.Initializer:
    config = pytorch_default_initializer().get_config()
    config["seed"] = int(rng.integers(2**31 - 1))
    return keras.initializers.VarianceScaling.from_config(config)


def _dense(units, rng, name, activation=None):
    return layers.Dense(units, activation=activation, kernel_initializer=_initializer(rng),
                        dtype="float32", name=name)


def _dependency_discriminator(code_units: int, rng: np.random.Generator) -> keras.Model:
    """fc 1000 -> ReLU -> fc 200 -> ReLU -> fc 1, as `build_prior_discriminator`.

    Built here rather than reused so that its weights come from seeded
    initialisers instead of the global random state.
    """
    codes = keras.Input((code_units,), name="codes")
    h = _dense(1000, rng, "fc1", "relu")(codes)
    h = _dense(200, rng, "fc2", "relu")(h)
    return keras.Model(codes, _dense(1, rng, "logit")(h), name="ndm_discriminator")


def _mine_critic(image_shape, code_units: int, rng: np.random.Generator):
    """The two halves f (images -> [n, 256]) and g (codes -> [n, 256]) of T = f . g."""
    images = keras.Input(tuple(image_shape), name="images")
    h = images
    for filters, name in ((64, "conv1"), (128, "conv2")):
        h = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                          kernel_initializer=_initializer(rng), dtype="float32", name=name)(h)
    h = layers.Flatten(dtype="float32")(h)
    image_net = keras.Model(images, _dense(256, rng, "image_embedding")(h), name="mine_images")
    codes = keras.Input((code_units,), name="codes")
    h = _dense(256, rng, "code_hidden", "relu")(codes)
    code_net = keras.Model(codes, _dense(256, rng, "code_embedding")(h), name="mine_codes")
    return image_net, code_net


def _decoder(code_units: int, size: int, channels: int, rng: np.random.Generator) -> keras.Model:
    """Y -> dense 4x4x256 -> ReLU -> (4x4 stride-2 deconv -> ReLU) * k -> conv 3x3 -> tanh."""
    codes = keras.Input((code_units,), name="codes")
    h = _dense(4 * 4 * 256, rng, "project", "relu")(codes)
    h = layers.Reshape((4, 4, 256), dtype="float32")(h)
    filters, resolution, block = 128, 4, 0
    while resolution < size:
        block += 1
        h = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", activation="relu",
                                   kernel_initializer=_initializer(rng), dtype="float32",
                                   name=f"deconv{block}")(h)
        filters, resolution = max(filters // 2, 32), resolution * 2
    images = layers.Conv2D(channels, 3, padding="same", activation="tanh",
                           kernel_initializer=_initializer(rng), dtype="float32", name="image")(h)
    return keras.Model(codes, images, name="decoder")


# ----------------------------------------------------------------------------
# Data helpers.


def _batch_indices(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of row indices, epoch by epoch: no row repeats within a batch."""
    order, position = rng.permutation(n), 0
    while True:
        if position + batch_size > n:
            order, position = rng.permutation(n), 0
        yield order[position:position + batch_size]
        position += batch_size


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant dimensions carry nothing; only centre them
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def _chunked(fn):
    """`fn` traced once for any number of rows and run over chunks of a NumPy array."""
    compiled = tf.function(fn, reduce_retracing=True, jit_compile=False)

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([
            compiled(x[start:start + _EVAL_CHUNK]).numpy()
            for start in range(0, len(x), _EVAL_CHUNK)
        ])

    return run


def _log_mean_exp(values: np.ndarray) -> float:
    values = values.astype(np.float64)
    peak = np.max(values)
    return float(peak + np.log(np.mean(np.exp(values - peak))))


# ----------------------------------------------------------------------------
# Argument checks: every message names the argument and what it was.


def _check_training_arguments(steps, batch_size, learning_rate) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 2):
        raise ValueError(
            "batch_size must be an integer >= 2 (negatives come from the other rows of a "
            f"batch); got {batch_size!r}."
        )
    if (not isinstance(learning_rate, (int, float, np.floating)) or isinstance(learning_rate, bool)
            or not math.isfinite(learning_rate) or learning_rate <= 0):
        raise ValueError(f"learning_rate must be a finite number > 0; got {learning_rate!r}.")


def _as_float_array(name: str, array, rank: int, layout: str) -> np.ndarray:
    try:
        values = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array {layout}; got {type(array).__name__} "
                         f"({error}).") from None
    if values.ndim != rank:
        raise ValueError(f"{name} must have shape {layout}; got shape {values.shape}.")
    if values.shape[0] == 0 or values.size == 0:
        raise ValueError(f"{name} is empty (shape {values.shape}).")
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(np.size(values) - np.count_nonzero(finite))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s).")
    return values


def _as_codes(name: str, codes) -> np.ndarray:
    return _as_float_array(name, codes, 2, "[N, D]")


def _as_images(name: str, images) -> np.ndarray:
    values = _as_float_array(name, images, 4, "[N, H, W, C]")
    low, high = float(values.min()), float(values.max())
    if low < -1.0 - 1e-5 or high > 1.0 + 1e-5:
        raise ValueError(f"{name} must be scaled to [-1, 1]; got values in [{low:g}, {high:g}].")
    return values


def _check_pairs(images_name, images, codes_name, codes) -> None:
    if len(images) != len(codes):
        raise ValueError(f"{images_name} and {codes_name} must pair row for row; got "
                         f"{len(images)} images and {len(codes)} codes.")


def _check_same_width(train_name, train, test_name, test) -> None:
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(f"{train_name} and {test_name} must have the same shape after the "
                         f"first axis; got {train.shape} and {test.shape}.")


def _check_rows(name: str, array: np.ndarray, batch_size: int) -> None:
    if len(array) < batch_size:
        raise ValueError(f"{name} has {len(array)} rows, fewer than batch_size={batch_size}.")
