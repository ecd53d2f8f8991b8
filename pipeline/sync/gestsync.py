"""Stage 2 with GestSync (Hegde & Zisserman, BMVC 2023): gesture-sync scores of every face track's person.

Each face track of ``tracks.pckl`` is scored on its person's upper body rather than its lips:

- **Region.** GestSync's person crop (``preprocess/inference_preprocess.py`` ``crop_video``): per frame a
  square of side max(w, h) around the box's centre, centre and size median-filtered (kernel 13) over the
  track, cut from the frame padded with grey 110 and resized to 480 x 270. The box is, by default, one
  derived from the face box in every frame (``gestsync.region_*``: the face's centre, ``region_width_faces``
  face widths wide, from ``region_above_faces`` face heights above the face to ``region_below_faces`` face
  heights below it, clipped to the frame). When the user placed a ``persons.pckl`` in the reference's pywork
  folder (GestSync's YOLO person boxes, syncnet_python's ``faces.pckl`` layout, indexed on the 25 fps
  frames), its boxes are tracked with the face tracker (``pipeline.track``, per shot of ``scene.pckl``), and
  each face track takes the person track that holds its face in most frames: that person's squares (smoothed
  over the whole person track, as upstream crops it) where the person holds the face, the face-derived
  squares elsewhere.
- **Input.** GestSync's (``pipeline.sync.gestsync_frontend``): the crop, RGB, everything down to the face's
  bottom + 15 rows of the crop blacked out (the face box's bottom mapped onto the crop; GestSync finds it
  with face-mesh landmarks on the crop), in [0, 1]; the track's audio as log-mel filterbanks.
- **Offset** (``offset_search``, ``inference_syncoffset.py``): 25-frame windows at stride 1; candidates every
  ``offset_stride_frames`` (5) up to +-``max_offset_frames`` (50) as far as the track's length allows, each
  scored by the mean of ``logits_scale * cosine`` over one block of ``offset_avg_frames`` (50) windows;
  reported in SyncNet's sign (GestSync's demo prints the opposite sign), ``confidence = best - median``.
- **Curves** (``frame_scores``, ``smooth_scores``, ``inference_activespeaker.py``): the frames and the audio
  windows edge-padded by 12 at each end, so every frame has a window centred on it; its
  ``logits_scale * cosine`` is the raw curve (NaN for frames past the audio's last window + 24, where
  upstream has none), its centred ``num_avg_frames`` (25) mean the smoothed curve stage 3 fuses, the first
  and last means held out to the track's ends. With ``global_speaker`` every frame of a track gets the
  track's mean score (the demo's ``--global_speaker``).

Speed: the 3-D CNN's only temporal kernel is its first (5 frames, stride 1); every later layer is per frame,
so its features for overlapping windows are shared: it runs once per frame (``batch_size`` frames per call)
and only the transformer runs once per window. fp16 on CUDA.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.gestsync import GestSyncRGB, load_gestsync, score_scale
from models.loader import checkpoint_path
from pipeline import media
from pipeline.cache import Cache, sha256_file
from pipeline.errors import CacheError, InputError
from pipeline.formats import MEDIA_FILE, PERSONS_FILE, RUN_SYNCNET, SCENE_FILE, TRACKS_FILE, validate_faces
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.stage1_outputs import read_wav
from pipeline.sync.base import (
    STAGE,
    ClipReport,
    Evidence,
    Network,
    ProgressHook,
    SyncModel,
    demo_report,
    offsets_table,
    own_curves,
    silent_note,
    source_video,
)
from pipeline.sync.gestsync_frontend import (
    FrontEndSettings,
    audio_windows,
    count_audio_windows,
    crop_squares,
    face_row_in_crop,
    filterbanks,
    masked_frame,
    square_bounds,
    square_crop,
)
from pipeline.sync.lip_gesture import combined_curves, key_extra, lip_evidence, lip_key, lip_model

MODEL = "gestsync"
METRIC = "cosine_similarity"
TEMPORAL_KERNEL_FRAMES = 5  # net_vid.conv1 kernel (5, 7, 7): the only layer that mixes frames
STAGE3_ONLY_KEYS = ("conf_thresholds", "prefer")  # read by stage 3 only: not in stage 2's key


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


# ---- regions -------------------------------------------------------------------------------------
def face_region(face_box: Sequence[float], settings: GestSyncSettings, width_px: int,
                height_px: int) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` integer pixels of the upper-body region derived from a face box, in the frame."""
    x1, y1, x2, y2 = (float(v) for v in face_box)
    face_w, face_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    centre_x = (x1 + x2) / 2
    half_w = settings.region_width_faces * face_w / 2
    left = min(max(int(round(centre_x - half_w)), 0), width_px - 1)
    top = min(max(int(round(y1 - settings.region_above_faces * face_h)), 0), height_px - 1)
    right = max(min(int(round(centre_x + half_w)), width_px), left + 1)
    bottom = max(min(int(round(y2 + settings.region_below_faces * face_h)), height_px), top + 1)
    return left, top, right, bottom


def face_inside_fraction(face_box: Sequence[float], person_box: Sequence[float]) -> float:
    """The share of the face box's area inside the person box."""
    fx1, fy1, fx2, fy2 = (float(v) for v in face_box)
    px1, py1, px2, py2 = (float(v) for v in person_box)
    inter = max(0.0, min(fx2, px2) - max(fx1, px1)) * max(0.0, min(fy2, py2) - max(fy1, py1))
    area = (fx2 - fx1) * (fy2 - fy1)
    return inter / area if area > 0 else 0.0


def track_persons(persons: Sequence[Sequence[dict]], shots: Sequence[Sequence[int]], cfg: Any,
                  width_px: int, height_px: int) -> list[dict[str, np.ndarray]]:
    """Person tracks ``{'frame', 'bbox'}`` from per-frame person boxes: the face tracker's IoU linking,
    per shot, with ``track`` settings (the face-size filter does not apply to bodies)."""
    from pipeline.detections import sanitize_faces
    from pipeline.track import track_shot

    clean, _ = sanitize_faces(persons, width_px, height_px, cfg.detections)
    clean = [[dict(det, frame=idx) for det in dets] for idx, dets in enumerate(clean)]
    out: list[dict[str, np.ndarray]] = []
    for start, end in shots:
        start, end = int(start), min(int(end), len(clean))
        if end - start >= cfg.track.min_track_frames:
            out += track_shot(clean[start:end], cfg.track.iou_threshold, cfg.track.max_gap_frames,
                              cfg.track.min_track_frames, 0.0)
    return out


def match_person(face_track: Mapping[str, np.ndarray], person_tracks: Sequence[Mapping[str, np.ndarray]],
                 min_overlap: float) -> int | None:
    """The person track holding the face (``min_overlap`` of its area inside) in most frames, or None."""
    frames = np.asarray(face_track["frame"], dtype=np.int64)
    boxes = np.asarray(face_track["bbox"], dtype=np.float64)
    best, best_count = None, 0
    for idx, person in enumerate(person_tracks):
        lookup = {int(f): b for f, b in zip(np.asarray(person["frame"]), np.asarray(person["bbox"]))}
        count = sum(1 for f, b in zip(frames.tolist(), boxes)
                    if f in lookup and face_inside_fraction(b, lookup[f]) >= min_overlap)
        if count > best_count:
            best, best_count = idx, count
    return best


def track_regions(face_track: Mapping[str, np.ndarray], person: Mapping[str, np.ndarray] | None,
                  settings: GestSyncSettings, width_px: int, height_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of a face track: its crop square ``float64 [n, 3]`` (centre x, centre y, half side; see
    ``gestsync_frontend.crop_squares``) and whether it is the person's ``bool [n]``.

    The person's squares are smoothed over the whole person track, as ``crop_video`` crops it; the
    face-derived ones over the face track's derived regions."""
    frames = np.asarray(face_track["frame"], dtype=np.int64)
    boxes = np.asarray(face_track["bbox"], dtype=np.float64)
    squares = crop_squares(np.asarray([face_region(b, settings, width_px, height_px) for b in boxes],
                                      dtype=np.float64), settings.front)
    from_person = np.zeros(len(frames), dtype=bool)
    if person is None:
        return squares, from_person
    person_frames = np.asarray(person["frame"], dtype=np.int64)
    person_boxes = np.asarray(person["bbox"], dtype=np.float64)
    person_squares = crop_squares(person_boxes, settings.front)
    lookup = {int(f): j for j, f in enumerate(person_frames.tolist())}
    for j, (frame_idx, box) in enumerate(zip(frames.tolist(), boxes)):
        k = lookup.get(frame_idx)
        if k is not None and face_inside_fraction(box, person_boxes[k]) >= settings.person_min_face_overlap:
            squares[j], from_person[j] = person_squares[k], True
    return squares, from_person


def square_boxes(squares: np.ndarray, width_px: int, height_px: int) -> np.ndarray:
    """``int64 [n, 4]``: the frame pixels each crop square covers (``sync.pckl`` ``region_bbox``)."""
    return np.asarray([square_bounds(q, width_px, height_px) for q in np.asarray(squares).reshape(-1, 3)],
                      dtype=np.int64).reshape(-1, 4)


def region_input(frame_bgr: np.ndarray, square: Sequence[float], face_bottom_px: float | None,
                 settings: FrontEndSettings) -> np.ndarray:
    """``[270, 480, 3]`` uint8 RGB: GestSync's person crop of a BGR frame around ``square``, masked down to
    the face's bottom + 15 rows of the crop (``face_bottom_px`` in frame pixels; None: no face known, the
    top 110 rows)."""
    crop = cv2.cvtColor(square_crop(frame_bgr, square, settings), cv2.COLOR_BGR2RGB)
    if face_bottom_px is None:
        crop[: settings.mask_rows_no_face + 1] = 0
    else:
        row = face_row_in_crop(face_bottom_px, square, frame_bgr.shape[1], frame_bgr.shape[0], settings)
        crop[: max(0, row + settings.mask_below_face_px + 1)] = 0
    return crop


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
@dataclass
class GestSyncResult:
    """One track's (or clip's) GestSync result."""

    scores: np.ndarray  # float32 [offset_avg_frames, candidates]: the offset search's block; [0, 0] without one
    offset_frames: float  # SyncNet's sign; NaN when not measurable
    best_score: float
    confidence: float
    num_frames: int
    score_raw: np.ndarray  # float32 [num_frames]: scale * cosine per frame; NaN where upstream has no score
    score_smooth: np.ndarray  # float32 [num_frames]
    silent: bool = False
    num_windows: int = 0  # 25-frame windows with audio (what the offset search sees)
    offset_range_frames: tuple[int, int] | None = None  # offsets searched (SyncNet's sign); None: too short


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

    def finish(self) -> GestSyncResult:
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
        return GestSyncResult(np.zeros((0, 0), np.float32) if search is None else search.block, offset, best,
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
                 device: torch.device | str = "cpu") -> GestSyncResult:
    """The result for one sequence of masked ``[270, 480, 3]`` RGB inputs and its int16 audio (frame 0 aligned)."""
    scorer = GestSyncScorer(model, audio, settings, device)
    for frame in frames:
        scorer.push(frame)
    return scorer.finish()


# ---- sync.pckl -----------------------------------------------------------------------------------
def summarise(results: Sequence[GestSyncResult], regions: Sequence[np.ndarray], from_person: Sequence[np.ndarray],
              settings: GestSyncSettings, checkpoint: str, persons: str, scale: float) -> dict[str, Any]:
    """The ``sync.pckl`` dict of GestSync (layout: ``pipeline/formats.py``)."""
    return {
        "model": MODEL,
        "metric": METRIC,
        "offset_stride_frames": settings.offset_stride_frames,
        "max_offset_frames": settings.max_offset_frames,
        "offset_avg_frames": settings.offset_avg_frames,
        "logits_scale": float(scale),
        "offset_range_frames": [r.offset_range_frames for r in results],
        "num_avg_frames": settings.num_avg_frames,
        "global_speaker": settings.global_speaker,
        "checkpoint": checkpoint,
        "persons": persons,
        "offset_frames": [float(r.offset_frames) for r in results],
        "best_score": [float(r.best_score) for r in results],
        "confidence": [float(r.confidence) for r in results],
        "score_raw": [r.score_raw for r in results],
        "score_smooth": [r.score_smooth for r in results],
        "region_bbox": [np.asarray(r, dtype=np.int64) for r in regions],
        "region_from_person": [np.asarray(p, dtype=bool) for p in from_person],
    }


def offsets_text(sync: Mapping[str, Any]) -> str:
    """``offsets.txt``: a '#' header, then ``track offset_frames best_score confidence region`` per line."""
    header = (f"# model gestsync, {sync['metric']} x logits_scale {sync['logits_scale']:.4g}, offsets up to "
              f"+-{sync['max_offset_frames']} frames in steps of {sync['offset_stride_frames']} (SyncNet's sign); "
              f"regions: {sync['persons']}; nan: too short or silent")
    return offsets_table(header, "best_score", sync,
                         ("person_box_frames", lambda idx: str(int(np.sum(sync["region_from_person"][idx])))))


# ---- stage 2 on a cache --------------------------------------------------------------------------
def read_persons(cache: Cache) -> tuple[list[list[dict]] | None, str | None]:
    """The user's ``persons.pckl`` (faces.pckl layout) and its sha256, or (None, None) when there is none."""
    path = cache.work(PERSONS_FILE)
    if not path.is_file():
        return None, None
    try:
        persons = validate_faces(cache.load_pickle(PERSONS_FILE), str(path))
    except CacheError as err:
        raise InputError(f"{err}") from None
    return persons, sha256_file(path)


def score_tracks(model: GestSyncRGB, frames: Iterable[np.ndarray], tracks: Sequence[Mapping[str, np.ndarray]],
                 regions: Sequence[np.ndarray], face_bottoms: Sequence[np.ndarray | None],
                 audios: Sequence[np.ndarray], settings: GestSyncSettings, device: torch.device | str,
                 progress: ProgressHook) -> list[GestSyncResult]:
    """Every track's result from one pass over the normalised frames.

    ``tracks``: ``{'frame': int[n], ...}`` (consecutive frames); ``regions``: crop squares ``[n, 3]`` per track;
    ``face_bottoms``: the face's bottom row per frame (frame pixels), or None for a track with no face.
    """
    scorers = [GestSyncScorer(model, audio, settings, device) for audio in audios]
    firsts = [int(t["frame"][0]) for t in tracks]
    lengths = [len(t["frame"]) for t in tracks]
    last_frame = max(f + n - 1 for f, n in zip(firsts, lengths))
    results: list[GestSyncResult | None] = [None] * len(tracks)
    done = 0
    progress(MODEL, 0, len(tracks))
    for frame_idx, frame in enumerate(frames):
        for idx, (first, length) in enumerate(zip(firsts, lengths)):
            offset = frame_idx - first
            if 0 <= offset < length:
                if offset < scorers[idx].max_frames:
                    bottom = None if face_bottoms[idx] is None else float(face_bottoms[idx][offset])
                    scorers[idx].push(region_input(frame, regions[idx][offset], bottom, settings.front))
                else:
                    scorers[idx].num_frames += 1  # no audio for a window with this frame: only counted
                if offset == length - 1:
                    results[idx], done = scorers[idx].finish(), done + 1
                    progress(MODEL, done, len(tracks))
        if frame_idx >= last_frame:
            break
    for idx, result in enumerate(results):
        if result is None:
            results[idx] = scorers[idx].finish()
    return results  # type: ignore[return-value]


def stage2_key(cache: Cache, cfg: Any, settings: GestSyncSettings, ckpt_file: str, ckpt_sha256: str,
               persons_sha256: str | None, lips: Mapping[str, Any] | None = None) -> dict:
    """What GestSync's stage-2 outputs depend on (``lips``: the lip model's settings and checkpoint, when
    ``gestsync.lip_model`` asks for lip evidence too)."""
    return {
        "lips": lips,
        "stage": STAGE,
        "model": MODEL,
        "gestsync": GESTSYNC.section_key(cfg),
        "frame_rate_hz": settings.frame_rate_hz,
        "track": cfg.track.to_dict() if persons_sha256 else None,
        PERSONS_FILE: persons_sha256,
        "checkpoint": {"file": ckpt_file, "sha256": ckpt_sha256},
        "upstream": {MEDIA_FILE: cache.digest(MEDIA_FILE), TRACKS_FILE: cache.digest(TRACKS_FILE),
                     SCENE_FILE: cache.digest(SCENE_FILE), "crops": cache.digest("crops")},
    }


@dataclass
class ScoredRegions:
    """What GestSync scores: the face tracks' ``track`` dicts, then the person tracks without a face, with
    per track its crop squares, whether each came from a person box, and its face's bottom row (None: no face)."""

    tracks: list[Mapping[str, np.ndarray]]
    regions: list[np.ndarray]
    from_person: list[np.ndarray]
    face_bottoms: list[np.ndarray | None]
    person_tracks: list[dict[str, np.ndarray]]  # every person track of persons.pckl
    person_only: list[dict[str, np.ndarray]]  # those that hold no face track


def scored_regions(cache: Cache, cfg: Any, tracks: Sequence[Mapping], persons: list[list[dict]] | None,
                   settings: GestSyncSettings, width: int, height: int) -> ScoredRegions:
    """Each face track's region (its person's where persons.pckl holds one), then the faceless person tracks."""
    person_tracks: list[dict[str, np.ndarray]] = []
    if persons is not None:
        shots = cache.require(SCENE_FILE, STAGE1_SCRIPT)
        person_tracks = track_persons(persons, shots, cfg, width, height)
    regions, from_person, matched = [], [], set()
    for track in tracks:
        match = match_person(track["track"], person_tracks, settings.person_min_face_overlap)
        region, flags = track_regions(track["track"], None if match is None else person_tracks[match], settings,
                                      width, height)
        regions.append(region)
        from_person.append(flags)
        matched.add(match)
    # person tracks that hold no face track: scored too, with no face known (GestSync's top-rows mask)
    person_only = [p for idx, p in enumerate(person_tracks) if idx not in matched]
    for person in person_only:
        regions.append(crop_squares(np.asarray(person["bbox"], dtype=np.float64), settings.front))
        from_person.append(np.ones(len(person["frame"]), dtype=bool))
    faces = [np.asarray(t["track"]["bbox"], dtype=np.float64)[:, 3] for t in tracks] + [None] * len(person_only)
    return ScoredRegions([t["track"] for t in tracks] + person_only, regions, from_person, faces, person_tracks,
                         person_only)


def _track_audios(cache: Cache, num_face_tracks: int, person_only: Sequence[Mapping[str, np.ndarray]],
                  settings: GestSyncSettings) -> list[np.ndarray]:
    """The face tracks' own audio, then each faceless person track's span of the whole audio."""
    rate = settings.front.sample_rate_hz
    audios = [read_wav(cache.crop_wav(i), rate) for i in range(num_face_tracks)]
    if person_only:
        whole = read_wav(cache.audio_wav, rate)
        per_frame = int(round(rate / settings.frame_rate_hz))
        audios += [whole[int(p["frame"][0]) * per_frame:(int(p["frame"][-1]) + 1) * per_frame] for p in person_only]
    return audios


def gestsync_evidence(cache: Cache, cfg: Any, tracks: Sequence[Mapping], weights_dir: str | Path | None,
                      device: torch.device | str, progress: ProgressHook) -> Evidence:
    """GestSync's score blocks and ``sync.pckl`` dict for ``tracks`` of ``cache`` (and the faceless person
    tracks of persons.pckl), with the lip model's evidence when ``gestsync.lip_model`` asks; written nowhere."""
    media_info = cache.require(MEDIA_FILE, STAGE1_SCRIPT)
    settings = GestSyncSettings.from_config(cfg)
    ckpt_file = cfg.gestsync.checkpoint
    persons, _ = read_persons(cache)
    width, height = int(media_info["width"]), int(media_info["height"])
    scored = scored_regions(cache, cfg, tracks, persons, settings, width, height)
    results: list[GestSyncResult] = []
    scale = math.nan
    if scored.tracks:
        source = source_video(cache, media_info, "the Wav2Lip expert cuts its faces")
        device = torch.device(device)
        model = load_gestsync(weights_dir, ckpt_file, device)
        scale = score_scale(model)
        if device.type == "cuda":
            model = model.half()
        audios = _track_audios(cache, len(tracks), scored.person_only, settings)
        with contextlib.closing(media.iter_frames(source, settings.frame_rate_hz)) as frames:
            results = score_tracks(model, frames, scored.tracks, scored.regions, scored.face_bottoms, audios,
                                   settings, device, progress)
    described = (f"{PERSONS_FILE} ({len(scored.person_tracks)} person tracks, {len(scored.person_only)} without a "
                 f"face track)" if persons is not None else "face-derived")
    boxes = [square_boxes(r, width, height) for r in scored.regions]
    sync = summarise(results, boxes, scored.from_person, settings, ckpt_file, described, scale)
    sync["person_tracks"] = [{"frame": np.asarray(p["frame"], dtype=np.int64),
                              "bbox": np.asarray(p["bbox"], dtype=np.float64)} for p in scored.person_only]
    sync["lips"] = lip_evidence(cache, cfg, tracks, weights_dir, device, progress) if tracks else None
    return Evidence([r.scores for r in results], sync)


# ---- stage 4 -------------------------------------------------------------------------------------
def add_region_overlays(overlays: dict[int, list], tracks: Sequence[Mapping], sync: Mapping[str, Any],
                        labels: Sequence[str], colours_bgr: Mapping[str, tuple[int, int, int]],
                        turns: Sequence[Any] = (), frame_rate_hz: float = 25.0) -> None:
    """Add each track's person region (``sync.pckl`` ``region_bbox``) to stage 4's per-frame overlays, in
    the track's colour, captioned ``T<idx> person`` (a box from persons.pckl) or ``T<idx> region``
    (derived from the face); thick while a turn names the track. ``tracks``: face tracks, then the person
    tracks without a face (``person_only_tracks``)."""
    from pipeline.annotate import Overlay, _speaking_frames

    speaking = _speaking_frames(turns, len(tracks), frame_rate_hz)

    regions, flags = sync.get("region_bbox"), sync.get("region_from_person")
    if not isinstance(regions, Sequence) or len(regions) != len(tracks):
        raise CacheError(f"sync.pckl lacks one GestSync region per track: run {RUN_SYNCNET} --sync_model gestsync again")
    for idx, (track, boxes) in enumerate(zip(tracks, regions)):
        frames = np.asarray(track["track"]["frame"], dtype=np.int64).tolist()
        person = np.asarray(flags[idx], dtype=bool) if flags is not None else np.zeros(len(frames), dtype=bool)
        for j, (frame_idx, box) in enumerate(zip(frames, np.asarray(boxes))):
            kind = "person" if j < person.size and person[j] else "region"
            overlays.setdefault(frame_idx, []).append(Overlay(
                box_px=tuple(int(v) for v in box), colour_bgr=colours_bgr[labels[idx]],
                text=f"{labels[idx]}  T{idx} {kind}", speaking=any(a <= frame_idx < b for a, b in speaking[idx])))


# ---- single clip (GestSync's inference_syncoffset.py) ---------------------------------------------
def sync_clip(videofile: str | Path, cfg: Any, weights_dir: str | Path | None = None,
              device: torch.device | str = "cpu") -> GestSyncResult:
    """Offset, best score and confidence of one clip: every decoded frame, whole, is the person; no face is
    known, so the top ``mask_rows_no_face`` rows are blacked out (GestSync's fallback without landmarks).

    Frames are used as decoded, with the clip's audio at 16 kHz mono. InputError when the clip is too short
    for one block of ``offset_avg_frames`` windows (upstream exits there too).
    """
    settings = GestSyncSettings.from_config(cfg)
    media.check_video_input(videofile, need_audio=True)
    ckpt_file = cfg.gestsync.checkpoint
    audio = media.decode_audio(videofile, settings.front.sample_rate_hz)
    device = torch.device(device)
    model = load_gestsync(weights_dir, ckpt_file, device)
    if device.type == "cuda":
        model = model.half()
    with contextlib.closing(media.iter_video_frames(videofile)) as frames:
        result = sync_regions(model, (masked_frame(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), None, settings.front)
                                      for f in frames), audio, settings, device)
    if result.offset_range_frames is None:
        need = settings.offset_avg_frames + settings.front.window_frames - 1
        raise InputError(
            f"{videofile} is too short for GestSync's offset search: it needs {need} frames and "
            f"{need / settings.frame_rate_hz:.2f} s of audio to average {settings.offset_avg_frames} windows "
            f"(audio {len(audio) / settings.front.sample_rate_hz:.2f} s, {result.num_frames} frames)")
    return result


def range_note(result: GestSyncResult, settings: GestSyncSettings) -> str | None:
    """One line when the clip was too short to search every offset up to ``max_offset_frames``, else None."""
    searched, limit = result.offset_range_frames, settings.max_offset_frames
    if searched is None or searched == (-limit, limit):
        return None
    return (f"the clip is too short for the whole offset range: searched {searched[0]:+d} .. {searched[1]:+d} "
            f"frames (SyncNet's sign) of +-{limit}")


# ---- person tracks without a face, for stages 3 and 4 --------------------------------------------
def person_only_tracks(sync: Mapping[str, Any]) -> list[dict]:
    """GestSync's person tracks that hold no face track (scored after the face tracks), as ``tracks.pckl``
    entries: ``track`` (frames and person boxes) and ``proc_track`` (box centre and half its larger side)."""
    out = []
    for person in sync.get("person_tracks") or []:
        frames = np.asarray(person["frame"], dtype=np.int64)
        boxes = np.asarray(person["bbox"], dtype=np.float64).reshape(-1, 4)
        if frames.size == 0 or frames.size != len(boxes):
            raise CacheError(f"sync.pckl holds a malformed GestSync person track: run {RUN_SYNCNET} again")
        proc = {"x": (boxes[:, 0] + boxes[:, 2]) / 2, "y": (boxes[:, 1] + boxes[:, 3]) / 2,
                "s": np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2}
        out.append({"track": {"frame": frames, "bbox": boxes}, "proc_track": proc})
    return out


# ---- the model, as the stages use it -------------------------------------------------------------
class GestSyncModel(SyncModel):
    """GestSync's gesture sync on each face track's person (and faceless person tracks), optionally with a lip
    model's evidence beside it (``gestsync.lip_model``, ``pipeline/sync/lip_gesture.py``)."""

    name = MODEL
    section = "gestsync"
    stage3_only_keys = STAGE3_ONLY_KEYS
    own_curves = True
    input_files = (MEDIA_FILE, TRACKS_FILE, SCENE_FILE, "crops", PERSONS_FILE)
    channel_order = "RGB"  # GestSync converts cv2 frames to RGB
    stage2_what = "GestSync on the face tracks' (or persons.pckl's) people"  # diarize.py's stage-2 line
    plot_what, plot_ylabel = "GestSync smoothed gesture score", "gesture-sync score (smoothed)"

    def settings(self, cfg: Any) -> GestSyncSettings:
        return GestSyncSettings.from_config(cfg)

    def checkpoint_file(self, cfg: Any, weights_dir: str | Path | None) -> str:
        return cfg.gestsync.checkpoint

    def networks(self, cfg: Any, weights_dir: str | Path | None) -> list[Network]:
        file = self.checkpoint_file(cfg, weights_dir)
        lips = lip_model(cfg)
        return [Network(file, lambda: load_gestsync(weights_dir, file, "cpu")),
                *(lips.networks(cfg, weights_dir) if lips is not None else [])]

    def stage2_key(self, cache: Cache, cfg: Any, tracks: Sequence[Mapping], weights_dir: str | Path | None
                   ) -> dict[str, Any]:
        cache.require(MEDIA_FILE, STAGE1_SCRIPT)
        settings = self.settings(cfg)
        file = self.checkpoint_file(cfg, weights_dir)
        _, persons_sha = read_persons(cache)
        return stage2_key(cache, cfg, settings, file, sha256_file(checkpoint_path(file, weights_dir)), persons_sha,
                          lip_key(cfg, weights_dir) if tracks else None)

    def evidence(self, cache: Cache, cfg: Any, tracks: Sequence[Mapping], weights_dir: str | Path | None,
                 device: Any, progress: ProgressHook) -> Evidence:
        return gestsync_evidence(cache, cfg, tracks, weights_dir, device, progress)

    def offsets_text(self, sync: Mapping[str, Any]) -> str:
        return offsets_text(sync)

    def summary(self, sync: Mapping[str, Any]) -> str:
        return f"GestSync ({sync.get('persons')} regions)"

    def vote_thresholds(self, cfg: Any, sync: Mapping[str, Any]) -> tuple[float, ...]:
        return tuple(cfg.gestsync.conf_thresholds)

    def fusion_curves(self, cfg: Any, sync: Mapping[str, Any], num_tracks: int
                      ) -> tuple[list[np.ndarray] | None, list[str] | None]:
        return combined_curves(cfg, sync, own_curves(sync, num_tracks, self.name))

    def stage3_key(self, cfg: Any, sync: Mapping[str, Any]) -> dict[str, Any]:
        return {"sync_model": self.name, **self.threshold_key(cfg), **key_extra(cfg, sync)}

    def extra_tracks(self, sync: Mapping[str, Any]) -> list[dict]:
        return person_only_tracks(sync)

    def add_overlays(self, overlays: dict[int, list], tracks: Sequence[Mapping], sync: Mapping[str, Any],
                     labels: Sequence[str], colours_bgr: Mapping[str, tuple[int, int, int]],
                     turns: Sequence[Any], frame_rate_hz: float) -> None:
        add_region_overlays(overlays, tracks, sync, labels, colours_bgr, turns, frame_rate_hz)

    def clip_report(self, videofile: str | Path, cfg: Any, weights_dir: str | Path | None, device: Any,
                    features: str | None = None) -> ClipReport:
        if features:
            raise InputError("--features saves SyncNet's embeddings (syncnet_python's demo_feature.py); "
                             f"it does not apply to --sync_model {self.name}")
        result = sync_clip(videofile, cfg, weights_dir, device)
        note = range_note(result, self.settings(cfg))
        return ClipReport(demo_report(result.offset_frames, "Best score", result.best_score, result.confidence),
                          ([f"{videofile}: {note}"] if note else []) + silent_note(videofile, result.silent))


GESTSYNC = GestSyncModel()

__all__ = ["GESTSYNC", "GestSyncModel", "GestSyncResult", "GestSyncScorer", "GestSyncSettings", "OffsetSearch",
           "face_region", "frame_scores", "gestsync_evidence", "match_person", "offset_search", "range_note",
           "smooth_scores", "square_boxes", "sync_regions", "track_persons", "track_regions", "window_embeddings"]
