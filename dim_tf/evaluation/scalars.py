"""The TensorBoard scalars of a training run, read back from its event files."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

Scalars = dict[str, list[tuple[int, float]]]


def read_scalars(log_dir: str) -> Scalars:
    """tag -> [(step, value)] sorted by step, from every event file in `log_dir`
    ({} when there is no such directory).

    A resumed run logs some steps twice (the steps after its last checkpoint);
    the value written last wins, as it belongs to the run that continued.
    A truncated last record (a killed run) ends that file's reading quietly.
    Values that are not scalars (an image or histogram under the same tag) are
    left out.
    """
    if not os.path.isdir(log_dir):
        return {}
    latest: dict[str, dict[int, tuple[float, float]]] = {}  # tag -> step -> (wall_time, value)
    for file_name in sorted(os.listdir(log_dir)):
        if "tfevents" not in file_name:
            continue
        try:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, file_name)):
                for value in event.summary.value:
                    if value.HasField("tensor"):
                        array = tf.make_ndarray(value.tensor)
                    elif value.HasField("simple_value"):
                        array = np.asarray(value.simple_value)
                    else:
                        continue
                    if array.size != 1 or not np.issubdtype(array.dtype, np.number):
                        continue
                    series = latest.setdefault(value.tag, {})
                    previous = series.get(event.step)
                    if previous is None or event.wall_time >= previous[0]:
                        series[event.step] = (event.wall_time, float(array.reshape(())))
        except tf.errors.DataLossError:
            pass
    return {tag: sorted((step, v) for step, (_, v) in series.items())
            for tag, series in latest.items()}
