"""Every error dim_tf raises on purpose, under one root, with its exit status.

A `DimError` is a problem the user can act on: its message names the flag,
file, step or process involved, says what was kept and how to go on. The
command lines (`dim_tf.cli.run`) print it and exit with its `exit_status`;
anything else is a bug and keeps its traceback.

Exit statuses, the same for every command:
    0    done
    1    stopped while working (training stopped, an export or a model_dir in use)
    2    bad settings or data, found before any work (a flag, a file, a dataset)
    143  SIGTERM: the work so far was saved; rerun the same command to resume
"""

from __future__ import annotations

EXIT_STOPPED = 1
EXIT_BAD_INPUT = 2
EXIT_SIGTERM = 128 + 15  # the conventional status of a SIGTERM-ended process


class DimError(Exception):
    """The root: a problem the message explains, not a bug."""

    exit_status = EXIT_STOPPED


class ConfigError(DimError, ValueError):
    """A setting is invalid; the message names the flag and what is allowed."""

    exit_status = EXIT_BAD_INPUT


class DataError(DimError, ValueError):
    """The data cannot be used as asked; the message says why and how to fix it."""

    exit_status = EXIT_BAD_INPUT


class RunNotFoundError(DimError, FileNotFoundError):
    """A training run directory lacks its config.json or any checkpoint."""

    exit_status = EXIT_BAD_INPUT


class DamagedRunFileError(DimError, ValueError):
    """A file a training run wrote (config.json, labels.json, ...) cannot be read."""

    exit_status = EXIT_BAD_INPUT


class TrainingError(DimError, RuntimeError):
    """Training stopped; the message says why and what was kept."""


class Preempted(TrainingError):
    """SIGTERM arrived (e.g. a preemption notice); a checkpoint was saved first."""

    exit_status = EXIT_SIGTERM


class NonFiniteError(TrainingError):
    """A loss, MI estimate or gradient became NaN or Inf; nothing of that step was
    applied or saved.

    Attributes:
        step: the 1-based training step that was not applied.
        terms: the log keys of its non-finite values (such as "local_mi",
            "prior_disc_loss", "encoder_gradients").
    """

    def __init__(self, message: str, step: int | None = None, terms: tuple[str, ...] | list = ()):
        super().__init__(message)
        self.step = step
        self.terms = tuple(terms)


class ModelDirBusy(TrainingError):
    """Another live process is training in the same model_dir."""


class CheckpointError(TrainingError):
    """A checkpoint could not be written, or no checkpoint of the run can be read."""


class ExportError(DimError):
    """An export could not be written; nothing partial was published."""


class VersionExistsError(ExportError, FileExistsError):
    """The asked-for version exists and overwriting was not asked for."""

    exit_status = EXIT_BAD_INPUT


class ExportBusyError(ExportError, TimeoutError):
    """Another export into the same directory did not finish in time."""


class ServingError(DimError):
    """A model server or an exported model could not answer a request."""
