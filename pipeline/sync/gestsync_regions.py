"""GestSync's regions (``pipeline/sync/gestsync.py`` describes them): each face track's crop square, from its
face box or its person's box of ``persons.pckl``, the masked crop the network sees, one pass scoring every
track's region, and what stages 3 and 4 read of the regions (the faceless person tracks, the overlays).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from models.gestsync import GestSyncRGB
from pipeline.cache import Cache
from pipeline.errors import CacheError
from pipeline.formats import RUN_PIPELINE as STAGE1_SCRIPT
from pipeline.formats import RUN_SYNCNET, SCENE_FILE
from pipeline.sync.base import ProgressHook, SyncEvidence, TrackResult, score_in_one_pass
from pipeline.sync.gestsync_frontend import FrontEndSettings, crop_squares, face_row_in_crop, square_bounds, square_crop
from pipeline.sync.gestsync_scoring import MODEL, GestSyncScorer, GestSyncSettings


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


def score_tracks(model: GestSyncRGB, frames: Iterable[np.ndarray], tracks: Sequence[Mapping[str, np.ndarray]],
                 regions: Sequence[np.ndarray], face_bottoms: Sequence[np.ndarray | None],
                 audios: Sequence[np.ndarray], settings: GestSyncSettings, device: torch.device | str,
                 progress: ProgressHook) -> list[TrackResult]:
    """Every track's result from one pass over the normalised frames.

    ``tracks``: ``{'frame': int[n], ...}`` (consecutive frames); ``regions``: crop squares ``[n, 3]`` per track;
    ``face_bottoms``: the face's bottom row per frame (frame pixels), or None for a track with no face.
    """
    scorers = [GestSyncScorer(model, audio, settings, device) for audio in audios]

    def feed(idx: int, offset: int, frame: np.ndarray) -> None:
        if offset < scorers[idx].max_frames:
            bottom = None if face_bottoms[idx] is None else float(face_bottoms[idx][offset])
            scorers[idx].push(region_input(frame, regions[idx][offset], bottom, settings.front))
        else:
            scorers[idx].num_frames += 1  # no audio for a window with this frame: only counted

    return score_in_one_pass(frames, [int(t["frame"][0]) for t in tracks], [len(t["frame"]) for t in tracks], feed,
                             lambda idx: scorers[idx].finish(), progress, MODEL)


# ---- person tracks without a face, for stages 3 and 4 --------------------------------------------
def person_only_tracks(sync: SyncEvidence) -> list[dict]:
    """GestSync's person tracks that hold no face track (scored after the face tracks), as ``tracks.pckl``
    entries: ``track`` (frames and person boxes) and ``proc_track`` (box centre and half its larger side)."""
    out = []
    for person in sync.person_tracks:
        frames = np.asarray(person["frame"], dtype=np.int64)
        boxes = np.asarray(person["bbox"], dtype=np.float64).reshape(-1, 4)
        if frames.size == 0 or frames.size != len(boxes):
            raise CacheError(f"sync.pckl holds a malformed GestSync person track: run {RUN_SYNCNET} again")
        proc = {"x": (boxes[:, 0] + boxes[:, 2]) / 2, "y": (boxes[:, 1] + boxes[:, 3]) / 2,
                "s": np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2}
        out.append({"track": {"frame": frames, "bbox": boxes}, "proc_track": proc})
    return out


# ---- stage 4 -------------------------------------------------------------------------------------
def add_region_overlays(overlays: dict[int, list], tracks: Sequence[Mapping], sync: SyncEvidence,
                        labels: Sequence[str], colours_bgr: Mapping[str, tuple[int, int, int]],
                        turns: Sequence[Any] = (), frame_rate_hz: float = 25.0) -> None:
    """Add each track's person region (``sync.pckl`` ``region_bbox``) to stage 4's per-frame overlays, in
    the track's colour, captioned ``T<idx> person`` (a box from persons.pckl) or ``T<idx> region``
    (derived from the face); thick while a turn names the track. ``tracks``: face tracks, then the person
    tracks without a face (``person_only_tracks``)."""
    from pipeline.annotate import Overlay, _speaking_frames

    speaking = _speaking_frames(turns, len(tracks), frame_rate_hz)

    regions, flags = sync.region_bbox, sync.region_from_person
    if len(regions) != len(tracks):
        raise CacheError(f"sync.pckl lacks one GestSync region per track: run {RUN_SYNCNET} --sync_model gestsync again")
    for idx, (track, boxes) in enumerate(zip(tracks, regions)):
        frames = np.asarray(track["track"]["frame"], dtype=np.int64).tolist()
        person = np.asarray(flags[idx], dtype=bool) if flags else np.zeros(len(frames), dtype=bool)
        for j, (frame_idx, box) in enumerate(zip(frames, np.asarray(boxes))):
            kind = "person" if j < person.size and person[j] else "region"
            overlays.setdefault(frame_idx, []).append(Overlay(
                box_px=tuple(int(v) for v in box), colour_bgr=colours_bgr[labels[idx]],
                text=f"{labels[idx]}  T{idx} {kind}", speaking=any(a <= frame_idx < b for a, b in speaking[idx])))


__all__ = ["ScoredRegions", "add_region_overlays", "face_inside_fraction", "face_region", "match_person",
           "person_only_tracks", "region_input", "score_tracks", "scored_regions", "square_boxes", "track_persons",
           "track_regions"]
