"""Frozen-encoder features of a dataset split, computed once and cached.

The evaluation protocol (Hjelm et al. 2019, sec. 4.1) probes three layers of a
frozen encoder in inference mode: `conv` (the last convolutional map, flattened),
`fc` and `y`. Features are cached in the report directory as .npz files keyed
by a fingerprint of the encoder and the data, so a rerun with other probe
settings does not encode the dataset again. The cache holds the features of the
`MAX_CACHED_ENCODERS` encoders cached last and forgets older ones: CIFAR-10's
`conv` features take 1.4 GB per encoder, and a run evaluated at every budget
would otherwise fill the disk.

The fingerprint names the encoder by its content, not by where it lives: a
run retrained into the same directory reaches the same `ckpt-N` path with other
weights, and an export can be replaced in place, so a key made of paths would
silently serve the old encoder's features (`checkpoint_digest`,
`saved_model_digest`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from typing import Callable

from absl import logging

import numpy as np
import tensorflow as tf

from dim_tf.errors import DataError, RunNotFoundError
from dim_tf.io import atomic_path

EncodeFn = Callable[[tf.Tensor], dict]

# Two, so that a trained encoder and its random-init baseline, evaluated in turn into
# one report directory, both stay cached.
MAX_CACHED_ENCODERS = 2
# features-<encoder key>-<data key>.npz; the old single-key name is stale and removed.
_CACHE_FILE = re.compile(r"features-(?P<encoder>[0-9a-f]{16})-[0-9a-f]{16}\.npz")
_STALE_CACHE_FILE = re.compile(r"features-[0-9a-f]{16}\.npz")


class SplitFeatures:
    """Features of one split: {layer: float32 [N, D]}, labels [N], uint8 images [N, H, W, C]."""

    def __init__(self, features: dict[str, np.ndarray], labels: np.ndarray, images: np.ndarray):
        self.features, self.labels, self.images = features, labels, images

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def labelled(self) -> bool:
        return bool(np.all(self.labels >= 0))


def encode_dataset(encode: EncodeFn, dataset: tf.data.Dataset, layers: tuple[str, ...],
                   progress: bool = False) -> SplitFeatures:
    """Runs `encode` (images in [-1, 1] -> dict of features) over (images, labels) batches."""
    import keras

    step = tf.function(lambda images: {k: tf.reshape(tf.cast(v, tf.float32), [tf.shape(v)[0], -1])
                                       for k, v in encode(images).items() if k in layers})
    collected: dict[str, list] = {layer: [] for layer in layers}
    labels, images_uint8 = [], []
    batches = int(dataset.cardinality())
    bar = keras.utils.Progbar(batches if batches >= 0 else None, unit_name="batch") if progress else None
    for images, batch_labels in dataset:
        outputs = step(images)
        for layer in layers:
            collected[layer].append(outputs[layer].numpy())
        labels.append(batch_labels.numpy())
        images_uint8.append(np.round((images.numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
        if bar:
            bar.add(1)
    if not labels:
        raise DataError("The evaluation split has no images.")
    return SplitFeatures({k: np.concatenate(v) for k, v in collected.items()},
                         np.concatenate(labels).astype(np.int64), np.concatenate(images_uint8))


def file_digest(paths: list[str]) -> str:
    """SHA-256 (hex) of the names, sizes and bytes of `paths`, in order (a missing file: size -1)."""
    digest = hashlib.sha256()
    for path in paths:
        size = os.path.getsize(path) if os.path.exists(path) else -1
        digest.update(f"{os.path.basename(path)}\0{size}\0".encode())
        if size >= 0:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def checkpoint_digest(prefix: str) -> str:
    """Content hash of the TF checkpoint `prefix` (e.g. .../checkpoints/ckpt-8).

    Why the index file only: it records the dtype, shape and CRC32C of every
    saved tensor, so it changes whenever any weight does, and it is small
    where the data shards are not.

    Raises:
        RunNotFoundError: `prefix` has no .index file.
    """
    index = f"{prefix}.index"
    if not os.path.exists(index):
        raise RunNotFoundError(f"Checkpoint {prefix} has no {os.path.basename(index)} file.")
    return file_digest([index])


def saved_model_digest(directory: str) -> str:
    """Content hash of a SavedModel: its graph (saved_model.pb) and its variables' index.

    The variables index holds a CRC32C per tensor (see `checkpoint_digest`);
    a SavedModel without variables hashes its graph alone.
    """
    return file_digest([os.path.join(directory, "saved_model.pb"),
                        os.path.join(directory, "variables", "variables.index")])


def _key(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def cached_features(cache_dir: str, encoder: dict, data: dict,
                    compute: Callable[[], SplitFeatures]) -> SplitFeatures:
    """Loads the features cached under (`encoder`, `data`), or computes and caches
    them (atomically), forgetting the features of all but the `MAX_CACHED_ENCODERS`
    encoders cached last.

    Both fingerprints are JSON-serialisable and must change whenever the features
    would: `encoder` names the encoder by content (`checkpoint_digest`,
    `saved_model_digest`), `data` the split, its limit and size and the layers.
    """
    path = os.path.join(cache_dir, f"features-{_key(encoder)}-{_key(data)}.npz")
    if os.path.exists(path):
        with np.load(path) as cached:
            features = {k[len("feature_"):]: cached[k] for k in cached.files if k.startswith("feature_")}
            return SplitFeatures(features, cached["labels"], cached["images"])
    result = compute()
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_path(path, suffix=".npz") as temporary:
        np.savez(temporary, labels=result.labels, images=result.images,
                 **{f"feature_{k}": v for k, v in result.features.items()})
    _forget_old_encoders(cache_dir)
    return result


def _forget_old_encoders(cache_dir: str) -> None:
    """Removes the cache files of all but the `MAX_CACHED_ENCODERS` encoders whose
    features were written last, and files of the old single-key naming; other files
    are left alone."""
    files: dict[str, list[str]] = {}
    written: dict[str, int] = {}
    stale: list[str] = []
    for entry in os.scandir(cache_dir):
        if match := _CACHE_FILE.fullmatch(entry.name):
            encoder = match["encoder"]
            files.setdefault(encoder, []).append(entry.path)
            written[encoder] = max(written.get(encoder, 0), entry.stat().st_mtime_ns)
        elif _STALE_CACHE_FILE.fullmatch(entry.name):
            stale.append(entry.path)
    forgotten = sorted(written, key=written.get, reverse=True)[MAX_CACHED_ENCODERS:]
    doomed = stale + [path for encoder in forgotten for path in files[encoder]]
    for path in doomed:
        # Another evaluation pruning the same cache may have removed it first.
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    if doomed:
        logging.info("Feature cache %s: removed %d files of encoders cached earlier.", cache_dir, len(doomed))
