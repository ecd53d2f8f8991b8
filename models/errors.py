"""Errors of the networks' loading code, kept here so that ``models`` depends on nothing in ``pipeline``."""
from __future__ import annotations


class UserFacingError(Exception):
    """A failure the user can act on; scripts print its message as one line and exit non-zero.

    ``pipeline.errors.PipelineError`` is this class, so the scripts catch checkpoint errors with the others.
    """

    exit_code = 2


class CheckpointError(UserFacingError):
    """A model checkpoint is missing, corrupt or does not match the network."""


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (its type name when it has none), cut to ``limit``."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if limit is None else line[:limit]
