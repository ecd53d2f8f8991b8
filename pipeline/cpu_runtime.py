"""Process-wide CPU settings that must be in place before torch (and its OpenMP runtime) is imported.

``import pipeline`` applies them, so every script and ``pipeline.diarize`` gets them; a value already in the
environment wins, and a process that imported torch before ``pipeline`` keeps the OpenMP runtime's defaults.

- ``OMP_WAIT_POLICY=PASSIVE``: OpenMP worker threads sleep at the end of a parallel region instead of
  spinning on a core for a while. Spinning only helps when the process has its cores to itself; on a shared
  or oversubscribed machine the spinning threads burn CPU time that other work (ours included) needed.
  Measured on the 2-core CI machine with ~17 runnable jobs (load 17): ResNetSE34V2 embeddings of 12 s of
  audio took 12.4-15.1 s of user CPU with the default policy and 4.4-4.8 s with PASSIVE, embeddings bit for
  bit identical (same threads, same work split; only the waiting differs).
"""
from __future__ import annotations

import os

OMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
APPLIED: dict[str, str] = {}  # what apply_defaults set in this process (not the user's own settings)


def apply_defaults() -> dict[str, str]:
    """Set each of ``OMP_DEFAULTS`` the environment does not set already; returns what was set."""
    applied = {}
    for name, value in OMP_DEFAULTS.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    APPLIED.update(applied)
    return applied
