"""Images for DIM: TFDS catalogue datasets or `tfds.ImageFolder` trees, as tf.data.

Sources yield encoded images (decoding is ours, so 1- or 3-channel encoders get
their channels from any grayscale, RGB or RGBA file), integer labels (carried
for evaluation, never used by training) and a name per image for error
messages. Image folders are listed and checked file by file
(`dim_tf.data.image_files`): every file is an image or is reported with the
reason it cannot be used.

The training stream is deterministic from (seed, epoch, position):
rerunning from a checkpoint at step k yields exactly the batches an
uninterrupted run would have seen from step k on.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from dim_tf.config import image_folder_root, tfrecord_root
from dim_tf.data import image_files
from dim_tf.data.image_files import BadImage


class DataError(ValueError):
    """The data cannot be used as asked; the message says why and how to fix it."""


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One split of a dataset, still encoded.

    records: dataset of {"image": encoded bytes, "label": int64, "name": string}.
    rejected: files of an image folder left out of `records` by their listing
        (not images, empty, too large, ...), reported by `find_bad_images`.
    corrupt: names removed by `without_corrupt`.
    """

    name: str
    split: str
    records: tf.data.Dataset
    num_examples: int
    label_names: tuple[str, ...]
    corrupt: tuple[str, ...] = ()
    rejected: tuple[BadImage, ...] = ()


def load_source(
    dataset: str,
    split: str = "train",
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download: bool = False,
) -> ImageSource:
    """Opens `split` of a TFDS catalogue dataset, of an image folder (`folder:PATH`,
    or `sample:cifar10` for the images shipped with the package) or of TFRecord
    shards written by `write_tfrecord_dataset` (`tfrecord:DIR`).

    A catalogue dataset is used as prepared in `data_dir`. If it is not prepared,
    it is prepared from `manual_dir` (the original archives) if given, or
    downloaded if `download` is set; otherwise this raises a DataError saying
    how to provide the files offline. Splits may use TFDS syntax
    ("train+unlabelled", "train[:10%]").
    """
    root = image_folder_root(dataset)
    if root is not None:
        return _folder_source(root, split)
    root = tfrecord_root(dataset)
    if root is not None:
        from dim_tf.data.tfrecords import tfrecord_source  # it builds on this module

        return tfrecord_source(root, split)
    return _catalogue_source(dataset, split, data_dir, manual_dir, download)


def _folder_source(root: str, split: str) -> ImageSource:
    if not os.path.isdir(root):
        raise DataError(f"Image folder {root!r} does not exist (layout: PATH/<split>/<label>/*.jpg).")
    splits = image_files.split_names(root)
    if split not in splits:
        raise DataError(f"Image folder {root!r} has no split {split!r}; it has: "
                        f"{', '.join(splits) or 'none'}. Layout: {root}/<split>/<label>/<images>"
                        f"{_split_level_hint(root, splits)}.")
    labels = image_files.label_names(root)
    listing = image_files.list_split(root, split, labels)
    if listing.ignored:
        logging.info("%s/%s: left out %d operating-system/editor file(s) (hidden files, "
                     "Thumbs.db, desktop.ini, backups~).", root, split, listing.ignored)
    images = listing.images
    paths = tf.constant([os.fsencode(image.path) for image in images], tf.string)
    indices = tf.constant([image.label for image in images], tf.int64)
    via_pillow = [image.via_pillow for image in images]
    if any(via_pillow):
        logging.info("%s/%s: %d image(s) in formats TensorFlow does not decode (BMP, TIFF, ...) are "
                     "decoded with Pillow; converting them to PNG or JPEG makes the input faster.",
                     root, split, sum(via_pillow))
        records = tf.data.Dataset.from_tensor_slices((paths, indices, tf.constant(via_pillow, tf.bool)))
        records = records.map(_read_any_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:  # pure TF ops: the usual case
        records = tf.data.Dataset.from_tensor_slices((paths, indices)).map(
            lambda path, label: {"image": tf.io.read_file(path), "label": label, "name": path},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ImageSource(name=f"folder:{root}", split=split, records=records,
                       num_examples=len(images), label_names=labels, rejected=listing.bad)


def _split_level_hint(root: str, splits: list[str]) -> str:
    """Points at the usual mistake of label folders directly under the root."""
    def holds_files(folder):
        path = os.path.join(root, folder)
        return any(os.path.isfile(os.path.join(path, n)) and not image_files.is_system_file(n)
                   for n in os.listdir(path))

    if any(holds_files(folder) for folder in splits):
        return (" (folders holding images directly look like label folders: put them in a split "
                f"folder, e.g. {root}/train/<label>/)")
    return ""


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


def _catalogue_source(name, split, data_dir, manual_dir, download) -> ImageSource:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises several types for unknown names
        raise DataError(f"--dataset={name}: not a TFDS catalogue dataset ({error}). Use a "
                        "catalogue name such as cifar10, or folder:PATH for your own images.") from error
    if not builder.is_prepared():
        if manual_dir or download:
            config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
            try:
                builder.download_and_prepare(download_config=config)
            except Exception as error:
                raise DataError(_offline_help(name, builder, data_dir, f"Preparing failed: {error}")) from error
        else:
            raise DataError(_offline_help(name, builder, data_dir, "It is not prepared there."))
    features = builder.info.features
    if "image" not in features:
        raise DataError(f"--dataset={name} has no 'image' feature; features: {list(features)}.")
    has_label = "label" in features
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
        raise DataError(f"--dataset={name} has no split {split!r}; splits: "
                        f"{', '.join(builder.info.splits.keys())}.") from error

    def to_record(index, example):
        label = example["label"] if has_label else tf.constant(-1, tf.int64)
        return {"image": example["image"], "label": tf.cast(label, tf.int64),
                "name": tf.strings.join([f"{name}/{split}#", tf.strings.as_string(index)])}

    records = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    ).enumerate().map(to_record)
    names = tuple(features["label"].names) if has_label and hasattr(features["label"], "names") else ()
    return ImageSource(name=name, split=split, records=records, num_examples=num_examples,
                       label_names=names)


def _offline_help(name, builder, data_dir, reason) -> str:
    where = data_dir or os.path.dirname(os.path.dirname(builder.data_dir))
    return (
        f"TFDS dataset {name!r} is not available in data_dir {where!r}. {reason} Downloads are "
        "off (--download is not set); to provide the files offline: (1) put the original archive(s) in a "
        "folder and pass --manual_dir=FOLDER; (2) run `tfds build "
        f"{name} --data_dir=DIR` on a machine with network and copy DIR here (--data_dir=DIR); "
        "or (3) use an image folder PATH/<split>/<label>/*.jpg with --dataset=folder:PATH. "
        "Pass --download to let TFDS download it when a network is available."
    )


def convert_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [..., c] with c in 1..4 (gray, gray+alpha, RGB, RGBA) -> [..., channels].

    Alpha is dropped; colour is converted (ITU-R 601 luma for RGB -> gray).
    Shared by the training pipeline and the exported serving signature.
    """
    is_color = tf.shape(image)[-1] >= 3
    if channels == 3:
        image = tf.cond(is_color, lambda: image[..., :3],
                        lambda: tf.image.grayscale_to_rgb(image[..., :1]))
    else:
        image = tf.cond(is_color, lambda: tf.image.rgb_to_grayscale(image[..., :3]),
                        lambda: image[..., :1])
    return image


def resize_to(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [..., H, W, C] -> uint8 [..., size, size, C]: antialiased bilinear resize,
    down or up (a 28x28 image for a 32x32 encoder is enlarged), skipped when the
    image already has that size. Shared with serving."""
    height, width = tf.shape(image)[-3], tf.shape(image)[-2]
    return tf.cond(
        tf.logical_and(tf.equal(height, size), tf.equal(width, size)),
        lambda: image,
        lambda: _resize_uint8(image, [size, size]),
    )


def _resize_uint8(image: tf.Tensor, height_width) -> tf.Tensor:
    """The one resize kernel of training, evaluation and serving: antialiased bilinear
    (antialiasing only matters when shrinking; enlarging without it differs by up to
    one grey level after rounding, enough to make training and serving pixels differ)."""
    return _to_uint8(tf.image.resize(image, height_width, antialias=True))


def _to_uint8(resized: tf.Tensor) -> tf.Tensor:
    """Resized float pixels back to uint8, rounded: truncating would turn a flat 128
    into 127 wherever interpolation gives 127.99998."""
    return tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8)


def decode_image(encoded: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [H, W, channels] from JPEG/PNG/BMP/GIF bytes, whatever the file's own
    channels (gray, gray+alpha, RGB, RGBA)."""
    image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(convert_channels(image, channels), [None, None, channels])


def scale_to_unit_range(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the encoders' input range."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def prepare_batch(images: tf.Tensor, size: int, channels: int) -> tf.Tensor:
    """uint8 [N, H, W, 1 or 3] -> float32 [N, size, size, channels] in [-1, 1]: the
    serving signature's preprocessing, the same pixels `preprocess` gives each image
    without augmentation (channels converted, `resize_to` down or up, scaled)."""
    prepared = resize_to(convert_channels(images, channels), size)
    return scale_to_unit_range(tf.ensure_shape(prepared, [None, size, size, channels]))


def preprocess(
    image: tf.Tensor,
    size: int,
    random_crop: bool = False,
    random_flip: bool = False,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """uint8 image -> float32 [size, size, C] in [-1, 1].

    Images of another size, smaller or larger, are resized to size x size
    (`resize_to`, as evaluation and the serving signature do). With
    `random_crop` a size x size crop is taken at a random offset instead; an
    image whose short side is smaller than `size` is first enlarged (the same
    antialiased bilinear resize) so that its short side is exactly `size`, and
    cropped along its long side only. A square image smaller than `size` thus
    gets exactly the pixels evaluation and serving give it (its crop is the
    whole enlarged image); padding instead would show the encoder borders it
    never sees at test time.
    Randomness is stateless, from `seed` (a [2] int tensor), so it is resumable.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    channels = image.shape[-1]
    if random_crop:
        short = tf.minimum(height, width)
        # Integer arithmetic, so the short side is exactly `size` with no float rounding
        # that could leave a 1-pixel crop offset evaluation does not have; the long
        # side is rounded up.
        enlarged = tf.stack([height, width]) * size
        enlarged = (enlarged + short - 1) // short
        image = tf.cond(short < size, lambda: _resize_uint8(image, enlarged), lambda: image)
        image = tf.image.stateless_random_crop(image, [size, size, channels], seed=seed)
    else:
        image = resize_to(image, size)
    image = tf.ensure_shape(image, [size, size, channels])
    if random_flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
    return scale_to_unit_range(image)


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


def training_dataset(
    source: ImageSource,
    *,
    global_batch_size: int,
    steps_per_epoch: int,
    start_step: int,
    seed: int,
    image_size: int,
    channels: int,
    random_crop: bool = False,
    random_flip: bool = False,
    shuffle_buffer: int = 10_000,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Endless stream of (images, labels) batches starting at global step `start_step`.

    Epoch e is the source shuffled (in blocks of `shuffle_buffer` images) with
    seed (seed, e), cut into
    `steps_per_epoch` global batches (the remainder is dropped so every step
    has the same number of negatives). With an `input_context`, this input
    pipeline keeps only its rows of every global batch and yields per-replica
    batches, so a distributed run sees exactly the batches of a single device.
    """
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    replicas = input_context.num_replicas_in_sync if input_context else 1
    per_replica = global_batch_size // replicas
    per_pipeline = global_batch_size // num_pipelines
    first_epoch, skip_steps = divmod(start_step, steps_per_epoch)
    buffer = max(1, min(shuffle_buffer, source.num_examples))

    def one_epoch(epoch, skip):
        epoch = tf.cast(epoch, tf.int64)
        records = _block_shuffle(source.records, buffer, tf.stack([tf.cast(seed, tf.int64), epoch]))
        batches = records.enumerate().batch(global_batch_size, drop_remainder=True)
        batches = batches.take(steps_per_epoch).skip(skip)
        rows = batches.map(lambda i, r: (
            i[pipeline_id * per_pipeline:(pipeline_id + 1) * per_pipeline],
            {k: v[pipeline_id * per_pipeline:(pipeline_id + 1) * per_pipeline] for k, v in r.items()},
        )).unbatch()

        def decode(index, record):
            element_seed = tf.stack([tf.cast(seed, tf.int64) * 7919 + epoch, index])
            image = preprocess(decode_image(record["image"], channels), image_size,
                               random_crop, random_flip, tf.cast(element_seed, tf.int32))
            return image, record["label"]

        return rows.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    first = one_epoch(first_epoch, skip_steps)
    rest = tf.data.Dataset.range(first_epoch + 1, 2**62).flat_map(lambda e: one_epoch(e, 0))
    return first.concatenate(rest).batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(
    source: ImageSource, *, batch_size: int, image_size: int, channels: int,
    limit: int | None = None,
) -> tf.data.Dataset:
    """(images in [-1, 1], labels) batches of `source` in a fixed order, resized to
    the encoder's size, no augmentation. `limit` keeps the first images only."""
    records = source.records if limit is None else source.records.take(limit)

    def decode(record):
        return preprocess(decode_image(record["image"], channels), image_size), record["label"]

    return (records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _block_shuffle(records: tf.data.Dataset, block: int, seed: tf.Tensor) -> tf.data.Dataset:
    """Shuffles each consecutive block of `block` records by stateless random keys.

    Unlike Dataset.shuffle, the order is a pure function of `seed` (a tensor, so
    it can depend on the epoch inside the stream). With block >= the dataset
    size it is a uniform shuffle of the whole dataset.
    """
    def shuffle_block(block_index, block_records):
        size = tf.shape(block_records["label"])[0]
        keys = tf.random.stateless_uniform([size], seed=seed + tf.stack([0, block_index * 1_000_003]))
        order = tf.argsort(keys)
        return {k: tf.gather(v, order) for k, v in block_records.items()}

    return records.batch(block).enumerate().map(shuffle_block).unbatch()


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
