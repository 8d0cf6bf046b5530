"""Why a training run stopped: the errors `train()` raises after settings were accepted.

Each message names the file, step or process involved, says what was kept and
how to continue. The command line maps them to exit statuses (dim_tf/train.py).
Bad settings found before training are `dim_tf.config.ConfigError` instead.
"""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training stopped; the message says why and what was kept."""


class Preempted(TrainingError):
    """SIGTERM arrived (e.g. a preemption notice); a checkpoint was saved first."""


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
