"""Image datasets as TFRecord shards: written once (the pipeline's ingest stage), read
by training and evaluation as `--dataset=tfrecord:DIR` like any other source.

A dataset directory holds, per split, shards `<split>-NNNNN-of-MMMMM.tfrecord` of
`tf.train.Example`s with the image still encoded (JPEG/PNG bytes: a quarter of the
decoded size, and decoding is the input pipeline's job), its label and its
original name; `schema.json` (features, class names, splits and their shards and
counts) and `statistics.json` (per split: images per label, image sizes and
channels, files that did not decode). The schema is written last and atomically,
so a directory without one was not finished and is refused.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from typing import Iterator, Mapping, Sequence

import keras
import tensorflow as tf

from dim_tf.config import DatasetSpec
from dim_tf.data.image_files import BadImage
from dim_tf.data.source import ImageSource, find_bad_images, usable_images
from dim_tf.errors import DataError
from dim_tf.io import atomic_path, atomic_write_json

SCHEMA_FILE = "schema.json"
STATISTICS_FILE = "statistics.json"
SCHEMA_VERSION = 1
_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/label": tf.io.FixedLenFeature([], tf.int64),
    "image/name": tf.io.FixedLenFeature([], tf.string),
}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def serialize_example(encoded: bytes, label: int, name: bytes) -> bytes:
    """One image's record: its encoded bytes, label and name."""
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image/name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name])),
    }
    # Deterministic: map fields in key order, not in the order of this process's string hashes.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def split_statistics(label_counts: Counter, heights: Counter, widths: Counter, channels: Counter,
                     label_names: Sequence[str], bad: Sequence[BadImage]) -> dict:
    """statistics.json's entry for one split, from counts of labels, image heights,
    widths and file channels, and its unusable files."""
    def summary(counts):
        total = sum(counts.values())
        # Ties ordered by value: the same summary whatever order the images were counted in.
        most_common = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:5]
        return {"min": min(counts), "max": max(counts),
                "mean": sum(value * n for value, n in counts.items()) / total,
                "most_common": [[value, n] for value, n in most_common]}

    return {
        "num_examples": sum(label_counts.values()),
        "examples_per_label": {
            (label_names[k] if 0 <= k < len(label_names) else str(k)): n
            for k, n in sorted(label_counts.items())
        },
        "height": summary(heights),
        "width": summary(widths),
        "file_channels": {str(c): n for c, n in sorted(channels.items())},
        "corrupt_files": [{"path": b.path, "reason": b.reason} for b in bad],
    }


def new_schema(label_names: Sequence[str]) -> dict:
    """schema.json without its splits (`finish_dataset` adds them)."""
    return {"version": SCHEMA_VERSION, "features": {k: v.dtype.name for k, v in _FEATURES.items()},
            "label_names": list(label_names), "splits": {}}


def split_label_names(sources: Mapping[str, ImageSource]) -> tuple[str, ...]:
    """The class list every split of `sources` shares.

    Raises:
        DataError: two splits have different classes.
    """
    label_names = next(iter(sources.values())).label_names if sources else ()
    for split, source in sources.items():
        if source.label_names != label_names:
            raise DataError(f"Split {split!r} has classes {list(source.label_names)}, other splits "
                            f"{list(label_names)}: the label indices would not agree.")
    return label_names


def finish_dataset(output_dir: str, schema: dict, statistics: dict) -> None:
    """Writes statistics.json, then schema.json: the dataset's shards are complete."""
    atomic_write_json(os.path.join(output_dir, STATISTICS_FILE), statistics)
    atomic_write_json(os.path.join(output_dir, SCHEMA_FILE), schema)


def write_tfrecord_dataset(
    sources: Mapping[str, ImageSource],
    output_dir: str,
    check_channels: int = 3,
    examples_per_shard: int = 10_000,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> dict:
    """Writes the splits `sources` ({split name: source}) as a TFRecord dataset.

    Every image is decoded once, to check it and to count its size and channels.
    Files of a folder source that cannot be used (catalogue datasets are assumed
    valid) stop the write with their paths and reasons, or with `skip_corrupt`
    are left out and listed, with the reasons, in the statistics.

    Args:
        sources: the splits to write, e.g. from `load_source`.
        output_dir: a new or empty directory.
        check_channels: decode images to this many channels when checking them.
        examples_per_shard: shard size.
        skip_corrupt: leave undecodable images out instead of failing.
        progress: show a progress bar per split.

    Returns:
        The statistics written to statistics.json.

    Raises:
        DataError: a split is empty, or has unusable files without `skip_corrupt`.
    """
    if examples_per_shard < 1:
        raise ValueError(f"examples_per_shard must be >= 1; got {examples_per_shard}.")
    label_names = split_label_names(sources)
    os.makedirs(output_dir, exist_ok=True)
    schema = new_schema(label_names)
    statistics = {}
    for split, source in sources.items():
        bad = ()
        if source.is_image_folder:
            bad = find_bad_images(source, check_channels)
            source = usable_images(source, check_channels, skip_corrupt, bad)
        elif source.num_examples == 0:
            raise DataError(f"Split {split!r} of {source.name} has no images.")
        shards = max(1, -(-source.num_examples // examples_per_shard))
        files = [shard_name(split, i, shards) for i in range(shards)]
        described = source.records.map(
            lambda r: (r["image"], r["label"], r["name"],
                       tf.shape(tf.io.decode_image(r["image"], channels=0, expand_animations=False))),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        label_counts, heights, widths, channels = Counter(), Counter(), Counter(), Counter()
        bar = keras.utils.Progbar(source.num_examples, unit_name="image") if progress else None
        written = 0
        records = described.as_numpy_iterator()
        for file, shard in zip(files, _chunks(records, examples_per_shard)):
            # Each shard is written to a temporary name and renamed when complete.
            with atomic_path(os.path.join(output_dir, file)) as temporary, \
                    tf.io.TFRecordWriter(temporary) as writer:
                for encoded, label, name, shape in shard:
                    writer.write(serialize_example(encoded, int(label), name))
                    label_counts[int(label)] += 1
                    heights[int(shape[0])] += 1
                    widths[int(shape[1])] += 1
                    channels[int(shape[2])] += 1
                    written += 1
                    if bar is not None and written % 1000 == 0 and written < source.num_examples:
                        bar.update(written)
        written += sum(1 for _ in records)  # images beyond the announced count: refused below
        if bar is not None:
            bar.update(written, finalize=True)
        if written != source.num_examples:
            raise DataError(f"Split {split!r} of {source.name}: expected {source.num_examples} "
                            f"images, read {written}.")
        schema["splits"][split] = {"num_examples": written, "files": files, "source": source.name}
        statistics[split] = split_statistics(label_counts, heights, widths, channels, label_names,
                                             bad)
    finish_dataset(output_dir, schema, statistics)
    return statistics


def _chunks(items: Iterator, size: int) -> Iterator[Iterator]:
    """Consecutive runs of `size` items of `items` (the last may be shorter, none is
    empty), lazily: each must be consumed before the next is asked for."""
    for first in items:
        yield itertools.chain([first], itertools.islice(items, size - 1))


def read_tfrecord_schema(root: str) -> dict:
    """The schema.json of a dataset written by `write_tfrecord_dataset`.

    Raises:
        DataError: `root` is missing or was not (completely) written.
    """
    path = os.path.join(root, SCHEMA_FILE)
    if not os.path.isdir(root):
        raise DataError(f"TFRecord dataset {root!r} does not exist.")
    if not os.path.exists(path):
        raise DataError(f"{root!r} has no {SCHEMA_FILE}: not a dataset written by the ingest stage "
                        "(or its writing did not finish; run the ingest again).")
    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    if schema.get("version") != SCHEMA_VERSION:
        raise DataError(f"{path}: schema version {schema.get('version')!r}, this dim_tf reads "
                        f"version {SCHEMA_VERSION}; ingest the data again.")
    return schema


def split_shards(root: str, split: str) -> tuple[dict, list[str]]:
    """(schema.json's entry for `split`, the paths of its shards) of the TFRecord
    dataset in `root`.

    Raises:
        DataError: no such dataset or split, or a shard is missing.
    """
    schema = read_tfrecord_schema(root)
    if split not in schema["splits"]:
        raise DataError(f"TFRecord dataset {root!r} has no split {split!r}; it has: "
                        f"{', '.join(sorted(schema['splits'])) or 'none'}.")
    info = schema["splits"][split]
    files = [os.path.join(root, name) for name in info["files"]]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise DataError(f"TFRecord dataset {root!r} split {split!r} is missing shard(s): "
                        f"{', '.join(missing)}.")
    return info, files


def parse_record(serialized: bytes) -> tuple[bytes, int, bytes]:
    """(encoded image, label, name) of a record `serialize_example` wrote, parsed in
    Python (for code outside tf.data, such as Beam workers)."""
    fields = tf.train.Example.FromString(serialized).features.feature
    return (fields["image/encoded"].bytes_list.value[0], fields["image/label"].int64_list.value[0],
            fields["image/name"].bytes_list.value[0])


def tfrecord_source(root: str, split: str) -> ImageSource:
    """`split` of the TFRecord dataset in `root`, in its written order."""
    info, files = split_shards(root, split)
    label_names = tuple(read_tfrecord_schema(root)["label_names"])

    def parse(serialized):
        example = tf.io.parse_single_example(serialized, _FEATURES)
        return {"image": example["image/encoded"], "label": example["image/label"],
                "name": example["image/name"]}

    # Shards read in sequence (not interleaved): the order, and so the resumable
    # training stream, is a function of the files alone.
    records = tf.data.TFRecordDataset(files, buffer_size=8 << 20).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ImageSource(name=str(DatasetSpec.tfrecords(root)), split=split, records=records,
                       num_examples=int(info["num_examples"]),
                       label_names=label_names)
