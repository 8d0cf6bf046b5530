"""Batch embedding on Apache Beam: images -> an exported encoder run by Beam's
RunInference -> sharded TFRecord or Parquet files, one row per image.

The input is either

- an image folder, found by `dim_tf.embed`'s rules (`client.find_image_files`: every
  file but hidden and system files must be an image, told by its content). The
  driver lists it, reading headers only; the workers read and decode the files.
  A row's id is the file's path as listed (as in `dim_tf.embed`'s .files.txt);
- or an ingested TFRecord dataset (`dim_tf.data.tfrecords`: the shards schema.json
  names), all its splits or one. A row's id is the record's `image/name`, the
  original file's path.

The workers, per image:

1. decode it to uint8 [height, width, channels] as `dim_tf.embed` does
   (`client.read_pixels`, `client.decode_pixels`); an image that does not decode
   goes, with its reason, to the bad files;
2. run the SavedModel's signature through RunInference (`SavedModelHandler`, in
   batches of `batch_size`). One call of the signature takes images of one size,
   so a batch holding several sizes is run once per size and put back in order
   (`embed_mixed_sizes`); the signature resizes inside the graph;
3. write a row: `id` and each requested feature (`y`, `fc`, `conv`, `local`)
   flattened to float32.

Files written for `output` = PREFIX:

- tfrecord: PREFIX-NNNNN-of-MMMMM.tfrecord, `tf.train.Example`s with `id` (bytes)
  and one float_list per feature;
- parquet: PREFIX-NNNNN-of-MMMMM.parquet, columns `id` (string) and one
  list<float32> per feature;
- PREFIX.bad_files.jsonl when images could not be used: one
  {"id": ..., "reason": ...} per line, sorted by id.

The shards and bad-file list of an earlier run with the same PREFIX and format are
removed first, so shard sets of different counts never mix. `read_embeddings`
reads the rows back, sorted by id.

A file that is no usable image fails the run, naming every such file: those the
listing refuses fail it before the pipeline starts; if images fail to decode in
the workers, no embeddings are written and the error names them. With `skip_bad`
they are left out, counted and listed. Counters (Beam metrics, namespace
`dim_tf.embed`): images_read, bad_files, images_embedded.

Every worker must see the paths: the SavedModel, the images or dataset, and the
output prefix (a shared or mounted disk; the output and a SavedModel may also be
on a filesystem both Beam and TensorFlow read, such as gs://). An image folder
is listed on the driver's filesystem.

Needs the `beam` extra (`pip install -e ".[beam]"`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from dim_tf.config import SERVING_SIGNATURE
from dim_tf.data import beam as beam_runs
from dim_tf.data.image_files import BadImage, ImageFile
from dim_tf.data.tfrecords import parse_record, read_tfrecord_schema, split_shards
from dim_tf.errors import ConfigError, DataError
from dim_tf.config import FEATURE_NAMES
from dim_tf.serving import client

beam = beam_runs.require_beam()
# After the check that Beam is installed:
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.ml.inference.base import (KeyedModelHandler, PredictionResult,  # noqa: E402
                                           RunInference)
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy  # noqa: E402

NAMESPACE = "dim_tf.embed"
OUTPUT_FORMATS = ("tfrecord", "parquet")
_COUNTERS = ("images_read", "bad_files", "images_embedded")
_IMAGES, _BAD = "images", "bad"
_SHARD = re.compile(r"-(\d{5,})-of-(\d{5,})\.(tfrecord|parquet)$")
# Bad files named in an error message; the list file holds them all.
_NAMED_IN_ERROR = 20


def embed_with_beam(
    saved_model_dir: str,
    output: str,
    *,
    images: str | None = None,
    examples: str | None = None,
    split: str | None = None,
    features: Sequence[str] = ("y",),
    output_format: str = "tfrecord",
    batch_size: int = 64,
    channels: int = 3,
    signature: str = SERVING_SIGNATURE,
    skip_bad: bool = False,
    pipeline_args: str | Sequence[str] | None = None,
) -> dict[str, int]:
    """Embeds an image folder or an ingested TFRecord dataset on Apache Beam (see the
    module docstring); returns the counters {images_read, bad_files, images_embedded}.

    Args:
        saved_model_dir: an exported encoder's version directory (saved_models/NAME/1).
        output: the path prefix of the files written (out/embeddings ->
            out/embeddings-00000-of-00002.tfrecord).
        images: a folder of images (searched recursively); or
        examples: a TFRecord dataset written by the ingest;
        split: only this split of `examples` (default: all).
        features: the encoder outputs to write, among `FEATURE_NAMES`.
        output_format: "tfrecord" or "parquet".
        batch_size: images per RunInference batch.
        channels: decode images to this many channels (1 or 3).
        signature: the SavedModel signature to run.
        skip_bad: leave images that cannot be used out (counted, and listed in
            OUTPUT.bad_files.jsonl) instead of failing.
        pipeline_args: Beam's own pipeline options (`dim_tf.data.beam.pipeline_options`);
            none runs the DirectRunner on this machine.

    Raises:
        ConfigError: a bad argument, Beam not installed, or a pipeline option Beam
            does not know.
        ServingError: no SavedModel, signature or output of that name.
        DataError: the folder or dataset is missing or empty, or (without
            `skip_bad`) holds files that are no usable image.
    """
    features = _checked_arguments(output, images, examples, split, features, output_format,
                                  batch_size, channels)
    options = beam_runs.pipeline_options(pipeline_args)
    client.check_saved_model(saved_model_dir, signature, features)
    if images is not None:
        files, rejected = client.find_image_files(images, skip_bad)
        shards = None
    else:
        files, rejected, shards = None, [], _dataset_shards(examples, split)
    _remove_earlier_output(output, output_format)
    pipeline = beam.Pipeline(options=options)
    decoded = _decoded_images(pipeline, files, shards, channels)
    bad = decoded[_BAD]
    if rejected:
        refused = pipeline | "Listing rejects" >> beam.Create(
            [(entry.path, entry.reason) for entry in rejected])
        bad = (bad, refused) | "All bad files" >> beam.Flatten()
    bad = bad | "Count bad files" >> beam.Map(_counted, "bad_files")
    _ = (bad
         | "Collect bad files" >> beam.combiners.ToList()
         | "Write bad files" >> beam.Map(client.write_bad_files, output + client.BAD_FILES_SUFFIX))
    handler = SavedModelHandler(saved_model_dir, signature, features, batch_size)
    embedded = decoded[_IMAGES] | "Embed" >> RunInference(KeyedModelHandler(handler))
    if not skip_bad:
        # Held until every image is decoded: with a bad file, nothing is written.
        bad_count = bad | "Number of bad files" >> beam.combiners.Count.Globally()
        embedded = embedded | "Only without bad files" >> beam.Filter(
            _no_bad_files, beam.pvalue.AsSingleton(bad_count))
    rows = embedded | "Rows" >> beam.Map(_row)
    if output_format == "tfrecord":
        _ = (rows
             | "Examples" >> beam.Map(_serialize_row, features)
             | "Write TFRecords" >> beam.io.WriteToTFRecord(output, file_name_suffix=".tfrecord"))
    else:
        _ = rows | "Write Parquet" >> beam.io.WriteToParquet(
            output, _parquet_schema(features), file_name_suffix=".parquet")
    counters = {name: 0 for name in _COUNTERS} | beam_runs.run(pipeline, NAMESPACE)
    logging.info("Beam embedding counters: %s",
                 ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    if counters["bad_files"] and not skip_bad:
        for path in _shard_files(output, output_format):  # the empty shards Beam always writes
            tf.io.gfile.remove(path)
        raise DataError(_bad_files_message(output + client.BAD_FILES_SUFFIX))
    return counters


def read_embeddings(output: str,
                    output_format: str = "tfrecord") -> tuple[list[str], dict[str, np.ndarray]]:
    """The rows `embed_with_beam` wrote for `output`, sorted by id: (ids, {feature:
    float32 [N, D]}).

    Raises:
        ConfigError: an unknown `output_format`.
        DataError: no shards, or not one complete set of them.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}; "
                          f"got {output_format!r}.")
    files = _shard_files(output, output_format)
    if not files:
        raise DataError(f"No embeddings {output}-NNNNN-of-MMMMM.{output_format} found.")
    totals = {int(_SHARD.search(path).group(2)) for path in files}
    if len(totals) != 1 or len(files) != totals.pop():
        raise DataError(f"The {output_format} shards of {output!r} are not one complete set: "
                        f"{', '.join(os.path.basename(path) for path in files)}.")
    read = _tfrecord_rows if output_format == "tfrecord" else _parquet_rows
    rows = sorted((row for path in files for row in read(path)), key=lambda row: row["id"])
    names = [name for name in rows[0] if name != "id"] if rows else []
    return ([row["id"] for row in rows],
            {name: np.asarray([row[name] for row in rows], np.float32) for name in names})


class SavedModelHandler(TFModelHandlerNumpy):
    """Beam's TensorFlow model handler for an exported dim-tf encoder: examples are
    uint8 [height, width, channels] images of any size, inferences {feature:
    float32 [D]} of the requested `features`.

    Batches hold `batch_size` images (the last of a bundle fewer).
    """

    def __init__(self, saved_model_dir: str, signature: str = SERVING_SIGNATURE,
                 features: Sequence[str] = ("y",), batch_size: int = 64):
        super().__init__(saved_model_dir,
                         inference_fn=functools.partial(_predict, features=tuple(features)),
                         min_batch_size=batch_size, max_batch_size=batch_size)
        self._signature = signature

    def load_model(self):
        """The SavedModel's signature function. The stock `load_model` calls
        `tf.keras.models.load_model`, which on Keras 3 cannot read a SavedModel.

        Raises:
            ServingError: no SavedModel there, or no such signature (naming those there are).
        """
        return client.load_signature(self._model_uri, self._signature)


def embed_mixed_sizes(signature_fn, images: Sequence[np.ndarray],
                      features: Sequence[str] = ("y",)) -> list[dict[str, np.ndarray]]:
    """Runs `signature_fn` (a loaded `serving_default`) on uint8 images of any sizes:
    once per size, since a call takes one size. Returns, in the order of `images`,
    {feature: float32 [D]} per image (feature maps flattened)."""
    rows: list[dict[str, np.ndarray]] = [{} for _ in images]
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_shape[image.shape].append(index)
    for indices in by_shape.values():
        outputs = signature_fn(images=tf.constant(np.stack([images[i] for i in indices])))
        for name in features:
            values = outputs[name].numpy().astype(np.float32, copy=False).reshape(len(indices), -1)
            for index, value in zip(indices, values):
                rows[index][name] = value
    return rows


def _predict(signature_fn, batch: Sequence[np.ndarray], inference_args: dict[str, Any],
             model_id: str | None = None, *, features: tuple[str, ...]) -> list[PredictionResult]:
    """The handler's `inference_fn`: Beam's results, in the order of `batch`."""
    return [PredictionResult(image, row, model_id)
            for image, row in zip(batch, embed_mixed_sizes(signature_fn, batch, features))]


def _checked_arguments(output, images, examples, split, features, output_format, batch_size,
                       channels) -> tuple[str, ...]:
    """`features` as a tuple, once every argument is valid (ConfigError otherwise)."""
    features = (features,) if isinstance(features, str) else tuple(features)
    if not output:
        raise ConfigError("output (the path prefix of the embedding files) is required.")
    if (images is None) == (examples is None):
        raise ConfigError("Give exactly one of images (a folder) or examples (a TFRecord dataset "
                          "written by the ingest).")
    if split is not None and examples is None:
        raise ConfigError(f"split={split!r} selects a split of examples (a TFRecord dataset); an "
                          "image folder is embedded whole.")
    if not features or len(set(features)) != len(features) or not set(features) <= set(FEATURE_NAMES):
        raise ConfigError(f"features must be distinct names among {', '.join(FEATURE_NAMES)}; "
                          f"got {list(features)}.")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}; "
                          f"got {output_format!r}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}.")
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3; got {channels}.")
    return features


def _dataset_shards(root: str, split: str | None) -> list[str]:
    """The shard files of `split` (None: every split) of the ingested dataset `root`.

    Raises:
        DataError: no such dataset or split, a shard is missing, or no images.
    """
    chosen = [split] if split is not None else sorted(read_tfrecord_schema(root)["splits"])
    shards = [split_shards(root, name) for name in chosen]
    if not sum(int(info["num_examples"]) for info, _ in shards):
        raise DataError(f"TFRecord dataset {root!r} has no images in split(s) {', '.join(chosen)}.")
    return [path for _, files in shards for path in files]


def _decoded_images(pipeline, files: list[ImageFile] | None, shards: list[str] | None,
                    channels: int):
    """The decoded images of the folder's `files` or the dataset's `shards`: tagged
    outputs `images` (id, uint8 pixels) and `bad` (id, reason)."""
    if files is not None:
        return (pipeline
                | "List images" >> beam.Create(files)
                | "Decode images" >> beam.ParDo(_DecodeFile(channels)).with_outputs(_BAD,
                                                                                     main=_IMAGES))
    return (pipeline
            | "List shards" >> beam.Create(shards)
            | "Read records" >> beam.io.ReadAllFromTFRecord()
            | "Decode records" >> beam.ParDo(_DecodeRecord(channels)).with_outputs(_BAD,
                                                                                   main=_IMAGES))


class _DecodeFile(beam.DoFn):
    """An image file (ImageFile) -> (path, pixels), or `bad`: (path, reason)."""

    def __init__(self, channels: int):
        self.channels = channels

    def setup(self):
        self.read = Metrics.counter(NAMESPACE, "images_read")

    def process(self, image: ImageFile) -> Iterable:
        self.read.inc()
        try:
            yield image.path, client.read_pixels(image, self.channels)
        except client.DECODE_ERRORS as error:
            yield beam.pvalue.TaggedOutput(_BAD, (image.path,
                                                  client.undecodable_reason(image.path, error)))


class _DecodeRecord(beam.DoFn):
    """A serialized ingest record -> (image/name, pixels), or `bad`: (name, reason)."""

    def __init__(self, channels: int):
        self.channels = channels

    def setup(self):
        self.read = Metrics.counter(NAMESPACE, "images_read")

    def process(self, serialized: bytes) -> Iterable:
        self.read.inc()
        encoded, _, name = parse_record(serialized)
        name = os.fsdecode(name)
        try:
            yield name, client.decode_pixels(encoded, self.channels)
        except tf.errors.OpError as error:
            yield beam.pvalue.TaggedOutput(_BAD, (name, client.undecodable_reason(None, error)))


def _counted(element, counter: str):
    Metrics.counter(NAMESPACE, counter).inc()
    return element


def _no_bad_files(_, bad_count: int) -> bool:
    return bad_count == 0


def _row(keyed_result: tuple[str, PredictionResult]) -> dict:
    """(id, RunInference's result) -> {"id": id, feature: float32 [D], ...}."""
    image_id, result = keyed_result
    Metrics.counter(NAMESPACE, "images_embedded").inc()
    return {"id": image_id, **result.inference}


def _serialize_row(row: dict, features: tuple[str, ...]) -> bytes:
    feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[os.fsencode(row["id"])]))}
    for name in features:
        feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=row[name]))
    # Deterministic: map fields in key order, not in the order of this process's string hashes.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def _parquet_schema(features: tuple[str, ...]):
    import pyarrow as pa

    return pa.schema([("id", pa.string()), *((name, pa.list_(pa.float32())) for name in features)])


def _tfrecord_rows(path: str) -> Iterable[dict]:
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        fields = tf.train.Example.FromString(record).features.feature
        yield {name: (os.fsdecode(value.bytes_list.value[0]) if name == "id" else
                      np.asarray(value.float_list.value, np.float32))
               for name, value in fields.items()}


def _parquet_rows(path: str) -> Iterable[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tf.io.gfile.GFile(path, "rb") as f:  # any filesystem TensorFlow reads (gs://)
        yield from pq.read_table(pa.BufferReader(f.read())).to_pylist()


def _shard_files(output: str, output_format: str) -> list[str]:
    """The shards of `output` in `output_format` (any count), sorted."""
    pattern = f"{output}-[0-9][0-9][0-9][0-9][0-9]*-of-[0-9][0-9][0-9][0-9][0-9]*.{output_format}"
    return sorted(path for path in tf.io.gfile.glob(pattern) if _SHARD.search(path))


def _remove_earlier_output(output: str, output_format: str) -> None:
    for path in _shard_files(output, output_format):
        tf.io.gfile.remove(path)
    if tf.io.gfile.exists(output + client.BAD_FILES_SUFFIX):
        tf.io.gfile.remove(output + client.BAD_FILES_SUFFIX)


def _bad_files_message(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        bad = [BadImage(entry["id"], entry["reason"]) for entry in map(json.loads, f)]
    more = len(bad) - _NAMED_IN_ERROR
    return (f"{len(bad)} image(s) could not be decoded, so no embeddings were written (all are "
            f"listed in {path}); skip_bad (--skip_bad) embeds the others:\n  "
            + "\n  ".join(map(str, bad[:_NAMED_IN_ERROR])) + (f"\n  ... and {more} more" if more > 0 else ""))
