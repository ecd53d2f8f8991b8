"""Stage 2, ``run_syncnet``: the configured sync model (``sync.model``: ``pipeline/sync/``) on every face track.

Reads stage 1's ``tracks.pckl`` and crops (``pycrop/REF/%05d.mkv`` frames, ``%05d.wav`` audio) and writes
``activesd.pckl``, ``sync.pckl`` and ``offsets.txt`` (layouts: ``pipeline/formats.py``), each with a manifest
whose key the model gives (its settings, its checkpoint file and sha256, the digests of what it read). A valid
earlier result is reused unless ``force``. This module keeps reuse, invalidation and writing; the model scores.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.cache import Cache, write_bytes_atomic
from pipeline.config import Section
from pipeline.errors import CacheError
from pipeline.evidence import configured_model
from pipeline.formats import ACTIVESD_FILE, OFFSETS_FILE, SYNC_FILE
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.runtime import apply_runtime
from pipeline.stage1_outputs import require_tracks_and_crops
from pipeline.sync.base import STAGE, ProgressHook
from pipeline.sync.evidence_record import OutdatedEvidence, SyncEvidence

OUTPUTS = (ACTIVESD_FILE, SYNC_FILE, OFFSETS_FILE)


@dataclass
class Stage2Output:
    """What stage 2 wrote (or found valid): per-track distance matrices and the ``sync.pckl`` record."""

    distances: list[np.ndarray]
    sync: SyncEvidence
    reused: bool

    @property
    def num_tracks(self) -> int:
        return len(self.distances)


def require_stage1(cache: Cache) -> list[dict]:
    """Stage 1's tracks, after checking that its crops exist and were made from those tracks."""
    return require_tracks_and_crops(cache)


# ---- outputs -------------------------------------------------------------------------------------
def write_outputs(cache: Cache, distances: list[np.ndarray], sync: SyncEvidence, key: Mapping, offsets: str) -> None:
    """``activesd.pckl``, ``sync.pckl`` (the record as plain data) and ``offsets.txt`` (text ``offsets``), each
    atomically with its manifest."""
    cache.save_pickle(ACTIVESD_FILE, distances, STAGE, key)
    cache.save_pickle(SYNC_FILE, sync.to_pickle(), STAGE, key)
    path = cache.work(OFFSETS_FILE)
    write_bytes_atomic(path, offsets.encode())
    cache.record(OFFSETS_FILE, STAGE, key, [path])


def load_valid(cache: Cache, key: Mapping) -> Stage2Output | None:
    """Stage 2's outputs when all three were written with ``key``, else None. A ``sync.pckl`` of an older
    layout (before ``SyncEvidence``'s schema, or another version) is not reused: one note on stderr, then None."""
    if not all(cache.is_valid(name, key) for name in OUTPUTS):
        return None
    distances, data = cache.load_valid(ACTIVESD_FILE, key), cache.load_valid(SYNC_FILE, key)
    if distances is None or data is None:
        return None
    try:
        sync = SyncEvidence.from_pickle(data)
    except OutdatedEvidence as err:
        print(f"note: {cache.work(SYNC_FILE)}: {err}; scoring the tracks again", file=sys.stderr, flush=True)
        return None
    return Stage2Output(distances, sync, reused=True)


def prepare_rerun(cache: Cache, has_tracks: bool) -> None:
    """Invalidate stage 2's outputs before writing new ones; CacheError when stage 1's crops changed since."""
    for name in OUTPUTS:
        cache.invalidate(name)
    if has_tracks and not cache.files_intact(cache.read_manifest("crops") or {}):
        raise CacheError(f"the crops in {cache.crop_dir} changed since stage 1 wrote them: run {STAGE1_SCRIPT} again")


# ---- the stage -----------------------------------------------------------------------------------
def run_stage2(cache: Cache, cfg: Section, weights_dir: str | Path | None = None,
               device: torch.device | str = "cpu", force: bool = False,
               progress: ProgressHook | None = None) -> Stage2Output:
    """The ``sync.model`` sync model on every track of ``cache``; reuses a valid earlier result unless ``force``.

    Raises CacheError when stage 1's output is missing or stale, CheckpointError for a bad checkpoint.
    """
    apply_runtime(cfg.runtime)
    model = configured_model(cfg)
    progress = progress or (lambda *args, **kwargs: None)
    tracks = require_stage1(cache)
    key = model.stage2_key(cache, cfg, tracks, weights_dir)
    reused = None if force else load_valid(cache, key)
    if reused is not None:
        return reused
    prepare_rerun(cache, bool(tracks))
    evidence = model.evidence(cache, cfg, tracks, weights_dir, device, progress)
    write_outputs(cache, evidence.distances, evidence.sync, key, model.offsets_text(evidence.sync))
    return Stage2Output(evidence.distances, evidence.sync, reused=False)


__all__ = ["OUTPUTS", "STAGE", "Stage2Output", "load_valid", "prepare_rerun", "require_stage1", "run_stage2",
           "write_outputs"]
