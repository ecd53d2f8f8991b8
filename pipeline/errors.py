"""Errors that reach the user as one line."""


class PipelineError(Exception):
    """A failure the user can act on; scripts print its message as one line and exit non-zero."""

    exit_code = 2


class InputError(PipelineError):
    """The input file or an argument is unusable (missing, not a video, bad name)."""


class CacheError(PipelineError):
    """An earlier stage's output is missing or stale; the message names the script to run."""


class CheckpointError(PipelineError):
    """A model checkpoint is missing, corrupt or does not match the network."""


class DiskFullError(PipelineError):
    """A write failed because the file system holding a named folder is full (or over quota)."""


class BusyError(PipelineError):
    """Another run holds the lock of the same reference."""
