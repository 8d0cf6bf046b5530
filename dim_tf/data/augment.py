"""Training's augmentation of an image into one or several views (`config.Augmentation`).

Every random draw is stateless (`tf.random.stateless_*`) from the image's seed,
so a view is a pure function of (seed, epoch, index, view) and a resumed run sees
the pixels of an uninterrupted one. Each view, in this order:

1. random crop (`random_crop`): a size x size crop of the image reflect-padded
   by `crop_padding` pixels, i.e. a translation of up to `crop_padding` pixels
   with mirrored borders; an image larger than size x size is also cropped
   along its extent, one smaller is first enlarged to a short side of size.
   Without it the image is resized to size x size (`resize_to`).
2. horizontal flip with probability 1/2 (`random_flip`; one flip for all views
   of an image with `shared_flip`).
3. random-resized crop (`crop_min_area` < 1) of that size x size view, a zoom
   into it: a box of a uniform fraction in [crop_min_area, 1] of its area and a
   log-uniform aspect ratio in [3/4, 4/3] (the first of 10 candidates that
   fits; the whole view if none does), enlarged back to size x size by bilinear
   interpolation (`tf.image.crop_and_resize`, the box's corner pixels kept at the
   corners). Enlarging needs no antialiasing, so one op does a batch's views.
4. colour jitter with probability `color_jitter_probability`, in a fixed order
   (SimCLR draws the order; a fixed one batches), pixels clipped to [0, 255]
   after each step: brightness x b; contrast m + c (x - m), m the channel's
   mean (`tf.image.adjust_contrast`'s); saturation g + s (x - g), g the luma
   (PIL's `ImageEnhance.Color`); hue shifted by h turns in HSV
   (`tf.image.adjust_hue`'s). b, c, s are uniform in [1 - 0.8 strength,
   1 + 0.8 strength] and h in [-0.2 strength, 0.2 strength], SimCLR's
   parametrisation.
5. grayscale with probability `grayscale_probability`: the luma in every channel.

Single-channel images skip saturation, hue and grayscale.

Steps 1-2 (`geometry`) move the uint8 pixels of one image (images differ in
size); steps 3-5 (`finish`) run on whole batches of views, from random numbers
drawn per image (`finish_draws`: a stateless draw takes one seed). A view that
steps 3-5 leave unchanged gets exactly `preprocessing.scale_to_unit_range` of its pixels.

Seeds: view v's crop offset is row v of one [views, 3] draw from the image's
seed and its flip row v of a [views] draw from seed + 1, so a single view gets
the pixels of the training stream before views existed, and view 0 of several
is that same view. Views are otherwise independent.
"""

from __future__ import annotations

import math

import tensorflow as tf

from dim_tf.config import Augmentation
from dim_tf.data.preprocessing import resize_image, resize_to, scale_to_unit_range

# ITU-R 601 luma (tf.image.rgb_to_grayscale's to 3 decimals, so a grey view is what a grey
# encoder sees), summing to 1 so that greys stay put.
LUMA = (0.299, 0.587, 0.114)
RESIZED_CROP_ATTEMPTS = 10
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
# The columns of `finish_draws`' "colour": the four jitter amounts, whether to jitter and
# whether to grey.
COLOUR_DRAWS = ("brightness", "contrast", "saturation", "hue", "jitter", "grayscale")
# Derived-seed tags: each kind of random choice draws from its own Philox stream.
_RESIZED_CROP, _COLOUR = 1, 2


def augment(image: tf.Tensor, size: int, augmentation: Augmentation, seed: tf.Tensor,
            views: int = 1) -> tf.Tensor:
    """uint8 [H, W, C] -> float32 in [-1, 1], [views, size, size, C]: the whole
    augmentation of one image (the training stream runs its two halves apart)."""
    return finish(geometry(image, size, augmentation, seed, views),
                  finish_draws(augmentation, seed, views), augmentation)


def geometry(image: tf.Tensor, size: int, augmentation: Augmentation, seed: tf.Tensor,
             views: int = 1) -> tf.Tensor:
    """uint8 [H, W, C] -> uint8 [views, size, size, C]: steps 1-2 of the module
    docstring, all views gathered at once. seed: int32 [2], the image's."""
    channels = image.shape[-1]
    seed = tf.cast(seed, tf.int32)
    bases = image[None]  # one base image for all views
    if augmentation.random_crop:
        bases = enlarge_to_short_side(bases, size)
    else:
        bases = resize_to(bases, size)
    if not (augmentation.random_crop or augmentation.random_flip):
        out = tf.broadcast_to(bases, tf.stack([views, size, size, channels]))
        return tf.ensure_shape(out, [views, size, size, channels])
    if augmentation.random_flip:
        flips = tf.random.stateless_uniform([views], seed=seed + 1, minval=0, maxval=1.0) < 0.5
        if augmentation.shared_flip:
            flips = tf.fill([views], flips[0])
    if not augmentation.random_crop:
        out = tf.where(flips[:, None, None, None], tf.reverse(bases, [2]), bases)
        return tf.ensure_shape(out, [views, size, size, channels])
    shape = tf.shape(bases)
    rows, columns = crop_indices(shape[1], shape[2], size, augmentation.crop_padding, seed, views)
    if augmentation.random_flip:
        columns = tf.where(flips[:, None], tf.reverse(columns, [1]), columns)
    # One gather of all views' pixels from the flattened image: per-image ops cost
    # more in overhead than in arithmetic here.
    pixels = rows[:, :, None] * shape[2] + columns[:, None, :]
    out = tf.gather(tf.reshape(bases, [-1, channels]), pixels)
    return tf.ensure_shape(out, [views, size, size, channels])


def enlarge_to_short_side(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [N, H, W, C] whose short side is below `size` -> enlarged to a short
    side of exactly `size` (`resize_image`), so a crop never needs more than the
    padding; others unchanged. A square image smaller than `size` thus gets the
    pixels evaluation and serving give it, up to the padded crop's translation."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    short = tf.minimum(height, width)
    # Integer arithmetic, so the short side is exactly `size` with no float rounding
    # that could leave a 1-pixel crop offset evaluation does not have; the long
    # side is rounded up.
    enlarged = (tf.stack([height, width]) * size + short - 1) // short
    return tf.cond(short < size, lambda: resize_image(images, enlarged), lambda: images)


def crop_indices(height: tf.Tensor, width: tf.Tensor, size: int, padding: int,
                 seed: tf.Tensor, views: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Rows and columns ([views, size] int32) of a size x size crop at a random
    offset of a height x width image reflect-padded by `padding`.

    The offset is drawn as `tf.image.stateless_random_crop` draws it from the
    padded shape, so with padding 0 view 0 is that function's crop, pixel for
    pixel. The padding is never materialised: mirrored indices (any padding,
    even one wider than the image, reflects again).
    """
    limit = tf.stack([height + 2 * padding - size + 1, width + 2 * padding - size + 1, 1])
    offsets = tf.random.stateless_uniform([views, 3], seed=seed, minval=0,
                                          maxval=tf.int32.max, dtype=tf.int32) % limit
    indices = offsets[:, :2, None] + (tf.range(size) - padding)  # [views, 2, size]
    indices = reflect_indices(indices, tf.stack([height, width])[:, None])
    return indices[:, 0], indices[:, 1]


def reflect_indices(indices: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """Positions in [0, length) of `indices` into the image mirrored about its edge
    pixels (numpy's and tf.pad's "reflect": ... 2 1 | 0 1 2 ... n-1 | n-2 ...),
    repeated as far as needed."""
    last = length - 1
    folded = indices % tf.maximum(2 * last, 1)  # floor modulo: in [0, 2 last) for negatives too
    return last - tf.abs(last - folded)


def resized_crops(images: tf.Tensor, min_area: float, draws: tf.Tensor) -> tf.Tensor:
    """uint8 [N, size, size, C] -> uint8 [N, size, size, C]: step 3 of the module
    docstring, image n zoomed into the `crop_boxes` box drawn by draws[n]."""
    size = images.shape[1]
    boxes = tf.cast(crop_boxes(size, size, min_area, draws), tf.float32)
    top_left, sides = boxes[:, :2], boxes[:, 2:]
    # crop_and_resize's corners are pixel centres: the box's first and last rows and
    # columns land on the output's.
    corners = tf.concat([top_left, top_left + sides - 1], axis=1) / (size - 1)
    resized = tf.image.crop_and_resize(tf.cast(images, tf.float32), corners,
                                       tf.range(tf.shape(images)[0]), [size, size])
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def crop_boxes(height: tf.Tensor, width: tf.Tensor, min_area: float, draws: tf.Tensor) -> tf.Tensor:
    """int32 [views, 4], (top, left, height, width) of each view's random-resized crop
    of a height x width image: the first candidate box that fits, else the whole image.

    draws: [views, 4, RESIZED_CROP_ATTEMPTS] uniform in [0, 1), one column per
    candidate: area fraction (-> [min_area, 1]), log aspect ratio (-> [3/4, 4/3],
    width / height), vertical and horizontal position (-> uniform over the positions).
    """
    area = tf.cast(height * width, tf.float32)
    fraction = min_area + (1.0 - min_area) * draws[:, 0]
    low, high = (math.log(r) for r in ASPECT_RATIO_RANGE)
    ratio = tf.exp(low + (high - low) * draws[:, 1])
    box_width = tf.cast(tf.round(tf.sqrt(fraction * area * ratio)), tf.int32)
    box_height = tf.cast(tf.round(tf.sqrt(fraction * area / ratio)), tf.int32)
    fits = (box_width <= width) & (box_height <= height) & (box_width >= 1) & (box_height >= 1)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)[:, None]
    found = tf.reduce_any(fits, axis=1)
    sides = tf.where(found[:, None], tf.concat([tf.gather(box_height, first, batch_dims=1),
                                                tf.gather(box_width, first, batch_dims=1)], 1),
                     tf.stack([height, width])[None])  # [views, 2]
    positions = tf.stack([height, width])[None] - sides + 1
    where = tf.gather(tf.transpose(draws[:, 2:], [0, 2, 1]), first, batch_dims=1)[:, 0]
    top_left = tf.minimum(tf.cast(where * tf.cast(positions, tf.float32), tf.int32), positions - 1)
    return tf.concat([top_left, sides], axis=1)


def finish_draws(augmentation: Augmentation, seed: tf.Tensor,
                 views: int = 1) -> dict[str, tf.Tensor]:
    """Each view's random numbers for `finish`, uniform in [0, 1): "resized_crop"
    [views, 4, RESIZED_CROP_ATTEMPTS] (`crop_boxes`) with crop_min_area < 1, "colour"
    [views, len(COLOUR_DRAWS)] with colour on. Drawn per image (a stateless draw
    takes one seed), so that `finish` can run on whole batches."""
    seed = tf.cast(seed, tf.int32)
    out = {}
    if augmentation.crop_min_area < 1.0:
        out["resized_crop"] = tf.random.stateless_uniform(
            [views, 4, RESIZED_CROP_ATTEMPTS],
            seed=tf.random.experimental.stateless_fold_in(seed, _RESIZED_CROP))
    if _colours(augmentation, channels=3):
        out["colour"] = tf.random.stateless_uniform(
            [views, len(COLOUR_DRAWS)],
            seed=tf.random.experimental.stateless_fold_in(seed, _COLOUR))
    return out


def finish(images: tf.Tensor, draws: dict[str, tf.Tensor],
           augmentation: Augmentation) -> tf.Tensor:
    """uint8 views [..., size, size, C] -> float32 in [-1, 1]: steps 3-5 of the module
    docstring, each view with its `finish_draws` (leading shape the images')."""
    shape = tf.shape(images)
    views = tf.reshape(images, [-1, *images.shape[-3:]])
    if augmentation.crop_min_area < 1.0:
        views = resized_crops(views, augmentation.crop_min_area,
                              tf.reshape(draws["resized_crop"], [-1, 4, RESIZED_CROP_ATTEMPTS]))
    if _colours(augmentation, images.shape[-1]):
        out = colour(views, tf.reshape(draws["colour"], [-1, len(COLOUR_DRAWS)]), augmentation)
    else:
        out = scale_to_unit_range(views)
    return tf.reshape(out, shape)


def colour(images: tf.Tensor, draws: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """uint8 [N, size, size, C] -> float32 in [-1, 1]: steps 4-5, image n with the
    colour draws[n] ([N, len(COLOUR_DRAWS)]).

    The per-pixel steps are one XLA-compiled kernel (five times faster here than
    TensorFlow op by op). The channel means of the contrast step are not in it:
    XLA's reductions round differently for different batch sizes, and each
    replica of a distributed run must get exactly a single device's pixels from
    its share of the batch.
    """
    jitter = augmentation.color_jitter > 0 and augmentation.color_jitter_probability > 0
    gray = images.shape[-1] == 3 and augmentation.grayscale_probability > 0
    pixels = tf.cast(images, tf.float32)
    draws = dict(zip(COLOUR_DRAWS, tf.unstack(draws[:, None, None, None], axis=-1)))
    strength = augmentation.color_jitter
    factors = {k: 1.0 + 0.8 * strength * (2.0 * draws[k] - 1.0)
               for k in ("brightness", "contrast", "saturation")}
    parameters = {
        "contrast": factors["contrast"], "saturation": factors["saturation"],
        "hue": 0.2 * strength * (2.0 * draws["hue"] - 1.0),
        "jitter": draws["jitter"] < augmentation.color_jitter_probability,
        "grayscale": draws["grayscale"] < augmentation.grayscale_probability,
    }
    brightened = (tf.clip_by_value(pixels * factors["brightness"], 0.0, 255.0) if jitter
                  else pixels)
    mean = tf.reduce_mean(brightened, axis=[1, 2], keepdims=True)
    out = _colour_kernel(pixels, brightened, mean, parameters, jitter, gray)
    # scale_to_unit_range's arithmetic, outside XLA, which would multiply by 1 / 127.5
    # instead: a view with no colour change then has exactly its uncoloured pixels.
    return out / 127.5 - 1.0


def _colours(augmentation: Augmentation, channels: int) -> bool:
    """Whether steps 4-5 can change a view of `channels` channels."""
    return ((augmentation.color_jitter > 0 and augmentation.color_jitter_probability > 0)
            or (channels == 3 and augmentation.grayscale_probability > 0))


@tf.function(jit_compile=True)
def _colour_kernel(pixels, brightened, mean, parameters, jitter: bool, gray: bool):
    """Steps 4-5 after brightness and the channel means: [N, H, W, C] in [0, 255]
    with parameters [N, 1, 1, 1]."""
    if jitter:
        jittered = tf.clip_by_value(mean + parameters["contrast"] * (brightened - mean), 0.0, 255.0)
        if pixels.shape[-1] == 3:
            grey = luma(jittered)
            jittered = tf.clip_by_value(grey + parameters["saturation"] * (jittered - grey),
                                        0.0, 255.0)
            jittered = tf.clip_by_value(shift_hue(jittered, parameters["hue"]), 0.0, 255.0)
        pixels = tf.where(parameters["jitter"], jittered, pixels)
    if gray:
        pixels = tf.where(parameters["grayscale"], grayscale(pixels), pixels)
    return pixels


def shift_hue(pixels: tf.Tensor, turns: tf.Tensor) -> tf.Tensor:
    """float32 [N, H, W, 3] in [0, 255], turns [N, 1, 1, 1] -> each image's hue shifted
    by its turns (`tf.image.adjust_hue`'s HSV shift, which takes one delta per call)."""
    hsv = tf.image.rgb_to_hsv(pixels / 255.0)
    hue = tf.math.floormod(hsv[..., :1] + turns, 1.0)
    return tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1)) * 255.0


def luma(pixels: tf.Tensor) -> tf.Tensor:
    """[..., 3] -> [..., 1]: the ITU-R 601 luma (LUMA)."""
    return tf.reduce_sum(pixels * tf.constant(LUMA, pixels.dtype), axis=-1, keepdims=True)


def grayscale(pixels: tf.Tensor) -> tf.Tensor:
    """[..., 3] -> [..., 3]: the luma in every channel."""
    return tf.repeat(luma(pixels), 3, axis=-1)
