"""`DeepInfoMax`: a `keras.Model` whose `train_step` plays DIM's two-player step.

One step on a batch of images (Hjelm et al. 2019, eq. 8):

- the encoder side (encoder, MI heads and critics; one optimiser) minimises
  beta * local + alpha * global + gamma * prior, where prior is the
  non-saturating loss softplus(-D(sigmoid(Y)));
- the prior discriminator D (its own optimiser) minimises its loss on the
  same codes with the encoder cut off (stop-gradient), plus a zero-centred
  gradient penalty on prior samples and codes.

Both gradients are taken at the same parameters from one forward pass, then
both optimisers step. Under a `tf.distribute` strategy each replica reduces its
per-example losses by the *global* batch size and gradients are summed across
replicas; by default every other image of the *global* batch is a negative
(features are all-gathered), so a multi-replica step equals the single-device
step on the same global batch (batch norm is synchronised; prior samples are
drawn for the global batch from a stateless seed and sliced per replica).

A batch [n, V, H, W, C] of V >= 2 augmented views of each image trains
multi-view DIM (Bachman et al. 2019, Augmented Multiscale DIM): the encoder runs
once on the n * V views, and for every ordered pair of views (a, b), a != b,
view a's global code is scored against view b's local map, the same image's as
the positive and other images' view-b maps as negatives; an image's loss is the
mean over the pairs. A batch [n, H, W, C] is the paper's single-view DIM.

A step with a NaN or Inf in any term or checked gradient applies nothing and
stops `fit` with `NonFiniteError` naming the step and the terms. The flags are
computed in the graph and turned into names on the host, so the guard also
holds under XLA (`jit_compile=True`), which ignores `tf.debugging.Assert`.
`fit` and `train_on_batch` raise; a `train_step` called directly on one device
skips such a step without raising (the wrapper of `make_train_function` raises).

Typical use::

    with strategy.scope():
        model = DeepInfoMax(build_encoder("basic32x32"), beta=1.0, gamma=0.1)
        model.compile()  # Adam(1e-4, 0.5, 0.999) for both players
    model.fit(images_in_minus_one_to_one, epochs=...)
"""

from __future__ import annotations

import math
import re

import keras
import tensorflow as tf

from dim_tf.config import DEFAULT_MI_UNITS, FEATURE_LAYERS, LOCAL_CRITICS, NEGATIVES, TrainConfig
from dim_tf.errors import NonFiniteError
from dim_tf.models.heads import (
    ConcatAndConvolveCritic,
    GlobalCritic,
    MIProjection,
    build_paper_classifier,
    build_prior_discriminator,
)
from dim_tf.models.encoders import build_encoder
from dim_tf.objectives import prior as prior_lib
from dim_tf.objectives import scores as scores_lib
from dim_tf.objectives import stabilization
from dim_tf.objectives.estimators import canonical_estimator, per_example_mi
from dim_tf.training import precision
from dim_tf.training.keras_hooks import PrebuiltModel
from dim_tf.training.optimizers import default_optimizer
from dim_tf.training.schedule import learning_rate_for
from dim_tf.training.xla import choose_jit_compile

# Under multi-replica strategies the guard is an in-graph assertion whose message
# reads "assertion failed: [NaN or Inf at DIM training step] [STEP] [flags:] [0 1 ...]".
NON_FINITE_MARKER = "NaN or Inf at DIM training step"
_ASSERTED = re.compile(re.escape(NON_FINITE_MARKER) + r"\] \[(\d+)\] \[flags:\] \[([\d ]*)\]")


def build_model(config: TrainConfig, monitor_classes: int | None = None) -> "DeepInfoMax":
    """The compiled DeepInfoMax model of `config` (call inside the strategy's scope).

    `monitor_classes` switches the online monitor on (labelled data, config.monitor).
    """
    encoder = build_encoder(config.encoder, channels=config.channels, y_units=config.y_units)
    model = DeepInfoMax(
        encoder, estimator=config.estimator, alpha=config.alpha, beta=config.beta,
        gamma=config.gamma, mi_units=config.mi_units, local_critic=config.local_critic,
        negatives=config.negatives, gradient_penalty_weight=config.gradient_penalty_weight,
        score_clip=config.score_clip, score_penalty=config.score_penalty, seed=config.seed,
        monitor_classes=monitor_classes if config.monitor else None,
    )
    rate = learning_rate_for(config)  # both players; the online monitor keeps its constant rate
    model.compile(default_optimizer(rate), default_optimizer(rate),
                  jit_compile=choose_jit_compile(config.jit_compile).enabled)
    return model


def _images_and_labels(data):
    """(images, labels or None) from a batch given as images, (images, labels[, ...])
    or {"image": ..., "label": ...}. Labels only ever feed the online monitor."""
    if isinstance(data, dict):
        return data["image"], data.get("label")
    if isinstance(data, (tuple, list)):
        return data[0], (data[1] if len(data) > 1 else None)
    return data, None


def _views_of(images) -> int:
    """Views per image of a batch: 1 for [n, H, W, C], V for [n, V, H, W, C]."""
    shape = tf.TensorShape(images.shape)
    if shape.rank == 4:
        return 1
    if shape.rank == 5 and shape[1] is not None:
        return int(shape[1])
    raise ValueError("images must be a batch [n, H, W, C] or of views [n, V, H, W, C] with V "
                     f"known when the step is traced; got shape {shape}.")


def _reshaped(value: tf.Tensor, leading: list[int], keep_from: int) -> tf.Tensor:
    """`value` reshaped to leading + its dims from `keep_from` on, static where known
    (the FLOP count and XLA want static shapes)."""
    dims = [d if d is not None else tf.shape(value)[i]
            for i, d in enumerate(value.shape.as_list()[keep_from:], start=keep_from)]
    return tf.reshape(value, leading + dims)


def _flatten_views(images):
    """[n, V, H, W, C] -> [n * V, H, W, C], image-major (image 0's views first), so
    the codes of a replica's images stay one consecutive block of the global batch."""
    if tf.TensorShape(images.shape).rank == 4:
        return images
    return _reshaped(tf.convert_to_tensor(images), [-1], keep_from=2)


def _split_views(features: tf.Tensor, views: int) -> list[tf.Tensor]:
    """Image-major [n * V, ...] -> V tensors [n, ...], one per view (reshape and
    unstack: a strided slice of the batch axis is several times slower on CPU)."""
    if views == 1:
        return [features]
    return tf.unstack(_reshaped(features, [-1, views], keep_from=1), num=views, axis=1)


def _view_pairs(views: int) -> list[tuple[int, int]]:
    """(code view, map view) pairs scored: every ordered pair of distinct views, or
    with one view the image's own code against its own map."""
    if views == 1:
        return [(0, 0)]
    return [(a, b) for a in range(views) for b in range(views) if a != b]


def _mean(values: list[tf.Tensor]) -> tf.Tensor:
    """Elementwise mean of equally shaped tensors (one tensor is returned as is)."""
    return values[0] if len(values) == 1 else tf.add_n(values) / float(len(values))


def _mean_over_views(per_code: tf.Tensor, views: int) -> tf.Tensor:
    """Image-major per-code values [n * V] -> per-image means [n]."""
    if views == 1:
        return per_code
    return tf.reduce_mean(tf.reshape(per_code, [-1, views]), axis=1)


def _first_view(features: dict, views: int) -> dict:
    """The features of each image's view 0 (what the online monitor sees)."""
    return features if views == 1 else {name: _split_views(value, views)[0]
                                        for name, value in features.items()}


def _cross_replica_merges() -> bool:
    """Whether an optimiser's update merges across replicas (MirroredStrategy and
    its multi-worker and TPU kin), which `tf.cond` cannot contain."""
    strategy = tf.distribute.get_strategy()
    return tf.distribute.has_strategy() and not isinstance(strategy, tf.distribute.OneDeviceStrategy)


def _sum_over_replicas(value: tf.Tensor) -> tf.Tensor:
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce("sum", value)


def _non_finite(value) -> tf.Tensor:
    """1.0 if a tensor (or any of a list of tensors) holds a NaN or Inf, else 0.0."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    # x * 0 is 0 for finite x and NaN for NaN or Inf: one reduction per tensor.
    total = tf.add_n([tf.reduce_sum(tf.cast(p, tf.float32) * 0.0) for p in parts if p is not None])
    return tf.cast(tf.logical_not(tf.math.is_finite(total)), tf.float32)


class _SkippedStep:
    """The first step that was not applied for a NaN or Inf, and its flags.

    A plain object, not a Keras layer: its variable is not part of the model's
    weights or checkpoints. Once set, later steps of the same train-function call
    (steps_per_execution > 1) are not applied either, so training stops at the
    first bad step whatever the execution grouping.
    """

    MAX_NAMES = 31  # flags travel as bits of one int32

    def __init__(self):
        self._record = tf.Variable([0, 0], dtype=tf.int32, trainable=False, name="skipped_step")

    def apply_if_finite(self, flags: tf.Tensor, step: tf.Tensor, apply) -> None:
        if flags.shape[0] > self.MAX_NAMES:
            raise ValueError(f"at most {self.MAX_NAMES} checked terms; got {flags.shape[0]}.")
        bits = tf.reduce_sum(flags * tf.bitwise.left_shift(1, tf.range(tf.shape(flags)[0])))
        clean = tf.logical_and(tf.equal(bits, 0), tf.equal(self._record[0], 0))

        def applied():
            apply()
            return tf.constant(True)

        def skipped():
            first = tf.where(tf.equal(self._record[0], 0), tf.stack([step, bits]), self._record)
            self._record.assign(first)
            return tf.constant(False)

        tf.cond(clean, applied, skipped)

    def take(self) -> tuple[int, list[int]] | None:
        """(step, flags) of a skipped step, clearing the record; None if none."""
        step, bits = (int(v) for v in self._record.numpy())
        if step == 0:
            return None
        self._record.assign([0, 0])
        return step, [(bits >> i) & 1 for i in range(self.MAX_NAMES)]


def _is_multi_worker() -> bool:
    return isinstance(
        tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy
    )


class DeepInfoMax(PrebuiltModel):
    """Deep InfoMax: an encoder trained by local, global and prior objectives.

    Args:
        encoder: a model from `build_encoder` (outputs "local" and "y").
        estimator: MI estimator for the local and global objectives (see
            `dim_tf.objectives.estimators.ESTIMATORS`).
        alpha: weight of the global objective (DIM(G)).
        beta: weight of the local objective (DIM(L)).
        gamma: weight of the encoder's prior-matching loss.
        mi_units: width of the encode-and-dot heads.
        local_critic: "dot" (encode-and-dot, the reference code) or "concat"
            (concat-and-convolve, the paper's Figure 3).
        negatives: "global" (default: every other image of the global batch, as
            in the paper; features are all-gathered from every replica) or
            "replica" (only this replica's batch: R replicas give each image
            batch/R - 1 negatives instead of batch - 1, which changes the
            estimator, most of all infoNCE's bound log(K); cheaper at scale).
            The same on one device.
        negative_group_size: if set, each image competes only with the images
            of its group of this many consecutive images (see `objectives.scores`).
        gradient_penalty_weight: weight of D's zero-centred gradient penalty.
        score_clip: if > 0, the local and global estimators see the soft-clipped
            scores c * tanh(s / c) (AMDIM; see `objectives.stabilization`).
        score_penalty: if > 0, each objective's loss gains this weight times the
            mean squared raw score of the image's rows (logged as
            "local_score_penalty" and "global_score_penalty", unweighted), so it
            is scaled by beta and alpha with its objective.
        sync_batch_norm: synchronise the MI heads' batch-norm statistics across
            replicas (build the encoder with the same setting).
        seed: seed of the prior samples.
        monitor_classes: if set, train the paper's classifier on stop-gradient
            features of `monitor_layers` alongside DIM (its own optimiser), on the
            batches' labels (label < 0 = unlabelled, ignored), as the reference
            code's online monitor; no gradient of it reaches the encoder.
        monitor_layers: encoder outputs the online monitor probes.

    The number of views is the batch's: images [n, H, W, C] are one view (the
    paper), [n, V, H, W, C] are V views of each of n images (see the module
    docstring); labels are [n] either way, and the online monitor sees view 0.

    `fit` on arrays keeps a last partial batch (Keras' behaviour); the command
    line and the reference code drop it, so every step there sees a full batch.
    """

    def __init__(
        self,
        encoder: keras.Model,
        *,
        estimator: str = "jsd",
        alpha: float = 0.0,
        beta: float = 1.0,
        gamma: float = 0.1,
        mi_units: int = DEFAULT_MI_UNITS,
        local_critic: str = "dot",
        negatives: str = "global",
        negative_group_size: int | None = None,
        gradient_penalty_weight: float = 1.0,
        score_clip: float = 0.0,
        score_penalty: float = 0.0,
        sync_batch_norm: bool = True,
        seed: int = 0,
        monitor_classes: int | None = None,
        monitor_layers: tuple[str, ...] = FEATURE_LAYERS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma),
                            ("gradient_penalty_weight", gradient_penalty_weight),
                            ("score_clip", score_clip), ("score_penalty", score_penalty)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")
        if alpha == 0 and beta == 0:
            raise ValueError("alpha and beta are both 0: nothing would maximise mutual information.")
        if local_critic not in LOCAL_CRITICS:
            raise ValueError(f"local_critic must be one of {LOCAL_CRITICS}; got {local_critic!r}.")
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}; got {negatives!r}.")
        if negative_group_size is not None and int(negative_group_size) < 2:
            raise ValueError(
                f"negative_group_size must be at least 2 (one negative); got {negative_group_size!r}."
            )
        self.encoder = encoder
        self.estimator = canonical_estimator(estimator)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.mi_units = int(mi_units)
        self.local_critic_kind = local_critic
        self.negatives = negatives
        self.negative_group_size = None if negative_group_size is None else int(negative_group_size)
        self.gradient_penalty_weight = float(gradient_penalty_weight)
        self.score_clip, self.score_penalty = float(score_clip), float(score_penalty)
        self.seed = int(seed)
        self.y_units = int(encoder.output["y"].shape[-1])

        # Components exist only for the terms with a non-zero weight.
        self.local_map_projection = self.local_code_projection = self.local_critic = None
        if self.beta > 0 and local_critic == "dot":
            self.local_map_projection = MIProjection(mi_units, sync_batch_norm, name="local_map_projection")
            self.local_code_projection = MIProjection(mi_units, sync_batch_norm, name="local_code_projection")
        elif self.beta > 0:
            self.local_critic = ConcatAndConvolveCritic(name="local_critic")
        self.global_critic = GlobalCritic(name="global_critic") if self.alpha > 0 else None
        self.prior_discriminator = (
            build_prior_discriminator(self.y_units) if self.gamma > 0 else None
        )
        self.monitors = {}
        if monitor_classes is not None:
            if int(monitor_classes) < 2:
                raise ValueError(f"monitor_classes must be >= 2; got {monitor_classes!r}.")
            self.monitors = {layer: build_paper_classifier(int(monitor_classes), sync_batch_norm,
                                                           name=f"monitor_{layer}")
                             for layer in monitor_layers}
        self.prior_optimizer = None
        self.monitor_optimizer = None
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self._metric_names()}
        self._build_by_tracing()

    # ----------------------------------------------------------------- set-up

    def _metric_names(self) -> list[str]:
        names = ["loss"]
        penalty = ["_score_penalty"] if self.score_penalty > 0 else []
        for objective, weight in (("local", self.beta), ("global", self.alpha)):
            if weight > 0:
                names += [f"{objective}{suffix}" for suffix in ["_loss", "_mi"] + penalty]
        if self.gamma > 0:
            names += ["prior_loss", "prior_disc_loss", "prior_gradient_penalty",
                      "prior_disc_accuracy"]
        names += [f"monitor_{layer}_accuracy" for layer in self.monitors]
        return names

    def _build_by_tracing(self) -> None:
        """Creates every variable now, eagerly: variables made inside a traced
        step under a strategy would be per-replica and unsynchronised."""
        image_shape = self.encoder.input_shape[1:]
        images = tf.zeros((self.negative_group_size or 2,) + tuple(image_shape))
        features = self.encoder(images, training=False)
        self._encoder_side_terms(features, training=False)
        for layer, monitor in self.monitors.items():
            monitor(features[layer], training=False)
        if self.prior_discriminator is not None:
            self.prior_discriminator(tf.zeros((2, self.y_units)))
        self.built = True

    @property
    def encoder_side_variables(self) -> list:
        """Trainable variables of the encoder and its MI heads (one optimiser)."""
        parts = [self.encoder, self.local_map_projection, self.local_code_projection,
                 self.local_critic, self.global_critic]
        return [v for part in parts if part is not None for v in part.trainable_variables]

    @property
    def monitor_variables(self) -> list:
        """Trainable variables of the online monitor's classifiers (their own optimiser)."""
        return [v for m in self.monitors.values() for v in m.trainable_variables]

    @property
    def prior_variables(self) -> list:
        """Trainable variables of the prior discriminator (its own optimiser)."""
        return [] if self.prior_discriminator is None else list(self.prior_discriminator.trainable_variables)

    def compile(
        self,
        encoder_optimizer: keras.optimizers.Optimizer | None = None,
        prior_optimizer: keras.optimizers.Optimizer | None = None,
        monitor_optimizer: keras.optimizers.Optimizer | None = None,
        **kwargs,
    ) -> None:
        """Sets both optimisers (default: the paper's Adam) and builds their slots.

        Call inside the strategy's scope: Adam's slots created lazily inside a
        distributed step fail (see docs on MirroredStrategy).
        """
        encoder_optimizer = encoder_optimizer or default_optimizer()
        monitor_optimizer = monitor_optimizer or default_optimizer()
        if precision.needs_loss_scaling():
            # The prior discriminator computes in float32 and needs no scaling.
            encoder_optimizer = precision.with_loss_scaling(encoder_optimizer)
            monitor_optimizer = precision.with_loss_scaling(monitor_optimizer)
        super().compile(optimizer=encoder_optimizer, auto_scale_loss=False, **kwargs)
        self.optimizer.build(self.encoder_side_variables)
        if self.prior_discriminator is not None:
            self.prior_optimizer = prior_optimizer or default_optimizer()
            self.prior_optimizer.build(self.prior_variables)
        if self.monitors:
            self.monitor_optimizer = monitor_optimizer
            self.monitor_optimizer.build(self.monitor_variables)
        self._skipped_step = _SkippedStep()

    @property
    def metrics(self) -> list:
        return list(self._trackers.values())

    def call(self, images, training=False):
        """The encoder's features {"local", "conv", "fc", "y"}."""
        return self.encoder(images, training=training)

    # ------------------------------------------------------------- objectives

    def _encoder_side_terms(self, features: dict, training: bool, views: int = 1) -> dict:
        """Per-image losses and MI estimates of the local and global objectives
        (each the mean over the view pairs), and their score penalties."""
        terms = {}
        if self.beta > 0:
            terms.update(self._objective_terms("local", self._local_scores(features, training, views)))
        if self.alpha > 0:
            terms.update(self._objective_terms("global", self._global_scores(features, views)))
        return terms

    def _local_scores(self, features: dict, training: bool, views: int) -> list:
        """(scores, positive_index) of the local critic for every view pair."""
        y, local_map = features["y"], features["local"]
        across, groups = self.negatives == "global", self.negative_group_size
        if self.local_critic is not None:
            codes, maps = _split_views(y, views), _split_views(local_map, views)
            return [scores_lib.concat_critic_scores(self.local_critic, codes[a], maps[b], across, groups)
                    for a, b in _view_pairs(views)]
        # The heads project every view at once: one batch-norm batch, as the encoder's.
        codes = _split_views(self.local_code_projection(y, training=training), views)
        maps = _split_views(self.local_map_projection(local_map, training=training), views)
        return [scores_lib.dot_product_scores(codes[a], maps[b], across, groups)
                for a, b in _view_pairs(views)]

    def _global_scores(self, features: dict, views: int) -> list:
        """(scores, positive_index) of the global critic for every view pair."""
        codes, maps = _split_views(features["y"], views), _split_views(features["local"], views)
        across, groups = self.negatives == "global", self.negative_group_size
        return [scores_lib.global_critic_scores(self.global_critic, codes[a], maps[b], across, groups)
                for a, b in _view_pairs(views)]

    def _objective_terms(self, objective: str, pair_scores: list) -> dict:
        """An objective's per-image loss and MI (and score penalty): the means over
        the view pairs of the estimator on the (soft-clipped) scores."""
        estimates = [per_example_mi(stabilization.soft_clip(scores, self.score_clip), positive,
                                    self.estimator) for scores, positive in pair_scores]
        terms = {f"{objective}_loss": _mean([e.loss for e in estimates]),
                 f"{objective}_mi": _mean([e.mi for e in estimates])}
        if self.score_penalty > 0:
            terms[f"{objective}_score_penalty"] = _mean(
                [stabilization.score_penalty(scores) for scores, _ in pair_scores])
        return terms

    def _objective_loss(self, objective: str, terms: dict) -> tf.Tensor:
        """An objective's per-image loss with its weighted score penalty, if any."""
        loss = terms[f"{objective}_loss"]
        if self.score_penalty > 0:
            loss += self.score_penalty * terms[f"{objective}_score_penalty"]
        return loss

    def _prior_samples(self, batch_size: tf.Tensor, stream: int) -> tf.Tensor:
        """This replica's slice of prior samples drawn for the whole global batch."""
        offset, global_size = scores_lib.replica_layout(batch_size)
        step = tf.cast(self.optimizer.iterations, tf.int32)
        seed = tf.stack([tf.constant(self.seed, tf.int32) + stream, step])
        samples = prior_lib.sample_uniform_prior(tf.stack([global_size, self.y_units]), seed)
        return samples[offset: offset + batch_size]

    def _prior_terms(self, y: tf.Tensor, training: bool, views: int) -> dict:
        """Per-image prior-matching terms, each the mean over the image's views' codes.

        The prior samples are drawn for the global batch of codes (images x views,
        image-major), so a replica's slice is the single device's."""
        codes = prior_lib.squash_codes(y)
        disc = prior_lib.discriminator_terms(
            self.prior_discriminator,
            self._prior_samples(tf.shape(codes)[0], stream=0 if training else 1),
            tf.stop_gradient(codes),
        )
        per_code = {"prior_loss": prior_lib.encoder_adversarial_loss(self.prior_discriminator, codes),
                    "prior_disc_loss": disc.loss,
                    "prior_gradient_penalty": disc.gradient_penalty,
                    "prior_disc_accuracy": disc.accuracy}
        return {name: _mean_over_views(value, views) for name, value in per_code.items()}

    def _step_terms(self, images, training: bool):
        """Forward pass: (encoder-side per-image loss, D's per-image loss, terms,
        features of view 0)."""
        views = _views_of(images)
        features = self.encoder(_flatten_views(images), training=training)
        terms = self._encoder_side_terms(features, training, views)
        encoder_loss = 0.0
        if self.beta > 0:
            encoder_loss += self.beta * self._objective_loss("local", terms)
        if self.alpha > 0:
            encoder_loss += self.alpha * self._objective_loss("global", terms)
        prior_loss = None
        if self.gamma > 0:
            terms.update(self._prior_terms(features["y"], training, views))
            encoder_loss += self.gamma * terms["prior_loss"]
            prior_loss = (terms["prior_disc_loss"]
                          + self.gradient_penalty_weight * terms["prior_gradient_penalty"])
        terms["loss"] = encoder_loss
        return encoder_loss, prior_loss, terms, _first_view(features, views)

    def _monitor_terms(self, features: dict, labels, training: bool):
        """Per-example masked cross-entropy of the monitors and their accuracy terms.

        Features are cut from the encoder (stop-gradient): the monitor watches the
        representation and must not shape it.
        """
        labels = tf.cast(labels, tf.int64)
        labelled = tf.cast(labels >= 0, tf.float32)
        safe_labels = tf.maximum(labels, 0)
        loss, terms = 0.0, {}
        for layer, monitor in self.monitors.items():
            logits = monitor(tf.stop_gradient(features[layer]), training=training)
            loss += labelled * tf.nn.sparse_softmax_cross_entropy_with_logits(safe_labels, logits)
            terms[f"monitor_{layer}_accuracy"] = tf.cast(
                tf.equal(tf.argmax(logits, -1), safe_labels), tf.float32)
        return loss, terms, labelled

    @staticmethod
    def _global_mean(per_example: tf.Tensor) -> tf.Tensor:
        """Sum over this replica / global batch size: summed over replicas, the mean."""
        _, global_size = scores_lib.replica_layout(tf.shape(per_example)[0])
        return tf.reduce_sum(per_example) / tf.cast(global_size, per_example.dtype)

    def _logs(self, terms: dict, weights: dict | None = None) -> dict:
        for name, tracker in self._trackers.items():
            if name in terms:
                tracker.update_state(terms[name], sample_weight=(weights or {}).get(name))
        # Keras 3.15's fit reduces logs along axis 0 under MultiWorkerMirroredStrategy
        # (keras-team/keras#20585): give it rank-1 values there.
        reshape = (lambda x: tf.reshape(x, [1])) if _is_multi_worker() else (lambda x: x)
        return {name: reshape(tracker.result()) for name, tracker in self._trackers.items()}

    # ------------------------------------------------------------ the steps

    def train_step(self, data):
        images, labels = _images_and_labels(data)
        with tf.GradientTape() as encoder_tape, tf.GradientTape() as prior_tape:
            encoder_per_example, prior_per_example, terms, features = self._step_terms(
                images, training=True)
            encoder_loss = self._global_mean(encoder_per_example)
            scaled_encoder_loss = self.optimizer.scale_loss(encoder_loss)
            if prior_per_example is not None:
                prior_loss = self._global_mean(prior_per_example)
        # Gradients of D's loss never reach the encoder (stop-gradient on the codes),
        # and each optimiser only ever sees its own player's variables.
        encoder_vars = self.encoder_side_variables
        updates = {"encoder": (self.optimizer, encoder_vars,
                               encoder_tape.gradient(scaled_encoder_loss, encoder_vars))}
        if prior_per_example is not None:
            prior_vars = self.prior_variables
            updates["prior"] = (self.prior_optimizer, prior_vars,
                                prior_tape.gradient(prior_loss, prior_vars))
        checked = dict(terms)
        weights = {}
        if self.monitors and labels is not None:
            with tf.GradientTape() as monitor_tape:
                monitor_loss, monitor_terms, labelled = self._monitor_terms(features, labels, True)
                # Averaged over the labelled images of the global batch, as the reference
                # code does: on STL-10 train+unlabelled only 1 image in 21 has a label,
                # and a division by the batch would shrink the monitor's rate 21-fold.
                labelled_count = tf.maximum(_sum_over_replicas(tf.reduce_sum(labelled)), 1.0)
                monitor_loss = tf.reduce_sum(monitor_loss) / labelled_count
                scaled_monitor_loss = self.monitor_optimizer.scale_loss(monitor_loss)
            monitor_vars = self.monitor_variables
            updates["monitor"] = (self.monitor_optimizer, monitor_vars,
                                  monitor_tape.gradient(scaled_monitor_loss, monitor_vars))
            checked["monitor_loss"] = monitor_loss
            terms.update(monitor_terms)
            weights = {name: labelled for name in monitor_terms}
        # Overflowing loss-scaled (float16) gradients are expected: their optimiser
        # skips the step and lowers the scale.
        checked.update({f"{player}_gradients": grads for player, (optimizer, _, grads) in updates.items()
                        if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)})
        # No variable of any player (nor an iteration count) moves unless every term
        # and checked gradient of this step is finite: a NaN/Inf stops training with
        # the previous step's weights and counters.
        self._apply_if_finite(checked, updates)
        return self._logs(terms, weights)

    def _apply_if_finite(self, checked: dict, updates: dict) -> None:
        """Applies every player's update if all of `checked` ({name: tensor or list
        of tensors}) is finite on every replica; otherwise applies nothing and
        records the step for `make_train_function`'s wrapper to raise.

        Without a multi-replica strategy the updates sit in a `tf.cond` and the
        flags go to a host-read variable: that compiles under XLA, which drops
        assertions. Under MirroredStrategy an optimiser's cross-replica merge
        cannot sit inside a `tf.cond`, and XLA is off there, so an assertion
        stops the step instead, carrying the flags as numbers.
        """
        names = sorted(checked)
        self._checked_names = tuple(names)  # fixed at tracing; read on the host
        flags = tf.stack([_non_finite(checked[name]) for name in names])
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            # One small all-reduce, so every worker stops at the same step.
            flags = tf.distribute.get_replica_context().all_reduce("sum", flags)
        flags = tf.cast(flags > 0, tf.int32)
        step = tf.cast(self.optimizer.iterations + 1, tf.int32)

        def apply_all():
            for optimizer, variables, grads in updates.values():
                optimizer.apply_gradients(zip(grads, variables))

        if _cross_replica_merges():
            check = tf.debugging.Assert(
                tf.equal(tf.reduce_sum(flags), 0),
                [NON_FINITE_MARKER, step, "flags:", flags], summarize=len(names))
            with tf.control_dependencies([check]):
                apply_all()
            return
        self._skipped_step.apply_if_finite(flags, step, apply_all)

    def make_train_function(self, force: bool = False):
        """Keras' train function, wrapped to raise `NonFiniteError` on the host when
        a step was not applied because a term or gradient was NaN or Inf."""
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force)
        run_steps = self.train_function

        def train_function(iterator):
            try:
                logs = run_steps(iterator)
            except tf.errors.InvalidArgumentError as error:
                match = _ASSERTED.search(str(error))
                if match is None:
                    raise
                flags = [int(f) for f in match.group(2).split()]
                raise self._non_finite_error(int(match.group(1)), flags) from None
            skipped = self._skipped_step.take()
            if skipped is not None:
                raise self._non_finite_error(*skipped)
            return logs

        self.train_function = train_function
        return train_function

    def _non_finite_error(self, step: int, flags: list[int]) -> NonFiniteError:
        terms = [name for name, flag in zip(self._checked_names, flags) if flag]
        return NonFiniteError(f"{NON_FINITE_MARKER} {step} in: {' '.join(terms)}",
                              step=step, terms=terms)

    def test_step(self, data):
        images, labels = _images_and_labels(data)
        _, _, terms, features = self._step_terms(images, training=False)
        weights = {}
        if self.monitors and labels is not None:
            _, monitor_terms, labelled = self._monitor_terms(features, labels, False)
            terms.update(monitor_terms)
            weights = {name: labelled for name in monitor_terms}
        return self._logs(terms, weights)

