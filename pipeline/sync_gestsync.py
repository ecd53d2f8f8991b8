"""Stage 2 with GestSync (Hegde & Zisserman, BMVC 2023): gesture-sync scores of every face track's person.

Each face track of ``tracks.pckl`` is scored on its person's upper body rather than its lips:

- **Region.** By default a box derived from the face box in every frame (``gestsync.region_*``: the face's
  centre, ``region_width_faces`` face widths wide, from ``region_above_faces`` face heights above the face
  to ``region_below_faces`` face heights below it, clipped to the frame). When the user placed a
  ``persons.pckl`` in the reference's pywork folder (GestSync's YOLO person boxes, syncnet_python's
  ``faces.pckl`` layout, indexed on the 25 fps frames), its boxes are tracked with the face tracker
  (``pipeline.track``, per shot of ``scene.pckl``) and each face track takes the person track that holds
  its face in most frames; frames where that person has no box use the face-derived region.
- **Input.** GestSync's (``pipeline.gestsync_frontend``): every frame of the region, RGB, everything above
  the face's bottom + 15 px blacked out (in region pixels), resized to 480 x 270, in [0, 1]; 25-frame
  windows at stride 1; the track's audio as log-mel filterbanks, 100 filterbank frames per window.
- **Scores.** Window ``i`` (frames ``i .. i + 24``) against audio windows ``i + s`` for
  ``s = -vshift .. +vshift``: the cosine similarity of the L2-normalised embeddings (the video embedding
  averaged over its time steps, as both GestSync demos do); 0 where the shifted audio window does not
  exist. The column with the highest mean (over the windows whose shifted audio exists) is the offset,
  reported in SyncNet's sign (``vshift - column``; GestSync's demo prints the opposite sign), its mean the
  best score, ``confidence = best - median``.
- **Curves.** The zero-shift score of each window on its centre frame ``i + 12`` (GestSync's active-speaker
  demo centres windows on frames and scores them unshifted) is the raw curve; a centred ``num_avg_frames``
  (25) moving average over the frames that have a score is the smoothed curve stage 3 fuses. With
  ``global_speaker`` every frame of a track gets the track's mean score (the demo's ``--global_speaker``).
  The demo multiplies by ``logits_scale`` first; we keep the cosine so the thresholds are on a fixed scale.

Speed: the 3-D CNN's only temporal kernel is its first (5 frames, stride 1); every later layer is per frame,
so its features for overlapping windows are shared: it runs once per frame (``batch_size`` frames per call)
and only the transformer runs once per window. fp16 on CUDA.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.gestsync import GestSyncRGB, load_gestsync
from models.loader import checkpoint_path
from pipeline import media
from pipeline.cache import Cache, sha256_file
from pipeline.config import Section
from pipeline.errors import CacheError, InputError
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.formats import RUN_SYNCNET, validate_faces
from pipeline.gestsync_frontend import (
    FrontEndSettings,
    audio_windows,
    count_audio_windows,
    filterbanks,
    masked_frame,
)
from pipeline.lip_gesture import lip_evidence, lip_key
from pipeline.sync_wav2lip import moving_average

MODEL = "gestsync"
METRIC = "cosine_similarity"
STAGE = "run_syncnet"
PERSONS_FILE = "persons.pckl"  # the user's person boxes, in the reference's pywork folder
TEMPORAL_KERNEL_FRAMES = 5  # net_vid.conv1 kernel (5, 7, 7): the only layer that mixes frames
SPEED_ONLY_KEYS = ("batch_size", "conf_thresholds", "prefer")  # not in stage 2's key: speed, or read by stage 3

ProgressHook = Callable[..., None]


@dataclass(frozen=True)
class GestSyncSettings:
    """Stage 2's GestSync settings (config sections ``gestsync`` and ``media``)."""

    front: FrontEndSettings
    vshift_frames: int = 15
    num_avg_frames: int = 25
    global_speaker: bool = False
    batch_size: int = 16
    region_width_faces: float = 4.0
    region_above_faces: float = 0.5
    region_below_faces: float = 4.0
    person_min_face_overlap: float = 0.5
    frame_rate_hz: float = 25.0

    def __post_init__(self) -> None:
        for name in ("vshift_frames", "num_avg_frames", "batch_size"):
            value = getattr(self, name)
            if int(value) != value or value < (0 if name == "vshift_frames" else 1):
                raise InputError(f"gestsync {name} must be a whole number >= "
                                 f"{0 if name == 'vshift_frames' else 1}, got {value!r}")
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
        return cls(front=FrontEndSettings.from_config(cfg), vshift_frames=int(g.vshift_frames),
                   num_avg_frames=int(g.num_avg_frames), global_speaker=bool(g.global_speaker),
                   batch_size=int(g.batch_size), region_width_faces=float(g.region_width_faces),
                   region_above_faces=float(g.region_above_faces), region_below_faces=float(g.region_below_faces),
                   person_min_face_overlap=float(g.person_min_face_overlap),
                   frame_rate_hz=float(cfg.media.frame_rate_hz))

    @property
    def num_shifts(self) -> int:
        return 2 * self.vshift_frames + 1

    @property
    def centre_frame(self) -> int:
        """Window i is centred on frame i + 12."""
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


def clip_box(box: Sequence[float], width_px: int, height_px: int) -> tuple[int, int, int, int]:
    """A box as integer pixels inside the frame, at least one pixel wide and high."""
    x1, y1, x2, y2 = (float(v) for v in box)
    left = min(max(int(round(x1)), 0), width_px - 1)
    top = min(max(int(round(y1)), 0), height_px - 1)
    return left, top, max(min(int(round(x2)), width_px), left + 1), max(min(int(round(y2)), height_px), top + 1)


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
        if end - start >= int(cfg.track.min_track_frames):
            out += track_shot(clean[start:end], float(cfg.track.iou_threshold), int(cfg.track.max_gap_frames),
                              int(cfg.track.min_track_frames), 0.0)
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
    """Per frame of a face track: the region ``int64 [n, 4]`` and whether it is the person's box ``bool [n]``."""
    frames = np.asarray(face_track["frame"], dtype=np.int64)
    boxes = np.asarray(face_track["bbox"], dtype=np.float64)
    lookup = {} if person is None else {int(f): b for f, b in zip(np.asarray(person["frame"]),
                                                                  np.asarray(person["bbox"]))}
    regions = np.zeros((len(frames), 4), dtype=np.int64)
    from_person = np.zeros(len(frames), dtype=bool)
    for j, (frame_idx, box) in enumerate(zip(frames.tolist(), boxes)):
        person_box = lookup.get(frame_idx)
        if person_box is not None and face_inside_fraction(box, person_box) >= settings.person_min_face_overlap:
            regions[j], from_person[j] = clip_box(person_box, width_px, height_px), True
        else:
            regions[j] = face_region(box, settings, width_px, height_px)
    return regions, from_person


def region_input(frame_bgr: np.ndarray, region: Sequence[int], face_bottom_px: float | None,
                 settings: FrontEndSettings) -> np.ndarray:
    """``[270, 480, 3]`` uint8 RGB: the region of a BGR frame, masked above the face bottom + 15 px
    (``face_bottom_px`` in frame pixels; None: the top 110 rows of the resized region), resized."""
    x1, y1, x2, y2 = (int(v) for v in region)
    crop = cv2.cvtColor(np.ascontiguousarray(frame_bgr[y1:y2, x1:x2]), cv2.COLOR_BGR2RGB)
    bottom = None if face_bottom_px is None else int(math.floor(face_bottom_px)) - y1
    return masked_frame(crop, bottom, settings)


# ---- offset search --------------------------------------------------------------------------------
def offset_search(scores: np.ndarray, valid: np.ndarray, vshift_frames: int) -> tuple[float, float, float]:
    """(offset_frames, best_score, confidence) from a ``[W, 2 * vshift + 1]`` score matrix.

    The mean score of each shift over the windows whose shifted audio window exists (``valid``; a shift
    with none scores NaN and is never chosen), ``offset = vshift - argmax`` (SyncNet's sign, first maximum
    on ties), ``confidence = best - median`` of the means. No windows: ``(nan, nan, 0.0)``.
    """
    values, mask = np.asarray(scores, dtype=np.float64), np.asarray(valid, dtype=bool)
    if values.ndim != 2 or values.shape[1] != 2 * vshift_frames + 1 or mask.shape != values.shape:
        raise InputError(f"score matrix must be [W, {2 * vshift_frames + 1}], got {values.shape}")
    counts = mask.sum(axis=0)
    if not counts.any():
        return math.nan, math.nan, 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_per_shift = np.where(counts > 0, (values * mask).sum(axis=0) / counts, np.nan)
    best = int(np.nanargmax(mean_per_shift))
    confidence = float(mean_per_shift[best] - np.nanmedian(mean_per_shift))
    return float(vshift_frames - best), float(mean_per_shift[best]), confidence


# ---- the network, with shared per-frame features -------------------------------------------------
@dataclass
class GestSyncResult:
    """One track's (or clip's) GestSync result."""

    scores: np.ndarray  # float32 [num_windows, 2 * vshift + 1]
    offset_frames: float  # SyncNet's sign; NaN when not measurable
    best_score: float
    confidence: float
    num_frames: int
    score_raw: np.ndarray  # float32 [num_frames]
    score_smooth: np.ndarray  # float32 [num_frames]
    silent: bool = False

    @property
    def num_windows(self) -> int:
        return int(self.scores.shape[0])


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
    """Scores one track as its masked region frames arrive: the CNN trunk runs on ``batch_size`` frames at
    a time (overlapping by 4), keeping only its 512-d per-position features."""

    def __init__(self, model: GestSyncRGB, audio: np.ndarray, settings: GestSyncSettings,
                 device: torch.device | str = "cpu") -> None:
        self.model, self.settings, self.device = model, settings, torch.device(device)
        self.silent = not np.any(audio)
        self.fbanks = filterbanks(audio, settings.front)
        self.audio_windows = count_audio_windows(len(self.fbanks), settings.front)
        self.max_frames = self.audio_windows + settings.front.window_frames - 1  # frames any window can use
        self.buffer: list[np.ndarray] = []
        self.features: list[torch.Tensor] = []
        self.num_frames = 0

    def push(self, masked_u8: np.ndarray) -> None:
        """Add the next frame's ``[270, 480, 3]`` masked RGB region."""
        self.num_frames += 1
        if self.num_frames > self.max_frames:
            return
        self.buffer.append(masked_u8)
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
        """Score the windows and summarise the track."""
        front, shifts, vshift = self.settings.front, self.settings.num_shifts, self.settings.vshift_frames
        if len(self.buffer) >= TEMPORAL_KERNEL_FRAMES:
            self._trunk()
        self.buffer = []
        used = min(self.num_frames, self.max_frames)
        num_windows = 0 if used < front.window_frames or self.audio_windows == 0 else \
            (used - front.window_frames) + 1
        scores = np.zeros((num_windows, shifts), dtype=np.float32)
        valid = np.zeros((num_windows, shifts), dtype=bool)
        if num_windows:
            features = torch.cat(self.features)
            with torch.inference_mode():
                video = F.normalize(window_embeddings(self.model, features, num_windows, front.window_frames,
                                                      self.settings.batch_size), dim=1)
                audio = self._audio_embeddings()
                for k, shift in enumerate(range(-vshift, vshift + 1)):
                    lo, hi = max(0, -shift), min(num_windows, self.audio_windows - shift)
                    if hi > lo:
                        scores[lo:hi, k] = (video[lo:hi] * audio[lo + shift:hi + shift]).sum(1).cpu().numpy()
                        valid[lo:hi, k] = True
        self.features = []
        offset, best, confidence = offset_search(scores, valid, vshift)
        raw = np.full(self.num_frames, np.nan, dtype=np.float32)
        centre = self.settings.centre_frame
        count = max(0, min(num_windows, self.num_frames - centre))
        raw[centre:centre + count] = scores[:count, vshift]
        smooth = moving_average(raw, self.settings.num_avg_frames)
        if self.settings.global_speaker:
            finite = raw[np.isfinite(raw)]
            smooth = np.full(self.num_frames, finite.mean() if finite.size else np.nan, dtype=np.float32)
        if self.silent:
            offset, confidence = math.nan, 0.0
        return GestSyncResult(scores, offset, best, confidence, self.num_frames, raw, smooth, self.silent)

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
    """The result for one sequence of masked ``[270, 480, 3]`` RGB regions and its int16 audio (frame 0 aligned)."""
    scorer = GestSyncScorer(model, audio, settings, device)
    for frame in frames:
        scorer.push(frame)
    return scorer.finish()


# ---- sync.pckl -----------------------------------------------------------------------------------
def summarise(results: Sequence[GestSyncResult], regions: Sequence[np.ndarray], from_person: Sequence[np.ndarray],
              settings: GestSyncSettings, checkpoint: str, persons: str) -> dict[str, Any]:
    """The ``sync.pckl`` dict of GestSync (layout: ``pipeline/formats.py``)."""
    return {
        "model": MODEL,
        "metric": METRIC,
        "vshift_frames": settings.vshift_frames,
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


def _fmt(value: float, spec: str) -> str:
    return "nan" if not math.isfinite(value) else format(value, spec)


def offsets_text(sync: Mapping[str, Any]) -> str:
    """``offsets.txt``: a '#' header, then ``track offset_frames best_score confidence region`` per line."""
    lines = [f"# model gestsync, {sync['metric']}, vshift {sync['vshift_frames']} frames (SyncNet's sign); "
             f"regions: {sync['persons']}; nan: too short or silent",
             "# track\toffset_frames\tbest_score\tconfidence\tperson_box_frames"]
    for idx, (off, best, conf) in enumerate(zip(sync["offset_frames"], sync["best_score"], sync["confidence"])):
        person = int(np.sum(sync["region_from_person"][idx]))
        lines.append(f"{idx:05d}\t{_fmt(off, '.0f')}\t{_fmt(best, '.3f')}\t{_fmt(conf, '.3f')}\t{person}")
    return "\n".join(lines) + "\n"


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


def stage2_key(cache: Cache, cfg: Section, settings: GestSyncSettings, ckpt_file: str, ckpt_sha256: str,
               persons_sha256: str | None, lips: Mapping[str, Any] | None = None) -> dict:
    """What GestSync's stage-2 outputs depend on (``lips``: the lip model's settings and checkpoint, when
    ``gestsync.lip_model`` asks for lip evidence too)."""
    return {
        "lips": lips,
        "stage": STAGE,
        "model": MODEL,
        "gestsync": {k: v for k, v in cfg.gestsync.to_dict().items() if k not in SPEED_ONLY_KEYS},
        "frame_rate_hz": settings.frame_rate_hz,
        "track": cfg.track.to_dict() if persons_sha256 else None,
        "persons.pckl": persons_sha256,
        "checkpoint": {"file": ckpt_file, "sha256": ckpt_sha256},
        "upstream": {"media.pckl": cache.digest("media.pckl"), "tracks.pckl": cache.digest("tracks.pckl"),
                     "scene.pckl": cache.digest("scene.pckl"), "crops": cache.digest("crops")},
    }


def score_tracks(model: GestSyncRGB, frames: Iterable[np.ndarray], tracks: Sequence[Mapping[str, np.ndarray]],
                 regions: Sequence[np.ndarray], face_bottoms: Sequence[np.ndarray | None],
                 audios: Sequence[np.ndarray], settings: GestSyncSettings, device: torch.device | str,
                 progress: ProgressHook) -> list[GestSyncResult]:
    """Every track's result from one pass over the normalised frames.

    ``tracks``: ``{'frame': int[n], ...}`` (consecutive frames); ``regions``: int ``[n, 4]`` per track;
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


def run_stage2_gestsync(cache: Cache, cfg: Section, weights_dir: str | Path | None = None,
                        device: torch.device | str = "cpu", force: bool = False,
                        progress: ProgressHook | None = None):
    """GestSync on every face track of ``cache``; reuses a valid earlier result unless ``force``.

    Returns ``pipeline.stage2.Stage2Output`` with the score matrices as ``distances``.
    """
    from pipeline.stage1_outputs import read_wav, require_tracks_and_crops
    from pipeline.stage2 import Stage2Output, load_valid, prepare_rerun, write_outputs
    from pipeline.sync_wav2lip import _source_video

    progress = progress or (lambda *args, **kwargs: None)
    tracks = require_tracks_and_crops(cache)
    media_info = cache.require("media.pckl", STAGE1_SCRIPT)
    settings = GestSyncSettings.from_config(cfg)
    ckpt_file = str(cfg.gestsync.checkpoint)
    persons, persons_sha = read_persons(cache)
    key = stage2_key(cache, cfg, settings, ckpt_file, sha256_file(checkpoint_path(ckpt_file, weights_dir)),
                     persons_sha, lip_key(cfg, weights_dir) if tracks else None)
    reused = None if force else load_valid(cache, key)
    if reused is not None:
        return reused
    prepare_rerun(cache, bool(tracks))
    width, height = int(media_info["width"]), int(media_info["height"])
    person_tracks: list[dict[str, np.ndarray]] = []
    if persons is not None:
        shots = cache.require("scene.pckl", STAGE1_SCRIPT)
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
    scored = [t["track"] for t in tracks] + person_only
    faces = [np.asarray(t["track"]["bbox"], dtype=np.float64)[:, 3] for t in tracks] + [None] * len(person_only)
    for person in person_only:
        regions.append(np.asarray([clip_box(b, width, height) for b in person["bbox"]], dtype=np.int64))
        from_person.append(np.ones(len(person["frame"]), dtype=bool))
    results: list[GestSyncResult] = []
    if scored:
        source = _source_video(cache, media_info)
        device = torch.device(device)
        model = load_gestsync(weights_dir, ckpt_file, device)
        if device.type == "cuda":
            model = model.half()
        rate = settings.front.sample_rate_hz
        audios = [read_wav(cache.crop_wav(i), rate) for i in range(len(tracks))]
        if person_only:
            whole = read_wav(cache.audio_wav, rate)
            per_frame = int(round(rate / settings.frame_rate_hz))
            audios += [whole[int(p["frame"][0]) * per_frame:(int(p["frame"][-1]) + 1) * per_frame] for p in person_only]
        with contextlib.closing(media.iter_frames(source, settings.frame_rate_hz)) as frames:
            results = score_tracks(model, frames, scored, regions, faces, audios, settings, device, progress)
    described = (f"{PERSONS_FILE} ({len(person_tracks)} person tracks, {len(person_only)} without a face track)"
                 if persons is not None else "face-derived")
    sync = summarise(results, regions, from_person, settings, ckpt_file, described)
    sync["person_tracks"] = [{"frame": np.asarray(p["frame"], dtype=np.int64),
                              "bbox": np.asarray(p["bbox"], dtype=np.float64)} for p in person_only]
    sync["lips"] = lip_evidence(cache, cfg, tracks, media_info, weights_dir, device, progress) if tracks else None
    scores = [r.scores for r in results]
    write_outputs(cache, scores, sync, key, offsets_text(sync))
    return Stage2Output(scores, sync, reused=False)


__all__ = ["GestSyncResult", "GestSyncScorer", "GestSyncSettings", "face_region", "match_person",
           "run_stage2_gestsync", "sync_regions", "track_persons", "track_regions", "window_embeddings"]


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
def sync_clip(videofile: str | Path, cfg: Section, weights_dir: str | Path | None = None,
              device: torch.device | str = "cpu") -> GestSyncResult:
    """Offset, best score and confidence of one clip: every decoded frame, whole, is the person; no face is
    known, so the top ``mask_rows_no_face`` rows are blacked out (GestSync's fallback without landmarks).

    Frames are used as decoded, with the clip's audio at 16 kHz mono. InputError when no window fits.
    """
    settings = GestSyncSettings.from_config(cfg)
    media.check_video_input(videofile, need_audio=True)
    ckpt_file = str(cfg.gestsync.checkpoint)
    audio = media.decode_audio(videofile, settings.front.sample_rate_hz)
    device = torch.device(device)
    model = load_gestsync(weights_dir, ckpt_file, device)
    if device.type == "cuda":
        model = model.half()
    with contextlib.closing(media.iter_video_frames(videofile)) as frames:
        result = sync_regions(model, (masked_frame(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), None, settings.front)
                                      for f in frames), audio, settings, device)
    if result.num_windows == 0:
        raise InputError(
            f"{videofile} is too short for GestSync: it needs {settings.front.window_frames} frames and "
            f"{settings.front.window_frames / settings.frame_rate_hz:.2f} s of audio "
            f"(audio {len(audio) / settings.front.sample_rate_hz:.2f} s, {result.num_frames} frames)")
    return result


def demo_report(result: GestSyncResult) -> str:
    """Three lines like SyncNet's demo (offset in SyncNet's sign), with the best mean cosine similarity."""
    offset = "nan" if not math.isfinite(result.offset_frames) else f"{int(result.offset_frames):d}"
    return (f"AV offset: \t{offset}\n"
            f"Best score: \t{_fmt(result.best_score, '.3f')}\n"
            f"Confidence: \t{_fmt(result.confidence, '.3f')}")


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


def person_identities(face_ids: Sequence[int], count: int) -> list[int]:
    """Identities of ``count`` person-only tracks: new ones after the face identities, one each (no face to
    compare; stage 3 may still merge them with faces by voice)."""
    first = max((int(i) for i in face_ids), default=-1) + 1
    return list(range(first, first + count))


def person_vad(audio_vad_s: Sequence[tuple[float, float]], track: Mapping[str, Any],
               frame_rate_hz: float) -> list[tuple[float, float]]:
    """The whole audio's speech segments within a person-only track's span, in seconds from its first frame
    (what a face track's own VAD gives, since its audio is the same span of the same audio)."""
    frames = np.asarray(track["track"]["frame"])
    start_s, end_s = int(frames[0]) / frame_rate_hz, (int(frames[-1]) + 1) / frame_rate_hz
    return [(max(s, start_s) - start_s, min(e, end_s) - start_s) for s, e in audio_vad_s
            if min(e, end_s) > max(s, start_s)]
