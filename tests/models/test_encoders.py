"""Encoder architectures and MI heads."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dim_tf.models.encoders import (
    ENCODERS, FoldCrops, PaddedConv2D, StridedCrops, build_encoder, encoder_image_size,
    layers_with_padding_layers,
)
from dim_tf.models.heads import GlobalCritic, MIProjection

EXPECTED_SHAPES = {
    "basic32x32": {"local": (8, 8, 128), "conv": (4, 4, 256), "fc": (1024,), "y": (64,)},
    "basic64x64": {"local": (8, 8, 256), "conv": (4, 4, 512), "fc": (1024,), "y": (64,)},
    "alex64x64": {"local": (15, 15, 384), "conv": (7, 7, 192), "fc": (4096,), "y": (64,)},
    "resnet19_32x32": {"local": (8, 8, 512), "conv": (4, 4, 1024), "fc": (1024,), "y": (64,)},
    # Folded: 7x7 crops encoded to 1x1 each; the folded map is both local map and "conv".
    "foldbasic32x32": {"local": (7, 7, 256), "conv": (7, 7, 256), "fc": (1024,), "y": (64,)},
    "foldresnet19_32x32": {"local": (7, 7, 1024), "conv": (7, 7, 1024), "fc": (1024,), "y": (64,)},
    "foldalex64x64": {"local": (7, 7, 192), "conv": (7, 7, 192), "fc": (4096,), "y": (64,)},
}
# name -> (crop side k, stride k/2) of the folded encoders.
FOLDED = {"foldbasic32x32": 8, "foldresnet19_32x32": 8, "foldalex64x64": 16}


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_feature_shapes(name, channels):
    encoder = build_encoder(name, channels=channels)
    size = encoder_image_size(name)
    features = encoder(np.zeros((2, size, size, channels), np.float32), training=False)
    assert set(features) == {"local", "conv", "fc", "y"}
    for key, shape in EXPECTED_SHAPES[name].items():
        assert tuple(features[key].shape) == (2,) + shape, key


def test_every_encoder_has_expected_shapes():
    assert set(EXPECTED_SHAPES) == set(ENCODERS)
    assert set(FOLDED) == {name for name in ENCODERS if name.startswith("fold")}


def _crop_window(r, c, crop, size):
    """Boolean [size, size] mask of the pixels of crop (r, c)."""
    mask = np.zeros((size, size), bool)
    stride = crop // 2
    mask[r * stride:r * stride + crop, c * stride:c * stride + crop] = True
    return mask


def test_strided_crops_cut_every_window_in_order_and_fold_inverts_the_order():
    images = tf.reshape(tf.range(2 * 32 * 32 * 3, dtype=tf.float32), (2, 32, 32, 3))
    crops = StridedCrops(8)(images).numpy()
    assert crops.shape == (2 * 49, 8, 8, 3)
    for n in range(2):
        for r in range(7):
            for c in range(7):
                np.testing.assert_array_equal(
                    crops[(n * 7 + r) * 7 + c], images[n, 4 * r:4 * r + 8, 4 * c:4 * c + 8].numpy())
    # Fold puts crop (n, r, c)'s code at location (r, c) of image n.
    codes = crops[:, :1, :1, :]  # top-left pixel of each crop: (4r, 4c) of image n
    folded = FoldCrops(7)(codes).numpy()
    np.testing.assert_array_equal(folded, images.numpy()[:, 0:28:4, 0:28:4, :])


@pytest.mark.parametrize(
    "layer, message",
    [
        (lambda: StridedCrops(7), "crop_size must be an even integer"),
        (lambda: StridedCrops(16)(np.zeros((1, 36, 36, 3), np.float32)), "do not tile a 36x36 image"),
        (lambda: FoldCrops(7)(np.zeros((49, 2, 2, 3), np.float32)), "1x1"),
    ],
)
def test_crop_layers_refuse_what_they_cannot_tile_or_fold(layer, message):
    with pytest.raises(ValueError, match=message):
        layer()


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_folded_local_map_location_sees_only_its_own_crop(name):
    """d local[r, c] / d image is zero outside crop (r, c)'s window and non-zero inside it.

    A mis-cut crop (wrong offset or stride) or a mis-fold (rows and columns swapped,
    another image's crop) moves the gradient out of the window. Inference mode: in
    training mode batch norm's statistics couple all crops of the batch (as in the
    reference code), so locations are independent only given fixed statistics.
    """
    encoder = build_encoder(name, sync_batch_norm=False)
    size, crop = encoder_image_size(name), FOLDED[name]
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    weights = tf.constant(rng.normal(size=EXPECTED_SHAPES[name]["local"][-1]), tf.float32)
    # One copy of the image per location; copy b = 7r + c scores only location (r, c), so the
    # gradient of the sum w.r.t. copy b is the gradient of local[r, c] alone.
    images = tf.constant(np.repeat(image, 49, axis=0))
    selector = tf.reshape(tf.eye(49), (49, 7, 7, 1))
    with tf.GradientTape() as tape:
        tape.watch(images)
        local = encoder(images, training=False)["local"]
        score = tf.reduce_sum(selector * tf.tensordot(local, weights, 1)[..., tf.newaxis])
    magnitude = tf.reduce_sum(tf.abs(tape.gradient(score, images)), -1).numpy()  # [49, S, S]
    for r in range(7):
        for c in range(7):
            window = _crop_window(r, c, crop, size)
            grad = magnitude[7 * r + c]
            assert np.all(grad[~window] == 0), f"local[{r}, {c}] depends on pixels outside its crop"
            assert grad[window].max() > 0, f"local[{r}, {c}] does not depend on its crop"


@pytest.mark.parametrize("name", sorted(FOLDED))
@pytest.mark.parametrize("feature", ["local", "y"])
def test_gradients_reach_every_crop_of_a_folded_encoder(name, feature):
    """A scalar of the whole local map, and of Y, has a non-zero gradient in every crop's
    window, and the windows together cover every pixel of the image."""
    encoder = build_encoder(name, sync_batch_norm=False)
    size, crop = encoder_image_size(name), FOLDED[name]
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(images)
        out = encoder(images, training=False)[feature]
        score = tf.reduce_sum(out * tf.constant(rng.normal(size=out.shape), tf.float32))
    magnitude = tf.reduce_sum(tf.abs(tape.gradient(score, images)), -1).numpy()  # [2, S, S]
    covered = np.zeros((size, size), bool)
    for r in range(7):
        for c in range(7):
            window = _crop_window(r, c, crop, size)
            covered |= window
            for n in range(2):
                assert magnitude[n][window].max() > 0, f"no gradient reaches crop ({r}, {c})"
    assert covered.all()


def test_folded_encoder_survives_keras_and_saved_model_round_trips(tmp_path):
    """The crop and fold layers serialise: a .keras file and the TF Serving export
    both give back the in-memory encoder's outputs."""
    from dim_tf.config import NORMALIZED_SIGNATURE
    from dim_tf.serving.export import export_encoder

    encoder = build_encoder("foldbasic32x32", sync_batch_norm=False)
    rng = np.random.default_rng(2)
    for _ in range(2):  # non-trivial batch-norm statistics
        encoder(rng.uniform(-1, 0.5, (8, 32, 32, 3)).astype(np.float32), training=True)
    images = rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    expected = {k: v.numpy() for k, v in encoder(images, training=False).items()}

    encoder.save(tmp_path / "encoder.keras")
    restored = keras.models.load_model(tmp_path / "encoder.keras")
    for key, value in restored(images, training=False).items():
        np.testing.assert_allclose(value.numpy(), expected[key], rtol=1e-5, atol=1e-5)

    served = tf.saved_model.load(export_encoder(encoder, str(tmp_path / "export")))
    outputs = served.signatures[NORMALIZED_SIGNATURE](images=tf.constant(images))
    for key in ("local", "conv", "fc", "y"):
        np.testing.assert_allclose(outputs[key].numpy(), expected[key], rtol=1e-4, atol=1e-4)


def test_basic32x32_follows_reference_conventions():
    encoder = build_encoder("basic32x32")
    convs = [l for l in encoder.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.kernel_size for c in convs] == [(4, 4)] * 3
    assert all(not c.use_bias for c in convs)  # batch norm follows
    assert [c.pad for c in convs] == [1] * 3  # PyTorch's symmetric padding=1
    bns = [l for l in encoder.layers if l.__class__.__name__ == "BatchNormalization"]
    assert all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
    assert encoder.get_layer("y").use_bias


# (kernel, stride, pad, input side, padded by 'SAME'): the encoders' padded convolutions,
# and the cases where TensorFlow's 'SAME' pads otherwise (3x3 stride 2 on an even side pads
# only at the end; 4x4 stride 2 on an odd side pads 1 and 2), which PaddedConv2D must not use.
@pytest.mark.parametrize("kernel,stride,pad,side,same", [
    (4, 2, 1, 16, True), (4, 2, 1, 2, True), (3, 1, 1, 15, True), (3, 2, 1, 32, False),
    (3, 2, 1, 31, True), (4, 2, 1, 15, False), (1, 1, 0, 8, True)])
def test_padded_conv_equals_zero_padding_then_valid_conv_with_gradients(kernel, stride, pad,
                                                                       side, same):
    images = tf.constant(np.random.default_rng(0).normal(size=(3, side, side, 5)), tf.float32)
    padded = PaddedConv2D(4, kernel, stride, pad=pad, use_bias=False)
    reference = keras.Sequential([keras.layers.ZeroPadding2D(pad),
                                  keras.layers.Conv2D(4, kernel, stride, use_bias=False)])
    padded.build(images.shape)
    assert padded.pads_in_convolution(side, side) == same
    reference.build(images.shape)
    reference.layers[1].kernel.assign(padded.kernel)

    def forward_and_gradients(layer, kernel_variable):
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images)
            loss = tf.reduce_sum(outputs * tf.sin(outputs))  # gradients that vary per pixel
        return (outputs, *tape.gradient(loss, [images, kernel_variable]))

    expected = forward_and_gradients(reference, reference.layers[1].kernel)
    got = forward_and_gradients(padded, padded.kernel)
    assert got[0].shape == expected[0].shape
    assert tuple(padded.compute_output_shape(images.shape)) == tuple(expected[0].shape)
    # The kernel gradient sums hundreds of products, in another order: float32 rounding.
    for name, a, b in zip(("outputs", "input gradient", "kernel gradient"), got, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_padded_conv_round_trips_and_refuses_keras_padding():
    layer = PaddedConv2D(8, 3, 2, pad=1, name="c")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, PaddedConv2D) and restored.pad == 1
    with pytest.raises(ValueError, match="leave Conv2D's padding"):
        PaddedConv2D(8, 3, padding="same", pad=1)
    with pytest.raises(ValueError, match="non-negative"):
        PaddedConv2D(8, 3, pad=-1)


def test_layers_with_padding_layers_puts_a_slot_before_each_padded_conv():
    encoder = build_encoder("resnet19_32x32")  # 1x1 convolutions (pad 0) and 3x3 ones (pad 1)
    listed = layers_with_padding_layers(encoder)
    assert [l for l in listed if l is not None] == encoder.layers
    for index, layer in enumerate(listed):
        padded = isinstance(layer, PaddedConv2D) and layer.pad > 0
        assert (listed[index - 1] is None) == padded, getattr(layer, "name", None)


def test_custom_code_width():
    encoder = build_encoder("basic32x32", y_units=16)
    assert encoder.output["y"].shape[-1] == 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "vgg"}, "Valid encoders: basic32x32"),
        ({"channels": 4}, "channels must be 1 or 3"),
        ({"y_units": 0}, "y_units"),
    ],
)
def test_invalid_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_encoder(**kwargs)


def test_mi_projection_shortcut_starts_near_identity():
    head = MIProjection(16)
    head.build((None, 5, 5, 8))
    kernel = head.shortcut.kernel.numpy()
    np.testing.assert_allclose(kernel[np.arange(8), np.arange(8)], 1.0)
    off_diagonal = kernel.copy()
    off_diagonal[np.arange(8), np.arange(8)] = 0.0
    assert np.abs(off_diagonal).max() <= 0.01
    out = head(tf.random.normal((3, 5, 5, 8)), training=False)
    assert out.shape == (3, 5, 5, 16)
    # Layer norm over channels.
    np.testing.assert_allclose(tf.reduce_mean(out, -1).numpy(), 0.0, atol=1e-5)


def test_global_critic_equals_fc_on_concatenation():
    """The split first layer W_c c + W_y y must equal fc([flatten(conv(C)); Y])."""
    critic = GlobalCritic()
    maps = tf.random.normal((3, 8, 8, 16))
    codes = tf.random.normal((2, 5))
    encoded_maps = critic.encode_maps(maps)
    scores = critic.pair_scores(
        critic.encode_codes(codes), tf.tile(encoded_maps[tf.newaxis], [2, 1, 1])
    ).numpy()
    flat = critic.flatten(critic.conv2(critic.conv1(maps))).numpy()
    w = np.concatenate([critic.map_in.kernel.numpy(), critic.code_in.kernel.numpy()], 0)
    for i in range(2):
        for j in range(3):
            h = np.maximum(np.concatenate([flat[j], codes[i].numpy()]) @ w + critic.map_in.bias.numpy(), 0)
            h = np.maximum(h @ critic.hidden.kernel.numpy() + critic.hidden.bias.numpy(), 0)
            expected = h @ critic.score.kernel.numpy()[:, 0] + critic.score.bias.numpy()[0]
            np.testing.assert_allclose(scores[i, j], expected, rtol=1e-4, atol=1e-4)
