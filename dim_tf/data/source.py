"""One split of a dataset as encoded records (`ImageSource`), and the checks on it.

A source yields encoded images (decoding is `dim_tf.data.preprocessing`'s, so 1-
or 3-channel encoders get their channels from any grayscale, RGB or RGBA file),
integer labels (carried for evaluation, never used by training) and a name per
image for error messages. The checks find the files of an image folder that
cannot be used (with the reason), leave them out or refuse the data, and measure
the typical image size. What the checks find is remembered per file
(`file_check_cache`): a folder checked once is decoded again only where it changed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from dim_tf.data import image_files
from dim_tf.data.file_check_cache import FolderCheck
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
    check: an image folder's file check in progress (what earlier checks found),
        which `find_bad_images` completes and saves.
    files: an image folder's images in `records`' order (the Beam ingest reads
        them itself).
    """

    name: str
    split: str
    records: tf.data.Dataset
    num_examples: int
    label_names: tuple[str, ...]
    corrupt: tuple[str, ...] = ()
    rejected: tuple[BadImage, ...] = ()
    is_image_folder: bool = False
    check: FolderCheck | None = None
    files: tuple[image_files.ImageFile, ...] = ()


def folder_records(paths: Sequence[str], labels: Sequence[int],
                   via_pillow: Sequence[bool]) -> tf.data.Dataset:
    """The records of image files (in this order); each of those `via_pillow` (formats
    TensorFlow does not decode correctly) is decoded by Pillow and stored as PNG."""
    paths = tf.constant([os.fsencode(path) for path in paths], tf.string)
    indices = tf.constant(labels, tf.int64)
    if any(via_pillow):
        records = tf.data.Dataset.from_tensor_slices((paths, indices, tf.constant(via_pillow, tf.bool)))
        return records.map(_read_any_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return tf.data.Dataset.from_tensor_slices((paths, indices)).map(  # pure TF ops: the usual case
        lambda path, label: {"image": tf.io.read_file(path), "label": label, "name": path},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _read_any_image(path, label, via_pillow):
    """Reads a file of an image folder; formats TensorFlow cannot decode go through
    Pillow and come out as PNG. A file Pillow cannot decode gives empty bytes, which
    fail to decode like any damaged file (`find_bad_images` then reports Pillow's reason)."""
    def pillow_png(path_tensor):
        try:
            return image_files.pillow_png(os.fsdecode(path_tensor.numpy()))
        except (OSError, ValueError, SyntaxError):
            return b""

    image = tf.cond(via_pillow,
                    lambda: tf.ensure_shape(tf.py_function(pillow_png, [path], tf.string), []),
                    lambda: tf.io.read_file(path))
    return {"image": image, "label": label, "name": path}


def find_bad_images(source: ImageSource, channels: int) -> tuple[BadImage, ...]:
    """Every unusable file of an image-folder `source`, with the reason, sorted by path:
    those its listing rejected and those that do not decode (one parallel decode of
    every image its `check` does not remember; the rare failures are then diagnosed
    with Pillow). The check is saved for the next run."""
    check = source.check
    if check is None:
        raise ValueError(f"{source.name} split {source.split!r} is not an image folder opened "
                         "by load_source: there are no files to check.")
    pending = check.pending()
    paths = [path for path, _ in pending]
    decodes = _decodable(folder_records(paths, [-1] * len(paths), [via for _, via in pending]),
                         channels) if pending else set()
    for path in paths:
        reason = None if path in decodes else decode_failure_reason(path, channels)
        check.decoded(path, reason, remember=reason != _DECODES_NOW)
    if check.remembered:
        logging.info("%s: %d file(s) unchanged since an earlier check were not checked again "
                     "(remembered in %s); %d decoded now.", check.split_dir, check.remembered,
                     check.path, len(paths))
    check.save()
    found = source.rejected + tuple(BadImage(path, reason) for path, reason in check.decode_failures())
    return tuple(sorted(found, key=lambda bad: bad.path))


def _decodable(records: tf.data.Dataset, channels: int) -> set[str]:
    """Names of the `records` whose image decodes."""
    decodable = records.map(
        lambda r: (r["name"], tf.shape(decode_image(r["image"], channels))[0]),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors().batch(1024)  # batched: a Python step per image would double the time
    return {os.fsdecode(name) for names, _ in decodable.as_numpy_iterator() for name in names}


# A failure not to remember: the file may have been written during the check.
_DECODES_NOW = "did not decode during the check but does now: was it being written?"


def decode_failure_reason(path: str, channels: int) -> str:
    """Why the image file `path` does not decode to `channels` channels."""
    reason = image_files.decode_failure(path)
    if reason is not None:
        return reason
    try:
        decode_image(tf.io.read_file(path), channels)
    except tf.errors.OpError as error:  # the message without TF's op decorations
        message = error.message.split("}}")[-1].split("[Op:")[0].strip()
        return (f"TensorFlow cannot decode it ({message}) though Pillow can: re-saving it as PNG "
                "or JPEG repairs it")
    return _DECODES_NOW


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
