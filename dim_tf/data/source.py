"""One split of a dataset as encoded records (`ImageSource`), and the checks on it.

A source yields encoded images (decoding is `dim_tf.data.preprocessing`'s, so 1-
or 3-channel encoders get their channels from any grayscale, RGB or RGBA file),
integer labels (carried for evaluation, never used by training) and a name per
image for error messages. The checks find the files of an image folder that
cannot be used (with the reason), leave them out or refuse the data, and measure
the typical image size.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from dim_tf.data import image_files
from dim_tf.data.image_files import BadImage
from dim_tf.data.preprocessing import decode_image
from dim_tf.errors import DataError


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One split of a dataset, still encoded.

    records: dataset of {"image": encoded bytes, "label": int64, "name": string}.
    rejected: files of an image folder left out of `records` by their listing
        (not images, empty, too large, ...), reported by `find_bad_images`.
    corrupt: names removed by `without_corrupt`.
    is_image_folder: the records are the files of an image folder, so each may be
        unusable and is checked (`usable_images`); catalogue and TFRecord records
        were checked when they were written.
    """

    name: str
    split: str
    records: tf.data.Dataset
    num_examples: int
    label_names: tuple[str, ...]
    corrupt: tuple[str, ...] = ()
    rejected: tuple[BadImage, ...] = ()
    is_image_folder: bool = False


def find_bad_images(source: ImageSource, channels: int) -> tuple[BadImage, ...]:
    """Every unusable file of an image-folder `source`, with the reason, sorted by path:
    those its listing rejected and those that do not decode (one parallel decode of
    every image; the rare failures are then diagnosed with Pillow)."""
    names = list(source.records.map(lambda r: r["name"]).as_numpy_iterator())
    decodable = source.records.map(
        lambda r: (r["name"], tf.shape(decode_image(r["image"], channels))[0]),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors()
    good = {name for name, _ in decodable.as_numpy_iterator()}
    failed = [os.fsdecode(name) for name in names if name not in good]
    found = source.rejected + tuple(BadImage(path, _decode_failure(path, channels)) for path in failed)
    return tuple(sorted(found, key=lambda bad: bad.path))


def _decode_failure(path: str, channels: int) -> str:
    reason = image_files.decode_failure(path)
    if reason is not None:
        return reason
    try:
        decode_image(tf.io.read_file(path), channels)
    except tf.errors.OpError as error:  # the message without TF's op decorations
        message = error.message.split("}}")[-1].split("[Op:")[0].strip()
        return (f"TensorFlow cannot decode it ({message}) though Pillow can: re-saving it as PNG "
                "or JPEG repairs it")
    return "did not decode during the check but does now: was it being written?"


def find_corrupt_images(source: ImageSource, channels: int) -> tuple[str, ...]:
    """Names of the unusable files of an image-folder `source` (`find_bad_images`
    gives the reasons too)."""
    return tuple(bad.path for bad in find_bad_images(source, channels))


def without_corrupt(source: ImageSource, corrupt: tuple[str, ...]) -> ImageSource:
    """`source` minus the named images (names of rejected files are already out)."""
    if not corrupt:
        return source
    rejected = {bad.path for bad in source.rejected}
    in_records = [name for name in corrupt if name not in rejected]
    bad = tf.constant([os.fsencode(name) for name in in_records] or [b""], tf.string)
    records = source.records.filter(lambda r: tf.logical_not(tf.reduce_any(tf.equal(r["name"], bad))))
    return dataclasses.replace(source, records=records,
                               num_examples=source.num_examples - len(in_records), corrupt=corrupt)


def usable_images(source: ImageSource, channels: int, skip_bad: bool,
                  bad: tuple[BadImage, ...] | None = None) -> ImageSource:
    """An image-folder `source` without its unusable files (`bad`, default
    `find_bad_images(source, channels)`).

    Raises DataError naming each unusable file and why, unless `skip_bad`: then each
    is logged and so is the total. Also raises if no image is left to use.
    """
    bad = find_bad_images(source, channels) if bad is None else bad
    total = source.num_examples + len(source.rejected)
    where = f"{source.name} split {source.split!r}"
    if bad and not skip_bad:
        shown = "\n  ".join(str(b) for b in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(f"{len(bad)} of {total} file(s) in {where} cannot be used:\n  {shown}{more}\n"
                        "Fix or remove them, or pass --skip_corrupt to leave them out (each is "
                        "logged).")
    for each in bad:
        logging.warning("Skipping %s", each)
    source = without_corrupt(source, tuple(b.path for b in bad))
    if bad:
        logging.warning("Skipped %d of %d file(s) in %s; %d images left.", len(bad), total, where,
                        source.num_examples)
    if source.num_examples == 0:
        raise DataError(f"{where} has no usable images: all {total} file(s) were skipped (see the "
                        "log above)." if bad else f"{where} has no images: expected image files "
                        f"in {source.split}/<label>/ folders.")
    return source


def peek_image_shape(source: ImageSource, channels: int, sample: int = 25) -> tuple[int, int]:
    """Median (height, width) of the first `sample` images of `source`: the typical
    size, which one odd image (a 1x1 icon in a folder of photos) does not change."""
    shapes = source.records.take(sample).map(
        lambda r: tf.shape(decode_image(r["image"], channels))[:2],
        num_parallel_calls=tf.data.AUTOTUNE)
    shapes = np.array(list(shapes.as_numpy_iterator()))
    if not len(shapes):
        raise DataError(f"Dataset {source.name} split {source.split!r} has no images.")
    height, width = np.median(shapes, axis=0)
    return int(height), int(width)


def log_if_enlarged(source: ImageSource, channels: int, size: int, random_crop: bool = False,
                    encoder: str | None = None) -> bool:
    """Logs one line, and returns True, when the typical image of `source`
    (`peek_image_shape`) is smaller than the encoder's size x size input.

    Such images (28x28 MNIST-like data for a 32x32 encoder) are enlarged with
    the antialiased bilinear resize of `preprocess`, in training, evaluation and
    the serving signature alike; there is no encoder of every size to choose
    instead, so this is a note, not an error.
    """
    height, width = peek_image_shape(source, channels)
    if min(height, width) >= size:
        return False
    how = (f"their short side is resized up to {size} before the random crop" if random_crop
           else f"they are resized up to {size}x{size}")
    logging.info("%s split %r: images are %dx%d, smaller than the %dx%d input of %s: %s "
                 "(antialiased bilinear; evaluation and the exported serving signature resize "
                 "them the same way).", source.name, source.split, height, width, size, size,
                 f"--encoder={encoder}" if encoder else "the encoder", how)
    return True
