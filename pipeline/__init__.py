"""Audio-visual speaker diarisation: the staged VoxConverse pipeline.

Stages, in order: ``stage1`` (media, scenes, detect, track, crop), ``stage2`` (sync),
``stage3`` (vad, embed, faceid, fuse), ``stage4`` (export, visualise). ``pipeline.diarize(videofile, data_dir)``
runs all four on one video (``pipeline.api``).
"""
from typing import Any

from pipeline.cpu_runtime import apply_defaults
from pipeline.version import __version__

apply_defaults()  # before anything imports torch: see pipeline/cpu_runtime.py

__all__ = ["DiarizeResult", "__version__", "diarize"]


def __getattr__(name: str) -> Any:
    """``pipeline.diarize`` and ``pipeline.DiarizeResult`` (``pipeline.api``), imported on first use so that
    ``import pipeline`` stays light (the scripts check their arguments before torch is imported)."""
    if name in ("diarize", "DiarizeResult"):
        from pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
