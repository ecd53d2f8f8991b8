"""Audio-visual speaker diarisation: the staged VoxConverse pipeline.

Stages, in order: ``stage1`` (media, scenes, detect, track, crop), ``stage2`` (sync),
``stage3`` (vad, embed, faceid, fuse), ``stage4`` (export, visualise).
"""
from pipeline.version import __version__

__all__ = ["__version__"]
