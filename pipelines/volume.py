"""Where a cluster run keeps its files: on the pipeline's volume or an object store.

The pods of a Kubeflow pipeline (and of a TFJob) share only the persistent
volume mounted in each of them and object stores; a file written anywhere
else vanishes with its pod. `place_on_volume` puts every path flag of the
pipeline there before anything runs:

- a relative path is taken as relative to the volume (`runs/x` ->
  `/pipeline/runs/x`), so the local pipeline's flagfiles work unchanged;
- an absolute path must be under the mount path, or an object-store URI;
  anything else (`~/data`, `/tmp/x`) is refused, naming the flag;
- the push destination and the TFDS data directory, when unset, default to
  `saved_models/PIPELINE_NAME` and `tensorflow_datasets` on the volume
  (locally they default to the working directory and `~`, both inside a pod).
"""

from __future__ import annotations

import dataclasses
import posixpath

from dim_tf import ConfigError, DatasetSpec

# Object-store schemes TensorFlow's file system reads and writes.
URI_SCHEMES = ("gs://", "s3://", "hdfs://")
DEFAULT_DATA_DIR = "tensorflow_datasets"


def check_shared(path: str, flag: str, mount_path: str | None) -> None:
    """Raises ConfigError unless `path` is under `mount_path` (None: no volume) or a URI."""
    if path.startswith(URI_SCHEMES):
        return
    mount = posixpath.normpath(mount_path) if mount_path else None
    if mount is None or not posixpath.normpath(path).startswith(mount.rstrip("/") + "/"):
        where = f"the pipeline's volume ({mount_path})" if mount else "a volume (none is mounted)"
        raise ConfigError(
            f"--{flag}={path} is not on {where} or an object-store URI ({', '.join(URI_SCHEMES)}): "
            "the pods of a cluster run share nothing else, and the file would vanish with its pod. "
            "Give a path under the volume, a relative one (taken as relative to the volume) or a URI.")


def on_volume(path: str, flag: str, mount_path: str) -> str:
    """`path` resolved against the volume: relative paths go under `mount_path`.

    Raises:
        ConfigError: an absolute path off the volume that is not a URI.
    """
    if path.startswith(URI_SCHEMES):
        return path
    # `~` is the pod's home folder: refused like any other path off the volume.
    resolved = posixpath.normpath(path if posixpath.isabs(path) or path.startswith("~")
                                  else posixpath.join(mount_path, path))
    check_shared(resolved, flag, mount_path)
    return resolved


def place_on_volume(values: dict, mount_path: str) -> dict:
    """The pipeline's flag values ({flag name: value}) with every path on the volume.

    Raises:
        ConfigError: a path flag names a place off the volume that is not a URI.
    """
    placed = dict(values)
    placed["pipeline_root"] = on_volume(values["pipeline_root"] or "root", "pipeline_root",
                                        mount_path)
    placed["push_destination"] = on_volume(
        values["push_destination"] or posixpath.join("saved_models", values["pipeline_name"]),
        "push_destination", mount_path)
    placed["data_dir"] = on_volume(values["data_dir"] or DEFAULT_DATA_DIR, "data_dir", mount_path)
    if values["manual_dir"]:
        placed["manual_dir"] = on_volume(values["manual_dir"], "manual_dir", mount_path)
    # The raw value, before DatasetSpec expands `~` into the pod's home folder.
    spec = DatasetSpec.parse(values["dataset"])
    if spec.path is not None:
        raw_path = values["dataset"].partition(":")[2]
        placed["dataset"] = str(dataclasses.replace(spec, name=on_volume(raw_path, "dataset",
                                                                         mount_path)))
    return placed
