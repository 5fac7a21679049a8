"""Exceptions that carry a one-line, actionable message for the user.

The CLI turns any `AqtrackError` into `aqtrack: error: <message>` and a non-zero exit; anything else is a
bug and keeps its traceback.
"""


class AqtrackError(Exception):
    """Base class: the message is complete and meant for the user as-is."""


class ConfigError(AqtrackError, ValueError):
    """A setting is invalid; the message names the flag. `setting` is its config name, when the error
    is about one setting (the CLI names it as its MLproject parameter too, under `mlflow run`)."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class DataError(AqtrackError, ValueError):
    """A data file is missing or malformed; the message names the file and the problem."""


class ResumeError(AqtrackError):
    """A run cannot be resumed (unknown id, no checkpoint, incompatible checkpoint)."""


class NoCheckpoint(ResumeError):
    """The run has no checkpoint that verifies, anywhere: there is nothing to continue it from."""


class ModelError(AqtrackError):
    """A logged or registered model cannot be used: unknown, not made by aqtrack, or unreadable."""


class TrackingError(AqtrackError):
    """The tracking server or store cannot be used."""


class TrackingLost(TrackingError):
    """The tracking server stayed unreachable longer than the patience allows."""


class TrainingDiverged(AqtrackError):
    """The loss became NaN or infinite."""


class DistributedError(AqtrackError):
    """Another training process (under torchrun) stopped or could not be reached."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of `e`'s message, or its type's name when it has none (`ValueError()`)."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def described(e: BaseException) -> str:
    """`Type: first line of the message`, or just `Type` when the message is empty."""
    text = first_line(e)
    return type(e).__name__ if text == type(e).__name__ else f"{type(e).__name__}: {text}"
