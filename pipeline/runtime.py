"""Torch's thread count, set on purpose: ``runtime.threads`` (``--threads N``), recorded in every manifest.

Some imports change the count as a side effect: ``silero_vad.model`` calls ``torch.set_num_threads(1)``
when it is first imported, so a ``--vad silero`` run used one thread and a ``--vad webrtc`` run all cores
(issue 19). The stages apply the setting when they start (``apply_threads``), and the imports that have
such a side effect run inside ``keep_threads``, which puts the count back. ``apply_runtime`` also sets how glibc
reuses freed memory (``runtime.heap_reuse_mb``). This module imports only the settings types from the pipeline, and
imports torch only when a function needs it.
"""
from __future__ import annotations

import ctypes
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.settings import RuntimeConfig

_torch_default: int | None = None  # torch's own count, read before this module first changes it
_heap_reuse_mb = 0  # what apply_heap_reuse set in this process (0: glibc's defaults)
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


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


def _libc() -> ctypes.CDLL:
    """The C library python itself runs on, already loaded (``ctypes.util.find_library`` would run ``ldconfig -p``
    in a child process, whose peak RSS, forked from this process, was reported as the stage's own)."""
    return ctypes.CDLL(None)


def apply_heap_reuse(heap_reuse_mb: int) -> int:
    """Let glibc keep and reuse freed blocks up to ``heap_reuse_mb`` MiB instead of unmapping them (0: leave it).

    glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it when
    freed. A network's activations are such blocks (SyncNet's first layer: 292 MB per batch of 64 windows), so each
    batch maps and zeroes new pages: page faults, counted as system time. Raising the mmap and trim thresholds
    makes freed blocks stay in the heap for the next batch; values are unchanged, only where memory comes from.
    Returns the value in effect; a C library other than glibc (or a refusal) leaves its defaults and returns 0.
    """
    global _heap_reuse_mb
    if heap_reuse_mb < 0:
        raise ValueError(f"heap_reuse_mb must be at least 0, got {heap_reuse_mb}")
    if heap_reuse_mb == 0 or heap_reuse_mb == _heap_reuse_mb:
        return _heap_reuse_mb
    if platform.libc_ver()[0] != "glibc":
        return 0
    libc = _libc()
    limit_bytes = ctypes.c_int(min(heap_reuse_mb * 2**20, 2**31 - 1))
    if libc.mallopt(_M_MMAP_THRESHOLD, limit_bytes) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, limit_bytes) != 1:
        return 0
    _heap_reuse_mb = heap_reuse_mb
    return _heap_reuse_mb


def release_heap() -> bool:
    """Return the freed blocks that ``apply_heap_reuse`` kept to the system (glibc's ``malloc_trim``), once a stage's
    work is done; True when it did. Without it, the interpreter's shutdown, which touches memory of its own, ran on
    top of the kept blocks: ``cluster.py`` on the 60 s benchmark clip peaked at 1215 MB instead of the 1073 MB its
    work needs (``/proc/self/status`` VmHWM before shutdown)."""
    if _heap_reuse_mb == 0:
        return False
    _libc().malloc_trim(0)
    return True


def apply_runtime(runtime: RuntimeConfig) -> int:
    """Apply the ``runtime`` config section (threads and heap reuse) when a stage starts; returns the threads."""
    apply_heap_reuse(runtime.heap_reuse_mb)
    return apply_threads(runtime.threads)


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


__all__ = ["apply_heap_reuse", "apply_runtime", "apply_threads", "keep_threads", "runtime_record", "torch_default_threads"]
