"""Face tracks within a shot: greedy IoU linking, gap interpolation, length and size filters."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (the references' formula, no +1 on sides)."""
    inter_w = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
    inter_h = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    inter = inter_w * inter_h
    area_a = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1])
    area_b = (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def link_detections(shot_faces: Sequence[Sequence[dict]], iou_threshold: float, max_gap_frames: int) -> list[list[dict]]:
    """Greedy tracks over one shot's detections, as syncnet_python's ``track_shot`` builds them.

    Each pass starts a track at the first unused detection and walks forward, taking in each frame the
    first unused detection whose IoU with the track's last box exceeds ``iou_threshold``, until the gap
    since the last detection exceeds ``max_gap_frames``. (The reference removes items from the list it
    iterates, which can skip a detection in the same frame; here a frame gives a track at most one box.)
    """
    remaining = [list(frame_dets) for frame_dets in shot_faces]
    tracks: list[list[dict]] = []
    while True:
        track: list[dict] = []
        for frame_dets in remaining:
            if track and frame_dets and frame_dets[0]["frame"] - track[-1]["frame"] > max_gap_frames:
                break
            for det in frame_dets:
                if not track or box_iou(det["bbox"], track[-1]["bbox"]) > iou_threshold:
                    track.append(det)
                    frame_dets.remove(det)
                    break
        if not track:
            return tracks
        tracks.append(track)


def interpolate_track(track: Sequence[dict]) -> dict[str, np.ndarray]:
    """Boxes on every frame from the first to the last detection, linearly interpolated over gaps."""
    frames = np.array([det["frame"] for det in track], dtype=np.int64)
    boxes = np.array([det["bbox"] for det in track], dtype=np.float64)
    all_frames = np.arange(frames[0], frames[-1] + 1, dtype=np.int64)
    all_boxes = np.stack([np.interp(all_frames, frames, boxes[:, k]) for k in range(4)], axis=1)
    return {"frame": all_frames, "bbox": all_boxes}


def track_shot(shot_faces: Sequence[Sequence[dict]], iou_threshold: float, max_gap_frames: int,
               min_track_frames: int, min_face_size_px: float) -> list[dict[str, np.ndarray]]:
    """Tracks of one shot with more than ``min_track_frames`` detections and a mean box side above
    ``min_face_size_px`` (the larger of mean width and mean height), as the references keep them."""
    kept = []
    for track in link_detections(shot_faces, iou_threshold, max_gap_frames):
        if len(track) <= min_track_frames:
            continue
        dense = interpolate_track(track)
        widths = dense["bbox"][:, 2] - dense["bbox"][:, 0]
        heights = dense["bbox"][:, 3] - dense["bbox"][:, 1]
        if max(widths.mean(), heights.mean()) > min_face_size_px:
            kept.append(dense)
    return kept


def track_faces(faces: Sequence[Sequence[dict]], shots: Sequence[tuple[int, int]], cfg_track) -> list[dict[str, np.ndarray]]:
    """All tracks of a video: shots of at least ``min_track_frames`` frames are tracked independently."""
    tracks = []
    for start, end in shots:
        if end - start >= cfg_track.min_track_frames:
            tracks += track_shot(faces[start:end], cfg_track.iou_threshold, cfg_track.max_gap_frames,
                                 cfg_track.min_track_frames, cfg_track.min_face_size_px)
    return tracks
