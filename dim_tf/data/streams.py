"""An `ImageSource` as batches for the model: the training and the evaluation stream.

The training stream is deterministic from (seed, epoch, position):
rerunning from a checkpoint at step k yields exactly the batches an
uninterrupted run would have seen from step k on.
"""

from __future__ import annotations

import tensorflow as tf

from dim_tf.config import Augmentation
from dim_tf.data import augment
from dim_tf.data.preprocessing import decode_image, preprocess
from dim_tf.data.source import ImageSource


def training_dataset(
    source: ImageSource,
    *,
    global_batch_size: int,
    steps_per_epoch: int,
    start_step: int,
    seed: int,
    image_size: int,
    channels: int,
    augmentation: Augmentation = Augmentation(),
    views: int = 1,
    shuffle_buffer: int = 10_000,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Endless stream of (images, labels) batches starting at global step `start_step`.

    images: float32 in [-1, 1], [batch, image_size, image_size, channels] for one
    view, [batch, views, image_size, image_size, channels] for several, each view
    augmented by `augmentation` apart from the others (`dim_tf.data.augment`, seeded
    by (seed, epoch, index); crops and flips run per image, zooms and colour per batch).

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
            element_seed = tf.cast(tf.stack([tf.cast(seed, tf.int64) * 7919 + epoch, index]),
                                   tf.int32)
            image = decode_image(record["image"], channels)
            views_of = augment.geometry(image, image_size, augmentation, element_seed, views)
            draws = augment.finish_draws(augmentation, element_seed, views)
            if views == 1:
                views_of, draws = views_of[0], {k: v[0] for k, v in draws.items()}
            return views_of, draws, record["label"]

        return rows.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def finish(images, draws, labels):
        # Resized crops and colour on whole batches: a fraction of their per-image cost.
        return augment.finish(images, draws, augmentation), labels

    first = one_epoch(first_epoch, skip_steps)
    rest = tf.data.Dataset.range(first_epoch + 1, 2**62).flat_map(lambda e: one_epoch(e, 0))
    batches = first.concatenate(rest).batch(per_replica, drop_remainder=True)
    return batches.map(finish, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).prefetch(tf.data.AUTOTUNE)


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
