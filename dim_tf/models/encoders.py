"""The encoders of Deep InfoMax (Hjelm et al. 2019, appendix A.2).

Each encoder is a functional `keras.Model` that maps images scaled to [-1, 1]
to a dict of the feature layers the method and its evaluation use:

- ``local``: the local feature map C (M x M x channels) that DIM(L) scores
  against the global code at every location;
- ``conv``: the last convolutional map, the paper's "conv" evaluation layer;
- ``fc``: the hidden fully connected layer, the "fc" evaluation layer;
- ``y``: the global code Y (linear, `y_units` wide, 64 by default).

Conventions follow the reference PyTorch code so results are comparable: no
bias before batch norm, BN momentum 0.9 (PyTorch 0.1) and epsilon 1e-5, PyTorch's
default kernel initialiser, and 4x4 stride-2 convolutions padded by one pixel on
every side (Keras' 'same' would pad asymmetrically).
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from dim_tf.models import normalization

FEATURE_NAMES = ("local", "conv", "fc", "y")


def pytorch_default_initializer() -> keras.initializers.Initializer:
    """He-uniform with a = sqrt(5): PyTorch's default for conv and linear kernels."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


class _Builder:
    """Creates named layers with the reference code's conventions."""

    def __init__(self, sync_batch_norm: bool):
        self.sync_batch_norm = sync_batch_norm

    def batch_norm(self, name: str) -> layers.Layer:
        return normalization.BatchNormalization(
            momentum=0.9, epsilon=1e-5, synchronized=self.sync_batch_norm, name=name
        )

    def conv_bn_relu(self, x, filters, kernel, stride, padding, name):
        if padding:
            x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        x = layers.Conv2D(
            filters, kernel, stride, padding="valid", use_bias=False,
            kernel_initializer=pytorch_default_initializer(), name=f"{name}_conv",
        )(x)
        x = self.batch_norm(f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    def dense_bn_relu(self, x, units, name):
        x = layers.Dense(
            units, use_bias=False, kernel_initializer=pytorch_default_initializer(),
            name=f"{name}_dense",
        )(x)
        x = self.batch_norm(f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    def global_code(self, x, units):
        return layers.Dense(
            units, kernel_initializer=pytorch_default_initializer(), name="y"
        )(x)

    def bottleneck(self, x, width, stride, name):
        """ResNet bottleneck: 1x1 w, 3x3 w (stride), 1x1 4w, projection if needed."""
        out_channels = 4 * width
        shortcut = x
        if stride != 1 or x.shape[-1] != out_channels:
            shortcut = layers.Conv2D(
                out_channels, 1, stride, use_bias=False,
                kernel_initializer=pytorch_default_initializer(), name=f"{name}_proj_conv",
            )(x)
            shortcut = self.batch_norm(f"{name}_proj_bn")(shortcut)
        h = self.conv_bn_relu(x, width, 1, 1, 0, f"{name}_a")
        h = self.conv_bn_relu(h, width, 3, stride, 1, f"{name}_b")
        h = layers.Conv2D(
            out_channels, 1, use_bias=False,
            kernel_initializer=pytorch_default_initializer(), name=f"{name}_c_conv",
        )(h)
        h = self.batch_norm(f"{name}_c_bn")(h)
        h = layers.Add(name=f"{name}_add")([h, shortcut])
        return layers.ReLU(name=f"{name}_out")(h)


def _basic32x32(b: _Builder, x, y_units):
    x = b.conv_bn_relu(x, 64, 4, 2, 1, "conv1")
    local = b.conv_bn_relu(x, 128, 4, 2, 1, "conv2")
    conv = b.conv_bn_relu(local, 256, 4, 2, 1, "conv3")
    fc = b.dense_bn_relu(layers.Flatten(name="flatten")(conv), 1024, "fc")
    return local, conv, fc, b.global_code(fc, y_units)


def _basic64x64(b: _Builder, x, y_units):
    x = b.conv_bn_relu(x, 64, 4, 2, 1, "conv1")
    x = b.conv_bn_relu(x, 128, 4, 2, 1, "conv2")
    local = b.conv_bn_relu(x, 256, 4, 2, 1, "conv3")
    conv = b.conv_bn_relu(local, 512, 4, 2, 1, "conv4")
    fc = b.dense_bn_relu(layers.Flatten(name="flatten")(conv), 1024, "fc")
    return local, conv, fc, b.global_code(fc, y_units)


def _alex64x64(b: _Builder, x, y_units):
    def pool(h, name):
        return layers.MaxPooling2D(3, 2, padding="valid", name=name)(h)

    x = pool(b.conv_bn_relu(x, 96, 3, 1, 1, "conv1"), "pool1")
    x = pool(b.conv_bn_relu(x, 192, 3, 1, 1, "conv2"), "pool2")
    local = b.conv_bn_relu(x, 384, 3, 1, 1, "conv3")
    x = b.conv_bn_relu(local, 384, 3, 1, 1, "conv4")
    conv = pool(b.conv_bn_relu(x, 192, 3, 1, 1, "conv5"), "pool5")
    x = b.dense_bn_relu(layers.Flatten(name="flatten")(conv), 4096, "fc1")
    fc = b.dense_bn_relu(x, 4096, "fc")
    return local, conv, fc, b.global_code(fc, y_units)


def _resnet19_32x32(b: _Builder, x, y_units):
    x = b.conv_bn_relu(x, 64, 3, 2, 1, "stem")
    x = b.bottleneck(x, 64, 1, "block1")
    x = b.bottleneck(x, 64, 1, "block2")
    local = b.bottleneck(x, 128, 2, "block3")
    x = b.bottleneck(local, 128, 1, "block4")
    x = b.bottleneck(x, 256, 2, "block5")
    conv = b.bottleneck(x, 256, 1, "block6")
    fc = b.dense_bn_relu(layers.Flatten(name="flatten")(conv), 1024, "fc")
    return local, conv, fc, b.global_code(fc, y_units)


# name -> (image size the fully connected layers are built for, body)
_ENCODERS: dict[str, tuple[int, Callable]] = {
    "basic32x32": (32, _basic32x32),
    "basic64x64": (64, _basic64x64),
    "alex64x64": (64, _alex64x64),
    "resnet19_32x32": (32, _resnet19_32x32),
}
ENCODERS = tuple(_ENCODERS)


def encoder_image_size(name: str) -> int:
    """Side of the square images `name` takes. Raises ValueError if unknown."""
    if name not in _ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}. Valid encoders: {', '.join(ENCODERS)}.")
    return _ENCODERS[name][0]


def build_encoder(
    name: str = "basic32x32",
    channels: int = 3,
    y_units: int = 64,
    sync_batch_norm: bool = True,
) -> keras.Model:
    """Builds a DIM encoder.

    Args:
        name: one of `ENCODERS`.
        channels: 1 (grayscale) or 3 (RGB) input channels.
        y_units: width of the global code Y.
        sync_batch_norm: compute batch-norm statistics over the global batch under
            a `tf.distribute` strategy, so a multi-device step equals the
            single-device step on the same global batch. No effect on one device.

    Returns:
        A functional model from [batch, size, size, channels] images in [-1, 1]
        to the dict {"local", "conv", "fc", "y"}.

    Raises:
        ValueError: unknown name, channels not 1 or 3, or y_units < 1.
    """
    size = encoder_image_size(name)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}.")
    if int(y_units) < 1:
        raise ValueError(f"y_units must be a positive integer; got {y_units!r}.")
    images = keras.Input((size, size, channels), name="images")
    body = _ENCODERS[name][1]
    local, conv, fc, y = body(_Builder(sync_batch_norm), images, int(y_units))
    outputs = dict(zip(FEATURE_NAMES, (local, conv, fc, y)))
    return keras.Model(images, outputs, name=name)
