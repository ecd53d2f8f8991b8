"""GestSync's scoring (``pipeline/sync/gestsync.py`` describes the method): its stage-2 settings, the offset
search and per-frame curves (pure functions of embeddings), and the streaming scorer that shares the CNN's
per-frame features between overlapping windows.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.gestsync import GestSyncRGB, score_scale
from pipeline.errors import InputError
from pipeline.sync.base import TrackResult
from pipeline.sync.gestsync_frontend import FrontEndSettings, audio_windows, count_audio_windows, filterbanks

MODEL = "gestsync"
METRIC = "cosine_similarity"
TEMPORAL_KERNEL_FRAMES = 5  # net_vid.conv1 kernel (5, 7, 7): the only layer that mixes frames


@dataclass(frozen=True)
class GestSyncSettings:
    """Stage 2's GestSync settings (config sections ``gestsync`` and ``media``)."""

    front: FrontEndSettings
    offset_stride_frames: int = 5
    max_offset_frames: int = 50
    offset_avg_frames: int = 50
    num_avg_frames: int = 25
    global_speaker: bool = False
    batch_size: int = 16
    region_width_faces: float = 4.0
    region_above_faces: float = 0.5
    region_below_faces: float = 4.0
    person_min_face_overlap: float = 0.5
    frame_rate_hz: float = 25.0

    def __post_init__(self) -> None:
        for name in ("offset_stride_frames", "max_offset_frames", "offset_avg_frames", "num_avg_frames",
                     "batch_size"):
            value, least = getattr(self, name), 0 if name == "max_offset_frames" else 1
            if int(value) != value or value < least:
                raise InputError(f"gestsync {name} must be a whole number >= {least}, got {value!r}")
        if self.max_offset_frames % self.offset_stride_frames:
            raise InputError(f"gestsync max_offset_frames ({self.max_offset_frames}) must be a multiple of "
                             f"offset_stride_frames ({self.offset_stride_frames})")
        for name in ("region_width_faces", "region_above_faces", "region_below_faces"):
            if not 0 <= getattr(self, name) <= 20:
                raise InputError(f"gestsync {name} must be between 0 and 20, got {getattr(self, name)!r}")
        if self.region_width_faces <= 0:
            raise InputError("gestsync region_width_faces must be > 0")
        if not 0 < self.person_min_face_overlap <= 1:
            raise InputError(f"gestsync person_min_face_overlap must be in (0, 1], got {self.person_min_face_overlap!r}")
        if self.front.window_stride_frames != 1:
            raise InputError("gestsync window_stride_frames must be 1 in stage 2 (a score on every frame)")
        if self.front.window_frames < TEMPORAL_KERNEL_FRAMES:
            raise InputError(f"gestsync window_frames must be >= {TEMPORAL_KERNEL_FRAMES}")

    @classmethod
    def from_config(cls, cfg: Any) -> GestSyncSettings:
        g = cfg.gestsync
        return cls(front=FrontEndSettings.from_config(cfg), offset_stride_frames=g.offset_stride_frames,
                   max_offset_frames=g.max_offset_frames, offset_avg_frames=g.offset_avg_frames,
                   num_avg_frames=g.num_avg_frames, global_speaker=g.global_speaker, batch_size=g.batch_size,
                   region_width_faces=g.region_width_faces, region_above_faces=g.region_above_faces,
                   region_below_faces=g.region_below_faces, person_min_face_overlap=g.person_min_face_overlap,
                   frame_rate_hz=float(cfg.media.frame_rate_hz))

    @property
    def centre_frame(self) -> int:
        """Window i is centred on frame i + 12; the active-speaker demo pads each end by this many frames."""
        return self.front.window_frames // 2



# ---- offset search and curves (pure functions of embeddings) -----------------------------------
@dataclass(frozen=True)
class OffsetSearch:
    """The offset search's outcome (``offset_search``)."""

    offset_frames: float  # SyncNet's sign: GestSync's offset negated
    best_score: float  # the highest candidate mean (on GestSync's scale)
    confidence: float  # best_score minus the median candidate mean
    block: np.ndarray  # float32 [avg_windows, candidates]: the scaled scores upstream averages
    range_frames: tuple[int, int]  # lowest and highest offset searched, SyncNet's sign


def offset_search(video: torch.Tensor, audio: torch.Tensor, scale: float, stride_frames: int,
                  max_offset_frames: int, avg_windows: int) -> OffsetSearch | None:
    """GestSync's offset search (``inference_syncoffset.py`` ``calc_optimal_av_offset``) on L2-normalised
    window embeddings ``video`` ``[V, D]`` (window i: frames i .. i + 24) and ``audio`` ``[A, D]``.

    The audio windows are cut to the video's count; candidate k compares video windows ``p .. p + avg - 1``
    with audio windows ``k * stride ..`` for the first ``2 * max_offset / stride + 1`` candidates that fit,
    ``p = (candidates // 2) * stride``; each candidate's score is the mean of ``scale * cosine`` over the
    block, the first highest wins, and GestSync's offset ``k * stride - p`` is returned negated (SyncNet's
    sign). ``confidence`` (upstream prints none) is the winner's mean minus the median of the candidate
    means, as SyncNet's confidence is. None when the clip is too short for one block (upstream exits).
    """
    audio = audio[: len(video)]
    if len(audio) < avg_windows:
        return None
    count = min((len(audio) - avg_windows) // stride_frames + 1, 2 * max_offset_frames // stride_frames + 1)
    first = (count // 2) * stride_frames
    if len(video) < first + avg_windows:
        return None
    rows = torch.arange(avg_windows)[:, None] + torch.arange(count)[None, :] * stride_frames  # [avg, K]
    block = (video[first:first + avg_windows, None, :].float() * audio[rows].float()).sum(-1) * scale
    means = block.mean(0).cpu().numpy().astype(np.float64)
    best = int(np.argmax(means))  # the first maximum, as torch's argmax
    return OffsetSearch(float(first - best * stride_frames), float(means[best]),
                        float(means[best] - np.median(means)), block.cpu().numpy().astype(np.float32),
                        (first - (count - 1) * stride_frames, first))


def frame_scores(video_padded: torch.Tensor, audio: torch.Tensor, scale: float, pad_frames: int) -> np.ndarray:
    """``inference_activespeaker.py``'s per-frame score: frame f's window (frames ``f - 12 .. f + 12``, the
    video edge-padded) against audio window ``f - 12`` (the windows edge-padded by 12 at each end), as
    ``scale * cosine``. ``video_padded``: ``[L, D]`` normalised embeddings of frames ``0 .. L - 1``;
    ``audio``: ``[A, D]`` normalised (``L <= A + 2 * pad_frames``)."""
    index = torch.clamp(torch.arange(len(video_padded)) - pad_frames, 0, max(len(audio) - 1, 0))
    return ((video_padded.float() * audio[index].float()).sum(1) * scale).cpu().numpy().astype(np.float32)


def smooth_scores(raw: np.ndarray, num_avg_frames: int, global_speaker: bool = False) -> np.ndarray:
    """The active-speaker demo's average of the per-frame scores of the frames it scores (``raw``, no NaN):
    frame ``k + num_avg // 2`` gets the mean of frames ``k .. k + num_avg - 1`` (``unfold(0, num_avg, 1)``);
    the frames before the first and after the last such frame keep the nearest mean (upstream carries its
    first and last decisions out to them). Fewer frames than ``num_avg``: all NaN (upstream refuses).
    ``global_speaker``: every frame the mean of all (``--global_speaker``)."""
    values = np.asarray(raw, dtype=np.float64)
    if global_speaker:
        return np.full(values.size, values.mean() if values.size else np.nan, dtype=np.float32)
    out = np.full(values.size, np.nan, dtype=np.float64)
    if values.size < num_avg_frames:
        return out.astype(np.float32)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    means = (sums[num_avg_frames:] - sums[:-num_avg_frames]) / num_avg_frames
    mid = num_avg_frames // 2
    out[mid:mid + means.size] = means
    out[:mid], out[mid + means.size:] = means[0], means[-1]
    return out.astype(np.float32)


# ---- the network, with shared per-frame features -------------------------------------------------
def _dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def window_embeddings(model: GestSyncRGB, features: torch.Tensor, num_windows: int, window_frames: int,
                      batch_size: int) -> torch.Tensor:
    """``[num_windows, 1024]`` video embeddings from per-position trunk features ``[P, 512]``.

    Window i covers frames ``i .. i + window_frames - 1``, i.e. trunk positions ``i .. i + window_frames - 5``;
    the transformer and ``ff_vid`` run on those, then the time average (``forward_vid`` then ``mean(-1)``).
    """
    span = window_frames - TEMPORAL_KERNEL_FRAMES + 1
    out = []
    for start in range(0, num_windows, batch_size):
        count = min(batch_size, num_windows - start)
        seq = torch.stack([features[i:i + span] for i in range(start, start + count)])  # [n, span, 512]
        emb = model.ff_vid(model.transformer_encoder(model.pos_encoder(seq)))  # [n, span, 1024]
        out.append(emb.float().mean(dim=1))
    return torch.cat(out) if out else torch.zeros((0, 1024))


class GestSyncScorer:
    """Scores one track as its masked frames arrive. The frames are edge-padded by 12 at each end, as the
    active-speaker demo pads them, so padded window f is centred on frame f and padded window i + 12 is the
    offset search's window i: one pass serves both. The CNN trunk runs on ``batch_size`` frames at a time
    (overlapping by 4), keeping only its 512-d per-position features; the transformer once per window."""

    def __init__(self, model: GestSyncRGB, audio: np.ndarray, settings: GestSyncSettings,
                 device: torch.device | str = "cpu") -> None:
        self.model, self.settings, self.device = model, settings, torch.device(device)
        self.scale = score_scale(model)
        self.silent = not np.any(audio)
        self.fbanks = filterbanks(audio, settings.front)
        self.audio_windows = count_audio_windows(len(self.fbanks), settings.front)
        self.pad = settings.centre_frame
        # frames any window with audio uses: padded windows 0 .. A + 2 pad - 1 reach frame A + 3 pad - 1
        self.max_frames = self.audio_windows + 3 * self.pad if self.audio_windows else 0
        self.buffer: list[np.ndarray] = []
        self.features: list[torch.Tensor] = []
        self.num_frames = 0
        self.last: np.ndarray | None = None

    def push(self, masked_u8: np.ndarray) -> None:
        """Add the next frame's ``[270, 480, 3]`` masked RGB input."""
        self.num_frames += 1
        if self.num_frames > self.max_frames:
            return
        if self.num_frames == 1:
            self.buffer += [masked_u8] * self.pad
        self.last = masked_u8
        self._add(masked_u8)

    def _add(self, frame: np.ndarray) -> None:
        self.buffer.append(frame)
        if len(self.buffer) >= self.settings.batch_size + TEMPORAL_KERNEL_FRAMES - 1:
            self._trunk()

    def _trunk(self) -> None:
        frames = torch.from_numpy(np.stack(self.buffer)).to(self.device)  # [T, H, W, 3]
        clip = frames.permute(3, 0, 1, 2).unsqueeze(0).to(_dtype(self.device)) / 255.0  # [1, 3, T, H, W]
        with torch.inference_mode():
            feats = self.model.net_vid(clip).squeeze(-1).squeeze(-1)[0].T  # [T - 4, 512]
        self.features.append(feats)
        del self.buffer[:len(self.buffer) - TEMPORAL_KERNEL_FRAMES + 1]

    def finish(self) -> TrackResult:
        """Score the frames and search the offset."""
        settings = self.settings
        if self.last is not None and self.num_frames <= self.max_frames:
            for _ in range(self.pad):
                self._add(self.last)
        if len(self.buffer) >= TEMPORAL_KERNEL_FRAMES:
            self._trunk()
        self.buffer, self.last = [], None
        scored = min(self.num_frames, self.audio_windows + 2 * self.pad) if self.audio_windows else 0
        video_windows = max(0, self.num_frames - settings.front.window_frames + 1)
        raw = np.full(self.num_frames, np.nan, dtype=np.float32)
        search = None
        if scored:
            with torch.inference_mode():
                video = F.normalize(window_embeddings(self.model, torch.cat(self.features), scored,
                                                      settings.front.window_frames, settings.batch_size), dim=1)
                audio = self._audio_embeddings()
                raw[:scored] = frame_scores(video, audio, self.scale, self.pad)
                search = offset_search(video[self.pad:self.pad + video_windows], audio, self.scale,
                                       settings.offset_stride_frames, settings.max_offset_frames,
                                       settings.offset_avg_frames)
        self.features = []
        smooth = np.full(self.num_frames, np.nan, dtype=np.float32)
        smooth[:scored] = smooth_scores(raw[:scored], settings.num_avg_frames, settings.global_speaker)
        offset, best, confidence = (math.nan, math.nan, 0.0) if search is None else \
            (search.offset_frames, search.best_score, search.confidence)
        if self.silent:
            offset, confidence = math.nan, 0.0
        return TrackResult(np.zeros((0, 0), np.float32) if search is None else search.block, offset, best,
                              confidence, self.num_frames, raw, smooth, self.silent,
                              min(video_windows, self.audio_windows),
                              None if search is None else search.range_frames)

    def _audio_embeddings(self) -> torch.Tensor:
        """``[A, 1024]`` L2-normalised embeddings of every audio window of the track."""
        out = []
        for start in range(0, self.audio_windows, self.settings.batch_size):
            starts = list(range(start, min(start + self.settings.batch_size, self.audio_windows)))
            mels = audio_windows(self.fbanks, starts, self.settings.front).to(self.device, _dtype(self.device))
            out.append(self.model.forward_aud(mels).squeeze(-1).float())
        return F.normalize(torch.cat(out), dim=1)


def sync_regions(model: GestSyncRGB, frames: Iterable[np.ndarray], audio: np.ndarray, settings: GestSyncSettings,
                 device: torch.device | str = "cpu") -> TrackResult:
    """The result for one sequence of masked ``[270, 480, 3]`` RGB inputs and its int16 audio (frame 0 aligned)."""
    scorer = GestSyncScorer(model, audio, settings, device)
    for frame in frames:
        scorer.push(frame)
    return scorer.finish()


__all__ = ["METRIC", "MODEL", "TEMPORAL_KERNEL_FRAMES", "GestSyncScorer", "GestSyncSettings", "OffsetSearch",
           "frame_scores", "offset_search", "smooth_scores", "sync_regions", "window_embeddings"]
