"""Errors that reach the user as one line."""
from models.errors import CheckpointError, UserFacingError, first_line

PipelineError = UserFacingError  # a failure the user can act on: scripts print it as one line, exit non-zero


class InputError(PipelineError):
    """The input file or an argument is unusable (missing, not a video, bad name)."""


class CacheError(PipelineError):
    """An earlier stage's output is missing or stale; the message names the script to run."""


class DiskFullError(PipelineError):
    """A write failed because the file system holding a named folder is full (or over quota)."""


class BusyError(PipelineError):
    """Another run holds the lock of the same reference."""


__all__ = ["BusyError", "CacheError", "CheckpointError", "DiskFullError", "InputError", "PipelineError",
           "first_line"]
