"""The ingest on Apache Beam: image folders -> the TFRecord dataset `write_tfrecord_dataset`
writes, byte for byte, with the work spread over Beam's workers.

The driver lists each split by the training data's file rules (`load_source`: what
is an image, which files are clutter, which are refused from their headers). The
workers then, per image:

1. read and decode it, the check of `find_bad_images` (formats TensorFlow misreads
   go through Pillow and are stored as PNG, as everywhere else);
2. give an image that does not decode, with its reason, to the `bad` output and the
   `corrupt_files` counter;
3. place a usable one by its rank among the usable images of the listing, so shard
   k holds the same images, in the same order, as the single-process writer's
   shard k: shard contents are a function of the input alone, whichever workers
   ran and in whatever order;
4. count labels, sizes and channels for statistics.json.

Each shard is then written whole by one worker, under a temporary name renamed
when complete; the driver writes statistics.json and, last, schema.json. With
unusable files and no `skip_corrupt` no shard is written and the error names them
as the single-process ingest does. Counters (Beam metrics, namespace
`dim_tf.ingest`): images_read, corrupt_files, listing_rejects, examples_written,
shards_written.

The output directory must be a filesystem path the driver and every worker see (a
mounted volume on Kubernetes, a shared or FUSE-mounted disk elsewhere).
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import tempfile
from collections import Counter
from typing import Iterable, Mapping, Sequence

import tensorflow as tf
from absl import logging

from dim_tf.data import beam as beam_runs
from dim_tf.data.image_files import BadImage, pillow_png
from dim_tf.data.preprocessing import convert_channels
from dim_tf.data.source import ImageSource, decode_failure_reason, usable_images
from dim_tf.data.tfrecords import (finish_dataset, new_schema, serialize_example, shard_name,
                                   split_label_names, split_statistics)
from dim_tf.errors import DataError
from dim_tf.io import atomic_path, atomic_write_json

beam = beam_runs.require_beam()
from apache_beam.metrics import Metrics  # noqa: E402  (after the check that Beam is installed)

NAMESPACE = "dim_tf.ingest"
_PARTS = ".beam-ingest-"  # the workers' results for the driver, removed at the end
_DESCRIPTIONS = ("labels", "heights", "widths", "channels")


def write_tfrecord_dataset_beam(
    sources: Mapping[str, ImageSource],
    output_dir: str,
    check_channels: int = 3,
    examples_per_shard: int = 10_000,
    skip_corrupt: bool = False,
    pipeline_args: str | Sequence[str] | None = None,
) -> tuple[dict, dict[str, int]]:
    """`write_tfrecord_dataset` on Apache Beam, for image-folder `sources`.

    Args:
        sources: the splits to write ({split name: source}), from `load_source` on
            `folder:` datasets.
        output_dir: a new or empty directory the workers can write to.
        check_channels, examples_per_shard, skip_corrupt: as `write_tfrecord_dataset`.
        pipeline_args: Beam's own pipeline options (`dim_tf.data.beam.pipeline_options`);
            none runs the embedded DirectRunner.

    Returns:
        (the statistics written to statistics.json, the pipeline's counters).

    Raises:
        DataError: a source is not an image folder, a split has no usable images,
            or has unusable files without `skip_corrupt`.
        ConfigError: Beam is not installed or does not know a pipeline option.
    """
    if examples_per_shard < 1:
        raise ValueError(f"examples_per_shard must be >= 1; got {examples_per_shard}.")
    for split, source in sources.items():
        if not source.is_image_folder:
            raise DataError(
                f"The Beam ingest reads image folders; split {split!r} of {source.name} is "
                "already a sharded dataset (a TFDS catalogue dataset or TFRecords): ingest it "
                "with the single-process ingest, or train on it directly.")
        if not source.files and not source.rejected:
            raise DataError(f"{source.name} split {split!r} has no images.")
    label_names = split_label_names(sources)
    options = beam_runs.pipeline_options(pipeline_args)
    os.makedirs(output_dir, exist_ok=True)
    parts = tempfile.mkdtemp(prefix=_PARTS, dir=output_dir)
    try:
        counters = _run(sources, output_dir, parts, options, check_channels, examples_per_shard,
                        skip_corrupt)
        schema, statistics = new_schema(label_names), {}
        for split, source in sources.items():
            found = _read_part(parts, split)
            bad = tuple(sorted(source.rejected + tuple(BadImage(*b) for b in found["bad"]),
                               key=lambda b: b.path))
            usable = usable_images(source, check_channels, skip_corrupt, bad)  # raises as locally
            shards = _shard_count(usable.num_examples, examples_per_shard)
            files = [shard_name(split, i, shards) for i in range(shards)]
            if found["written"] != usable.num_examples:
                raise DataError(f"Split {split!r} of {source.name}: expected {usable.num_examples} "
                                f"images, the workers wrote {found['written']}.")
            schema["splits"][split] = {"num_examples": usable.num_examples, "files": files,
                                       "source": source.name}
            statistics[split] = split_statistics(
                *(Counter({int(k): n for k, n in found[key].items()})
                  for key in _DESCRIPTIONS), label_names, bad)
        finish_dataset(output_dir, schema, statistics)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    logging.info("Beam ingest counters: %s", ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return statistics, counters


def _shard_count(num_examples: int, examples_per_shard: int) -> int:
    return max(1, -(-num_examples // examples_per_shard))


def _run(sources, output_dir, parts, options, channels, examples_per_shard, skip_corrupt):
    pipeline = beam.Pipeline(options=options)
    checked, num_files = {}, {}
    for split, source in sources.items():
        files = [(index, f.path, f.label, f.via_pillow) for index, f in enumerate(source.files)]
        num_files[split] = len(files)
        checked[split] = (pipeline
                          | f"List {split}" >> beam.Create(files, reshuffle=True)
                          | f"Check {split}" >> beam.ParDo(_ReadAndCheck(channels)).with_outputs(
                              "bad", main="usable"))
        if source.rejected:
            _ = (pipeline | f"Rejects {split}" >> beam.Create([len(source.rejected)])
                 | f"Count rejects {split}" >> beam.Map(_count_rejects))
    rejected = sum(len(source.rejected) for source in sources.values())
    # An unusable file in any split, without skip_corrupt, refuses the data: nothing is written.
    refused = (tuple(c.bad for c in checked.values()) | "All bad" >> beam.Flatten()
               | "Count bad" >> beam.combiners.Count.Globally()
               | "Refused" >> beam.Map(lambda bad: bad + rejected > 0 and not skip_corrupt))
    for split, images in checked.items():
        bad_indices = (images.bad
                       | f"Bad indices {split}" >> beam.Map(lambda bad: bad[0])
                       | f"Sort bad {split}" >> beam.combiners.ToList()
                       | f"Sorted {split}" >> beam.Map(sorted))
        written = (images.usable
                   | f"Place {split}" >> beam.ParDo(
                       _Place(num_files[split], examples_per_shard),
                       beam.pvalue.AsSingleton(bad_indices), beam.pvalue.AsSingleton(refused))
                   | f"Group shards {split}" >> beam.GroupByKey()
                   | f"Write shards {split}" >> beam.ParDo(_WriteShard(split, output_dir))
                   | f"Count written {split}" >> beam.CombineGlobally(sum))
        descriptions = (images.usable
                        | f"Describe {split}" >> beam.Map(lambda image: image[2])
                        | f"Statistics {split}" >> beam.CombineGlobally(_CountDescriptions()))
        bad_list = (images.bad
                    | f"Bad files {split}" >> beam.Map(lambda bad: (bad[1], bad[2]))
                    | f"List bad {split}" >> beam.combiners.ToList())
        _ = (pipeline
             | f"Part {split}" >> beam.Create([None])
             | f"Write part {split}" >> beam.Map(
                 _write_part, parts, split, beam.pvalue.AsSingleton(written),
                 beam.pvalue.AsSingleton(descriptions), beam.pvalue.AsSingleton(bad_list)))
    return beam_runs.run(pipeline, NAMESPACE)


def _counter(name: str) -> Metrics.DelegatingCounter:
    return Metrics.counter(NAMESPACE, name)


def _count_rejects(count: int) -> None:
    _counter("listing_rejects").inc(count)


class _ReadAndCheck(beam.DoFn):
    """(index, path, label, via_pillow) -> `usable`: (index, record bytes, label,
    description) or `bad`: (index, path, reason)."""

    def __init__(self, channels: int):
        self.channels = channels

    def setup(self):
        self.read, self.bad = _counter("images_read"), _counter("corrupt_files")

    def process(self, item):
        index, path, label, via_pillow = item
        encoded, shape = _read_and_decode(path, via_pillow, self.channels)
        self.read.inc()
        if shape is None:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(
                "bad", (index, path, decode_failure_reason(path, self.channels)))
            return
        yield index, serialize_example(encoded, label, os.fsencode(path)), (label, *shape)


def _read_and_decode(path: str, via_pillow: bool, channels: int):
    """(the bytes stored for `path`, its decoded [height, width, file channels]), or
    (None, None) when it does not decode to `channels` channels."""
    try:
        encoded = pillow_png(path) if via_pillow else tf.io.read_file(path).numpy()
        image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)
        convert_channels(image, channels)
    except (tf.errors.OpError, OSError, ValueError, SyntaxError):  # TensorFlow's, Pillow's
        return None, None
    return encoded, tuple(int(d) for d in image.shape)


class _Place(beam.DoFn):
    """A usable image -> ((shard index, shard count), (rank, record)): its rank among
    the usable images of the listing, from the sorted indices of the unusable ones."""

    def __init__(self, num_files: int, examples_per_shard: int):
        self.num_files, self.examples_per_shard = num_files, examples_per_shard

    def process(self, image, bad_indices, refused):
        if refused:
            return  # the driver raises, naming the unusable files
        index, record, _ = image
        rank = index - bisect.bisect_left(bad_indices, index)
        shards = _shard_count(self.num_files - len(bad_indices), self.examples_per_shard)
        yield (rank // self.examples_per_shard, shards), (rank, record)


class _WriteShard(beam.DoFn):
    """((shard index, shard count), [(rank, record)]) -> the shard's file, written whole
    and atomically; yields its record count."""

    def __init__(self, split: str, output_dir: str):
        self.split, self.output_dir = split, output_dir

    def setup(self):
        self.examples, self.shards = _counter("examples_written"), _counter("shards_written")

    def process(self, shard):
        (index, count), records = shard
        records = sorted(records)
        path = os.path.join(self.output_dir, shard_name(self.split, index, count))
        with atomic_path(path) as temporary, tf.io.TFRecordWriter(temporary) as writer:
            for _, record in records:
                writer.write(record)
        self.examples.inc(len(records))
        self.shards.inc()
        yield len(records)


class _CountDescriptions(beam.CombineFn):
    """(label, height, width, file channels) -> {"labels": {label: n}, "heights": ...}."""

    def create_accumulator(self):
        return Counter(), Counter(), Counter(), Counter()

    def add_input(self, counts, description):
        for counter, value in zip(counts, description):
            counter[value] += 1
        return counts

    def merge_accumulators(self, accumulators: Iterable):
        merged = self.create_accumulator()
        for counts in accumulators:
            for total, counter in zip(merged, counts):
                total.update(counter)
        return merged

    def extract_output(self, counts):
        return dict(zip(_DESCRIPTIONS, ({str(k): n for k, n in c.items()} for c in counts)))


def _write_part(_, parts: str, split: str, written: int, descriptions: dict, bad: list) -> None:
    atomic_write_json(os.path.join(parts, f"{split}.json"),
                      {"written": written, "bad": sorted(bad), **descriptions})


def _read_part(parts: str, split: str) -> dict:
    with open(os.path.join(parts, f"{split}.json"), encoding="utf-8") as f:
        return json.load(f)
