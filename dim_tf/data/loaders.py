"""Opening a `--dataset` (a `DatasetSpec`) as an `ImageSource`: a TFDS catalogue
dataset, a `tfds.ImageFolder` tree (`folder:PATH`, or `sample:NAME` for the images
shipped with dim_tf) or TFRecord shards written by the ingest (`tfrecord:DIR`).

Image folders are listed and checked file by file (`dim_tf.data.image_files`):
every file is an image or is reported with the reason it cannot be used; what
the check found is remembered (`dim_tf.data.file_check_cache`).
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from dim_tf.config import CATALOGUE, TFRECORD, DatasetSpec
from dim_tf.data import image_files
from dim_tf.data.source import ImageSource, folder_records
from dim_tf.data.tfrecords import tfrecord_source
from dim_tf.errors import DataError


def load_source(
    dataset: str | DatasetSpec,
    split: str = "train",
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download: bool = False,
) -> ImageSource:
    """Opens `split` of `dataset` (a `--dataset` value or its `DatasetSpec`).

    A catalogue dataset is used as prepared in `data_dir`. If it is not prepared,
    it is prepared from `manual_dir` (the original archives) if given, or
    downloaded if `download` is set; otherwise this raises a DataError saying
    how to provide the files offline. Splits may use TFDS syntax
    ("train+unlabelled", "train[:10%]").
    """
    spec = dataset if isinstance(dataset, DatasetSpec) else DatasetSpec.parse(dataset)
    if spec.kind == CATALOGUE:
        return _catalogue_source(str(spec), split, data_dir, manual_dir, download)
    if spec.kind == TFRECORD:
        return tfrecord_source(spec.tfrecord_dir, split)
    return _folder_source(spec.image_folder, split)  # folder: or sample:


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
    via_pillow = [image.via_pillow for image in images]
    if any(via_pillow):
        logging.info("%s/%s: %d image(s) in formats TensorFlow does not decode (BMP, TIFF, ...) are "
                     "decoded with Pillow; converting them to PNG or JPEG makes the input faster.",
                     root, split, sum(via_pillow))
    records = folder_records([image.path for image in images], [image.label for image in images],
                             via_pillow)
    # The root, not the `sample:` name: messages then show where the files are.
    return ImageSource(name=f"folder:{root}", split=split, records=records,
                       num_examples=len(images), label_names=labels, rejected=listing.bad,
                       is_image_folder=True, check=listing.check, files=images)


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


def _catalogue_source(name, split, data_dir, manual_dir, download) -> ImageSource:
    # Imported here: 1.5 s (it imports scikit-learn and matplotlib) that image folders
    # and TFRecords, the usual training data, do not need.
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    # DatasetNotFoundError (a ValueError) for an unknown name or config, AssertionError
    # for an unknown version.
    except (ValueError, AssertionError) as error:
        raise DataError(f"--dataset={name}: not a TFDS catalogue dataset ({error}). Use a "
                        "catalogue name such as cifar10, or folder:PATH for your own images.") from error
    if not builder.is_prepared():
        if manual_dir or download:
            config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
            try:
                builder.download_and_prepare(download_config=config)
            except Exception as error:  # any builder's own errors: reported with the offline help
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
