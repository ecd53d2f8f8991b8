"""Sanity limits on face detections as they are read, from S3FD or from a user's ``faces.pckl``.

The references take every box as it comes. A broken or fine-tuned detector that fires everywhere, or a
hand-made ``faces.pckl``, can hold boxes that are not finite, empty, nowhere near the frame or many times
its size, and thousands of them per frame; such boxes are dropped here (and counted) so that tracking and
cropping cost what an ordinary video costs. Boxes of real faces, including those reaching past the border,
pass unchanged.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence


def box_problem(bbox: Sequence[float], conf: float, width_px: int, height_px: int,
                max_side_ratio: float) -> str | None:
    """Why a box ``[x1, y1, x2, y2]`` (pixels of a ``width_px`` x ``height_px`` frame) is dropped, or None."""
    if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or not math.isfinite(conf):
        return "not finite"
    x1, y1, x2, y2 = bbox
    if x2 <= x1 or y2 <= y1:
        return "empty"
    if x2 <= 0 or y2 <= 0 or x1 >= width_px or y1 >= height_px:
        return "outside the frame"
    if max(x2 - x1, y2 - y1) > max_side_ratio * max(width_px, height_px):
        return f"over {max_side_ratio:g}x the frame"
    return None


def drop_unusable(faces: Sequence[Sequence[dict]], width_px: int, height_px: int,
                  cfg_detections: Mapping) -> tuple[list[list[dict]], Counter]:
    """Faces without unusable boxes and with at most ``max_per_frame`` boxes (highest ``conf``) per frame, and
    how many boxes were dropped for each reason."""
    max_per_frame = cfg_detections["max_per_frame"]
    max_side_ratio = cfg_detections["max_box_side_ratio"]
    dropped: Counter = Counter()
    kept_faces: list[list[dict]] = []
    for dets in faces:
        kept = []
        for det in dets:
            problem = box_problem([float(v) for v in det["bbox"]], float(det.get("conf", 1.0)),
                                  width_px, height_px, max_side_ratio)
            if problem is None:
                kept.append(det)
            else:
                dropped[problem] += 1
        if len(kept) > max_per_frame:
            best = sorted(range(len(kept)), key=lambda i: -float(kept[i].get("conf", 1.0)))[:max_per_frame]
            dropped[f"beyond {max_per_frame} per frame"] += len(kept) - max_per_frame
            kept = [kept[i] for i in sorted(best)]
        kept_faces.append(kept)
    return kept_faces, dropped


def drop_note(dropped: Counter) -> str | None:
    """One note saying how many boxes were dropped and why; None when none were."""
    if not dropped:
        return None
    total = sum(dropped.values())
    why = ", ".join(f"{count} {reason}" for reason, count in dropped.most_common())
    return f"dropped {total} face detection{'s' if total != 1 else ''} ({why})"


def sanitize_faces(faces: Sequence[Sequence[dict]], width_px: int, height_px: int,
                   cfg_detections: Mapping) -> tuple[list[list[dict]], str | None]:
    """Faces without unusable boxes and with at most ``max_per_frame`` boxes (highest ``conf``) per frame.

    Returns the kept detections (same layout, same order within a frame) and one note saying how many
    boxes were dropped and why, or None when nothing was dropped.
    """
    kept, dropped = drop_unusable(faces, width_px, height_px, cfg_detections)
    return kept, drop_note(dropped)


__all__ = ["box_problem", "drop_note", "drop_unusable", "sanitize_faces"]
