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

Modules: ``gestsync_frontend.py`` (the input), ``gestsync_scoring.py`` (settings, offset search, curves, the
scorer), ``gestsync_regions.py`` (regions, the one pass over the frames, person tracks, overlays), this one
(stage 2's evidence and record, the one-clip mode, the model as the stages use it).

Speed: the 3-D CNN's only temporal kernel is its first (5 frames, stride 1); every later layer is per frame,
so its features for overlapping windows are shared: it runs once per frame (``batch_size`` frames per call)
and only the transformer runs once per window. fp16 on CUDA.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from models.gestsync import load_gestsync, score_scale
from models.loader import checkpoint_path
from pipeline import media
from pipeline.cache import Cache, sha256_file
from pipeline.errors import CacheError, InputError
from pipeline.formats import MEDIA_FILE, PERSONS_FILE, SCENE_FILE, TRACKS_FILE, validate_faces
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.stage1_outputs import read_wav
from pipeline.sync.base import (
    STAGE,
    ClipReport,
    Evidence,
    Network,
    ProgressHook,
    SyncEvidence,
    SyncModel,
    TrackResult,
    curve_evidence,
    demo_report,
    offsets_table,
    own_curves,
    silent_note,
    source_video,
)
from pipeline.sync.evidence_record import LipEvidence
from pipeline.sync.gestsync_frontend import masked_frame
from pipeline.sync.gestsync_regions import (
    add_region_overlays,
    face_region,
    match_person,
    person_only_tracks,
    region_input,
    score_tracks,
    scored_regions,
    square_boxes,
    track_persons,
    track_regions,
)
from pipeline.sync.gestsync_scoring import (
    METRIC,
    MODEL,
    TEMPORAL_KERNEL_FRAMES,
    GestSyncScorer,
    GestSyncSettings,
    OffsetSearch,
    frame_scores,
    offset_search,
    smooth_scores,
    sync_regions,
    window_embeddings,
)
from pipeline.sync.lip_gesture import combined_curves, key_extra, lip_evidence, lip_key, lip_model

STAGE3_ONLY_KEYS = ("conf_thresholds", "prefer")  # read by stage 3 only: not in stage 2's key


# ---- sync.pckl -----------------------------------------------------------------------------------
def summarise(results: Sequence[TrackResult], regions: Sequence[np.ndarray], from_person: Sequence[np.ndarray],
              settings: GestSyncSettings, checkpoint: str, persons: str, scale: float,
              person_tracks: Sequence[Mapping[str, np.ndarray]] = (), lips: LipEvidence | None = None
              ) -> SyncEvidence:
    """The ``sync.pckl`` record of GestSync (layout: ``pipeline/formats.py``)."""
    return curve_evidence(
        MODEL, METRIC, results, checkpoint, offset_stride_frames=settings.offset_stride_frames,
        max_offset_frames=settings.max_offset_frames, offset_avg_frames=settings.offset_avg_frames,
        logits_scale=float(scale), offset_range_frames=tuple(r.offset_range_frames for r in results),
        num_avg_frames=settings.num_avg_frames, global_speaker=settings.global_speaker, persons=persons,
        region_bbox=tuple(np.asarray(r, dtype=np.int64) for r in regions),
        region_from_person=tuple(np.asarray(p, dtype=bool) for p in from_person),
        person_tracks=tuple({"frame": np.asarray(p["frame"], dtype=np.int64),
                             "bbox": np.asarray(p["bbox"], dtype=np.float64)} for p in person_tracks),
        lips=lips)


def offsets_text(sync: SyncEvidence) -> str:
    """``offsets.txt``: a '#' header, then ``track offset_frames best_score confidence region`` per line."""
    header = (f"# model gestsync, {sync.metric} x logits_scale {sync.logits_scale:.4g}, offsets up to "
              f"+-{sync.max_offset_frames} frames in steps of {sync.offset_stride_frames} (SyncNet's sign); "
              f"regions: {sync.persons}; nan: too short or silent")
    return offsets_table(header, sync,
                         ("person_box_frames", lambda idx: str(int(np.sum(sync.region_from_person[idx])))))


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
    results: list[TrackResult] = []
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
    lips = lip_evidence(cache, cfg, tracks, weights_dir, device, progress) if tracks else None
    sync = summarise(results, boxes, scored.from_person, settings, ckpt_file, described, scale, scored.person_only,
                     lips)
    return Evidence([r.scores for r in results], sync)


# ---- single clip (GestSync's inference_syncoffset.py) ---------------------------------------------
def sync_clip(videofile: str | Path, cfg: Any, weights_dir: str | Path | None = None,
              device: torch.device | str = "cpu") -> TrackResult:
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


def range_note(result: TrackResult, settings: GestSyncSettings) -> str | None:
    """One line when the clip was too short to search every offset up to ``max_offset_frames``, else None."""
    searched, limit = result.offset_range_frames, settings.max_offset_frames
    if searched is None or searched == (-limit, limit):
        return None
    return (f"the clip is too short for the whole offset range: searched {searched[0]:+d} .. {searched[1]:+d} "
            f"frames (SyncNet's sign) of +-{limit}")


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

    def offsets_text(self, sync: SyncEvidence) -> str:
        return offsets_text(sync)

    def summary(self, sync: SyncEvidence) -> str:
        return f"GestSync ({sync.persons} regions)"

    def vote_thresholds(self, cfg: Any, sync: SyncEvidence) -> tuple[float, ...]:
        return tuple(cfg.gestsync.conf_thresholds)

    def fusion_curves(self, cfg: Any, sync: SyncEvidence, num_tracks: int
                      ) -> tuple[list[np.ndarray] | None, list[str] | None]:
        return combined_curves(cfg, sync, own_curves(sync, num_tracks, self.name))

    def stage3_key(self, cfg: Any, sync: SyncEvidence) -> dict[str, Any]:
        return {"sync_model": self.name, **self.threshold_key(cfg), **key_extra(cfg, sync)}

    def extra_tracks(self, sync: SyncEvidence) -> list[dict]:
        return person_only_tracks(sync)

    def add_overlays(self, overlays: dict[int, list], tracks: Sequence[Mapping], sync: SyncEvidence,
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

# GestSync's public names, from this module and its parts
__all__ = ["GESTSYNC", "METRIC", "MODEL", "STAGE3_ONLY_KEYS", "TEMPORAL_KERNEL_FRAMES", "GestSyncModel",
           "GestSyncScorer", "GestSyncSettings", "OffsetSearch", "add_region_overlays", "face_region", "frame_scores",
           "gestsync_evidence", "match_person", "offset_search", "offsets_text", "person_only_tracks", "range_note",
           "read_persons", "region_input", "score_tracks", "scored_regions", "smooth_scores", "square_boxes",
           "stage2_key", "summarise", "sync_clip", "sync_regions", "track_persons", "track_regions",
           "window_embeddings"]
