"""Checkpoints of a `DeepInfoMax` model and both of its optimisers, safe against kill -9.

`tf.train.Checkpoint` restores weights, batch-norm statistics, Adam slots,
iteration counts and Keras' random-layer states exactly (the prior's random
stream is keyed on the encoder optimiser's iteration count, so it resumes too).

Checkpoints written before the encoders' padding moved into their convolutions
(`dim_tf.models.encoders.PaddedConv2D`) list the encoder's layers with a
`ZeroPadding2D` before each padded convolution; `training_checkpoint` restores
them too, so older runs resume, evaluate and export unchanged.

`CheckpointStore` writes checkpoint N so that a process killed at any moment
leaves every earlier checkpoint readable:

1. TensorFlow writes ckpt-N's files into a hidden staging directory
   (`.saving-ckpt-N-PID/`), which are then flushed to disk;
2. the data files are renamed into place, then the index (`ckpt-N.index`): an
   index in the directory therefore means its data files are complete;
3. TensorFlow's `checkpoint` file (read by `tf.train.latest_checkpoint`, e.g. by
   evaluation and export) is replaced atomically;
4. checkpoints beyond `max_to_keep` are deleted, index first.

The checkpoints are the `ckpt-N.index` files present, newest N first; a
checkpoint that fails to restore (truncated, corrupted, missing data) is set
aside under `unreadable/` with a warning naming it, and the previous one is
used. Files a killed save left behind are removed by `remove_leftovers`.
"""

from __future__ import annotations

import math
import os
import re
import shutil

import keras
import tensorflow as tf
from absl import logging

from dim_tf import io
from dim_tf.errors import CheckpointError
from dim_tf.faults import kill_point
from dim_tf.models import encoders
from dim_tf.training import precision

PREFIX = "ckpt"
STATE_FILE = "checkpoint"  # TensorFlow's name, so tf.train.latest_checkpoint reads it
UNREADABLE_DIR = "unreadable"
_STAGING = ".saving-"
_FILE = re.compile(rf"^{PREFIX}-(\d+)\.(index|data-\d+-of-\d+)$")
_TF_TEMP = re.compile(rf"^{PREFIX}-\d+_temp")  # TensorFlow's own staging of a sharded write


class _TrainingCheckpoint(tf.train.Checkpoint):
    """A `tf.train.Checkpoint` whose `restore` also reads the older layout (module docstring)."""

    def __init__(self, older_layout, **parts):
        super().__init__(**parts)
        self._older_layout = older_layout  # a function, so not part of what is saved

    def restore(self, save_path, options=None):
        if _written_with_padding_layers(save_path, self.model.encoder):
            logging.info("%s was written before the encoder's padding moved into its "
                         "convolutions; restoring it by that layout (weights unchanged).",
                         save_path)
            return self._older_layout().restore(save_path, options)
        return super().restore(save_path, options)


_ENCODER_LAYERS_KEY = "model/encoder/_operations/{index}/{name}/.ATTRIBUTES/VARIABLE_VALUE"


def _statistics_keys(listed_layers: list) -> set[str]:
    """Checkpoint keys of the non-trainable variables (batch norms' moving statistics)
    of the encoder layers `listed_layers`, indexed as listed. The trainable ones are
    saved under their optimiser's list, whatever the layout."""
    keys = set()
    for index, layer in enumerate(listed_layers):
        if layer is None:
            continue
        for name, child in tf.train.TrackableView.children(layer).items():
            if isinstance(child, keras.Variable) and not child.trainable:
                keys.add(_ENCODER_LAYERS_KEY.format(index=index, name=name))
    return keys


def _written_with_padding_layers(save_path: str, encoder) -> bool:
    """Whether checkpoint `save_path` lists `encoder`'s layers with `ZeroPadding2D`s."""
    older = _statistics_keys(encoders.layers_with_padding_layers(encoder))
    current = _statistics_keys(encoder.layers)
    if older == current:  # no padded convolution: both layouts are the same
        return False
    try:
        reader = tf.train.load_checkpoint(save_path)
    except (tf.errors.OpError, ValueError):
        return False  # the current layout's restore names the damage
    return (all(reader.has_tensor(key) for key in older)
            and not all(reader.has_tensor(key) for key in current))


def _with_padding_layers(model) -> tf.Module:
    """A view of `model` whose encoder lists its layers as checkpoints with `ZeroPadding2D`s did."""
    encoder = tf.Module()
    encoder._operations = [layer if layer is not None else tf.Module()
                           for layer in encoders.layers_with_padding_layers(model.encoder)]
    view = tf.Module()
    for name, child in tf.train.TrackableView.children(model).items():
        setattr(view, name, encoder if child is model.encoder else child)
    return view


def training_checkpoint(model) -> tf.train.Checkpoint:
    """A checkpoint of `model`, its encoder optimiser and its prior optimiser.

    Its `restore` also reads checkpoints of the older encoder layout (module docstring).

    Raises:
        ValueError: the model has not been compiled (no optimisers yet).
    """
    if getattr(model, "optimizer", None) is None:
        raise ValueError("Compile the DeepInfoMax model before checkpointing it: "
                         "its optimisers are part of the checkpoint.")
    parts = _checkpoint_parts(model)
    return _TrainingCheckpoint(
        lambda: tf.train.Checkpoint(**{**parts, "model": _with_padding_layers(model)}), **parts)


def _checkpoint_parts(model) -> dict:
    """What a training checkpoint holds, by name."""
    parts = {"model": model}
    for name, optimizer in (("encoder_optimizer", model.optimizer),
                            ("prior_optimizer", model.prior_optimizer),
                            ("monitor_optimizer", model.monitor_optimizer)):
        if optimizer is None:
            continue
        # The update state under the same name with or without float16 loss
        # scaling, so a GPU run's checkpoint restores on a CPU (bfloat16) for
        # evaluation and export; the scale is kept beside it.
        parts[name] = precision.unscaled(optimizer)
        if optimizer is not parts[name]:
            parts[f"{name}_loss_scale"] = [optimizer.dynamic_scale, optimizer.step_counter]
    # Keras' random layers (the monitor's dropout) draw from SeedGenerator states,
    # which are model variables but not tracked by tf.train.Checkpoint: without
    # them a resumed run would draw other dropout masks than an uninterrupted one.
    random_states = [v for v in model.variables if v.name == "seed_generator_state"]
    if random_states:
        parts["random_states"] = random_states
    return parts


def checkpoint_bytes(model) -> int:
    """About the size of one checkpoint of `model`: its weights and every optimiser's state."""
    optimizers = [o for o in (model.optimizer, getattr(model, "prior_optimizer", None),
                              getattr(model, "monitor_optimizer", None)) if o is not None]
    variables = list(model.variables) + [v for o in optimizers for v in o.variables]
    return sum(math.prod(v.shape) * tf.as_dtype(v.dtype).size for v in variables)


def _files(directory: str) -> dict[int, list[str]]:
    """{N: names of ckpt-N's files} in `directory`."""
    files: dict[int, list[str]] = {}
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            match = _FILE.match(name)
            if match:
                files.setdefault(int(match.group(1)), []).append(name)
    return files


def _complete(directory: str) -> list[int]:
    """Numbers of the complete checkpoints (index present) in `directory`, oldest first."""
    return sorted(n for n, names in _files(directory).items() if f"{PREFIX}-{n}.index" in names)


def remove_leftovers(directory: str) -> list[str]:
    """Deletes what killed saves left in checkpoint `directory`: staging directories,
    data files without an index, temporary files of `dim_tf.io` (the state file's).
    Call only while no other process saves there (the run's lock). Returns the
    removed paths."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    complete = set(_complete(directory))
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        match = _FILE.match(name)
        staging = name.startswith(_STAGING) or _TF_TEMP.match(name) is not None
        orphan = match is not None and int(match.group(1)) not in complete
        if staging and os.path.isdir(path):
            shutil.rmtree(path)
        elif staging or orphan or io.is_temporary(name):
            os.remove(path)
        else:
            continue
        removed.append(path)
    return removed


def _first_line(error: BaseException) -> str:
    """The error's type and first line, without TensorFlow's {{function_node ...}} prefix."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:500] if text else ''}"


class CheckpointStore:
    """Numbered checkpoints `ckpt-N` in `directory` (see the module docstring).

    Args:
        checkpoint: what to save and restore (`training_checkpoint(model)`).
        directory: the checkpoint directory (created on the first save).
        max_to_keep: newest checkpoints kept; older ones are deleted after a save.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int = 3):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1; got {max_to_keep!r}.")
        self.checkpoint, self.directory, self.max_to_keep = checkpoint, directory, max_to_keep
        # `restore` creates the checkpoint's save counter; create it now, so that
        # `write` (which, unlike `save`, does not) stores it and every restore
        # matches all objects.
        checkpoint.save_counter.assign(0)

    def _prefix(self, number: int) -> str:
        return os.path.join(self.directory, f"{PREFIX}-{number}")

    def numbers(self) -> list[int]:
        """Numbers of the complete checkpoints (index present), oldest first."""
        return _complete(self.directory)

    @property
    def latest_checkpoint(self) -> str | None:
        """Prefix of the newest complete checkpoint, or None."""
        numbers = self.numbers()
        return self._prefix(numbers[-1]) if numbers else None

    def save(self, checkpoint_number: int | None = None) -> str:
        """Writes checkpoint `checkpoint_number` (default: newest + 1); returns its prefix.

        Raises:
            CheckpointError: it could not be written (disk full, permissions, ...):
                its partial files are removed and earlier checkpoints are intact.
        """
        numbers = self.numbers()
        number = checkpoint_number if checkpoint_number is not None else (
            numbers[-1] + 1 if numbers else 1)
        name = f"{PREFIX}-{number}"
        staging = os.path.join(self.directory, f"{_STAGING}{name}-{os.getpid()}")
        try:
            os.makedirs(self.directory, exist_ok=True)
            self.checkpoint.write(os.path.join(staging, name))
            kill_point("checkpoint.written")
            written = sorted(f for f in os.listdir(staging) if _FILE.match(f))
            # Flushed before the renames, so a power loss cannot leave a checkpoint
            # whose index exists but whose data never reached the disk.
            for f in written:
                io.fsync_path(os.path.join(staging, f))
            index = f"{name}.index"
            # Overwriting ckpt-N: drop its index first so the old index never
            # describes the new data files.
            if os.path.exists(os.path.join(self.directory, index)):
                os.remove(os.path.join(self.directory, index))
            for f in written:
                if f != index:
                    os.replace(os.path.join(staging, f), os.path.join(self.directory, f))
            kill_point("checkpoint.data_moved")
            os.replace(os.path.join(staging, index), os.path.join(self.directory, index))
            io.fsync_path(self.directory)
            kill_point("checkpoint.index_moved")
            self._write_state()
            kill_point("checkpoint.state_written")
            self._prune()
        except (tf.errors.OpError, OSError) as error:
            self._remove_incomplete(number)
            previous = [n for n in self.numbers() if n != number]
            kept = (f"The earlier checkpoints are intact (newest: {self._prefix(previous[-1])})"
                    if previous else "There is no earlier checkpoint")
            raise CheckpointError(
                f"Could not write checkpoint {self._prefix(number)}: {_first_line(error)}. {kept}. "
                f"Free space on the disk of {self.directory} or fix its permissions, then rerun "
                "the same command to resume."
            ) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self._prefix(number)

    def _remove_incomplete(self, number: int) -> None:
        """Removes ckpt-`number`'s files unless its index is in place (a failed save
        must not hold on to the space it filled)."""
        names = _files(self.directory).get(number, [])
        if f"{PREFIX}-{number}.index" not in names:
            for name in names:
                os.remove(os.path.join(self.directory, name))

    def _write_state(self) -> None:
        """Replaces TensorFlow's `checkpoint` file with the kept checkpoints."""
        numbers = self.numbers()[-self.max_to_keep:]
        if not numbers:
            return
        lines = [f'model_checkpoint_path: "{PREFIX}-{numbers[-1]}"']
        lines += [f'all_model_checkpoint_paths: "{PREFIX}-{n}"' for n in numbers]
        io.atomic_write_text(os.path.join(self.directory, STATE_FILE), "\n".join(lines) + "\n")

    def _prune(self) -> None:
        files = _files(self.directory)
        for number in self.numbers()[:-self.max_to_keep]:
            # The index goes first: without it the leftover data is never read.
            for name in sorted(files[number], key=lambda f: not f.endswith(".index")):
                os.remove(os.path.join(self.directory, name))

    def restore_newest_readable(self, repair: bool = True) -> str | None:
        """Restores the newest checkpoint that reads back completely; returns its prefix,
        or None when there is no checkpoint.

        With `repair` (the process that owns the directory), unreadable newer
        checkpoints are moved to `unreadable/` and the state file is rewritten;
        either way each is named in a warning.

        Raises:
            CheckpointError: there are checkpoints, but none can be read (they are
                left in place).
        """
        failures = []
        for number in reversed(self.numbers()):
            prefix = self._prefix(number)
            try:
                self.checkpoint.restore(prefix).assert_existing_objects_matched()
            # What a damaged file raises varies with the damage: OpError (DataLoss,
            # checksum), IndexError (a truncated tensor), ValueError or KeyError
            # (a damaged object graph), AssertionError (objects not matched).
            except (tf.errors.OpError, AssertionError, IndexError, KeyError, ValueError) as error:
                failures.append((number, error))
                continue
            for bad, error in failures:
                self._report_unreadable(bad, error, prefix, repair)
            if repair:
                self._write_state()
            return prefix
        if failures:
            listed = "\n  ".join(f"{self._prefix(n)}: {_first_line(e)}" for n, e in failures)
            raise CheckpointError(
                f"No checkpoint in {self.directory} can be read:\n  {listed}\nTraining does not "
                "start over silently. Restore the files, or rerun with --start_over to move "
                "this run aside and train from step 0."
            )
        return None

    def _report_unreadable(self, number: int, error: BaseException, instead: str,
                           repair: bool) -> None:
        names = _files(self.directory).get(number, [])
        where = ""
        if repair:
            aside = os.path.join(self.directory, UNREADABLE_DIR)
            os.makedirs(aside, exist_ok=True)
            for name in names:
                os.replace(os.path.join(self.directory, name), os.path.join(aside, name))
            where = f"; moved to {aside}"
        logging.warning("Checkpoint %s (%s) cannot be read: %s%s. Resuming from the previous "
                        "checkpoint %s instead.", self._prefix(number), ", ".join(names),
                        _first_line(error), where, instead)


def restore_latest(
    checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int = 3, repair: bool = True
) -> tuple[CheckpointStore, str | None]:
    """Restores the newest readable checkpoint in `directory`, if any.

    Returns:
        (store for further saves, path restored from or None).
    """
    store = CheckpointStore(checkpoint, directory, max_to_keep)
    return store, store.restore_newest_readable(repair)
