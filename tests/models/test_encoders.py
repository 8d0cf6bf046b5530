"""Encoder architectures and MI heads."""

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.models.encoders import ENCODERS, build_encoder, encoder_image_size
from dim_tf.models.heads import GlobalCritic, MIProjection

EXPECTED_SHAPES = {
    "basic32x32": {"local": (8, 8, 128), "conv": (4, 4, 256), "fc": (1024,), "y": (64,)},
    "basic64x64": {"local": (8, 8, 256), "conv": (4, 4, 512), "fc": (1024,), "y": (64,)},
    "alex64x64": {"local": (15, 15, 384), "conv": (7, 7, 192), "fc": (4096,), "y": (64,)},
    "resnet19_32x32": {"local": (8, 8, 512), "conv": (4, 4, 1024), "fc": (1024,), "y": (64,)},
}


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_feature_shapes(name, channels):
    encoder = build_encoder(name, channels=channels)
    size = encoder_image_size(name)
    features = encoder(np.zeros((2, size, size, channels), np.float32), training=False)
    assert set(features) == {"local", "conv", "fc", "y"}
    for key, shape in EXPECTED_SHAPES[name].items():
        assert tuple(features[key].shape) == (2,) + shape, key


def test_basic32x32_follows_reference_conventions():
    encoder = build_encoder("basic32x32")
    convs = [l for l in encoder.layers if l.__class__.__name__ == "Conv2D"]
    assert [c.kernel_size for c in convs] == [(4, 4)] * 3
    assert all(not c.use_bias for c in convs)  # batch norm follows
    bns = [l for l in encoder.layers if l.__class__.__name__ == "BatchNormalization"]
    assert all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
    pads = [l.padding for l in encoder.layers if l.__class__.__name__ == "ZeroPadding2D"]
    assert pads == [((1, 1), (1, 1))] * 3  # PyTorch's symmetric padding=1
    assert encoder.get_layer("y").use_bias


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
