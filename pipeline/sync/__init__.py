"""Stage 2's sync models, chosen once by name (``sync.model``, ``--sync_model``) through ``get_sync_model``.

Layout (imports run down this list; no module here imports a stage):

- ``evidence_record.py``: ``SyncEvidence``, the typed ``sync.pckl`` record every model writes;
- ``base.py``: the ``SyncModel`` interface the stages use, and the plumbing the models share;
- ``syncnet.py``: SyncNet (VoxConverse's), its offset search and one-clip demo;
- ``syncnet_model.py``: SyncNet's ``SyncModel``, importing ``syncnet.py`` (torch) only in the methods that compute;
- ``wav2lip.py``: Wav2Lip's lip-sync expert;
- ``gestsync_frontend.py``: GestSync's input (person crops, masks, filterbanks);
- ``gestsync_scoring.py``: GestSync's settings, offset search, curves and streaming scorer;
- ``gestsync_regions.py``: GestSync's regions, its pass over the frames, person tracks and overlays;
- ``lip_gesture.py``: a lip model's evidence beside GestSync's gestures (``gestsync.lip_model``);
- ``gestsync.py``: GestSync's gesture sync on each face track's person (stage 2, one clip, the model).

Adding a model: ``docs/adding_a_sync_model.md``.
"""
from __future__ import annotations

import importlib

from pipeline.errors import InputError
from pipeline.formats import SYNC_MODELS
from pipeline.sync.base import SyncModel

# name -> (module, model object); imported on first use, so that choosing a model does not load torch
_REGISTRY: dict[str, tuple[str, str]] = {
    "syncnet": ("pipeline.sync.syncnet_model", "SYNCNET"),
    "wav2lip": ("pipeline.sync.wav2lip", "WAV2LIP"),
    "gestsync": ("pipeline.sync.gestsync", "GESTSYNC"),
}
assert tuple(_REGISTRY) == SYNC_MODELS, "pipeline/formats.py SYNC_MODELS lists the registered models"


def registered_models() -> tuple[str, ...]:
    """The names ``get_sync_model`` knows, in ``sync.model``'s order."""
    return tuple(_REGISTRY)


def get_sync_model(name: str) -> SyncModel:
    """The sync model called ``name``; InputError (one line) for an unknown name."""
    if name not in _REGISTRY:
        raise InputError(f"unknown sync model {name!r}: choose one of {', '.join(_REGISTRY)}")
    module, attribute = _REGISTRY[name]
    return getattr(importlib.import_module(module), attribute)


__all__ = ["SyncModel", "get_sync_model", "registered_models"]
