"""Training data for a sync model: stage 1's face-track crops and audio, split by video, sampled as windows.

A track contributes windows ``i = 0 .. count_windows - 1`` (pipeline/sync/syncnet.py's count: video frames
``i .. i + 4`` with audio frames ``i .. i + 4``), exactly the windows stage 2 scores. A training example is one
lip window with several audio windows of the same track: the aligned one (the positive) and ones shifted by
``min_shift_frames .. max_shift_frames`` either way (the negatives, "Out of time" §3.2 and Wav2Lip's expert
take off-sync audio of the same face track), plus optionally audio windows of another track.

The references are split into training and validation by video: no video has windows on both sides.
Tracks are held in memory as decoded uint8 frames (224 x 224 x 3 = 150 kB per frame, 3.8 MB per second).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import media
from pipeline.cache import Cache
from pipeline.errors import CacheError, InputError
from pipeline.formats import RUN_PIPELINE
from pipeline.settings import TrainConfig
from pipeline.stage1_outputs import read_wav, require_tracks_and_crops


@dataclass
class TrackData:
    """One face track: its crops and audio, as stage 2 reads them."""

    reference: str
    track_idx: int
    frames: np.ndarray  # uint8 [num_frames, H, W, 3] BGR: the model's face input per frame
    audio: np.ndarray  # int16 [num_samples], 16 kHz mono, aligned with frame 0
    num_windows: int  # windows stage 2 scores on this track

    @property
    def name(self) -> str:
        return f"{self.reference}/{self.track_idx:05d}"


@dataclass(frozen=True)
class SamplingSettings:
    """How windows are drawn (config section ``train``; its ranges are checked when the config is read,
    pipeline/settings.py ``TrainConfig``)."""

    min_shift_frames: int
    max_shift_frames: int
    negatives_per_window: int
    other_track_negatives: int

    @classmethod
    def from_config(cls, cfg_train: TrainConfig) -> SamplingSettings:
        return cls(cfg_train.min_shift_frames, cfg_train.max_shift_frames,
                   cfg_train.negatives_per_window, cfg_train.other_track_negatives)


@dataclass
class WindowBatch:
    """Lip windows with their audio windows: ``audio_starts[b, k]`` pairs with lip window ``b``.

    Column 0 is the aligned audio (label 1), the other columns are negatives (label 0).
    """

    tracks: list[TrackData]  # one per lip window
    lip_starts: np.ndarray  # int [B]: first frame of each lip window
    audio_tracks: list[list[TrackData]]  # [B][K]: the track each audio window comes from
    audio_starts: np.ndarray  # int [B, K]: first frame of each audio window
    labels: np.ndarray  # float32 [B, K]: 1 aligned, 0 shifted or another track

    @property
    def size(self) -> int:
        return len(self.tracks)


# ---- finding and loading tracks ------------------------------------------------------------------
def cached_references(data_dir: str | Path) -> list[str]:
    """Every reference in ``data_dir`` whose stage-1 crops are recorded, sorted."""
    manifests = sorted(Path(data_dir).glob("pywork/*/manifest/crops.json"))
    return [path.parent.parent.name for path in manifests]


def choose_references(data_dir: str | Path, references: Sequence[str] | None) -> list[str]:
    """``references`` as given, or every cached one for ``None`` / ``['all']``; InputError when none."""
    if not Path(data_dir).is_dir():
        raise InputError(f"--data_dir {data_dir} is not a folder")
    if not references or list(references) == ["all"]:
        found = cached_references(data_dir)
        if not found:
            raise InputError(f"no stage-1 crops in {data_dir}: run {RUN_PIPELINE} on your videos first")
        return found
    return list(dict.fromkeys(references))


def decode_crops(cache: Cache, track_idx: int) -> np.ndarray:
    """``[T, 224, 224, 3]`` uint8 BGR: one track's lossless crops (``pycrop/REF/%05d.mkv``), as stage 2 reads them."""
    with contextlib.closing(media.iter_video_frames(cache.crop_frames(track_idx))) as frames:
        decoded = list(frames)
    if not decoded:
        raise CacheError(f"{cache.crop_frames(track_idx)} has no frames: run {RUN_PIPELINE} again")
    return np.stack(decoded)


def load_reference(data_dir: str | Path, reference: str, adapter: Any) -> list[TrackData]:
    """Every track of one cached video: the adapter's per-frame video input (its stage-2 front end) and the
    track's audio (stage 1's ``pycrop/REF/%05d.wav``), checked against stage 1's tracks."""
    cache = Cache(data_dir, reference, create=False)
    if not cache.work_dir.is_dir():
        raise InputError(f"no cached video {reference!r} in {data_dir}: run {RUN_PIPELINE} on it first")
    tracks = require_tracks_and_crops(cache)
    try:
        frames = adapter.track_frames(cache, tracks)
    except InputError as err:  # an undecodable crop or source: stage 1's output is broken
        raise CacheError(f"{reference}: {err}; run {RUN_PIPELINE} again") from None
    loaded = []
    for idx, track_frames in enumerate(frames):
        audio = read_wav(cache.crop_wav(idx), adapter.sample_rate_hz)
        loaded.append(TrackData(reference, idx, track_frames, audio, adapter.count_windows(len(track_frames), audio)))
    return loaded


def split_references(references: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, validation) references: a seeded shuffle, at least one video on each side."""
    if len(references) < 2:
        raise InputError(f"training needs at least two videos (one for validation), found {len(references)}: "
                         f"run {RUN_PIPELINE} on more videos")
    order = list(references)
    np.random.default_rng(seed).shuffle(order)
    num_val = min(len(order) - 1, max(1, int(round(val_fraction * len(order)))))
    return sorted(order[num_val:]), sorted(order[:num_val])


def usable_tracks(tracks: Sequence[TrackData], sampling: SamplingSettings) -> list[TrackData]:
    """Tracks with at least one window that has a negative ``min_shift_frames`` away."""
    return [t for t in tracks if t.num_windows > sampling.min_shift_frames]


def require_windows(tracks: Sequence[TrackData], side: str, sampling: SamplingSettings,
                    references: Sequence[str]) -> list[TrackData]:
    """The usable tracks of one side, or a one-line InputError saying why there are none."""
    usable = usable_tracks(tracks, sampling)
    if not usable:
        need = sampling.min_shift_frames + 1 + 5
        raise InputError(f"no {side} track is long enough (each needs more than {need} frames with audio) in "
                         f"{', '.join(references)}: use longer videos or lower train.min_shift_frames")
    return usable


# ---- sampling ------------------------------------------------------------------------------------
def _allowed_shifts(track: TrackData, start: int, sampling: SamplingSettings) -> np.ndarray:
    """Shifts ``min_shift .. max_shift`` either way whose audio window lies inside the track."""
    shifts = np.arange(sampling.min_shift_frames, sampling.max_shift_frames + 1)
    shifts = np.concatenate([-shifts[::-1], shifts])
    return shifts[(start + shifts >= 0) & (start + shifts < track.num_windows)]


def _lip_start(track: TrackData, sampling: SamplingSettings, rng: np.random.Generator) -> int:
    """A window start that has at least one allowed negative."""
    starts = np.arange(track.num_windows)
    ok = (starts >= sampling.min_shift_frames) | (starts + sampling.min_shift_frames < track.num_windows)
    return int(rng.choice(starts[ok]))


def sample_batch(tracks: Sequence[TrackData], batch_size: int, sampling: SamplingSettings,
                 rng: np.random.Generator) -> WindowBatch:
    """``batch_size`` lip windows (tracks weighted by their number of windows), each with its positive and
    ``negatives_per_window`` shifted negatives, plus ``other_track_negatives`` windows of other tracks."""
    weights = np.array([t.num_windows for t in tracks], dtype=np.float64)
    picks = rng.choice(len(tracks), size=batch_size, p=weights / weights.sum())
    num_other = sampling.other_track_negatives if len(tracks) > 1 else 0
    chosen, lip_starts, audio_tracks, audio_starts = [], [], [], []
    for pick in picks:
        track = tracks[int(pick)]
        start = _lip_start(track, sampling, rng)
        allowed = _allowed_shifts(track, start, sampling)
        shifts = rng.choice(allowed, size=sampling.negatives_per_window,
                            replace=len(allowed) < sampling.negatives_per_window)
        row_tracks, row_starts = [track] * (1 + len(shifts)), [start, *(start + shifts).tolist()]
        others = [t for t in tracks if t is not track]
        for _ in range(num_other):
            other = others[int(rng.integers(len(others)))]
            row_tracks.append(other)
            row_starts.append(int(rng.integers(other.num_windows)))
        chosen.append(track)
        lip_starts.append(start)
        audio_tracks.append(row_tracks)
        audio_starts.append(row_starts)
    labels = np.zeros((batch_size, 1 + sampling.negatives_per_window + num_other), dtype=np.float32)
    labels[:, 0] = 1.0
    return WindowBatch(chosen, np.array(lip_starts), audio_tracks, np.array(audio_starts), labels)


def validation_batches(tracks: Sequence[TrackData], num_windows: int, batch_size: int, sampling: SamplingSettings,
                       seed: int | np.random.Generator) -> list[WindowBatch]:
    """``num_windows`` windows in batches; with a seed, the same windows and negatives at every call."""
    rng = np.random.default_rng(seed)
    batches, left = [], num_windows
    while left > 0:
        size = min(batch_size, left)
        batches.append(sample_batch(tracks, size, sampling, rng))
        left -= size
    return batches
