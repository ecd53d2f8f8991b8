"""Torch's thread count, set on purpose: ``runtime.threads`` (``--threads N``), recorded in every manifest.

Some imports change the count as a side effect: ``silero_vad.model`` calls ``torch.set_num_threads(1)``
when it is first imported, so a ``--vad silero`` run used one thread and a ``--vad webrtc`` run all cores
(issue 19). The stages apply the setting when they start (``apply_threads``), and the imports that have
such a side effect run inside ``keep_threads``, which puts the count back. This module imports nothing
from the pipeline and imports torch only when a function needs it.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

_torch_default: int | None = None  # torch's own count, read before this module first changes it


def torch_default_threads() -> int:
    """The count torch chose for this process (physical cores, or OMP_NUM_THREADS), read once."""
    global _torch_default
    if _torch_default is None:
        import torch

        _torch_default = int(torch.get_num_threads())
    return _torch_default


def apply_threads(threads: int) -> int:
    """Set torch's intra-op thread count: ``threads``, or torch's own default when 0; returns the count."""
    import torch

    if threads < 0:
        raise ValueError(f"threads must be at least 0, got {threads}")
    wanted = int(threads) if threads > 0 else torch_default_threads()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


@contextmanager
def keep_threads() -> Iterator[None]:
    """Run an import (or call) that may change torch's thread count, then put the count back."""
    import torch

    torch_default_threads()  # read before the side effect, if nothing read it yet
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def runtime_record() -> dict:
    """What a manifest records of the run's runtime: torch's thread count once torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    return {"torch_threads": int(torch.get_num_threads())}


__all__ = ["apply_threads", "keep_threads", "runtime_record", "torch_default_threads"]
