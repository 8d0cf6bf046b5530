"""Critic networks of Deep InfoMax: MI heads and discriminators.

- `MIProjection`: the reference code's encode-and-dot head (a 1x1-conv residual
  block with layer norm); one on the local map, one on the global code, their
  dot product is the local critic score.
- `ConcatAndConvolveCritic`: the paper's Figure 3 local critic.
- `GlobalCritic`: the paper's global (DIM(G)) discriminator.
- `PriorDiscriminator`: the prior-matching discriminator (1000-200-1).

Dense layers on the last axis of a feature map are 1x1 convolutions; using
them lets one head serve maps ([n, M, M, C]) and vectors ([n, C]) alike.
Critics whose first layer sees a concatenation [y; c] are computed as
W_y y + W_c c, so every (code, map) pair of a batch is scored without
materialising the concatenation for each pair.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from dim_tf.models import normalization
from dim_tf.models.encoders import pytorch_default_initializer


class _NearIdentity(keras.initializers.Initializer):
    """Uniform(-0.01, 0.01) with ones on the diagonal: the shortcut starts as a copy."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        fan_in, units = shape
        noise = keras.random.uniform(shape, -0.01, 0.01, dtype=dtype, seed=self.seed)
        return ops.where(ops.eye(fan_in, units, dtype="bool"), ops.ones_like(noise), noise)

    def get_config(self):
        return {"seed": self.seed}


class MIProjection(layers.Layer):
    """Encode-and-dot head: LayerNorm(nonlinear(x) + shortcut(x)) on the last axis.

    nonlinear = 1x1 conv (no bias) -> BN -> ReLU -> 1x1 conv; shortcut = linear
    1x1 conv, initialised near the identity when it widens the input.

    Args:
        units: output width (`mi_units`, 2048 in the paper's DIM(L) runs).
        sync_batch_norm: synchronise batch-norm statistics across replicas.
    """

    def __init__(self, units: int, sync_batch_norm: bool = True, **kwargs):
        super().__init__(**kwargs)
        if int(units) < 1:
            raise ValueError(f"mi_units must be a positive integer; got {units!r}.")
        self.units = int(units)
        self.sync_batch_norm = sync_batch_norm
        init = pytorch_default_initializer
        self.hidden = layers.Dense(units, use_bias=False, kernel_initializer=init(), name="hidden")
        self.hidden_bn = normalization.BatchNormalization(
            momentum=0.9, epsilon=1e-5, synchronized=sync_batch_norm, name="hidden_bn"
        )
        self.output_dense = layers.Dense(units, kernel_initializer=init(), name="output")
        self.layer_norm = normalization.LayerNormalization(epsilon=1e-5, name="layer_norm")
        self.shortcut = None

    def build(self, input_shape):
        in_channels = input_shape[-1]
        shortcut_init = (
            _NearIdentity() if self.units >= in_channels else pytorch_default_initializer()
        )
        self.shortcut = layers.Dense(
            self.units, use_bias=False, kernel_initializer=shortcut_init, name="shortcut"
        )
        self.hidden.build(input_shape)
        hidden_shape = tuple(input_shape[:-1]) + (self.units,)
        self.hidden_bn.build(hidden_shape)
        self.output_dense.build(hidden_shape)
        self.layer_norm.build(hidden_shape)
        self.shortcut.build(input_shape)

    def call(self, x, training=None):
        h = self.hidden(x)
        h = ops.relu(self.hidden_bn(h, training=training))
        return self.layer_norm(self.output_dense(h) + self.shortcut(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "sync_batch_norm": self.sync_batch_norm}


class ConcatAndConvolveCritic(layers.Layer):
    """Local critic of the paper's Figure 3: [tile(Y); C] -> 1x1 convs 512, 512, 1.

    `call(codes, maps)` scores code i against candidate maps [i, k]:
    codes [n, D], maps [n, K, M, M, C] -> scores [n, K, M*M].
    """

    def __init__(self, hidden_units: int = 512, **kwargs):
        super().__init__(**kwargs)
        init = pytorch_default_initializer
        self.hidden_units = hidden_units
        self.code_in = layers.Dense(hidden_units, use_bias=False, kernel_initializer=init(), name="code_in")
        self.map_in = layers.Dense(hidden_units, kernel_initializer=init(), name="map_in")
        self.hidden = layers.Dense(hidden_units, activation="relu", kernel_initializer=init(), name="hidden")
        self.score = layers.Dense(1, kernel_initializer=init(), dtype="float32", name="score")

    def call(self, codes, maps):
        shape = ops.shape(maps)
        maps = ops.reshape(maps, (shape[0], shape[1], shape[2] * shape[3], shape[4]))
        h = self.map_in(maps) + self.code_in(codes)[:, None, None, :]
        h = self.hidden(ops.relu(h))
        return ops.squeeze(self.score(h), -1)

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units}


class GlobalCritic(layers.Layer):
    """Global (DIM(G)) discriminator: C -> conv3x3 64 -> ReLU -> conv3x3 32 ->
    flatten, concatenated with Y -> fc 512 -> ReLU -> fc 512 -> ReLU -> fc 1.

    Split in two so every (code, map) pair of a batch is scored cheaply:
    `encode_maps(maps)` -> [N, 512] and `encode_codes(codes)` -> [n, 512] are
    the two halves of the first fully connected layer; `pair_scores` adds
    them for each (code, candidate) pair and finishes the critic.
    """

    def __init__(self, hidden_units: int = 512, **kwargs):
        super().__init__(**kwargs)
        init = pytorch_default_initializer
        self.hidden_units = hidden_units
        self.conv1 = layers.Conv2D(64, 3, activation="relu", kernel_initializer=init(), name="conv1")
        self.conv2 = layers.Conv2D(32, 3, kernel_initializer=init(), name="conv2")
        self.flatten = layers.Flatten()
        self.map_in = layers.Dense(hidden_units, kernel_initializer=init(), name="map_in")
        self.code_in = layers.Dense(hidden_units, use_bias=False, kernel_initializer=init(), name="code_in")
        self.hidden = layers.Dense(hidden_units, activation="relu", kernel_initializer=init(), name="hidden")
        self.score = layers.Dense(1, kernel_initializer=init(), dtype="float32", name="score")

    def encode_maps(self, maps):
        return self.map_in(self.flatten(self.conv2(self.conv1(maps))))

    def encode_codes(self, codes):
        return self.code_in(codes)

    def pair_scores(self, encoded_codes, encoded_candidates):
        """Scores [n, K] of codes [n, H] against their candidates [n, K, H]."""
        h = ops.relu(encoded_codes[:, None, :] + encoded_candidates)
        return ops.squeeze(self.score(self.hidden(h)), -1)

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units}


def build_prior_discriminator(code_units: int = 64) -> keras.Model:
    """Prior-matching discriminator D: fc 1000 -> ReLU -> fc 200 -> ReLU -> fc 1.

    D never uses batch statistics, so its gradient w.r.t. each input row
    depends on that row only (needed by the per-example gradient penalty).
    """
    init = pytorch_default_initializer
    codes = keras.Input((code_units,), name="codes")
    # float32 whatever the global policy: D is small and its gradient penalty
    # differentiates through it twice.
    h = layers.Dense(1000, activation="relu", kernel_initializer=init(), dtype="float32", name="fc1")(codes)
    h = layers.Dense(200, activation="relu", kernel_initializer=init(), dtype="float32", name="fc2")(h)
    logits = layers.Dense(1, kernel_initializer=init(), dtype="float32", name="logit")(h)
    return keras.Model(codes, logits, name="prior_discriminator")


def build_paper_classifier(num_classes: int, sync_batch_norm: bool = False,
                           name: str = "paper_classifier") -> keras.Model:
    """The paper's frozen-feature classifier (sec. 4.1): flatten -> linear 200 ->
    dropout 0.1 -> BN -> ReLU -> linear(classes), logits out. Used by the
    evaluation probes and by the online monitor during training."""
    init = pytorch_default_initializer
    return keras.Sequential([
        layers.Flatten(),
        layers.Dense(200, kernel_initializer=init()),
        layers.Dropout(0.1),
        normalization.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=sync_batch_norm),
        layers.ReLU(),
        layers.Dense(num_classes, kernel_initializer=init(), dtype="float32"),
    ], name=name)
