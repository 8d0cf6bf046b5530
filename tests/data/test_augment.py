"""Training's augmentation (dim_tf/data/augment.py) against closed forms: the padded
crop, the random-resized crop's box, flips, colour jitter at its extremes, grayscale,
their probabilities; seeds; and the single-view path of the stream before views."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dim_tf.config import Augmentation
from dim_tf.data import augment, preprocessing

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED = tf.constant([3, 17], tf.int32)
FULL = Augmentation(random_crop=True, crop_min_area=0.3, random_flip=True, color_jitter=0.5,
                    grayscale_probability=0.2)


def _image(height=32, width=32, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _old_preprocess(image, size, random_crop, random_flip, seed):
    """The training stream's augmentation before views existed (preprocess(), frozen here)."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    channels = image.shape[-1]
    if random_crop:
        short = tf.minimum(height, width)
        enlarged = (tf.stack([height, width]) * size + short - 1) // short
        image = tf.cond(short < size, lambda: preprocessing.resize_image(image, enlarged),
                        lambda: image)
        image = tf.image.stateless_random_crop(image, [size, size, channels], seed=seed)
    else:
        image = preprocessing.resize_to(image, size)
    if random_flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
    return preprocessing.scale_to_unit_range(image)


@pytest.mark.parametrize("shape", [(32, 32, 3), (40, 48, 3), (20, 24, 1), (33, 70, 3)])
@pytest.mark.parametrize("random_crop, random_flip", [(False, False), (False, True), (True, False),
                                                      (True, True)])
def test_one_view_without_padding_has_the_old_streams_pixels(shape, random_crop, random_flip):
    image = tf.constant(_image(*shape))
    augmentation = Augmentation(random_crop=random_crop, crop_padding=0, random_flip=random_flip)
    for index in range(6):
        seed = tf.constant([3 * 7919 + 1, index], tf.int32)
        new = augment.augment(image, 32, augmentation, seed)
        assert new.shape == (1, 32, 32, shape[-1])
        np.testing.assert_array_equal(new[0], _old_preprocess(image, 32, random_crop, random_flip,
                                                              seed))


def test_padded_crop_is_a_window_of_the_numpy_reflect_padded_image():
    image = _image(32, 32)
    for views, padding in ((2, 4), (1, 9), (3, 40)):  # 40: wider than the image, reflects again
        seed = tf.constant([5, views], tf.int32)
        out = augment.geometry(tf.constant(image), 32, Augmentation(random_crop=True,
                                                                    crop_padding=padding),
                               seed, views).numpy()
        limit = np.array([32 + 2 * padding - 32 + 1, 32 + 2 * padding - 32 + 1, 1])
        offsets = tf.random.stateless_uniform([views, 3], seed=seed, minval=0,
                                              maxval=tf.int32.max, dtype=tf.int32).numpy() % limit
        padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)], mode="reflect")
        for v, (top, left, _) in enumerate(offsets):
            np.testing.assert_array_equal(out[v], padded[top:top + 32, left:left + 32])


def test_random_crop_of_an_image_of_the_encoders_size_moves_it():
    # Before crop_padding, --random_crop on 32x32 CIFAR returned the image itself.
    image = _image(32, 32)
    crops = [augment.geometry(tf.constant(image), 32, Augmentation(random_crop=True),
                              tf.constant([s, 1]))[0].numpy() for s in range(16)]
    moved = [not np.array_equal(c, image) for c in crops]
    assert sum(moved) >= 12
    assert len({c.tobytes() for c in crops}) >= 12


def test_seeds_decide_every_view_and_views_are_independent():
    image = tf.constant(_image(40, 44))
    first = augment.augment(image, 32, FULL, SEED, views=3).numpy()
    np.testing.assert_array_equal(first, augment.augment(image, 32, FULL, SEED, views=3))
    other_index = augment.augment(image, 32, FULL, SEED + [0, 1], views=3).numpy()
    assert first.shape == (3, 32, 32, 3)
    assert not np.array_equal(first[0], other_index[0])
    assert all(not np.array_equal(first[a], first[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    colour_only = augment.augment(image, 32, Augmentation(color_jitter=0.5,
                                                          color_jitter_probability=1.0),
                                  SEED, views=2).numpy()
    assert not np.array_equal(colour_only[0], colour_only[1])
    # Adding views does not change the earlier ones: view 0 is the single view.
    np.testing.assert_array_equal(first[:1], augment.augment(image, 32, FULL, SEED, views=1))


def test_shared_flip_flips_all_views_alike():
    image = tf.constant(_image(32, 32))
    flips = {False: [], True: []}
    for shared in (False, True):
        augmentation = Augmentation(random_flip=True, shared_flip=shared)
        for s in range(12):
            views = augment.geometry(image, 32, augmentation, tf.constant([s, 2]), 2).numpy()
            flipped = [np.array_equal(v, image[:, ::-1]) for v in views]
            assert all(f or np.array_equal(v, image) for f, v in zip(flipped, views))
            flips[shared].append(tuple(flipped))
    assert all(a == b for a, b in flips[True]) and {a for a, _ in flips[True]} == {False, True}
    assert any(a != b for a, b in flips[False])


def test_crop_boxes_cover_the_area_fraction_and_aspect_ratio_range():
    min_area, height, width = 0.3, 48, 40
    draws = tf.random.stateless_uniform([200, 4, augment.RESIZED_CROP_ATTEMPTS], seed=[5, 9])
    boxes = augment.crop_boxes(height, width, min_area, draws).numpy()
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (top <= height - h).all() and (left >= 0).all()
    assert (left <= width - w).all() and (h >= 1).all() and (w >= 1).all()
    areas, ratios = h * w / (height * width), w / h
    # Rounding a side to whole pixels moves the area and the ratio a little.
    assert areas.min() >= min_area - 0.05 and areas.max() <= 1.0
    assert areas.min() < 0.4 and areas.max() > 0.9
    assert 3 / 4 - 0.08 <= ratios.min() < 0.85 and 1.15 < ratios.max() <= 4 / 3 + 0.08
    # Each view's box is its first candidate that fits, at that candidate's position.
    d = draws.numpy().astype(np.float64)
    fraction = min_area + (1 - min_area) * d[:, 0]
    ratio = np.exp(np.log(3 / 4) + np.log(16 / 9) * d[:, 1])
    cw = np.round(np.sqrt(fraction * height * width * ratio))
    ch = np.round(np.sqrt(fraction * height * width / ratio))
    for view, box in enumerate(boxes):
        fitting = np.flatnonzero((cw[view] <= width) & (ch[view] <= height))
        if not len(fitting):
            assert list(box) == [0, 0, height, width]
            continue
        k = fitting[0]
        h, w = int(ch[view, k]), int(cw[view, k])
        assert list(box) == [int(d[view, 2, k] * (height - h + 1)),
                             int(d[view, 3, k] * (width - w + 1)), h, w], view
    # No candidate fits (a tall strip cannot hold a 3/4..4/3 box of that area): whole image.
    draws = tf.fill([1, 4, augment.RESIZED_CROP_ATTEMPTS], 0.999)
    assert augment.crop_boxes(100, 4, 0.9, draws).numpy().tolist() == [[0, 0, 100, 4]]


def _bilinear(image, rows, columns):
    """NumPy bilinear interpolation of image [H, W, C] at rows [R] x columns [K]."""
    r0, c0 = np.floor(rows).astype(int), np.floor(columns).astype(int)
    r1, c1 = np.minimum(r0 + 1, image.shape[0] - 1), np.minimum(c0 + 1, image.shape[1] - 1)
    dr, dc = (rows - r0)[:, None, None], (columns - c0)[None, :, None]
    x = image.astype(np.float64)
    top = x[r0][:, c0] * (1 - dc) + x[r0][:, c1] * dc
    bottom = x[r1][:, c0] * (1 - dc) + x[r1][:, c1] * dc
    return top * (1 - dr) + bottom * dr


def test_resized_crop_enlarges_the_box_corner_to_corner():
    images = np.stack([_image(32, 32, seed=s) for s in range(3)])
    draws = tf.random.stateless_uniform([3, 4, augment.RESIZED_CROP_ATTEMPTS], seed=[1, 1])
    out = augment.resized_crops(tf.constant(images), 0.3, draws).numpy()
    for image, (top, left, h, w), got in zip(images, augment.crop_boxes(32, 32, 0.3, draws).numpy(),
                                             out):
        assert h < 32 or w < 32  # a zoom, not the whole view
        want = _bilinear(image, top + np.arange(32) * (h - 1) / 31,
                         left + np.arange(32) * (w - 1) / 31)
        assert np.abs(got - np.round(want)).max() <= 1  # float32 interpolation, rounded
        np.testing.assert_array_equal(got[0, 0], image[top, left])
        np.testing.assert_array_equal(got[-1, -1], image[top + h - 1, left + w - 1])
    # In the stream's order: the zoom of each view, after its crop and flip (none here).
    zoom = Augmentation(crop_min_area=0.3)
    views = augment.augment(tf.constant(images[0]), 32, zoom, SEED, views=3)
    want = augment.resized_crops(tf.constant(images[[0, 0, 0]]), 0.3,
                                 augment.finish_draws(zoom, SEED, 3)["resized_crop"])
    np.testing.assert_array_equal(views, preprocessing.scale_to_unit_range(want))
    assert len({v.tobytes() for v in views.numpy()}) == 3


def test_defaults_give_the_evaluation_streams_pixels():
    # crop_min_area=1 and colour jitter 0 are identities: the image as evaluation sees it.
    large = tf.constant(_image(96, 80))
    np.testing.assert_array_equal(augment.augment(large, 32, Augmentation(), SEED)[0],
                                  preprocessing.preprocess(large, 32))


def _draws(views=1, **columns):
    """Colour draws giving factors of 1 and no hue change, jitter on, grey off."""
    values = {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.5, "jitter": 0.0,
              "grayscale": 1.0, **columns}
    return tf.constant([[values[k] for k in augment.COLOUR_DRAWS]] * views, tf.float32)


def _to_unit(pixels):
    return pixels / 127.5 - 1.0


@pytest.mark.parametrize("channels", [3, 1])
def test_brightness_contrast_and_saturation_at_their_extremes(channels):
    x = _image(8, 8, channels).astype(np.float64)
    s = 0.6
    jitter = Augmentation(color_jitter=s)
    low, high = 1 - 0.8 * s, 1 + 0.8 * s
    images = tf.constant(x.astype(np.uint8)[None])

    def colour(**columns):
        return augment.colour(images, _draws(**columns), jitter).numpy()[0]

    np.testing.assert_allclose(colour(), _to_unit(x), atol=1e-5)  # all factors 1
    np.testing.assert_allclose(colour(brightness=1.0), _to_unit(np.clip(x * high, 0, 255)),
                               atol=1e-4)
    np.testing.assert_allclose(colour(brightness=0.0), _to_unit(x * low), atol=1e-4)
    mean = x.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(colour(contrast=0.0), _to_unit(mean + low * (x - mean)), atol=1e-4)
    np.testing.assert_allclose(colour(contrast=1.0),
                               _to_unit(np.clip(mean + high * (x - mean), 0, 255)), atol=1e-4)
    luma = (x * augment.LUMA).sum(-1, keepdims=True)
    saturated = np.clip(luma + high * (x - luma), 0, 255) if channels == 3 else x
    np.testing.assert_allclose(colour(saturation=1.0), _to_unit(saturated), atol=1e-4)
    # Each step clips: brightness x1.48 then contrast x0.52 of the clipped pixels.
    bright = np.clip(x * high, 0, 255)
    mean = bright.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(colour(brightness=1.0, contrast=0.0),
                               _to_unit(mean + low * (bright - mean)), atol=1e-4)


def test_hue_is_tf_image_adjust_hue_with_one_delta_per_view():
    images = np.stack([_image(8, 8, seed=s) for s in range(3)])
    hue_draws = (0.0, 0.2, 1.0)  # the extremes -0.2 s and +0.2 s, and -0.12 s
    draws = tf.concat([_draws(hue=h) for h in hue_draws], axis=0)
    strength = 1.0
    got = augment.colour(tf.constant(images), draws, Augmentation(color_jitter=strength)).numpy()
    for image, draw, out in zip(images, hue_draws, got):
        delta = 0.2 * strength * (2 * draw - 1)
        want = tf.image.adjust_hue(image / 255.0, delta).numpy() * 255.0
        np.testing.assert_allclose(out, _to_unit(np.clip(want, 0, 255)), atol=1e-4)
    grey = np.full((1, 4, 4, 3), 90, np.uint8)
    got = augment.colour(tf.constant(grey), _draws(hue=1.0), Augmentation(color_jitter=1.0))
    np.testing.assert_allclose(got, _to_unit(90.0), atol=1e-5)


def test_grayscale_gives_equal_channels_of_the_luma():
    images = tf.constant(np.stack([_image(8, 8, seed=s) for s in range(4)]))
    gray = augment.colour(images, _draws(4, grayscale=0.0), Augmentation(grayscale_probability=0.3))
    luma = (images.numpy().astype(np.float64) * augment.LUMA).sum(-1)
    for c in range(3):
        np.testing.assert_allclose(gray[..., c], _to_unit(luma), atol=1e-4)


@pytest.mark.parametrize("channels", [3, 1])
def test_probabilities_zero_and_one(channels):
    image = tf.constant(_image(32, 32, channels))
    plain = preprocessing.scale_to_unit_range(image).numpy()
    never = Augmentation(color_jitter=0.8, color_jitter_probability=0.0, grayscale_probability=0.0)
    always = Augmentation(color_jitter=0.8, color_jitter_probability=1.0, grayscale_probability=1.0)
    off = Augmentation(color_jitter=0.0, grayscale_probability=0.0)
    for s in range(6):
        seed = tf.constant([s, 4])
        np.testing.assert_array_equal(augment.augment(image, 32, never, seed, 2)[1], plain)
        np.testing.assert_array_equal(augment.augment(image, 32, off, seed, 2)[1], plain)
        out = augment.augment(image, 32, always, seed, 2).numpy()
        assert not np.allclose(out, plain, atol=1e-3)
        if channels == 3:  # grayscale always: equal channels; one channel skips it
            np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)


def test_a_view_is_jittered_and_greyed_with_the_given_probabilities():
    image = tf.constant(_image(8, 8))
    plain = preprocessing.scale_to_unit_range(image).numpy()
    for augmentation in (Augmentation(color_jitter=0.5, color_jitter_probability=0.3),
                         Augmentation(grayscale_probability=0.3)):
        views = augment.augment(image, 8, augmentation, SEED, views=4 * 50).numpy()
        changed = np.mean([not np.array_equal(v, plain) for v in views])
        assert 0.2 < changed < 0.4, changed


_ROWS_ALONE = """
import numpy as np, tensorflow as tf
from dim_tf.config import Augmentation
from dim_tf.data import augment
augmentation = Augmentation(crop_min_area=0.5, color_jitter=0.5, grayscale_probability=0.2)
images = tf.constant(np.random.default_rng(0).integers(0, 256, (256, 16, 16, 3), dtype=np.uint8))
draws = augment.finish_draws(augmentation, tf.constant([3, 2]), 256)
whole = augment.finish(images, draws, augmentation).numpy()
differ = 0
for n in (1, 2, 3, 8, 64):
    part = augment.finish(images[:n], {k: v[:n] for k, v in draws.items()}, augmentation).numpy()
    differ += int((part != whole[:n]).any(axis=(1, 2, 3)).sum())
views = augment.finish(tf.reshape(images, [128, 2, 16, 16, 3]),
                       {k: tf.reshape(v, [128, 2, *v.shape[1:]]) for k, v in draws.items()},
                       augmentation).numpy()
differ += int((views.reshape(whole.shape) != whole).any(axis=(1, 2, 3)).sum())
print(differ)
"""


@pytest.mark.e2e
def test_a_views_zoom_and_colour_do_not_depend_on_its_batch():
    # Each replica of a distributed run zooms and colours its share of the global batch.
    # Run with XLA's default optimisation (conftest lowers it for the tests), under which
    # the contrast step's means would round differently in small batches if XLA took them.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", _ROWS_ALONE], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "0", "views whose pixels depend on their batch"


def test_colour_runs_inside_tf_data():
    images = tf.constant(np.stack([_image(16, 16, seed=s) for s in range(4)]))
    draws = tf.random.stateless_uniform([4, len(augment.COLOUR_DRAWS)], seed=[2, 3])
    dataset = tf.data.Dataset.from_tensors((images, draws)).map(
        lambda x, d: augment.colour(x, d, FULL))
    # Up to rounding: in a graph, dividing by 127.5 becomes multiplying by its inverse.
    np.testing.assert_allclose(next(iter(dataset)), augment.colour(images, draws, FULL),
                               atol=1e-6)
