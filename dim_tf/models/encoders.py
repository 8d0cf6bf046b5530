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
default kernel initialiser, and convolutions padded by the same number of pixels on
every side (`PaddedConv2D`; Keras' 'same' pads asymmetrically whenever the total
padding is odd, e.g. a 3x3 stride-2 convolution of an even side).

The folded encoders (``fold*``, the reference code's FoldedConvnet and
FoldedResNet) cut the image into overlapping k x k crops with stride k/2 (a 7x7
grid on 32x32 with k=8 and on 64x64 with k=16), encode every crop alone with the
same trunk down to 1x1, and fold the 49 codes back into a 7x7 map: that map is
the local map, so each of its locations sees exactly one crop. As in the
reference code (`classifier_idx` conv = the fold layer) the folded map is also
the "conv" evaluation layer; fc and y are built on top of it.
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf
from keras import layers

from dim_tf.config import ENCODER_IMAGE_SIZE, ENCODERS, FEATURE_NAMES
from dim_tf.errors import ConfigError
from dim_tf.models import normalization



def layers_with_padding_layers(encoder: keras.Model) -> list[layers.Layer | None]:
    """`encoder.layers` as an encoder built before `PaddedConv2D` listed them: each
    padded convolution preceded by its `ZeroPadding2D` (None here; it had no weights).

    Keras checkpoints a functional model's layers by their index in this list
    (`_operations/<index>`), so checkpoints of those encoders restore through it
    (`dim_tf.training.checkpoints`).
    """
    listed: list[layers.Layer | None] = []
    for layer in encoder.layers:
        if isinstance(layer, PaddedConv2D) and layer.pad:
            listed.append(None)
        listed.append(layer)
    return listed


def pytorch_default_initializer() -> keras.initializers.Initializer:
    """He-uniform with a = sqrt(5): PyTorch's default for conv and linear kernels."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def same_padding_is_symmetric(side: int, kernel: int, stride: int, pad: int) -> bool:
    """Whether TensorFlow's 'SAME' padding of a `side`-long axis is `pad` zeros at each end.

    'SAME' pads max((ceil(side / stride) - 1) * stride + kernel - side, 0) in all,
    the odd one at the end; that is `pad` on each side when it totals 2 * pad.
    """
    total = max((-(-side // stride) - 1) * stride + kernel - side, 0)
    return total == 2 * pad


@keras.saving.register_keras_serializable(package="dim_tf")
class PaddedConv2D(layers.Conv2D):
    """A convolution of its input zero-padded by `pad` pixels on every side, PyTorch's
    `Conv2d(padding=pad)`.

    Where TensorFlow's 'SAME' padding is that padding (every 4x4 stride-2
    convolution of an even side, every 3x3 stride-1 one), the convolution pads by
    itself: faster than a separate pad on its forward and backward passes
    (docs/performance.md). Otherwise (a 3x3 stride-2 convolution of an even side,
    which 'SAME' pads at the end only) the input is padded first. Either way the
    result is that of `ZeroPadding2D(pad)` and a 'valid' `Conv2D` (tested), the
    encoders' layers until December 2026. Explicit padding lists
    (`tf.nn.conv2d(padding=[[0, 0], [p, p], ...])`) are not used: oneDNN runs them
    about 2x slower than either.

    Args:
        pad: pixels of zeros on each side, >= 0.
        **kwargs: `keras.layers.Conv2D`'s arguments; `padding` must stay 'valid'.
    """

    def __init__(self, *args, pad: int = 0, **kwargs):
        if kwargs.get("padding", "valid") != "valid":
            raise ValueError("PaddedConv2D pads by `pad`; leave Conv2D's padding 'valid'.")
        super().__init__(*args, **kwargs)
        if int(pad) < 0 or int(pad) != pad:
            raise ValueError(f"pad must be a non-negative integer; got {pad!r}.")
        self.pad = int(pad)
        if self.data_format != "channels_last" or self.dilation_rate != (1, 1) or self.groups != 1:
            raise ValueError("PaddedConv2D supports channels_last, undilated, ungrouped "
                             "convolutions only.")

    def pads_in_convolution(self, height: int | None, width: int | None) -> bool:
        """Whether the convolution pads an input of this size by itself ('SAME')."""
        return self.pad == 0 or all(
            side is not None and same_padding_is_symmetric(side, kernel, stride, self.pad)
            for side, kernel, stride in zip((height, width), self.kernel_size, self.strides))

    def convolution_op(self, inputs, kernel):
        strides = [1, *self.strides, 1]
        if self.pad == 0:
            return tf.nn.conv2d(inputs, kernel, strides, "VALID")
        if self.pads_in_convolution(inputs.shape[1], inputs.shape[2]):
            return tf.nn.conv2d(inputs, kernel, strides, "SAME")
        p = self.pad
        return tf.nn.conv2d(tf.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]]), kernel, strides,
                            "VALID")

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        grow = 2 * self.pad
        return super().compute_output_shape(
            (batch, None if height is None else height + grow,
             None if width is None else width + grow, channels))

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


class _Builder:
    """Creates named layers with the reference code's conventions."""

    def __init__(self, sync_batch_norm: bool):
        self.sync_batch_norm = sync_batch_norm

    def batch_norm(self, name: str) -> layers.Layer:
        return normalization.BatchNormalization(
            momentum=0.9, epsilon=1e-5, synchronized=self.sync_batch_norm, name=name
        )

    def conv_bn_relu(self, x, filters, kernel, stride, padding, name, dropout=0.0):
        x = PaddedConv2D(
            filters, kernel, stride, pad=padding, use_bias=False,
            kernel_initializer=pytorch_default_initializer(), name=f"{name}_conv",
        )(x)
        if dropout:  # PyTorch's Dropout2d, before BN as in the reference blocks: whole channels
            x = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
        x = self.batch_norm(f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    def dense_bn_relu(self, x, units, name, dropout=0.0):
        x = layers.Dense(
            units, use_bias=False, kernel_initializer=pytorch_default_initializer(),
            name=f"{name}_dense",
        )(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
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


def _basic32x32_trunk(b: _Builder, x):
    """conv1-conv3 of basic32x32: (conv2 output, conv3 output), 1/4 and 1/8 of the input side."""
    x = b.conv_bn_relu(x, 64, 4, 2, 1, "conv1")
    conv2 = b.conv_bn_relu(x, 128, 4, 2, 1, "conv2")
    return conv2, b.conv_bn_relu(conv2, 256, 4, 2, 1, "conv3")


def _alex_trunk(b: _Builder, x):
    """conv1-pool5 of the AlexNet-style encoder: (conv3 output, pool5 output).

    3x3 stride-1 convs keep the side; each 3x3 stride-2 pool maps s to (s - 3) // 2 + 1:
    64 -> 31 -> 15 (conv3) -> 7 (pool5) on a 64x64 image, 16 -> 7 -> 3 -> 1 on a 16x16 crop.
    """
    def pool(h, name):
        return layers.MaxPooling2D(3, 2, padding="valid", name=name)(h)

    x = pool(b.conv_bn_relu(x, 96, 3, 1, 1, "conv1"), "pool1")
    x = pool(b.conv_bn_relu(x, 192, 3, 1, 1, "conv2"), "pool2")
    conv3 = b.conv_bn_relu(x, 384, 3, 1, 1, "conv3")
    x = b.conv_bn_relu(conv3, 384, 3, 1, 1, "conv4")
    return conv3, pool(b.conv_bn_relu(x, 192, 3, 1, 1, "conv5"), "pool5")


def _resnet19_trunk(b: _Builder, x):
    """stem-block6 of resnet19_32x32: (block3 output, block6 output), 1/4 and 1/8 of the side."""
    x = b.conv_bn_relu(x, 64, 3, 2, 1, "stem")
    x = b.bottleneck(x, 64, 1, "block1")
    x = b.bottleneck(x, 64, 1, "block2")
    block3 = b.bottleneck(x, 128, 2, "block3")
    x = b.bottleneck(block3, 128, 1, "block4")
    x = b.bottleneck(x, 256, 2, "block5")
    return block3, b.bottleneck(x, 256, 1, "block6")


def _basic32x32(b: _Builder, x, y_units):
    local, conv = _basic32x32_trunk(b, x)
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
    local, conv = _alex_trunk(b, x)
    x = b.dense_bn_relu(layers.Flatten(name="flatten")(conv), 4096, "fc1")
    fc = b.dense_bn_relu(x, 4096, "fc")
    return local, conv, fc, b.global_code(fc, y_units)


def _resnet19_32x32(b: _Builder, x, y_units):
    local, conv = _resnet19_trunk(b, x)
    fc = b.dense_bn_relu(layers.Flatten(name="flatten")(conv), 1024, "fc")
    return local, conv, fc, b.global_code(fc, y_units)


@keras.saving.register_keras_serializable(package="dim_tf")
class StridedCrops(layers.Layer):
    """[N, S, S, C] images -> [N * G * G, k, k, C]: overlapping k x k crops, stride k/2.

    G = 2 S / k - 1 crops per side (7 for k=8 on 32x32 and k=16 on 64x64), so every
    pixel lies in one to four crops. Crops are ordered image-major, then row, then
    column: crop (n, r, c) is index (n * G + r) * G + c and covers rows
    [r k/2, r k/2 + k) and columns [c k/2, c k/2 + k) of image n. `FoldCrops`
    relies on that order. Differentiable (tf.image.extract_patches).

    Args:
        crop_size: k, even and at least 2.
    """

    def __init__(self, crop_size: int, **kwargs):
        super().__init__(**kwargs)
        if int(crop_size) < 2 or int(crop_size) % 2:
            raise ValueError(f"crop_size must be an even integer >= 2; got {crop_size!r}.")
        self.crop_size = int(crop_size)
        self.stride = self.crop_size // 2

    def grid_size(self, image_size: int) -> int:
        """G, the crops per side of a square image; ValueError if crops would miss pixels."""
        if image_size < self.crop_size or image_size % self.stride:
            raise ValueError(
                f"{self.crop_size}x{self.crop_size} crops with stride {self.stride} do not tile a "
                f"{image_size}x{image_size} image: its side must be a multiple of {self.stride} "
                f"and at least {self.crop_size}.")
        return (image_size - self.crop_size) // self.stride + 1

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if height != width:
            raise ValueError(f"StridedCrops takes square images; got {height}x{width}.")
        self.grid_size(height)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (None, self.crop_size, self.crop_size, input_shape[-1])

    def call(self, images):
        k, s = self.crop_size, self.stride
        patches = tf.image.extract_patches(
            images, sizes=[1, k, k, 1], strides=[1, s, s, 1], rates=[1, 1, 1, 1], padding="VALID")
        # [N, G, G, k*k*C], each patch flattened row, column, channel: a reshape gives the crops.
        return tf.reshape(patches, [-1, k, k, images.shape[-1]])

    def get_config(self):
        return {**super().get_config(), "crop_size": self.crop_size}


@keras.saving.register_keras_serializable(package="dim_tf")
class FoldCrops(layers.Layer):
    """[N * G * G, 1, 1, D] crop codes -> [N, G, G, D]: location (r, c) holds crop (r, c).

    The inverse of `StridedCrops`' ordering, for codes that have been reduced to 1x1
    (the reference code's Fold also only refolds 1x1 codes).

    Args:
        grid_size: G, the crops per side.
    """

    def __init__(self, grid_size: int, **kwargs):
        super().__init__(**kwargs)
        if int(grid_size) < 1:
            raise ValueError(f"grid_size must be a positive integer; got {grid_size!r}.")
        self.grid_size = int(grid_size)

    def build(self, input_shape):
        if tuple(input_shape[1:3]) != (1, 1):
            raise ValueError("FoldCrops folds crop codes of spatial size 1x1; got "
                             f"{input_shape[1]}x{input_shape[2]}: reduce each crop to 1x1 first.")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (None, self.grid_size, self.grid_size, input_shape[-1])

    def call(self, codes):
        g = self.grid_size
        return tf.reshape(codes, [-1, g, g, codes.shape[-1]])

    def get_config(self):
        return {**super().get_config(), "grid_size": self.grid_size}


def _folded_local_map(x, crop_size: int, crop_trunk: Callable):
    """Encodes each strided crop of `x` alone with `crop_trunk` (crops -> [.., 1, 1, D]) and
    folds the codes into the G x G x D local map. Batch norm inside the trunk sees the
    N * G * G crops as its batch, as in the reference code."""
    crops_layer = StridedCrops(crop_size, name="crops")
    grid = crops_layer.grid_size(x.shape[1])
    return FoldCrops(grid, name="fold")(crop_trunk(crops_layer(x)))


def _foldbasic32x32(b: _Builder, x, y_units):
    """basic32x32's convs on each 8x8 crop (8 -> 4 -> 2 -> 1), folded to 7x7x256.

    Not a reference config: it is built from basic32x32 the way the reference builds
    foldresnet19_32x32 from resnet19_32x32 (fold, flatten, fc 1024, Y); a cheap folded
    encoder for CIFAR-sized images.
    """
    local = _folded_local_map(x, 8, lambda crops: _basic32x32_trunk(b, crops)[1])
    fc = b.dense_bn_relu(layers.Flatten(name="flatten")(local), 1024, "fc")
    return local, local, fc, b.global_code(fc, y_units)


def _foldresnet19_32x32(b: _Builder, x, y_units):
    """The reference's foldresnet19_32x32 (configs/resnets.py): resnet19_32x32's stem and
    blocks on each 8x8 crop (8 -> 4 -> 2 -> 1), folded to 7x7x1024; fc 1024 on the
    flattened map, then Y. Local map and "conv" are the folded map."""
    local = _folded_local_map(x, 8, lambda crops: _resnet19_trunk(b, crops)[1])
    fc = b.dense_bn_relu(layers.Flatten(name="flatten")(local), 1024, "fc")
    return local, local, fc, b.global_code(fc, y_units)


def _foldalex64x64(b: _Builder, x, y_units):
    """The reference's foldalex64x64 (configs/convnets.py, its STL-10 folded network):
    alex64x64's conv1-pool5 on each 16x16 crop (16 -> 7 -> 3 -> 1), folded to 7x7x192
    (local map and "conv"); then conv 384 3x3 stride 2 unpadded (7 -> 3) with channel
    dropout 0.1, fc 4096 with dropout 0.1 ("fc"), and Y.

    The reference initialises this variant with N(0, 0.02) and biases before BN; we keep
    this module's conventions (PyTorch's default init, no bias under BN), which are also
    those of its multi-global sibling foldmultialex64x64 that the reference README runs.
    """
    local = _folded_local_map(x, 16, lambda crops: _alex_trunk(b, crops)[1])
    h = b.conv_bn_relu(local, 384, 3, 2, 0, "conv6", dropout=0.1)
    fc = b.dense_bn_relu(layers.Flatten(name="flatten")(h), 4096, "fc", dropout=0.1)
    return local, local, fc, b.global_code(fc, y_units)


# name -> body; the names and the image size each body's fully connected layers are
# built for are dim_tf.config's (ENCODERS, ENCODER_IMAGE_SIZE).
_BODIES: dict[str, Callable] = {
    "basic32x32": _basic32x32,
    "basic64x64": _basic64x64,
    "alex64x64": _alex64x64,
    "resnet19_32x32": _resnet19_32x32,
    "foldbasic32x32": _foldbasic32x32,
    "foldresnet19_32x32": _foldresnet19_32x32,
    "foldalex64x64": _foldalex64x64,
}
assert tuple(_BODIES) == ENCODERS, "dim_tf.config.ENCODERS and the encoder bodies disagree"


def encoder_image_size(name: str) -> int:
    """Side of the square images `name` takes. Raises ConfigError if unknown."""
    if name not in ENCODER_IMAGE_SIZE:
        raise ConfigError(f"Unknown encoder {name!r}. Valid encoders: {', '.join(ENCODERS)}.")
    return ENCODER_IMAGE_SIZE[name]


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
        ConfigError: unknown name, channels not 1 or 3, or y_units < 1.
    """
    size = encoder_image_size(name)
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3; got {channels!r}.")
    if int(y_units) < 1:
        raise ConfigError(f"y_units must be a positive integer; got {y_units!r}.")
    images = keras.Input((size, size, channels), name="images")
    body = _BODIES[name]
    local, conv, fc, y = body(_Builder(sync_batch_norm), images, int(y_units))
    outputs = dict(zip(FEATURE_NAMES, (local, conv, fc, y)))
    return keras.Model(images, outputs, name=name)
