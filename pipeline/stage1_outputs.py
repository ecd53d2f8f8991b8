"""Readers of stage 1's outputs for the later stages (and stage 1 itself): its wav files, its tracks and crops.

Each reader checks what it reads and raises a one-line CacheError naming scripts/run_pipeline.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import wavfile

from pipeline.cache import Cache
from pipeline.errors import CacheError, first_line
from pipeline.formats import RUN_PIPELINE as SCRIPT
from pipeline.formats import TRACKS_FILE


def read_wav(path: Path, sample_rate_hz: int) -> np.ndarray:
    """int16 mono samples of a wav stage 1 wrote; a one-line CacheError naming this stage when it is
    missing, unreadable or not ``sample_rate_hz`` int16 mono."""
    try:
        rate, audio = wavfile.read(path)
    except FileNotFoundError:
        raise CacheError(f"{path} is missing: run {SCRIPT} again") from None
    except Exception as err:  # scipy raises ValueError, OSError or struct errors on damaged headers
        raise CacheError(f"{path} is unreadable ({first_line(err, 200)}): run {SCRIPT} again") from None
    if rate != sample_rate_hz or audio.ndim != 1 or audio.dtype != np.int16:
        raise CacheError(f"{path} is {rate} Hz {audio.dtype} with shape {audio.shape}, not {sample_rate_hz} Hz "
                         f"int16 mono: run {SCRIPT} again")
    return audio


def require_tracks_and_crops(cache: Cache) -> list[dict]:
    """Stage 1's tracks, after checking that every track's crops exist and were made from those tracks.

    For later stages: a CacheError names scripts/run_pipeline.py when anything is missing or stale.
    """
    tracks = cache.require(TRACKS_FILE, SCRIPT)
    if not isinstance(tracks, list) or not all(isinstance(t, dict) and "track" in t for t in tracks):
        raise CacheError(f"{cache.work(TRACKS_FILE)} is not a list of tracks: run {SCRIPT} again")
    manifest = cache.read_manifest("crops")
    if manifest is None:
        raise CacheError(f"no face-track crops for reference {cache.reference!r} in {cache.data_dir}: run {SCRIPT} first")
    recorded = (manifest.get("key") or {}).get("upstream", {}).get(TRACKS_FILE)
    if recorded is not None and recorded != cache.digest(TRACKS_FILE):
        raise CacheError(f"the crops are stale (tracks.pckl changed since): run {SCRIPT} again")
    listed = manifest.get("files", {})
    for idx in range(len(tracks)):
        for path in (cache.crop_frames(idx), cache.crop_wav(idx)):
            if not path.is_file() or cache.relative(path) not in listed:
                raise CacheError(f"{path} is missing from the crops of stage 1: run {SCRIPT} again")
    return tracks
